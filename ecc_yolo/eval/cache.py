"""Run every route of an ECC model once over an evaluation dataset and keep what evaluation needs.

Per image: the detections of the edge, the adapted route and the full cloud (and the extension exit of a multi-exit
edge), in original image pixels, the gate's predicted gains (and the exit router's logits), and the exact sizes of
the two payloads the device could send (the feature payload, encoded with the real codec, and the letterboxed frame's
JPEG at `ecc_yolo.payload.codec.JPEG_QUALITY`), and the cloud's detections on that JPEG once decoded (route `cloud_jpeg`:
what an offloaded image really gets). Saved to `cache.npz` + `cache.json` in the run folder; sweeping routers and
thresholds afterwards reads only the cache.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch
from ultralytics.utils import LOGGER, TQDM

from ecc_yolo.costs import ecc_costs
from ecc_yolo.eval.dataset import EvalDataset
from ecc_yolo.infer import VALIDATION_NMS, detections, input_tensor, letterbox, route_end2end
from ecc_yolo.nn.ecc_model import ECCModel
from ecc_yolo.payload.codec import CODERS, JPEG_QUALITY, encode_features, transmit
from ecc_yolo.routes import ADAPTED, CLOUD, CLOUD_JPEG, EDGE, EXTENSION

EVAL_NMS = VALIDATION_NMS  # what the cache records it was made with
CACHE_VERSION = 4  # 4: payload format 2 (float16 scales, range coder) changes feature_bytes


@dataclass
class RouteCache:
    """Per-image outputs of every route, and the model's costs.

    Attributes:
        detections: route -> list (one per image) of (N, 6) float32 [x1, y1, x2, y2, conf, cls] in image pixels.
        gate: (I, 2) predicted gains (adapted, cloud).
        router: (I, 3) exit logits (main, extension, cloud) of a multi-exit edge, else None.
        feature_bytes: (I,) size of each image's feature payload (the smallest body codec, as the device sends it).
        coder_bytes: body codec name (`ecc_yolo.payload.codec.CODERS`) -> (I,) payload size with that codec.
        jpeg_bytes: (I,) size of each image's letterboxed JPEG.
        costs: `ecc_costs` of the model at the evaluation size.
        meta: model fingerprint, dataset fingerprint, imgsz, NMS settings.
    """

    detections: dict[str, list[np.ndarray]]
    gate: np.ndarray
    feature_bytes: np.ndarray
    jpeg_bytes: np.ndarray
    costs: dict[str, Any]
    meta: dict[str, Any]
    router: np.ndarray | None = None
    coder_bytes: dict[str, np.ndarray] | None = None

    def save(self, folder: Path) -> None:
        """Write cache.npz and cache.json into `folder`."""
        arrays = {"gate": self.gate, "feature_bytes": self.feature_bytes, "jpeg_bytes": self.jpeg_bytes}
        if self.router is not None:
            arrays["router"] = self.router
        for coder, sizes in (self.coder_bytes or {}).items():
            arrays[f"coder_bytes_{coder}"] = sizes
        for route, dets in self.detections.items():
            arrays[f"{route}_counts"] = np.array([len(d) for d in dets], dtype=np.int64)
            arrays[f"{route}_dets"] = np.concatenate(dets) if dets else np.zeros((0, 6), np.float32)
        np.savez_compressed(folder / "cache.npz", **arrays)
        info = {"costs": self.costs, "meta": self.meta, "routes": list(self.detections)}
        (folder / "cache.json").write_text(json.dumps(info, indent=1))

    @classmethod
    def load(cls, folder: Path) -> RouteCache:
        """Read a cache written by `save`."""
        info = json.loads((folder / "cache.json").read_text())
        with np.load(folder / "cache.npz") as z:
            detections = {}
            for route in info["routes"]:
                counts, dets = z[f"{route}_counts"], z[f"{route}_dets"]
                detections[route] = np.split(dets, np.cumsum(counts)[:-1]) if len(counts) else []
            router = z["router"] if "router" in z else None
            coder_bytes = {k[len("coder_bytes_"):]: z[k] for k in z.files if k.startswith("coder_bytes_")} or None
            return cls(detections, z["gate"], z["feature_bytes"], z["jpeg_bytes"], info["costs"], info["meta"], router,
                       coder_bytes)


def cache_meta(model: ECCModel, dataset: EvalDataset, imgsz: int) -> dict[str, Any]:
    """What a cache must match to be reused."""
    return {
        "version": CACHE_VERSION,
        "model": model.fingerprint().hex(),
        "dataset": dataset.fingerprint(),
        "images": len(dataset),
        "imgsz": imgsz,
        "nms": EVAL_NMS,
        "jpeg_quality": JPEG_QUALITY,
    }


def load_cached(folder: Path, meta: dict[str, Any]) -> RouteCache | None:
    """The cache in `folder` if it was made for exactly this model, dataset and settings."""
    if not (folder / "cache.json").is_file() or not (folder / "cache.npz").is_file():
        return None
    try:
        cache = RouteCache.load(folder)
    except (OSError, ValueError, KeyError):
        return None
    return cache if cache.meta == meta else None


def cached_routes(model: ECCModel, dataset: EvalDataset, imgsz: int, batch: int, device: torch.device,
                  folder: str | Path, progress: bool = True) -> RouteCache:
    """Every route's outputs on `dataset`: the cache in `folder` when it was made for exactly this model, dataset and
    settings (`load_cached`), else `run_routes`, saved there for the next run."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    cache = load_cached(folder, cache_meta(model, dataset, imgsz))
    if cache is not None:
        LOGGER.info(f"Reusing the cached model outputs in {folder} (same model, data and imgsz)")
        return cache
    cache = run_routes(model, dataset, imgsz, batch, device, progress)
    cache.save(folder)
    return cache


@torch.no_grad()
def run_routes(model: ECCModel, dataset: EvalDataset, imgsz: int, batch: int, device: torch.device,
               progress: bool = True) -> RouteCache:
    """Run every route over the dataset once (see the module docstring)."""
    model = model.to(device).eval()
    fingerprint = model.fingerprint()
    end2end = route_end2end(model)
    keep = model.device_layers
    found: dict[str, list[np.ndarray]] = {r: [] for r in (*model.routes, CLOUD_JPEG)}
    gate, router, jpeg_bytes = [], [], []
    coder_bytes: dict[str, list[int]] = {coder: [] for coder in CODERS}
    starts = range(0, len(dataset), batch)
    bar = TQDM(starts, total=len(starts), desc="running edge, adapted and cloud routes") if progress else starts
    for start in bar:
        files = dataset.files[start : start + batch]
        originals = [cv2.imread(str(f)) for f in files]
        frames = [letterbox(im, imgsz) for im in originals]
        x = input_tensor(frames, device)
        edge_out, feats = model.edge_forward(x, keep=keep)
        sent = [transmit(frame, "jpeg", JPEG_QUALITY, 1.0) for frame in frames]  # (decoded frame, bytes)
        outputs = {EDGE: edge_out, ADAPTED: model.adapted_tail(model.adapt(feats)), CLOUD: model.cloud_forward(x),
                   CLOUD_JPEG: model.cloud_forward(input_tensor([decoded for decoded, _ in sent], device))}
        gate.append(model.gate_scores(feats, edge_out).float().cpu().numpy())
        if model.extension is not None:
            outputs[EXTENSION] = model.extension_forward(feats)
            router.append(model.exit_logits(feats, edge_out).float().cpu().numpy())
        payloads = model.payloads_from_features(feats, (0, 0), (imgsz, imgsz), fingerprint)
        shapes = [im.shape[:2] for im in originals]
        for route, out in outputs.items():
            head = end2end[CLOUD if route == CLOUD_JPEG else route]
            found[route] += [d.cpu().numpy() for d in detections(out, head, EVAL_NMS, (imgsz, imgsz), shapes)]
        for payload, (_, n_bytes), im in zip(payloads, sent, originals):
            for coder, sizes in coder_bytes.items():
                sizes.append(len(encode_features(replace(payload, image_shape=tuple(im.shape[:2])), coder)))
            jpeg_bytes.append(n_bytes)
    return RouteCache(
        detections=found,
        gate=np.concatenate(gate) if gate else np.zeros((0, 2), np.float32),
        feature_bytes=np.min([sizes for sizes in coder_bytes.values()], axis=0).astype(np.int64).reshape(-1),
        jpeg_bytes=np.array(jpeg_bytes, dtype=np.int64),
        costs=ecc_costs(model, imgsz),
        meta=cache_meta(model, dataset, imgsz),
        router=np.concatenate(router) if router else None,
        coder_bytes={coder: np.array(sizes, dtype=np.int64) for coder, sizes in coder_bytes.items()},
    )
