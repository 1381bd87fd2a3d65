"""What the device runs per frame, behind one interface, in PyTorch or from an exported ONNX file or OpenVINO IR.

The edge of an ECC model is: the edge detector, the offload gate (and a multi-exit edge's router and extension exit),
and the adapters' encoders whose latents become the feature payload. `EdgeRuntime` gives the stream client those
outputs for a letterboxed frame, whatever runs them:
- `TorchEdge`: an `ECCModel` in PyTorch;
- `OnnxEdge`: the graph `export_edge_onnx` writes (`ecc-yolo export model=... format=onnx`), run by onnxruntime;
- `OpenVinoEdge`: the same graph as an OpenVINO IR, `export_edge_openvino` (`format=openvino`), run by OpenVINO.
All build payloads with the same code (`ecc_yolo.payload.make_payloads`), so a server decodes their payloads alike.
"""

from __future__ import annotations

import importlib
import json
import tempfile
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

METADATA_KEY = "ecc_yolo"  # ONNX metadata entry / OpenVINO rt_info key holding the edge's description (JSON)


class NotAnEdgeExport(ValueError):
    """A model file or folder given as an edge export that ecc-yolo did not write (no edge description in it)."""


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
    max_batch: int | None = None  # frames `run` takes at once (None: any number)

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
    """Everything the device computes per frame, as one traceable graph (the ONNX and OpenVINO exports)."""

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
            f"'{module}' is needed for exported edge graphs: pip install \"ecc-yolo[export]\" (or -e \".[export]\")"
        ) from e


def edge_metadata(model: ECCModel, imgsz: int) -> dict[str, Any]:
    """The edge's description stored with every export (ONNX metadata, OpenVINO rt_info) under `METADATA_KEY`:
    fingerprint, class names, stride, the fixed input size (pixels), deployment settings, bits per latent value and
    the graph's output names, in order."""
    layers = sorted(int(k) for k in model.adapters)
    outputs = ["edge", "gate", *(f"latent_{k}" for k in layers)]
    if model.router is not None:
        outputs += ["router", "extension"]
    return {
        "fingerprint": model.fingerprint().hex(),
        "names": {str(k): v for k, v in model.names.items()},
        "stride": int(model.stride.max()),
        "imgsz": imgsz,
        "edge_end2end": bool(getattr(model.edge, "end2end", False)),
        "deploy": {**model_settings(model).as_dict(), "imgsz": imgsz},  # the graph's input size is fixed
        "bits": {str(k): model.adapters[str(k)].bits for k in layers},
        "outputs": outputs,
        "spec": model.spec.name,
    }


def _trace_onnx(model: ECCModel, path: Path, imgsz: int, opset: int, outputs: list[str]) -> None:
    """Trace the fused `_EdgeGraph` of a copy of `model` to an ONNX file (input `images`, fixed 1x3ximgszximgsz)."""
    graph = _EdgeGraph(deepcopy(model).float().eval())
    graph.model.edge.fuse(verbose=False)
    x = torch.zeros(1, 3, imgsz, imgsz)
    with torch.no_grad():
        torch.onnx.export(graph, (x,), str(path), opset_version=opset, input_names=["images"], output_names=outputs,
                          dynamo=False)


def export_edge_onnx(model: ECCModel, path: str | Path, imgsz: int = 640, opset: int = 17) -> Path:
    """Write the device's graph (edge detector, gate, router and extension exit if any, adapter encoders) to ONNX,
    with the edge's description (`edge_metadata`) in its metadata.

    Args:
        model: the ECC model.
        path: output .onnx file.
        imgsz: square network input size the graph is fixed to (pixels).
        opset: ONNX opset.
    """
    onnx = _optional("onnx")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    meta = edge_metadata(model, imgsz)
    _trace_onnx(model, path, imgsz, opset, meta["outputs"])
    onnx_model = onnx.load(str(path))
    entry = onnx_model.metadata_props.add()
    entry.key, entry.value = METADATA_KEY, json.dumps(meta)
    onnx.save(onnx_model, str(path))
    return path


OPENVINO_SUFFIX = "_openvino_model"  # an OpenVINO export is a folder `<stem>_openvino_model/<stem>.xml` (+ .bin)


def export_edge_openvino(model: ECCModel, path: str | Path, imgsz: int = 640, opset: int = 17) -> Path:
    """Write the device's graph as an OpenVINO IR (the ONNX graph of `export_edge_onnx`, converted) into the folder
    `path`, with the edge's description (`edge_metadata`) as JSON in the IR's rt_info under `METADATA_KEY`: it lives
    in the .xml, so the IR carries it wherever it is copied. Weights stay float32 (OpenVINO would halve them by
    default), so outputs and payloads match the PyTorch edge.

    Args:
        model: the ECC model.
        path: output folder, e.g. `ecc-edge_openvino_model` (holds `ecc-edge.xml` and `ecc-edge.bin`).
        imgsz: square network input size the graph is fixed to (pixels).
        opset: ONNX opset of the intermediate graph.
    """
    ov = _optional("openvino")
    folder = Path(path)
    folder.mkdir(parents=True, exist_ok=True)
    meta = edge_metadata(model, imgsz)
    with tempfile.TemporaryDirectory() as tmp:
        onnx_path = Path(tmp) / "edge.onnx"
        _trace_onnx(model, onnx_path, imgsz, opset, meta["outputs"])
        ov_model = ov.convert_model(str(onnx_path))
    ov_model.set_rt_info(json.dumps(meta), [METADATA_KEY])
    stem = folder.name.removesuffix(OPENVINO_SUFFIX) or "edge"
    ov.save_model(ov_model, str(folder / f"{stem}.xml"), compress_to_fp16=False)
    return folder


class _ExportedEdge(EdgeRuntime):
    """What the exported runtimes share: the description read back from the export, and the graph's named outputs
    turned into `EdgeOutputs`. Subclasses load the graph and implement `_infer`."""

    max_batch = 1  # the graph is traced for one frame: a batch of several streams' frames runs frame by frame

    def _describe(self, raw: str | None, path: str | Path) -> None:
        """Take the edge's description (`edge_metadata` JSON); refuse an export that ecc-yolo did not write."""
        if raw is None:
            raise NotAnEdgeExport(f"'{path}' is not an ecc-yolo edge export (no '{METADATA_KEY}' metadata)")
        meta: dict[str, Any] = json.loads(raw)
        self.meta = meta
        self.names = {int(k): v for k, v in meta["names"].items()}
        self.stride = int(meta["stride"])
        self.imgsz = int(meta["imgsz"])
        self.edge_end2end = bool(meta["edge_end2end"])
        self.outputs = list(meta["outputs"])
        self.multi_exit = "router" in self.outputs
        self.deploy = settings_from_dict(meta.get("deploy") or {"imgsz": self.imgsz, "thresholds": dict.fromkeys(
            GATE_ROUTERS, float(meta["gate_threshold"]))}, self.multi_exit)  # exports before deploy
        self.fingerprint = bytes.fromhex(meta["fingerprint"])
        self.bits = {int(k): int(v) for k, v in meta["bits"].items()}

    def _infer(self, x: np.ndarray) -> dict[str, np.ndarray]:
        """The graph's outputs (name -> array) for a float32 (B, 3, imgsz, imgsz) batch."""
        raise NotImplementedError

    def run(self, x: torch.Tensor, need_latents: bool = True) -> EdgeOutputs:
        if tuple(x.shape[2:]) != (self.imgsz, self.imgsz):
            raise ValueError(f"this export takes {self.imgsz}x{self.imgsz} inputs, got {tuple(x.shape[2:])}")
        values = self._infer(x.cpu().float().numpy())
        return EdgeOutputs(
            edge=torch.from_numpy(values["edge"]),
            gate=values["gate"],
            latents={int(k.split("_")[1]): torch.from_numpy(v) for k, v in values.items() if k.startswith("latent_")},
            router=values.get("router"),
            extension=torch.from_numpy(values["extension"]) if "extension" in values else None,
        )

    def extension(self, outputs: EdgeOutputs, index: torch.Tensor) -> torch.Tensor:
        return outputs.extension[index]


class OnnxEdge(_ExportedEdge):
    """The exported edge graph (`export_edge_onnx`), run by onnxruntime on the CPU."""

    def __init__(self, path: str | Path):
        """Load the graph and its description; refuse an ONNX file that ecc-yolo did not export."""
        ort = _optional("onnxruntime")
        self.session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        self._describe(self.session.get_modelmeta().custom_metadata_map.get(METADATA_KEY), path)

    def _infer(self, x: np.ndarray) -> dict[str, np.ndarray]:
        return dict(zip(self.outputs, self.session.run(self.outputs, {"images": x})))


class OpenVinoEdge(_ExportedEdge):
    """The exported edge IR (`export_edge_openvino`), run by OpenVINO on the CPU."""

    def __init__(self, path: str | Path):
        """Load the IR (its folder or its .xml) and its description; refuse an IR that ecc-yolo did not export."""
        ov = _optional("openvino")
        path = Path(path)
        xml = path
        if path.is_dir():
            found = sorted(path.glob("*.xml"))
            if len(found) != 1:
                raise NotAnEdgeExport(f"'{path}' is not an ecc-yolo edge export (expected one .xml OpenVINO IR "
                                      f"in it, found {len(found)})")
            xml = found[0]
        core = ov.Core()
        ov_model = core.read_model(str(xml))
        raw = ov_model.get_rt_info([METADATA_KEY]).astype(str) if ov_model.has_rt_info([METADATA_KEY]) else None
        self._describe(raw, path)
        # f32: on CPUs with bf16 units OpenVINO would otherwise compute in bf16, and payloads would drift from PyTorch
        self.compiled = core.compile_model(ov_model, "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
        self.request = self.compiled.create_infer_request()
        self._ports = {name: self.compiled.output(name) for name in self.outputs}

    def _infer(self, x: np.ndarray) -> dict[str, np.ndarray]:
        result = self.request.infer({"images": x})  # copies the outputs: the next request may reuse its buffers
        return {name: result[port] for name, port in self._ports.items()}


def load_edge(model: str | Path | ECCModel | EdgeRuntime, device: torch.device | str = "cpu") -> EdgeRuntime:
    """An edge runtime from an ECC model, an ECC checkpoint or zoo name, an exported .onnx edge, or an exported
    OpenVINO edge (its folder or its .xml); an edge runtime is returned as it is."""
    if isinstance(model, EdgeRuntime):
        return model
    if isinstance(model, ECCModel):
        return TorchEdge(model, device)
    if str(model).endswith(".onnx"):
        return OnnxEdge(model)
    if str(model).endswith(".xml") or Path(model).is_dir():
        return OpenVinoEdge(model)
    from ecc_yolo.checkpoint import load_ecc

    return TorchEdge(load_ecc(model)[0], device)
