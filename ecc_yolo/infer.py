"""Per-route inference plumbing: network input from frames, each route's head setting, NMS and boxes in frame pixels.

Whoever runs an ECC model on frames (the predictor, the training-time validator, the benchmark's cache, the cloud
server and the edge client) prepares inputs and reads outputs with these, so that a route answers a frame the same
way everywhere:
- `letterbox`: a frame -> the network input's frame, the one letterbox of the device, the server and the costs;
- `input_tensor`: letterboxed BGR frames -> the (B, 3, H, W) RGB float input Ultralytics' predictor feeds;
- `route_end2end`: whether each route's head is end-to-end (NMS-free), which NMS must be told;
- `VALIDATION_NMS` / `nms_settings`: the NMS of validation and benchmarks, and that of predict-style arguments;
- `detections`: one route's head output -> per-frame (N, 6) detections in each original frame's pixels.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from ultralytics.data.augment import LetterBox
from ultralytics.utils import nms, ops

from ecc_yolo.routes import ADAPTED, CLOUD, EDGE, EXTENSION

VALIDATION_NMS = {"conf_thres": 0.001, "iou_thres": 0.7, "max_det": 300}  # Ultralytics' validation settings


def letterbox(image: np.ndarray, shape: int | tuple[int, int], stride: int = 32) -> np.ndarray:
    """A BGR uint8 frame resized and centred on a gray canvas of `shape` ((h, w) pixels, or a side): Ultralytics'
    LetterBox, always to the full shape (not predict's minimal rectangle), so that the frames of any stream and any
    client batch together on the device and on the server."""
    shape = (shape, shape) if isinstance(shape, int) else tuple(shape)
    return LetterBox(shape, auto=False, stride=stride)(image=image)


def input_tensor(images: list[np.ndarray], device: torch.device | str = "cpu") -> torch.Tensor:
    """Letterboxed BGR uint8 HWC frames of one size -> (B, 3, H, W) contiguous RGB float32 in 0..1, as Ultralytics'
    predictor prepares them."""
    x = np.ascontiguousarray(np.stack(images)[..., ::-1].transpose(0, 3, 1, 2))
    return torch.from_numpy(x).to(device).float() / 255


def route_end2end(model: Any) -> dict[str, bool]:
    """Route -> whether the head that answers it is end-to-end (its output needs `end2end=True` in NMS). The adapted
    route ends in the cloud's head (or its `tail: copy`); the extension exit's head is never end-to-end."""
    adapted_tail = getattr(model, "adapted_cloud", None) or model.cloud
    return {EDGE: bool(getattr(model.edge, "end2end", False)), CLOUD: bool(getattr(model.cloud, "end2end", False)),
            ADAPTED: bool(getattr(adapted_tail, "end2end", False)), EXTENSION: False}


def nms_settings(conf: float, iou: float, max_det: int, classes: list[int] | None = None,
                 agnostic: bool = False) -> dict[str, Any]:
    """Keyword arguments of Ultralytics' `non_max_suppression` for predict-style arguments (conf, iou in 0..1)."""
    return {"conf_thres": conf, "iou_thres": iou, "classes": classes, "agnostic": agnostic, "max_det": max_det}


def detections(output: Any, end2end: bool, nms_args: dict[str, Any], input_shape: tuple[int, int],
               image_shapes: list[tuple[int, int]], ratio_pads: list | None = None) -> list[torch.Tensor]:
    """NMS of one route's head output for a batch, boxes scaled from the letterboxed input to each original frame.

    Args:
        output: the head's output for the batch.
        end2end: whether that head is end-to-end (`route_end2end`).
        nms_args: `VALIDATION_NMS` or `nms_settings(...)`.
        input_shape: (h, w) of the network input, pixels.
        image_shapes: (h, w) of each original frame, pixels.
        ratio_pads: per frame, the letterbox's ((gain_h, gain_w), (pad_w, pad_h)) when it is known (an Ultralytics
            dataloader's `ratio_pad`); None: computed from the shapes, as for a centred letterbox.

    Returns:
        per frame, float (N, 6) [x1, y1, x2, y2, conf, cls] in its own pixels.
    """
    out = []
    pads = ratio_pads if ratio_pads is not None else [None] * len(image_shapes)
    for det, shape, pad in zip(nms.non_max_suppression(output, **nms_args, end2end=end2end), image_shapes, pads):
        det = det[:, :6].float()
        det[:, :4] = ops.scale_boxes(tuple(input_shape), det[:, :4], tuple(shape), ratio_pad=pad)
        out.append(det)
    return out


def input_shape_for(imgsz: int | tuple[int, int] | list[int], stride: int) -> tuple[int, int]:
    """(h, w) network input size from an `imgsz` argument; must be multiples of `stride`.

    Raises:
        ValueError: not a positive multiple of the stride.
    """
    sides = [imgsz] if isinstance(imgsz, int) else list(imgsz)
    h, w = (sides * 2)[:2]
    if len(sides) > 2 or not all(isinstance(v, int) and v >= stride and v % stride == 0 for v in (h, w)):
        raise ValueError(f"imgsz must be a multiple of the model stride {stride}, got {imgsz!r}")
    return int(h), int(w)
