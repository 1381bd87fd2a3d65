"""The ECC benchmark: every route once, then every router's mAP-versus-offload curve, against the oracle.

    from ecc_yolo.eval.benchmark import evaluate
    summary = evaluate(model, "datasets/synth/data.yaml", "runs/ecc/val", imgsz=256)

Writes into the run folder: cache.npz/cache.json (the models' outputs; a second evaluation of the same model,
data and size reuses them and only re-sweeps), curve.csv, summary.json, summary.md and the PNG plots.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from ultralytics.utils import LOGGER
from ultralytics.utils.torch_utils import select_device

from ecc_yolo.eval.cache import cache_meta, load_cached, run_routes
from ecc_yolo.eval.coco_eval import RouteMixEvaluator
from ecc_yolo.eval.dataset import load_dataset
from ecc_yolo.eval.report import plot_all, write_curve_csv, write_summary
from ecc_yolo.eval.routers import RATIOS, RouterSweep, auc, first_reaching
from ecc_yolo.nn.ecc_model import ECCModel
from ecc_yolo.policy import decide
from ecc_yolo.routes import CLOUD, EXIT_ROUTES, EXITS, ROUTE_CODES

# The method's headline goals (issue 16), checked in `summary["goals"]`:
GOAL_ADAPTED_GFLOPS = 0.60  # 1. the adapted route should cost <= this share of the cloud's GFLOPs ...
GOAL_ADAPTED_MAP = 0.95  # ... with >= this share of the cloud's mAP50-95
GOAL_OFFLOAD = 0.5  # 2. ECC_D or ECC_D+ should reach the target (99% of the cloud) at an offload ratio <= this
GOAL_AUC = 0.90  # 3. a router's area under the curve >= this share of its oracle's ...
GOAL_GAIN_RATIO = 0.2  # ... and at this offload ratio ...
GOAL_GAIN_SHARE = 0.70  # ... >= this share of the cloud's mAP gain over the edge
GOAL_BYTES = 0.10  # 4. ECC_D's mean bytes per frame at its operating point <= this share of every frame's JPEG
CONFUSION_RATIO = 0.3  # the three-exit router's exits against generated difficulty are also shown at this offload
GOAL_THREE_EXIT = 0.80  # 5. the three-exit router >= ECC_D's mAP on this share of the sweep, using the extension


def evaluate(
    model: ECCModel,
    data: str | Path,
    out: str | Path,
    imgsz: int = 640,
    batch: int = 8,
    device: str = "",
    max_images: int | None = None,
    target: float = 0.99,
    seeds: int = 5,
    plots: bool = True,
    progress: bool = True,
) -> dict[str, Any]:
    """Evaluate an ECC model on a data YAML or COCO layout; returns the summary (also written to `out`).

    Args:
        model: the ECC model.
        data: Ultralytics data YAML (its val split) or a COCO layout folder (val2017/ + annotations/).
        out: run folder.
        imgsz: square network input size (pixels).
        batch: images per forward pass.
        device: Ultralytics device string ("", "cpu", "0").
        max_images: evaluate the first N images only.
        target: share of the cloud's mAP50-95 a router must reach (`*_offload_at_99pct_cloud` for 0.99).
        seeds: random orders averaged for the random routers.
        plots: write the PNG plots.
        progress: show progress bars.
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    dataset = load_dataset(data, model.names, max_images)
    cache = load_cached(out, cache_meta(model, dataset, imgsz))
    if cache is None:
        cache = run_routes(model, dataset, imgsz, batch, select_device(device, verbose=False), progress)
        cache.save(out)
    else:
        LOGGER.info(f"Reusing the cached model outputs in {out} (same model, data and imgsz)")
    LOGGER.info("Sweeping routers over offload ratios (pycocotools mAP)...")
    evaluator = RouteMixEvaluator(dataset, cache.detections)
    sweep = RouterSweep(cache, evaluator, seeds=seeds)
    curves = sweep.all_curves(RATIOS)
    summary = summarise(curves, cache, evaluator, dataset, target)
    if "MEANet" in curves:
        summary["meanet"] = multi_exit_summary(curves, sweep, dataset)
    summary["goals"] = goals(summary, target)
    summary.update({"model": model.spec.name, "data": str(data), "imgsz": imgsz})
    write_curve_csv(curves, out / "curve.csv")
    write_summary(summary, out)
    if plots:
        plot_all(curves, summary, out)
    LOGGER.info(f"Benchmark written to {out}")
    return summary


def summarise(curves: dict, cache, evaluator: RouteMixEvaluator, dataset, target: float) -> dict[str, Any]:
    """The headline numbers and the goals (see the module constants)."""
    route = {name: evaluator.route_map(name) for name in evaluator.routes}
    cloud = route["cloud"][0]
    mean_jpeg = float(np.mean(cache.jpeg_bytes))
    summary: dict[str, Any] = {"images": len(dataset)}
    for name, (ap, ap50) in route.items():
        summary[f"{name}_map"], summary[f"{name}_map50"] = ap, ap50
    summary["adapted_gflops_ratio"] = cache.costs["adapted_gflops_ratio"]
    summary["mean_jpeg_bytes"] = mean_jpeg
    summary["mean_feature_bytes"] = float(np.mean(cache.feature_bytes))
    summary["target"] = target
    for key, router, oracle in (("ecc_d", "ECC_D", "oracle_D"), ("ecc_d_plus", "ECC_D+", "oracle_D+"),
                                ("ecc_i", "ECC_I", "oracle_I")):
        points = curves[router]
        reached = first_reaching(points, target * cloud)
        operating = reached or max(points, key=lambda p: p.map)
        summary[f"{key}_auc_vs_oracle"] = auc(points) / max(auc(curves[oracle]), 1e-12)
        summary[f"{key}_offload_at_99pct_cloud"] = reached.ratio if reached else None
        summary[f"{key}_bytes_ratio"] = operating.bytes / mean_jpeg
        summary[f"{key}_operating_point"] = operating.row()
        at = min(points, key=lambda p: abs(p.ratio - GOAL_GAIN_RATIO))
        summary[f"{key}_gain_share_at_{GOAL_GAIN_RATIO:g}"] = (
            (at.map - route["edge"][0]) / max(cloud - route["edge"][0], 1e-12))
    summary["random_d_auc_vs_oracle"] = auc(curves["random_D"]) / max(auc(curves["oracle_D"]), 1e-12)
    summary["oracle_never_below"] = all(
        curves[oracle][i].map >= curves[router][i].map - 1e-9
        for router, oracle in (("ECC_D", "oracle_D"), ("ECC_I", "oracle_I"), ("ECC_D+", "oracle_D+"),
                               ("random_D", "oracle_D"), ("random_I", "oracle_I"))
        for i in range(len(curves[router]))
    )
    summary["per_difficulty"] = per_difficulty(evaluator, dataset)
    return summary


def goals(summary: dict[str, Any], target: float) -> dict[str, bool]:
    """The headline goals (module constants), each met or not, by a name that states it."""
    reaches = [summary[f"{k}_offload_at_99pct_cloud"] for k in ("ecc_d", "ecc_d_plus")]
    gain_key = f"_gain_share_at_{GOAL_GAIN_RATIO:g}"
    routers_ok = [k for k in ("ecc_d", "ecc_d_plus", "ecc_i")
                  if summary[f"{k}_auc_vs_oracle"] >= GOAL_AUC and summary[k + gain_key] >= GOAL_GAIN_SHARE]
    out = {
        f"1. adapted route: >= {GOAL_ADAPTED_MAP:.0%} of cloud mAP at <= {GOAL_ADAPTED_GFLOPS:.0%} of its GFLOPs":
            summary["adapted_gflops_ratio"] <= GOAL_ADAPTED_GFLOPS
            and summary["adapted_map"] >= GOAL_ADAPTED_MAP * summary["cloud_map"],
        f"2. ECC_D or ECC_D+: {target:.0%} of cloud mAP at offload <= {GOAL_OFFLOAD}":
            any(r is not None and r <= GOAL_OFFLOAD for r in reaches),
        f"3. a router: AUC >= {GOAL_AUC:.0%} of its oracle and >= {GOAL_GAIN_SHARE:.0%} of the cloud's gain at "
        f"{GOAL_GAIN_RATIO:.0%} offload": bool(routers_ok),
        f"4. ECC_D: bytes/frame at its operating point <= {GOAL_BYTES:.0%} of JPEG":
            summary["ecc_d_bytes_ratio"] <= GOAL_BYTES,
    }
    meanet = summary.get("meanet")
    if meanet is not None:
        # at equal offload ratio, as ECC_D is compared: the sweep's frames kept on the device go to the main or
        # the extension exit by the router's preference (its own argmax decision is reported in exit_shares)
        out[f"5. three exits: >= ECC_D's mAP on >= {GOAL_THREE_EXIT:.0%} of the sweep, extension exit used"] = (
            meanet["ratios_at_least_ecc_d"] >= GOAL_THREE_EXIT and meanet["extension_share_in_sweep"] > 0)
    return out


def multi_exit_summary(curves: dict, sweep: RouterSweep, dataset) -> dict[str, Any]:
    """The three-exit system: its own decision (shares per exit, device GFLOPs, mAP), how it compares with ECC_D at
    equal offload ratio, and the confusion matrix between generated difficulty and chosen exit."""
    def exit_masks(routes: np.ndarray) -> dict[str, np.ndarray]:
        return {name: routes == ROUTE_CODES[EXIT_ROUTES[name]] for name in EXITS}

    routes = decide(exit_logits=sweep.cache.router).routes  # the router's own decision: its most likely exit
    exit_of = exit_masks(routes)
    own = sweep.point("MEANet", routes, float(exit_of[CLOUD].mean()))
    meanet, ecc_d = curves["MEANet"], curves["ECC_D"]
    inner = range(1, len(meanet) - 1)  # both curves share their endpoints
    out = {
        "own_decision": own.row(),
        "exit_shares": {name: float(chosen.mean()) for name, chosen in exit_of.items()},
        "ratios_at_least_ecc_d": float(np.mean([meanet[i].map >= ecc_d[i].map for i in inner])),
        "extension_share_in_sweep": float(np.mean([meanet[i].extension_share for i in inner])),
        "mean_gain_over_ecc_d": float(np.mean([meanet[i].map - ecc_d[i].map for i in inner])),
    }
    levels = [d for d in dict.fromkeys(dataset.difficulty) if d]
    if levels:
        difficulty = np.array(dataset.difficulty)
        at_ratio = exit_masks(decide(exit_logits=sweep.cache.router, ratio=CONFUSION_RATIO).routes)
        for key, masks in (("confusion", exit_of), (f"confusion_at_{CONFUSION_RATIO:g}", at_ratio)):
            out[key] = {level: {name: int(np.sum((difficulty == level) & chosen)) for name, chosen in masks.items()}
                        for level in levels}
    return out


def per_difficulty(evaluator: RouteMixEvaluator, dataset) -> dict[str, dict[str, float]]:
    """mAP50-95 of each route on the images of each difficulty (when the data records difficulty)."""
    levels = [d for d in dict.fromkeys(dataset.difficulty) if d]
    out = {}
    for level in levels:
        mask = np.array([d == level for d in dataset.difficulty])
        out[level] = {"images": int(mask.sum()), **{r: evaluator.route_map(r, mask)[0] for r in evaluator.routes}}
    return out
