"""Does a frame's global look give its difficulty away? A tiny classifier on global image statistics.

Real data does not label its hard images with extra noise or blur, so a router that learns "noisy frame -> offload"
on synthetic data learns nothing that transfers. This check trains a small classifier on per-channel global
statistics (mean, standard deviation, a blur estimate and a noise estimate) to predict the generated difficulty,
on one split, and scores it on another. Accuracy near the majority-class share means the statistics carry no
difficulty; accuracy near 1 means the generator leaks it.

    from ecc_yolo.data.difficulty_leak import leak_check
    report = leak_check("2.0", train=1500, test=500, imgsz=160)
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from ecc_yolo.data.synthetic import DIFFICULTIES, check_version, generate_dataset

FEATURES: tuple[str, ...] = tuple(f"{stat}_{ch}" for stat in ("mean", "std", "laplacian_var", "noise_sigma")
                                  for ch in "bgr")
# Immerkaer's noise kernel: the difference of two Laplacians, blind to flat regions and linear ramps
_NOISE_KERNEL = np.array([[1, -2, 1], [-2, 4, -2], [1, -2, 1]], np.float32)


def image_statistics(image: np.ndarray) -> np.ndarray:
    """(12,) global statistics of a BGR uint8 image, per channel B, G, R: mean and std (0-255 scale), variance of
    the Laplacian (a sharpness/blur estimate) and Immerkaer's noise sigma estimate (0-255 scale)."""
    x = image.astype(np.float32)
    h, w = x.shape[:2]
    out = []
    for stat in ("mean", "std", "laplacian_var", "noise_sigma"):
        for c in range(3):
            ch = x[..., c]
            if stat == "mean":
                out.append(ch.mean())
            elif stat == "std":
                out.append(ch.std())
            elif stat == "laplacian_var":
                out.append(cv2.Laplacian(ch, cv2.CV_32F).var())
            else:
                r = cv2.filter2D(ch, cv2.CV_32F, _NOISE_KERNEL)[1:-1, 1:-1]
                out.append(np.sqrt(np.pi / 2) * np.abs(r).sum() / (6 * (w - 2) * (h - 2)))
    return np.asarray(out, np.float64)


def split_statistics(root: Path, split: str) -> tuple[np.ndarray, np.ndarray]:
    """(features (I, 12), difficulty index (I,)) of a split written by `generate_dataset`, read from its files."""
    coco = json.loads((root / "annotations" / f"instances_{split}.json").read_text())
    feats, labels = [], []
    for im in coco["images"]:
        image = cv2.imread(str(root / "images" / split / im["file_name"]))
        feats.append(image_statistics(image))
        labels.append(DIFFICULTIES.index(im["difficulty"]))
    return np.stack(feats), np.asarray(labels)


def fit_classifier(x: np.ndarray, y: np.ndarray, hidden: int = 0, steps: int = 600, seed: int = 0):
    """A multinomial logistic regression (hidden=0) or a one-hidden-layer MLP on standardised features, trained
    full-batch with Adam and a little weight decay; returns predict(x) -> class index."""
    import torch

    torch.manual_seed(seed)
    mu, sd = x.mean(0), x.std(0) + 1e-9
    xt, yt = torch.tensor((x - mu) / sd, dtype=torch.float32), torch.tensor(y)
    k = len(DIFFICULTIES)
    layers = [torch.nn.Linear(x.shape[1], k)] if hidden == 0 else [
        torch.nn.Linear(x.shape[1], hidden), torch.nn.ReLU(), torch.nn.Linear(hidden, k)]
    net = torch.nn.Sequential(*layers)
    opt = torch.optim.Adam(net.parameters(), lr=0.03, weight_decay=1e-3)
    for _ in range(steps):
        opt.zero_grad()
        torch.nn.functional.cross_entropy(net(xt), yt).backward()
        opt.step()

    def predict(z: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            return net(torch.tensor((z - mu) / sd, dtype=torch.float32)).argmax(1).numpy()

    return predict


def scores(pred: np.ndarray, y: np.ndarray) -> dict[str, float]:
    """Accuracy, balanced accuracy (mean per-class recall), the majority-class share and the leak, i.e. how far the
    accuracy goes from the majority share towards 1 ((acc - majority) / (1 - majority), <= 0: no leak)."""
    acc = float(np.mean(pred == y))
    present = [c for c in range(len(DIFFICULTIES)) if (y == c).any()]
    balanced = float(np.mean([np.mean(pred[y == c] == c) for c in present]))
    majority = float(max(np.mean(y == c) for c in present))
    return {"accuracy": acc, "balanced_accuracy": balanced, "majority_share": majority,
            "chance_balanced": 1 / len(present), "leak": (acc - majority) / (1 - majority)}


def leak_check(version: str, train: int = 1500, test: int = 500, imgsz: int = 160, seed: int = 0,
               test_seed: int = 1, workdir: str | Path | None = None) -> dict[str, Any]:
    """Generate a train and a test split of generator `version`, fit the classifiers on train statistics and score
    them on test; returns {"version", "train", "test", "imgsz", "logistic": scores, "mlp": scores, ...}."""
    version = check_version(version)
    with tempfile.TemporaryDirectory(dir=workdir) as tmp:
        tr = generate_dataset(Path(tmp) / "train", train=train, val=0, imgsz=imgsz, seed=seed, version=version,
                              progress=False).parent
        te = generate_dataset(Path(tmp) / "test", train=0, val=test, imgsz=imgsz, seed=test_seed, version=version,
                              progress=False).parent
        x_tr, y_tr = split_statistics(tr, "train")
        x_te, y_te = split_statistics(te, "val")
    report: dict[str, Any] = {"version": version, "train": train, "test": test, "imgsz": imgsz, "seed": seed,
                              "test_seed": test_seed, "features": list(FEATURES)}
    for name, hidden in (("logistic", 0), ("mlp", 32)):
        report[name] = scores(fit_classifier(x_tr, y_tr, hidden)(x_te), y_te)
    # which statistic carries the most: each feature alone, logistic
    report["single_feature_accuracy"] = {
        f: round(float(np.mean(fit_classifier(x_tr[:, [i]], y_tr, 0, 300)(x_te[:, [i]]) == y_te)), 4)
        for i, f in enumerate(FEATURES)}
    return report
