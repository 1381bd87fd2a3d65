"""What the device runs per frame, behind one interface, in PyTorch or from an exported ONNX file.

The edge of an ECC model is: the edge detector, the offload gate (and a multi-exit edge's router and extension exit),
and the adapters' encoders whose latents become the feature payload. `EdgeRuntime` gives the stream client those
outputs for a letterboxed frame, whatever runs them:
- `TorchEdge`: an `ECCModel` in PyTorch;
- `OnnxEdge`: the graph `export_edge_onnx` writes (`ecc-yolo export model=... format=onnx`), run by onnxruntime.
Both build payloads with the same code (`ecc_yolo.payload.make_payloads`), so a server decodes their payloads alike.
"""

from __future__ import annotations

import importlib
import json
from copy import deepcopy
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ecc_yolo.deploy import GATE_ROUTERS, DeploySettings, model_settings, settings_from_dict
from ecc_yolo.nn.ecc_model import ECCModel
from ecc_yolo.payload import latent_bits, make_payloads
from ecc_yolo.payload.codec import FeaturePayload

METADATA_KEY = "ecc_yolo"  # ONNX metadata entry holding the edge's description (JSON)


@dataclass
class EdgeOutputs:
    """One batch of the device's outputs.

    Attributes:
        edge: decoded edge predictions, (B, 4 + nc, A) (or (B, max_det, 6) for end-to-end heads), before NMS.
        gate: (B, 2) predicted gains (adapted, cloud).
        latents: cloud layer -> (B, C, H, W) float latents of the adapters' encoders.
        router: (B, 3) exit logits of a multi-exit edge, else None.
        extension: decoded predictions of the extension exit, or None (TorchEdge computes it on demand).
    """

    edge: torch.Tensor
    gate: np.ndarray
    latents: dict[int, torch.Tensor]
    router: np.ndarray | None = None
    extension: torch.Tensor | None = None


class EdgeRuntime:
    """The device side of an ECC model (see the module docstring)."""

    names: dict[int, str]
    stride: int
    edge_end2end: bool
    deploy: DeploySettings  # the model's deployment settings (ecc_yolo.deploy)
    multi_exit: bool
    fingerprint: bytes
    bits: dict[int, int]  # cloud layer -> bits per transmitted value

    def run(self, x: torch.Tensor, need_latents: bool = True) -> EdgeOutputs:
        """Edge, gate (and router) outputs and the adapters' latents for a letterboxed (B, 3, H, W) batch."""
        raise NotImplementedError

    def extension(self, outputs: EdgeOutputs, index: torch.Tensor) -> torch.Tensor:
        """Decoded extension-exit predictions of the frames `index` of a batch (multi-exit edges)."""
        raise NotImplementedError

    def payloads(self, outputs: EdgeOutputs, image_shape: tuple[int, int], input_shape: tuple[int, int]
                 ) -> list[FeaturePayload]:
        """Quantise the latents of each frame into its feature payload (`ecc_yolo.payload.make_payloads`)."""
        return make_payloads(outputs.latents, self.bits, self.fingerprint, image_shape, input_shape)


class TorchEdge(EdgeRuntime):
    """The edge of an `ECCModel`, in PyTorch (a fused copy: the caller's model is left as it is)."""

    def __init__(self, model: ECCModel, device: torch.device | str = "cpu"):
        """Take the fingerprint (it hashes every weight, before fusing), then keep a fused copy on `device`."""
        self.fingerprint = model.fingerprint()
        self.model = deepcopy(model).to(device).float().eval()
        self.model.edge.fuse(verbose=False)
        self.names = {int(k): str(v) for k, v in self.model.names.items()}
        self.stride = int(self.model.stride.max())
        self.edge_end2end = bool(getattr(self.model.edge, "end2end", False))
        self.deploy = model_settings(model)
        self.multi_exit = self.model.router is not None
        self.bits = latent_bits(self.model)
        self._feats: dict[int, torch.Tensor] = {}

    @torch.inference_mode()
    def run(self, x: torch.Tensor, need_latents: bool = True) -> EdgeOutputs:
        m = self.model
        edge_out, feats = m.edge_forward(x, keep=m.device_layers)
        self._feats = feats
        return EdgeOutputs(
            edge=edge_out[0] if isinstance(edge_out, tuple) else edge_out,
            gate=m.gate_scores(feats, edge_out).float().cpu().numpy(),
            latents=m.encode(feats) if need_latents else {},
            router=m.exit_logits(feats, edge_out).float().cpu().numpy() if self.multi_exit else None,
        )

    @torch.inference_mode()
    def extension(self, outputs: EdgeOutputs, index: torch.Tensor) -> torch.Tensor:
        out = self.model.extension_forward({k: v[index] for k, v in self._feats.items()})
        return out[0] if isinstance(out, tuple) else out


class _EdgeGraph(nn.Module):
    """Everything the device computes per frame, as one traceable graph (the ONNX export)."""

    def __init__(self, model: ECCModel):
        super().__init__()
        self.model = model
        self.layers = sorted(int(k) for k in model.adapters)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        m = self.model
        edge_out, feats = m.edge_forward(x, keep=m.device_layers)
        latents = m.encode(feats)
        outputs = [edge_out[0], m.gate_scores(feats, edge_out), *(latents[k] for k in self.layers)]
        if m.router is not None:
            outputs += [m.exit_logits(feats, edge_out), m.extension_forward(feats)[0]]
        return tuple(outputs)


def _optional(module: str) -> Any:
    """Import a package of the `export` extra, or say how to install it."""
    try:
        return importlib.import_module(module)
    except ImportError as e:
        raise ModuleNotFoundError(
            f"'{module}' is needed for ONNX edge graphs: pip install \"ecc-yolo[export]\" (or -e \".[export]\")"
        ) from e


def export_edge_onnx(model: ECCModel, path: str | Path, imgsz: int = 640, opset: int = 17) -> Path:
    """Write the device's graph (edge detector, gate, router and extension exit if any, adapter encoders) to ONNX,
    with the edge's description (names, stride, fingerprint, bits, gate threshold, output names) in its metadata.

    Args:
        model: the ECC model.
        path: output .onnx file.
        imgsz: square network input size the graph is fixed to (pixels).
        opset: ONNX opset.
    """
    onnx = _optional("onnx")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fingerprint = model.fingerprint()
    graph = _EdgeGraph(deepcopy(model).float().eval())
    graph.model.edge.fuse(verbose=False)
    layers = graph.layers
    names = ["edge", "gate", *(f"latent_{k}" for k in layers)]
    if model.router is not None:
        names += ["router", "extension"]
    x = torch.zeros(1, 3, imgsz, imgsz)
    with torch.no_grad():
        torch.onnx.export(graph, (x,), str(path), opset_version=opset, input_names=["images"], output_names=names,
                          dynamo=False)
    onnx_model = onnx.load(str(path))
    meta = {
        "fingerprint": fingerprint.hex(),
        "names": {str(k): v for k, v in model.names.items()},
        "stride": int(model.stride.max()),
        "imgsz": imgsz,
        "edge_end2end": bool(getattr(model.edge, "end2end", False)),
        "deploy": {**model_settings(model).as_dict(), "imgsz": imgsz},  # the graph's input size is fixed
        "bits": {str(k): model.adapters[str(k)].bits for k in layers},
        "outputs": names,
        "spec": model.spec.name,
    }
    entry = onnx_model.metadata_props.add()
    entry.key, entry.value = METADATA_KEY, json.dumps(meta)
    onnx.save(onnx_model, str(path))
    return path


class OnnxEdge(EdgeRuntime):
    """The exported edge graph, run by onnxruntime on the CPU."""

    def __init__(self, path: str | Path):
        """Load the graph and its description; refuse an ONNX file that ecc-yolo did not export."""
        ort = _optional("onnxruntime")
        self.session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        raw = self.session.get_modelmeta().custom_metadata_map.get(METADATA_KEY)
        if raw is None:
            raise ValueError(f"'{path}' is not an ecc-yolo edge export (no '{METADATA_KEY}' metadata)")
        meta: dict[str, Any] = json.loads(raw)
        self.meta = meta
        self.names = {int(k): v for k, v in meta["names"].items()}
        self.stride = int(meta["stride"])
        self.imgsz = int(meta["imgsz"])
        self.edge_end2end = bool(meta["edge_end2end"])
        self.multi_exit = "router" in meta["outputs"]
        self.deploy = settings_from_dict(meta.get("deploy") or {"imgsz": self.imgsz, "thresholds": dict.fromkeys(
            GATE_ROUTERS, float(meta["gate_threshold"]))}, self.multi_exit)  # exports before deploy
        self.fingerprint = bytes.fromhex(meta["fingerprint"])
        self.bits = {int(k): int(v) for k, v in meta["bits"].items()}
        self.outputs = list(meta["outputs"])
        self.multi_exit = "router" in self.outputs

    def run(self, x: torch.Tensor, need_latents: bool = True) -> EdgeOutputs:
        if tuple(x.shape[2:]) != (self.imgsz, self.imgsz):
            raise ValueError(f"this export takes {self.imgsz}x{self.imgsz} inputs, got {tuple(x.shape[2:])}")
        values = dict(zip(self.outputs, self.session.run(self.outputs, {"images": x.cpu().numpy()})))
        return EdgeOutputs(
            edge=torch.from_numpy(values["edge"]),
            gate=values["gate"],
            latents={int(k.split("_")[1]): torch.from_numpy(v) for k, v in values.items() if k.startswith("latent_")},
            router=values.get("router"),
            extension=torch.from_numpy(values["extension"]) if "extension" in values else None,
        )

    def extension(self, outputs: EdgeOutputs, index: torch.Tensor) -> torch.Tensor:
        return outputs.extension[index]


def load_edge(model: str | Path | ECCModel, device: torch.device | str = "cpu") -> EdgeRuntime:
    """An edge runtime from an ECC model, an ECC checkpoint or zoo name, or an exported .onnx edge."""
    if isinstance(model, ECCModel):
        return TorchEdge(model, device)
    if str(model).endswith(".onnx"):
        return OnnxEdge(model)
    from ecc_yolo.checkpoint import load_ecc

    return TorchEdge(load_ecc(model)[0], device)
