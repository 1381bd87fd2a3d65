"""Per-frame routing cues from the edge detector's own answer, the kind DynamicDet and ORIC route by: how confident
the edge is, how ambiguous, how many objects it half-sees, how small they are (docs/BENCHMARKS.md, section 5j).

`edge_output_cues` turns each frame's edge detections (after NMS at the benchmark's settings, in image pixels) into
a fixed-length vector; `fit_gain_model` / `GainModel` learn the true per-frame gains (`RouterSweep.true_gain`) from
cues on one split, to rank the frames of another. Everything here is cheap on the device: it reads only the edge's
output.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

CONF_LEVELS = (0.1, 0.25, 0.5, 0.75)  # counts of boxes above each confidence
TOP_K = (1, 3, 10)  # mean confidence of the k most confident boxes
LOW_CONF = (0.1, 0.4)  # a "half-seen" box: confidence in this range
SMALL_SIDE = 0.08  # a small box: sqrt(area) below this share of the image's sqrt(area)
CUE_NAMES = (
    *(f"n_conf>{t}" for t in CONF_LEVELS), *(f"top{k}_conf" for k in TOP_K), "entropy_sum", "entropy_mean",
    "n_low_conf", "mean_side", "min_side", "n_small", "n_classes",
)


def edge_output_cues(detections: list[np.ndarray], image_shapes: list[tuple[int, int]]) -> np.ndarray:
    """(I, len(CUE_NAMES)) cues of each frame from its (N, 6) [x1, y1, x2, y2, conf, cls] edge detections."""
    rows = []
    for det, (h, w) in zip(detections, image_shapes):
        conf = np.sort(det[:, 4])[::-1] if len(det) else np.zeros(0)
        p = np.clip(conf, 1e-6, 1 - 1e-6)
        entropy = -(p * np.log(p) + (1 - p) * np.log(1 - p))
        confident = det[det[:, 4] >= 0.25] if len(det) else det
        sides = np.sqrt(np.clip((confident[:, 2] - confident[:, 0]) * (confident[:, 3] - confident[:, 1]), 0, None)
                        ) / np.sqrt(h * w) if len(confident) else np.zeros(0)
        rows.append([
            *(np.log1p((conf > t).sum()) for t in CONF_LEVELS),
            *(conf[:k].sum() / k for k in TOP_K),
            np.log1p(entropy.sum()), entropy.mean() if len(entropy) else 0.0,
            np.log1p(((conf > LOW_CONF[0]) & (conf < LOW_CONF[1])).sum()),
            sides.mean() if len(sides) else 0.0, sides.min() if len(sides) else 0.0,
            np.log1p((sides < SMALL_SIDE).sum()), np.log1p(len(np.unique(confident[:, 5])) if len(confident) else 0),
        ])
    return np.asarray(rows, dtype=np.float64).reshape(len(detections), len(CUE_NAMES))


@dataclass
class GainModel:
    """Predicts a frame's gains (adapted, cloud) from its cues: standardised inputs, then ridge regression or a
    small MLP."""

    mean: np.ndarray
    std: np.ndarray
    ridge: np.ndarray | None = None  # (F + 1, 2) weights with the bias last
    mlp: nn.Module | None = None

    def predict(self, x: np.ndarray) -> np.ndarray:
        """(I, 2) predicted gains."""
        z = (np.asarray(x, dtype=np.float64) - self.mean) / self.std
        if self.ridge is not None:
            return np.hstack([z, np.ones((len(z), 1))]) @ self.ridge
        with torch.no_grad():
            return self.mlp(torch.as_tensor(z, dtype=torch.float32)).double().numpy()


def fit_gain_model(x: np.ndarray, gains: np.ndarray, kind: str = "ridge", alpha: float = 1.0, seed: int = 0,
                   hidden: int = 32, epochs: int = 300) -> GainModel:
    """Fit a `GainModel` of `kind` "ridge" (closed form, L2 `alpha`) or "mlp" (one hidden layer, AdamW on the
    mean squared error, full batch, `seed` for its initial weights)."""
    x, gains = np.asarray(x, dtype=np.float64), np.asarray(gains, dtype=np.float64)
    mean, std = x.mean(0), x.std(0) + 1e-9
    z = (x - mean) / std
    if kind == "ridge":
        a = np.hstack([z, np.ones((len(z), 1))])
        reg = alpha * np.eye(a.shape[1])
        reg[-1, -1] = 0.0  # the bias is not shrunk
        return GainModel(mean, std, ridge=np.linalg.solve(a.T @ a + reg, a.T @ gains))
    if kind != "mlp":
        raise ValueError(f"kind must be ridge or mlp, got {kind!r}")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        mlp = nn.Sequential(nn.Linear(z.shape[1], hidden), nn.SiLU(), nn.Linear(hidden, gains.shape[1]))
        opt = torch.optim.AdamW(mlp.parameters(), lr=1e-2, weight_decay=1e-2)
        zt, yt = torch.as_tensor(z, dtype=torch.float32), torch.as_tensor(gains, dtype=torch.float32)
        for _ in range(epochs):
            opt.zero_grad()
            loss = nn.functional.mse_loss(mlp(zt), yt)
            loss.backward()
            opt.step()
    return GainModel(mean, std, mlp=mlp.eval())
