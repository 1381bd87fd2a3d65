"""Uncertainty and normalised figures of the benchmark: a paired bootstrap over images, and the scores routers are
judged by.

The bootstrap resamples the evaluation images with replacement (a resample is an index array with repeats, as
`RouteMixEvaluator.fast_map(resample=...)` and `resampled_maps` take it). Every figure computed on the same
`Bootstrap` uses the same resamples, so the interval of a difference (route vs route, router vs router) is paired:
it is the percentile interval of the per-resample differences, not a combination of two separate intervals.
Routing decisions (a router's ranking, the oracles' assignments) are kept fixed and only the images are resampled:
the intervals say how much the figures depend on which images were drawn, not how a re-trained gate would vary.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from typing import Callable

import numpy as np

DEFAULT_RESAMPLES = 1000
LEVEL = 0.95  # two-sided percentile interval


@dataclass(frozen=True)
class Estimate:
    """A figure on all images and its bootstrap percentile interval (lo, hi; None when not bootstrapped)."""

    value: float
    lo: float | None = None
    hi: float | None = None

    def as_dict(self) -> dict:
        """{"value": x, "ci": [lo, hi] or None} (what summary.json holds)."""
        return {"value": self.value, "ci": None if self.lo is None else [self.lo, self.hi]}

    def __str__(self) -> str:
        return f"{self.value:.3f}" + ("" if self.lo is None else f" [{self.lo:.3f}, {self.hi:.3f}]")


class Bootstrap:
    """Seeded resamples of n images with replacement (numpy `default_rng(seed)`), shared by every figure."""

    def __init__(self, n_images: int, resamples: int = DEFAULT_RESAMPLES, seed: int = 0):
        """Draw `resamples` index arrays of length `n_images`."""
        self.n_images, self.resamples, self.seed = n_images, resamples, seed
        rng = np.random.default_rng(seed)
        self.indices = rng.integers(0, n_images, size=(resamples, n_images))  # (B, n) image indices, repeats
        self.counts = np.stack([np.bincount(i, minlength=n_images) for i in self.indices]) if resamples else \
            np.zeros((0, n_images), dtype=np.int64)  # (B, n) times each image is drawn

    @cached_property
    def counts_with_all(self) -> np.ndarray:
        """(1 + B, n) row 0: every image once (the point figure), then `counts`: the weights
        `RouteMixEvaluator.resampled_maps` scores a mix under, so that row 0 is the figure and the rest its samples."""
        return np.vstack([np.ones(self.n_images, dtype=np.int64), self.counts])

    def percentile(self, samples: np.ndarray, level: float = LEVEL) -> tuple[float, float]:
        """(lo, hi) percentile interval of per-resample values (NaNs, e.g. a ratio over a zero gap, are dropped)."""
        samples = np.asarray(samples, dtype=float)
        samples = samples[np.isfinite(samples)]
        if not samples.size:
            return float("nan"), float("nan")
        tail = (1 - level) / 2 * 100
        lo, hi = np.percentile(samples, [tail, 100 - tail])
        return float(lo), float(hi)

    def interval(self, fn: Callable[[np.ndarray], float], level: float = LEVEL) -> tuple[float, float]:
        """(lo, hi) of fn(indices) over the resamples (one call per resample; batch with `percentile` when the
        figure can be computed for all resamples at once)."""
        return self.percentile(np.array([fn(i) for i in self.indices]), level)

    def paired_interval(self, fn_a: Callable[[np.ndarray], float], fn_b: Callable[[np.ndarray], float],
                        level: float = LEVEL) -> tuple[float, float]:
        """(lo, hi) of fn_a - fn_b, both on the same resample each time."""
        return self.percentile(np.array([fn_a(i) - fn_b(i) for i in self.indices]), level)

    def estimate(self, value: float, samples: np.ndarray | None) -> Estimate:
        """An `Estimate` of `value` with the interval of `samples` (None: no interval)."""
        if samples is None or not len(samples):
            return Estimate(float(value))
        return Estimate(float(value), *self.percentile(samples))


def auc(ratios: np.ndarray, maps: np.ndarray) -> np.ndarray:
    """Area under mAP versus offload ratio (trapezoids) along the last axis (one curve or (B, ratios) curves)."""
    x, y = np.asarray(ratios, dtype=float), np.asarray(maps, dtype=float)
    return np.sum((x[1:] - x[:-1]) * (y[..., 1:] + y[..., :-1]) / 2, axis=-1)


def normalised_score(auc_router: np.ndarray, auc_random: np.ndarray, auc_oracle: np.ndarray) -> np.ndarray:
    """(AUC - AUC_random) / (AUC_oracle - AUC_random): 0 = random routing, 1 = the reference oracle (NaN when the
    oracle does not beat random)."""
    gap = np.asarray(auc_oracle, dtype=float) - np.asarray(auc_random, dtype=float)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(gap > 0, (np.asarray(auc_router, dtype=float) - auc_random) / np.where(gap > 0, gap, 1),
                        np.nan)


def gain_share(map_at_ratio: np.ndarray, edge_map: np.ndarray, cloud_map: np.ndarray) -> np.ndarray:
    """(mAP(r) - edge mAP) / (cloud mAP - edge mAP): the share of the cloud's gain over the edge a router recovers
    (NaN when the cloud does not beat the edge)."""
    gap = np.asarray(cloud_map, dtype=float) - np.asarray(edge_map, dtype=float)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(gap > 0, (np.asarray(map_at_ratio, dtype=float) - edge_map) / np.where(gap > 0, gap, 1),
                        np.nan)
