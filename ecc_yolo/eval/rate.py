"""Rate-accuracy curve of the image route: the cloud detector on frames that went through a lossy image codec.

The benchmark's cloud route sees the original letterboxed pixels, and its image payload is billed as a quality-90
JPEG. A device that offloads frames would pick a cheaper setting if it costs (almost) no accuracy, so the image
route is a curve, not a point. Each point of the curve is one transmission setting (codec, quality, scale):

1. the frame is letterboxed to the network size (as `ecc_yolo.eval.cache.run_routes` does);
2. scale < 1: it is shrunk to `round(scale * size)` pixels a side with `cv2.INTER_AREA`;
3. it is encoded (`ecc_yolo.payload.codec.encode_image`): the payload's size in bytes is what the point bills;
4. it is decoded (JPEG by the server's own `decode_image`), and, scale < 1, enlarged back to the network size with
   `cv2.INTER_LINEAR`;
5. the full cloud detector answers the decoded frame, with the benchmark's NMS (`EVAL_NMS`), boxes in original
   image pixels: the detections are those `run_routes` records for the cloud route, on a decoded image.

mAP comes from `RouteMixEvaluator` (pycocotools), so it compares directly with the benchmark's routes, and every
point keeps its per-image detections for bootstrapping.
"""

from __future__ import annotations

import csv
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch
from ultralytics.utils import TQDM

from ecc_yolo.eval.cache import EVAL_NMS
from ecc_yolo.eval.coco_eval import RouteMixEvaluator
from ecc_yolo.eval.dataset import EvalDataset
from ecc_yolo.infer import detections, input_tensor, letterbox, route_end2end
from ecc_yolo.nn.ecc_model import ECCModel
from ecc_yolo.payload.codec import IMAGE_CODECS, image_codec_available, transmit
from ecc_yolo.routes import CLOUD

JPEG_QUALITIES = (10, 20, 30, 50, 70, 90)
SCALES = (1.0, 0.75)
CODEC_LABELS = {"jpeg": "JPEG", "webp": "WebP"}  # names in plots


def available_codecs() -> tuple[str, ...]:
    """The image codecs of `ecc_yolo.payload.codec.IMAGE_CODECS` the installed OpenCV can encode and decode."""
    return tuple(c for c in IMAGE_CODECS if image_codec_available(c))


@dataclass
class RatePoint:
    """One transmission setting of the image route and what the cloud achieves on what it receives.

    Attributes:
        codec: "jpeg" or "webp".
        quality: encoder quality, 1..100.
        scale: side of the encoded frame / side of the network input (1.0: the letterboxed frame as is).
        mean_bytes: mean payload size per offloaded frame, bytes.
        median_bytes: median payload size per offloaded frame, bytes.
        map: mAP50-95 of the cloud on the decoded frames (pycocotools).
        map50: mAP50 of the same.
        detections: per image, float32 (N, 6) [x1, y1, x2, y2, conf, cls] in original image pixels.
        bytes_per_image: per image, payload size in bytes.
    """

    codec: str
    quality: int
    scale: float
    mean_bytes: float
    median_bytes: float
    map: float
    map50: float
    detections: list[np.ndarray] = field(default_factory=list, repr=False)
    bytes_per_image: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64), repr=False)

    @property
    def key(self) -> str:
        """A name for the setting, e.g. "jpeg-q50-s0.75"."""
        return setting_key(self.codec, self.quality, self.scale)

    def row(self) -> dict[str, Any]:
        """The point without per-image arrays (for JSON and CSV)."""
        return {"codec": self.codec, "quality": int(self.quality), "scale": float(self.scale),
                "mean_bytes": float(self.mean_bytes), "median_bytes": float(self.median_bytes),
                "map": float(self.map), "map50": float(self.map50), "images": len(self.detections)}


def setting_key(codec: str, quality: int, scale: float) -> str:
    """A name for a transmission setting, e.g. "jpeg-q50-s0.75"."""
    return f"{codec}-q{int(quality)}-s{float(scale):.2f}"


@torch.no_grad()
def rate_curve(model: ECCModel, dataset: EvalDataset, imgsz: int, device: torch.device | str = "cpu",
               batch: int = 8, qualities: Sequence[int] = JPEG_QUALITIES, scales: Sequence[float] = SCALES,
               codecs: Sequence[str] | None = None, progress: bool = True) -> list[RatePoint]:
    """The cloud's rate-accuracy curve over every (codec, quality, scale) (see the module docstring).

    Each image is read and letterboxed once, encoded once per setting, and the cloud runs in batches of `batch`
    decoded frames.

    Args:
        model: the ECC model whose cloud detector answers.
        dataset: the evaluation dataset.
        imgsz: network input size, pixels (square letterbox, as the benchmark's).
        device: torch device of the cloud forward passes.
        batch: images per forward pass.
        qualities: encoder qualities, 1..100.
        scales: encoded side / network side, each in (0, 1].
        codecs: image codecs; None: `available_codecs()`.
        progress: show a progress bar.

    Returns:
        one RatePoint per (codec, quality, scale), codecs outermost, then scales, then qualities as given.
    """
    codecs = available_codecs() if codecs is None else tuple(codecs)
    unknown = [c for c in codecs if c not in IMAGE_CODECS]
    if unknown:
        raise ValueError(f"unknown image codecs {unknown} (known: {', '.join(IMAGE_CODECS)})")
    if any(not 0 < s <= 1 for s in scales):
        raise ValueError(f"scales must lie in (0, 1], got {list(scales)}")
    settings = [(c, int(q), float(s)) for c in codecs for s in scales for q in qualities]
    model = model.to(device).eval()
    end2end = route_end2end(model)[CLOUD]
    found: dict[tuple, list[np.ndarray]] = {s: [] for s in settings}
    sizes: dict[tuple, list[int]] = {s: [] for s in settings}
    starts = range(0, len(dataset), batch)
    bar = TQDM(starts, total=len(starts), desc="cloud on decoded images") if progress else starts
    for start in bar:
        originals = [cv2.imread(str(f)) for f in dataset.files[start : start + batch]]
        frames = [letterbox(im, imgsz) for im in originals]
        shapes = [im.shape[:2] for im in originals]
        for setting in settings:
            received = [transmit(frame, *setting) for frame in frames]
            sizes[setting] += [n for _, n in received]
            out = model.cloud_forward(input_tensor([im for im, _ in received], device))
            found[setting] += [d.cpu().numpy().astype(np.float32)
                               for d in detections(out, end2end, EVAL_NMS, (imgsz, imgsz), shapes)]
    evaluator = RouteMixEvaluator(dataset, {setting_key(*s): found[s] for s in settings})
    points = []
    for setting in settings:
        n_bytes = np.array(sizes[setting], dtype=np.int64)
        ap, ap50 = evaluator.route_map(setting_key(*setting))
        points.append(RatePoint(*setting, mean_bytes=float(n_bytes.mean()) if len(n_bytes) else 0.0,
                                median_bytes=float(np.median(n_bytes)) if len(n_bytes) else 0.0,
                                map=ap, map50=ap50, detections=found[setting], bytes_per_image=n_bytes))
    return points


def choose_quality(points: Sequence[RatePoint], cloud_map: float, tolerance: float = 0.01) -> RatePoint:
    """The JPEG setting an image-offloading device (ECC_I) would send by default.

    Rule: among the JPEG points at scale 1.0 (the full letterboxed frame), those whose mAP50-95 is at least
    `cloud_map - tolerance` qualify, and the one with the fewest mean bytes per frame wins (ties: the higher
    quality). When none qualifies, the JPEG scale-1.0 point with the highest mAP50-95 (ties: fewer bytes).

    Args:
        points: a rate curve (`rate_curve`).
        cloud_map: mAP50-95 of the cloud on the original pixels, on the same images.
        tolerance: mAP50-95 (absolute, 0..1) the device may give up to send fewer bytes.

    Raises:
        ValueError: when `points` has no JPEG point at scale 1.0.
    """
    candidates = [p for p in points if p.codec == "jpeg" and p.scale == 1.0]
    if not candidates:
        raise ValueError("no JPEG point at scale 1.0 to choose from")
    qualifying = [p for p in candidates if p.map >= cloud_map - tolerance]
    if qualifying:
        return min(qualifying, key=lambda p: (p.mean_bytes, -p.quality))
    return max(candidates, key=lambda p: (p.map, -p.mean_bytes))


def write_rate_csv(points: Sequence[RatePoint], path: str | Path) -> Path:
    """Write the curve's `row()`s as CSV (bytes in bytes, mAP in 0..1); returns the path."""
    path = Path(path)
    fields = list(RatePoint("jpeg", 90, 1.0, 0.0, 0.0, 0.0, 0.0).row())
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=fields)
        writer.writeheader()
        writer.writerows(p.row() for p in points)
    return path


def plot_rate_curve(points: Sequence[RatePoint], out_png: str | Path,
                    extra_points: Sequence[tuple[str, float, float]] = ()) -> Path:
    """mAP50-95 against kB per offloaded frame (1 kB = 1000 bytes): one line per (codec, scale), each point
    labelled with its quality, and labelled markers for `extra_points` given as (label, bytes per frame, mAP50-95),
    e.g. ("adapted route (features)", 2696, 0.39). Returns the PNG's path."""
    import matplotlib

    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt

    out_png = Path(out_png)
    fig, ax = plt.subplots(figsize=(7, 5), dpi=120)
    lines = sorted({(p.codec, p.scale) for p in points}, key=lambda k: (k[0], -k[1]))
    for codec, scale in lines:
        line = sorted((p for p in points if (p.codec, p.scale) == (codec, scale)), key=lambda p: p.mean_bytes)
        kb = [p.mean_bytes / 1000 for p in line]
        ax.plot(kb, [p.map for p in line], marker="o", linestyle="-" if codec == "jpeg" else "--",
                label=f"{CODEC_LABELS.get(codec, codec)}, scale {scale:g}")
        for p, x in zip(line, kb):
            ax.annotate(f"q{p.quality}", (x, p.map), textcoords="offset points", xytext=(3, 3), fontsize=7)
    markers = "s^Dv*PX"
    for i, (label, n_bytes, ap) in enumerate(extra_points):
        ax.plot([n_bytes / 1000], [ap], marker=markers[i % len(markers)], markersize=9, linestyle="none", label=label)
    ax.set_xlabel("kB per offloaded frame")
    ax.set_ylabel("mAP50-95")
    ax.set_title("Cloud detector on decoded images: rate-accuracy")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out_png)
    plt.close(fig)
    return out_png
