"""Cost accounting in the three currencies: computation (GFLOPs on device and in the cloud), communication (bytes
actually serialised) and model size (parameters).

FLOPs follow Ultralytics' convention (2 x the multiply-accumulates counted by thop). Bytes are the lengths of the
real encoded payloads for one reference image: Ultralytics' sample `bus.jpg`, letterboxed to `imgsz`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from ultralytics import ASSETS
from ultralytics.utils.torch_utils import get_flops

from ecc_yolo.infer import input_tensor, letterbox
from ecc_yolo.nn.ecc_model import ECCModel
from ecc_yolo.payload.codec import JPEG_QUALITY, encode_features, encode_jpeg

REFERENCE_IMAGE = Path(ASSETS) / "bus.jpg"


class _Call(nn.Module):
    """Wraps a callable so thop can profile exactly what it runs (thop profiles a module's forward)."""

    def __init__(self, owner: nn.Module, fn):
        super().__init__()
        self.owner = owner
        self.fn = fn

    def forward(self, *args):
        return self.fn(*args)


def gflops_of(owner: nn.Module, fn, *inputs) -> float:
    """GFLOPs of `fn(*inputs)` counting every submodule of `owner` it calls."""
    import thop

    was_training = owner.training
    owner.eval()
    with torch.no_grad():
        macs = thop.profile(_Call(owner, fn), inputs=inputs, verbose=False)[0]
    owner.train(was_training)
    return 2 * macs / 1e9


def count_params(modules) -> int:
    """Parameters in a module or an iterable of modules."""
    modules = [modules] if isinstance(modules, nn.Module) else list(modules)
    return sum(p.numel() for m in modules for p in m.parameters())


def letterboxed_reference(imgsz: int) -> np.ndarray:
    """The reference frame (bus.jpg) letterboxed to imgsz x imgsz, BGR uint8."""
    import cv2

    image = cv2.imread(str(REFERENCE_IMAGE))
    if image is None:
        raise FileNotFoundError(f"reference image {REFERENCE_IMAGE} missing from the ultralytics package")
    return letterbox(image, imgsz)


def ecc_costs(model: ECCModel, imgsz: int = 640) -> dict[str, Any]:
    """GFLOPs per part, payload bytes and parameter counts of an ECC model at `imgsz` (one image).

    Keys (GFLOPs unless named otherwise):
        edge_gflops, cloud_gflops, cloud_head_gflops (cloud layers before the entry), cloud_tail_gflops,
        adapter_gflops (= adapter_encoder_gflops on the device + adapter_decoder_gflops in the cloud), gate_gflops,
        extension_gflops and router_gflops (multi-exit edges only: the extension exit and the exit router),
        device_gflops (edge + encoders + gate: what the device runs for ECC_D), adapted_cloud_gflops (decoders +
        tail: what the cloud runs per offloaded frame), adapted_gflops_ratio (adapted_cloud_gflops / cloud_gflops),
        payload_bytes_features, payload_bytes_jpeg, payload_bytes_ratio, params (per part), imgsz, entry, cut.
    """
    p = next(model.parameters())
    frame = letterboxed_reference(imgsz)
    img = input_tensor([frame], p.device).to(p.dtype)
    was_training = model.training
    model.eval()
    with torch.no_grad():
        edge_out, feats = model.edge_forward(img, keep=model.device_layers)
        latents = model.encode(feats)
        received = {k: model.adapters[str(k)].transmit(v) for k, v in latents.items()}
        cuts = model.cloud_cuts(img)
        payload = model.make_payload(img, image_shape=frame.shape[:2])[0]
    encoders = [a.encoder for a in model.adapters.values()]
    decoders = [a.decoder for a in model.adapters.values()]
    costs = {
        "imgsz": imgsz,
        "entry": model.spec.entry,
        "cut": list(model.cut),
        "edge_gflops": get_flops(model.edge, imgsz),
        "cloud_gflops": get_flops(model.cloud, imgsz),
        "cloud_head_gflops": gflops_of(model.cloud, lambda x: model.cloud_cuts(x), img),
        "cloud_tail_gflops": gflops_of(model.cloud, lambda c: model.cloud_tail(c), cuts),
        "adapter_encoder_gflops": gflops_of(model.adapters, lambda f: model.encode(f), feats),
        "adapter_decoder_gflops": gflops_of(model.adapters, lambda r: model.decode(r), received),
        "gate_gflops": gflops_of(model.gate, lambda f, o: model.gate_scores(f, o), feats, edge_out),
    }
    if model.extension is not None:  # multi-exit edge: the extension exit and the router run on the device
        costs["extension_gflops"] = gflops_of(model.extension, lambda f: model.extension_forward(f), feats)
        costs["router_gflops"] = gflops_of(model.router, lambda f, o: model.exit_logits(f, o), feats, edge_out)
    costs["adapter_gflops"] = costs["adapter_encoder_gflops"] + costs["adapter_decoder_gflops"]
    costs["device_gflops"] = costs["edge_gflops"] + costs["adapter_encoder_gflops"] + costs["gate_gflops"]
    costs["adapted_cloud_gflops"] = costs["adapter_decoder_gflops"] + costs["cloud_tail_gflops"]
    costs["adapted_gflops_ratio"] = costs["adapted_cloud_gflops"] / costs["cloud_gflops"]
    costs["payload_bytes_features"] = len(encode_features(payload))
    costs["payload_bytes_jpeg"] = len(encode_jpeg(frame, JPEG_QUALITY))
    costs["jpeg_quality"] = JPEG_QUALITY  # what the device sends (ecc_yolo.payload.codec.JPEG_QUALITY)
    costs["payload_bytes_ratio"] = costs["payload_bytes_features"] / costs["payload_bytes_jpeg"]
    costs["params"] = {
        "edge": count_params(model.edge),
        "cloud": count_params(model.cloud),
        "cloud_tail": count_params(model.cloud.model[model.spec.entry :]),
        "adapted_tail_copy": count_params(model.adapted_cloud.model[model.spec.entry :]) if model.adapted_cloud else 0,
        "adapter_encoders": count_params(encoders),
        "adapter_decoders": count_params(decoders),
        "gate": count_params(model.gate),
        "extension": count_params(model.extension) if model.extension is not None else 0,
        "router": count_params(model.router) if model.router is not None else 0,
    }
    costs["payload_shapes"] = {str(t.layer): [*t.shape, t.bits] for t in payload.tensors}
    model.train(was_training)
    del latents
    return {k: round(v, 4) if isinstance(v, float) else v for k, v in costs.items()}


def format_costs(name: str, costs: dict[str, Any]) -> str:
    """Human-readable cost table."""
    rows = [
        ("edge (device)", costs["edge_gflops"], costs["params"]["edge"]),
        ("adapter encoders (device)", costs["adapter_encoder_gflops"], costs["params"]["adapter_encoders"]),
        ("gate (device)", costs["gate_gflops"], costs["params"]["gate"]),
        ("adapter decoders (cloud)", costs["adapter_decoder_gflops"], costs["params"]["adapter_decoders"]),
        (f"cloud tail from layer {costs['entry']} (cloud)", costs["cloud_tail_gflops"], costs["params"]["cloud_tail"]),
        ("full cloud (cloud, ECC_I)", costs["cloud_gflops"], costs["params"]["cloud"]),
    ]
    lines = [f"ECC {name} at imgsz={costs['imgsz']}, cut tensors {costs['cut']}", f"{'part':<34}{'GFLOPs':>10}{'params':>14}"]
    lines += [f"{n:<34}{g:>10.3f}{p:>14,}" for n, g, p in rows]
    lines.append(
        f"adapted route in the cloud: {costs['adapted_cloud_gflops']:.2f} GFLOPs = "
        f"{costs['adapted_gflops_ratio']:.1%} of the full cloud"
    )
    lines.append(
        f"payload of the reference frame: features {costs['payload_bytes_features']:,} B vs JPEG(q{costs['jpeg_quality']}) "
        f"{costs['payload_bytes_jpeg']:,} B ({costs['payload_bytes_ratio']:.1%})"
    )
    return "\n".join(lines)
