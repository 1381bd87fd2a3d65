"""Paired comparison of two trained models on the same images: the difference of one route's mAP50-95 between two
benchmark caches (`ecc-yolo val` folders), with a paired bootstrap interval over images.

What the ablations (`tools/ablate_zoo.py`, `tools/ablation_report.py`) report: both models' detections are scored
on the same resamples, so the interval is that of the per-resample difference. It says how much the difference
depends on which test images were drawn; the spread over training seeds is measured separately (seed repeats).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ecc_yolo.eval.cache import RouteCache
from ecc_yolo.eval.coco_eval import RouteMixEvaluator
from ecc_yolo.eval.dataset import EvalDataset
from ecc_yolo.eval.stats import Bootstrap


def paired_route_difference(dataset: EvalDataset, reference: RouteCache, variant: RouteCache, route: str,
                            boot: Bootstrap) -> dict[str, Any]:
    """mAP50-95 of `route` for the variant and the reference, and variant minus reference, with paired intervals.

    Raises:
        ValueError: the caches were made on other images than `dataset`, or one lacks the route.
    """
    for name, cache in (("reference", reference), ("variant", variant)):
        if cache.meta.get("dataset") != dataset.fingerprint():
            raise ValueError(f"the {name} cache was made on other images than {dataset.source}")
        if route not in cache.detections:
            raise ValueError(f"the {name} cache has no route '{route}' (it has {sorted(cache.detections)})")
    evaluator = RouteMixEvaluator(dataset, {"reference": reference.detections[route],
                                            "variant": variant.detections[route]})
    n = len(dataset)
    ref, var = (evaluator.resampled_maps(np.full(n, i), boot.counts_with_all)[:, 0] for i in range(2))
    return {
        "route": route,
        "reference": boot.estimate(ref[0], ref[1:]).as_dict(),
        "variant": boot.estimate(var[0], var[1:]).as_dict(),
        "variant_minus_reference": boot.estimate(var[0] - ref[0], (var - ref)[1:]).as_dict(),
    }
