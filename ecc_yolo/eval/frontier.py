"""One design point of the adapted route on the rate-accuracy-compute frontier (docs/BENCHMARKS.md, section 5i).

A design point is an ECC model whose adapted route was trained with one choice of cut (`entry`), bottleneck widths
and bits. `design_point` measures it on one split the way a reviewer compares it with sending the image: the adapted
route's mAP50-95 with a bootstrap interval, paired against the cloud on the frame's JPEG, the bytes its feature
payload takes per offloaded frame (for every feature coder), and the GFLOPs one frame answered by the route costs
end to end (edge and encoders on the device, decoders and tail in the cloud), as a share of the full cloud's.

    from ecc_yolo.eval.frontier import design_point
    point = design_point(model, "runs/zoo/ecc-synth2-q-n-160/test/data.yaml", "runs/frontier/eval/bits2", imgsz=160)
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from ultralytics.utils.torch_utils import select_device

from ecc_yolo.eval.cache import cache_meta, load_cached, run_routes
from ecc_yolo.eval.coco_eval import RouteMixEvaluator
from ecc_yolo.eval.dataset import load_dataset
from ecc_yolo.eval.stats import DEFAULT_RESAMPLES, Bootstrap
from ecc_yolo.nn.ecc_model import ECCModel
from ecc_yolo.routes import ADAPTED, CLOUD, CLOUD_JPEG, EDGE

POINT_ROUTES = (EDGE, ADAPTED, CLOUD, CLOUD_JPEG)  # what a design point is compared with


def design_of(model: ECCModel) -> dict[str, Any]:
    """The adapted route's design: cut (entry and cut set), per cut tensor the bottleneck channels sent and bits."""
    return {
        "entry": model.spec.entry,
        "cut": list(model.cut),
        "bottleneck": [model.adapters[str(layer)].latent_channels for layer in model.cut],
        "bits": [model.adapters[str(layer)].bits for layer in model.cut],
    }


def design_point(model: ECCModel, data: str | Path, out: str | Path, imgsz: int, batch: int = 32,
                 device: str = "cpu", bootstrap: int = DEFAULT_RESAMPLES, seed: int = 0,
                 progress: bool = True) -> dict[str, Any]:
    """Measure one design point on `data`'s evaluation split (see the module docstring); the routes' outputs are
    cached in `out` (a re-run with the same model, data and size only re-scores them)."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    dataset = load_dataset(data, model.names)
    cache = load_cached(out, cache_meta(model, dataset, imgsz))
    if cache is None:
        cache = run_routes(model, dataset, imgsz, batch, select_device(device, verbose=False), progress)
        cache.save(out)
    evaluator = RouteMixEvaluator(dataset, {r: cache.detections[r] for r in POINT_ROUTES})
    boot = Bootstrap(len(dataset), bootstrap, seed)
    counts = np.vstack([np.ones(len(dataset), dtype=np.int64), boot.counts])
    samples = {r: evaluator.resampled_maps(np.full(len(dataset), evaluator.routes.index(r)), counts)[:, 0]
               for r in POINT_ROUTES}

    def estimate(values: np.ndarray) -> dict[str, Any]:  # row 0: every image; the rest: resamples
        return boot.estimate(values[0], values[1:]).as_dict()

    c = cache.costs
    device_gflops = c["edge_gflops"] + c["adapter_encoder_gflops"]
    return {
        "design": design_of(model),
        "images": len(dataset),
        "map": {r: estimate(samples[r]) for r in POINT_ROUTES},
        "adapted_minus_cloud_jpeg": estimate(samples[ADAPTED] - samples[CLOUD_JPEG]),
        "adapted_share_of_cloud": estimate(samples[ADAPTED] / np.maximum(samples[CLOUD], 1e-12)),
        "feature_bytes": {"mean": float(np.mean(cache.feature_bytes)),
                          "median": float(np.median(cache.feature_bytes))},
        "jpeg_bytes": {"mean": float(np.mean(cache.jpeg_bytes)), "quality": cache.meta["jpeg_quality"]},
        "gflops": {
            "device": round(device_gflops, 4),  # edge + adapter encoders
            "cloud": round(c["adapted_cloud_gflops"], 4),  # decoders + tail
            "end_to_end": round(device_gflops + c["adapted_cloud_gflops"], 4),
            "full_cloud": c["cloud_gflops"],
            "end_to_end_share_of_cloud": round((device_gflops + c["adapted_cloud_gflops"]) / c["cloud_gflops"], 4),
        },
        "bootstrap": {"resamples": bootstrap, "seed": seed, "level": 0.95},
    }

