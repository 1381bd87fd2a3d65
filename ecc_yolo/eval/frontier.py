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

from ecc_yolo.eval.cache import cached_routes
from ecc_yolo.eval.coco_eval import RouteMixEvaluator
from ecc_yolo.eval.dataset import load_dataset
from ecc_yolo.eval.routers import RouterSweep
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
    dataset = load_dataset(data, model.names)
    cache = cached_routes(model, dataset, imgsz, batch, select_device(device, verbose=False), out, progress)
    evaluator = RouteMixEvaluator(dataset, {r: cache.detections[r] for r in POINT_ROUTES})
    boot = Bootstrap(len(dataset), bootstrap, seed)
    sweep = RouterSweep(cache, evaluator)
    samples = {r: sweep.route_samples(r, boot) for r in POINT_ROUTES}  # row 0: every image; the rest: resamples

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
                          "median": float(np.median(cache.feature_bytes)),
                          "by_coder": {k: float(np.mean(v)) for k, v in (cache.coder_bytes or {}).items()}},
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



def image_envelope(rate_rows: list[dict[str, Any]], n_bytes: float, codecs: tuple[str, ...] = ("jpeg",)
                   ) -> dict[str, Any] | None:
    """The best image point (highest mAP50-95) of `codecs` at any quality and scale that sends at most `n_bytes` per
    frame (mean), from the benchmark's rate curve rows; None when every such point sends more."""
    fits = [r for r in rate_rows if r["codec"] in codecs and float(r["mean_bytes"]) <= n_bytes]
    return max(fits, key=lambda r: float(r["map"])) if fits else None


def frontier_rows(points: list[dict[str, Any]], rate_rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per design point (test split): its figures, the image points it is compared with at its own bytes,
    and issue 25's goal: bytes <= half the q50 JPEG's, end-to-end GFLOPs <= 60% of the cloud's, and mAP >= the JPEG
    at equal bytes: the best JPEG point that sends at most as many bytes, or, when every measured JPEG sends more,
    the smallest one (an upper bound of a JPEG at these bytes: the best mAP at <= bytes never rises as bytes fall)."""
    q50 = next(float(r["mean_bytes"]) for r in rate_rows
               if r["codec"] == "jpeg" and int(r["quality"]) == 50 and float(r["scale"]) == 1.0)
    rows = []
    for p in points:
        t = p["test"]
        n_bytes, ap = t["feature_bytes"]["mean"], t["map"]["adapted"]["value"]
        jpeg, any_image = image_envelope(rate_rows, n_bytes), image_envelope(rate_rows, n_bytes, ("jpeg", "webp"))
        smallest = min((r for r in rate_rows if r["codec"] == "jpeg"), key=lambda r: float(r["mean_bytes"]))
        compared = jpeg if jpeg is not None else smallest
        rows.append({
            "name": p["name"], **t["design"], "epochs": p.get("epochs"),
            "map": t["map"]["adapted"], "map_val": p["val"]["map"]["adapted"]["value"],
            "bytes": n_bytes, "bytes_by_coder": t["feature_bytes"]["by_coder"], "gflops": t["gflops"],
            "best_jpeg_at_these_bytes": jpeg, "best_image_at_these_bytes": any_image,
            "jpeg_compared": {**compared, "bound": jpeg is None},  # bound: the smallest JPEG, which sends more
            "goal": {"bytes_at_most_half_q50_jpeg": n_bytes <= 0.5 * q50,
                     "gflops_at_most_60pct_cloud": t["gflops"]["end_to_end_share_of_cloud"] <= 0.6,
                     "map_at_least_jpeg_at_equal_bytes": ap >= float(compared["map"])},
        })
        rows[-1]["goal"]["met"] = all(rows[-1]["goal"].values())
    return rows


def plot_frontier(rows: list[dict[str, Any]], rate_rows: list[dict[str, Any]], out_png: str | Path,
                  cloud_map: float | None = None) -> Path:
    """Two panels: mAP50-95 against bytes per offloaded frame (design points with their 95% intervals, the cloud
    on JPEG and WebP at every quality and scale), and against end-to-end GFLOPs as a share of the full cloud."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    fig, (ax, bx) = plt.subplots(1, 2, figsize=(13, 5), dpi=120)
    for codec, scale in sorted({(r["codec"], float(r["scale"])) for r in rate_rows}):
        line = sorted((r for r in rate_rows if (r["codec"], float(r["scale"])) == (codec, scale)),
                      key=lambda r: float(r["mean_bytes"]))
        ax.plot([float(r["mean_bytes"]) for r in line], [float(r["map"]) for r in line], marker=".",
                linestyle="-" if codec == "jpeg" else "--", alpha=0.7, label=f"cloud on {codec.upper()}, scale {scale:g}")
    for r in rows:
        lo, hi = r["map"]["ci"] or (r["map"]["value"],) * 2
        err = [[r["map"]["value"] - lo], [hi - r["map"]["value"]]]
        for axis, x in ((ax, r["bytes"]), (bx, r["gflops"]["end_to_end_share_of_cloud"])):
            axis.errorbar([x], [r["map"]["value"]], yerr=err, marker="s", capsize=3, linestyle="none")
            axis.annotate(r["name"], (x, r["map"]["value"]), textcoords="offset points", xytext=(4, 4), fontsize=7)
    if cloud_map is not None:
        bx.axhline(cloud_map, color="gray", linestyle=":", label="full cloud (own pixels)")
        bx.axvline(0.6, color="red", linestyle=":", label="60% of the cloud's GFLOPs")
        bx.legend(fontsize=8)
    ax.set_xscale("log")
    ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())  # labels at 100, 1000, ... only
    ax.set_xticks([300, 500, 1000, 2000, 3000, 5000], ["300", "500", "1,000", "2,000", "3,000", "5,000"])
    ax.set_xlabel("bytes per offloaded frame (mean, log scale)")
    bx.set_xlabel("GFLOPs per frame end to end (edge + encoders + decoders + tail) / full cloud")
    for axis in (ax, bx):
        axis.set_ylabel("mAP50-95 (test split)")
        axis.grid(alpha=0.3)
    ax.legend(fontsize=7)
    ax.set_title("Adapted route design points vs the cloud on images")
    bx.set_title("Adapted route design points: compute")
    fig.tight_layout()
    fig.savefig(out_png)
    plt.close(fig)
    return Path(out_png)
