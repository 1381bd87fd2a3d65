"""The offload decision: where a frame is answered.

The gate (`ecc_yolo.nn.gate`) predicts, per frame, the gain in AP50-95 that each offload route would bring over the
edge. This module turns predictions into decisions: a frame is offloaded when its predicted gain exceeds a
threshold, and thresholds are chosen to hit an offload ratio.
"""

from __future__ import annotations

import numpy as np


def offload_mask(scores: np.ndarray, threshold: float) -> np.ndarray:
    """Boolean (N,): offload the frames whose predicted gain is above `threshold`."""
    return np.asarray(scores) > threshold


def threshold_for_ratio(scores: np.ndarray, ratio: float) -> float:
    """Threshold that offloads the `ratio` share of `scores` with the highest values (ties may shift it slightly)."""
    s = np.sort(np.asarray(scores, dtype=np.float64))[::-1]
    if len(s) == 0:
        return 0.0
    k = int(round(ratio * len(s)))
    if k <= 0:
        return float(np.nextafter(s[0], np.inf))
    if k >= len(s):
        return float(np.nextafter(s[-1], -np.inf))
    return float((s[k - 1] + s[k]) / 2)


def top_share_mask(scores: np.ndarray, ratio: float) -> np.ndarray:
    """Boolean (N,): exactly round(ratio * N) frames with the highest scores (ties broken by order), for
    evaluating a router at a given offload ratio."""
    scores = np.asarray(scores, dtype=np.float64)
    k = int(round(ratio * len(scores)))
    mask = np.zeros(len(scores), dtype=bool)
    mask[np.argsort(-scores, kind="stable")[:k]] = True
    return mask
