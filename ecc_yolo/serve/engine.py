"""The cloud's model work: validate request bodies, letterbox images, run batched forward passes, post-process.

`CloudEngine` is plain synchronous code with no web framework in it, so the FastAPI server (`server.py`) and the Ray
Serve deployment (`ray_app.py`) share it. Requests are validated in `parse_image` / `parse_features` (which raise
`RequestError` only); validated items carry a batch key, and `run(key, items)` answers a batch of items that share
one key (one forward pass), each with an answer dict or, for an item whose output is not finite, a `RequestError`.
"""

from __future__ import annotations

import dataclasses
import json
from copy import deepcopy
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Hashable

import cv2
import numpy as np
import torch

from ecc_yolo.infer import detections, input_shape_for, input_tensor, letterbox, nms_settings, route_end2end
from ecc_yolo.nn.ecc_model import ECCModel
from ecc_yolo.payload import peek_input_shape
from ecc_yolo.payload.codec import (
    FORMAT_VERSION,
    MAX_IMAGE_PIXELS,
    FeaturePayload,
    PayloadError,
    decode_features,
    decode_image,
)
from ecc_yolo.serve.protocol import (
    API_VERSION,
    FEATURES,
    IMAGE,
    SERVED_BY_KIND,
    SERVED_ROUTES,
    RequestError,
    detections_json,
)


@dataclass(frozen=True)
class ImageItem:
    """A validated image request: the letterboxed frame (BGR uint8 at the engine's input size) and the size of the
    image as received (boxes are answered in its pixels)."""

    image: np.ndarray
    image_shape: tuple[int, int]


class CloudEngine:
    """The cloud side of an ECC model: the full cloud detector for images, adapter decoders + cloud tail for
    feature payloads."""

    def __init__(
        self,
        model: ECCModel,
        imgsz: int | tuple[int, int] = 640,
        conf: float = 0.25,
        iou: float = 0.7,
        max_det: int = 300,
        classes: list[int] | None = None,
        agnostic_nms: bool = False,
        device: torch.device | str = "cpu",
        fuse: bool = True,
    ) -> None:
        """Prepare `model` for serving.

        Args:
            model: the ECC model (its fingerprint is taken before fusing, so it matches the checkpoint's).
            imgsz: network input size (pixels) images are letterboxed to; also the largest feature-payload input
                size accepted.
            conf, iou, max_det, classes, agnostic_nms: NMS settings, as in Ultralytics' predict.
            device: torch device.
            fuse: fuse Conv+BatchNorm for speed.
        """
        self.fingerprint = model.fingerprint()  # hashes every weight: once, before fusing changes the state dict
        self.model = deepcopy(model).to(device).float().eval()  # a copy: fusing must not change the caller's model
        if fuse:
            self.model.fuse(verbose=False)
        self.device = torch.device(device)
        self.stride = int(self.model.stride.max())
        self.input_shape = input_shape_for(imgsz, self.stride)
        self.names = {int(k): str(v) for k, v in self.model.names.items()}
        self.nms_args = nms_settings(conf, iou, max_det, classes, agnostic_nms)
        end2end = route_end2end(self.model)
        self.end2end = {r.kind: end2end[r.route] for r in SERVED_ROUTES}  # batch-key kind -> head's

    @classmethod
    def from_checkpoint(cls, path: str | Path, device: torch.device | str = "cpu", **kwargs: Any) -> CloudEngine:
        """Load an ECC checkpoint and serve it (keyword arguments as for `__init__`)."""
        from ecc_yolo.checkpoint import load_ecc

        model, _ = load_ecc(path)
        return cls(model, device=device, **kwargs)

    def describe(self) -> dict[str, Any]:
        """What `GET /v1/model` reports: enough for an edge client to refuse a mismatched model."""
        spec = self.model.spec
        return {
            "api_version": API_VERSION,
            "name": spec.name,
            "fingerprint": self.fingerprint.hex(),
            "names": {str(k): v for k, v in self.names.items()},
            "nc": len(self.names),
            "imgsz": list(self.input_shape),
            "stride": self.stride,
            "payload_version": FORMAT_VERSION,
            "routes": [r.route for r in SERVED_ROUTES],
            "cfg": json.loads(json.dumps(spec.to_dict(), default=str)),
        }

    # -- validation (any thread; raises RequestError only) --------------------------------------------------------
    def parse_image(self, body: bytes | bytearray, max_pixels: int = MAX_IMAGE_PIXELS) -> tuple[Hashable, ImageItem]:
        """Decode and letterbox an image body of at most `max_pixels` pixels; returns (batch key, item)."""
        try:
            image = decode_image(body, max_pixels)
        except PayloadError as e:
            raise RequestError("bad_image", str(e)) from None
        h, w = image.shape[:2]
        r = min(self.input_shape[0] / h, self.input_shape[1] / w)  # LetterBox's resize ratio
        if round(h * r) < 1 or round(w * r) < 1:
            raise RequestError("bad_image", f"image of {w}x{h} pixels is too thin to letterbox to "
                                            f"{self.input_shape[1]}x{self.input_shape[0]}")
        try:
            letterboxed = letterbox(image, self.input_shape, self.stride)
        except cv2.error as e:  # whatever else OpenCV's resize refuses is the image's fault, not the server's
            raise RequestError("bad_image", f"image of {w}x{h} pixels cannot be letterboxed: {e.msg}") from None
        return (IMAGE, self.input_shape), ImageItem(letterboxed, (h, w))

    def parse_features(self, body: bytes | bytearray, max_bytes: int) -> tuple[Hashable, FeaturePayload]:
        """Validate a feature payload against this model (format, version, checksum, fingerprint, tensor shapes);
        returns (batch key, payload)."""
        # The input size decides which tensor shapes are valid; read it first so that a payload with the wrong
        # shapes is refused before its body is inflated (the codec checks shapes before decompressing).
        declared = peek_input_shape(body)  # None: too short for a header (the codec refuses it as truncated)
        expected = None if declared is None else self._servable_shapes(declared)
        try:
            payload = decode_features(body, self.fingerprint, {} if expected is None else expected, max_bytes)
        except PayloadError as e:
            message = str(e)
            if message.startswith("model fingerprint mismatch"):
                raise RequestError("fingerprint_mismatch", message) from None
            if message.startswith("tensor shapes"):
                if expected is None and declared is not None:
                    nh, nw = declared
                    message = (f"input size {nh}x{nw} is not served: each side must be a multiple of {self.stride} "
                               f"and at most the server's imgsz {self.input_shape[0]}x{self.input_shape[1]}")
                raise RequestError("shape_mismatch", message) from None
            raise RequestError("bad_payload", message) from None
        # One record order for every payload of a batch (`received_latents` stacks tensors by position); the codec
        # accepts any order, and a crafted one must not mix layers in someone else's batch.
        payload = dataclasses.replace(payload, tensors=tuple(sorted(payload.tensors, key=lambda t: t.layer)))
        return (FEATURES, payload.input_shape), payload

    def _servable_shapes(self, input_shape: tuple[int, int]) -> dict[int, tuple[int, int, int, int]] | None:
        """Tensor shapes a payload for `input_shape` must carry; None if this server does not take that size."""
        h, w = input_shape
        ok = all(self.stride <= v <= m and v % self.stride == 0 for v, m in zip((h, w), self.input_shape))
        return self.model.payload_shapes((h, w)) if ok else None

    # -- inference (the worker thread) -----------------------------------------------------------------------------
    @torch.inference_mode()  # grad mode is per thread: set it in the thread that runs the model
    def run(self, key: Hashable, items: list[Any]) -> list[dict[str, Any] | RequestError]:
        """Answer a batch of items that share one batch key, in order: one forward pass. An item whose output is not
        finite (crafted latents within the codec's ranges can still overflow a layer) is answered a RequestError;
        the batch is independent per item, so the others are unaffected."""
        kind, input_shape = key
        route = SERVED_BY_KIND[kind].route
        if kind == IMAGE:
            out = self.model.cloud_forward(input_tensor([it.image for it in items], self.device))
            shapes = [it.image_shape for it in items]
        else:
            cuts = self.model.decode(self.model.received_latents(items))
            out = self.model.adapted_tail(cuts)  # the cloud's tail, or its adapted-route copy (cfg `tail: copy`)
            shapes = [p.image_shape for p in items]
        pred = out[0] if isinstance(out, (list, tuple)) else out
        finite = torch.isfinite(pred.float().flatten(1)).all(1).tolist()
        answers: list[dict[str, Any] | RequestError] = []
        for det, shape, ok in zip(detections(out, self.end2end[kind], self.nms_args, input_shape, shapes), shapes,
                                  finite):
            if not ok:
                answers.append(RequestError("bad_payload", "the payload's values make the model's output "
                                                           "non-finite"))
                continue
            answers.append({"route": route, "detections": detections_json(det.cpu().numpy(), self.names),
                            "image_shape": list(shape), "input_shape": list(input_shape)})
        return answers

    def run_mixed(self, keyed_items: list[tuple[Hashable, Any]]) -> list[tuple[dict[str, Any] | RequestError, int]]:
        """Answer items with any batch keys, in order, as (answer, batch size): one forward pass per key (for
        batchers that do not group)."""
        groups: dict[Hashable, list[int]] = {}
        for i, (key, _) in enumerate(keyed_items):
            groups.setdefault(key, []).append(i)
        answers: list[tuple[dict[str, Any] | RequestError, int]] = [({}, 0)] * len(keyed_items)
        for key, idx in groups.items():
            for i, answer in zip(idx, self.run(key, [keyed_items[i][1] for i in idx])):
                answers[i] = (answer, len(idx))
        return answers
