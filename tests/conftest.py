"""Shared fixtures: tiny ECC models and settings that keep every test offline."""

from __future__ import annotations

import os
from copy import deepcopy
from pathlib import Path

import pytest

os.environ.setdefault("YOLO_OFFLINE", "1")  # Ultralytics must never reach for the network in tests

REPO = Path(__file__).resolve().parents[1]
CFG_DIR = REPO / "cfg"
SHIPPED_CFGS = sorted(CFG_DIR.glob("ecc-*.yaml"))
TINY_CFGS = [p for p in SHIPPED_CFGS if p.name.startswith("ecc-tiny-")]


@pytest.fixture(scope="session")
def _tiny_ecc_session():
    from ecc_yolo.nn.ecc_model import ECCModel

    return ECCModel(CFG_DIR / "ecc-tiny-11.yaml", verbose=False).eval()


@pytest.fixture
def tiny_ecc(_tiny_ecc_session):
    """A fresh copy of the tiny YOLO11-family ECC model (8 classes), in eval mode."""
    return deepcopy(_tiny_ecc_session)


@pytest.fixture
def images():
    """A deterministic batch of two 128x128 RGB images in 0..1."""
    import torch

    g = torch.Generator().manual_seed(0)
    return torch.rand(2, 3, 128, 128, generator=g)


@pytest.fixture(scope="session")
def synth_data(tmp_path_factory) -> Path:
    """A small synthetic dataset (48 train / 24 val images, 96 px); returns its data.yaml."""
    from ecc_yolo.data.synthetic import generate_dataset

    return generate_dataset(tmp_path_factory.mktemp("synth"), train=48, val=24, imgsz=96, seed=0, progress=False)


@pytest.fixture(scope="session")
def tiny_zoo(tmp_path_factory) -> Path:
    """The tiny zoo trained on CPU by `tools/train_zoo.py --tiny` (a few minutes); returns its folder."""
    import subprocess
    import sys

    out = tmp_path_factory.mktemp("zoo")
    log = out / "train_zoo.log"
    with open(log, "w") as f:
        r = subprocess.run([sys.executable, str(REPO / "tools" / "train_zoo.py"), "--tiny", "--out", str(out)],
                           cwd=REPO, env={**os.environ, "YOLO_OFFLINE": "1"}, stdout=f, stderr=subprocess.STDOUT)
    if r.returncode:
        raise RuntimeError(f"tools/train_zoo.py --tiny failed:\n{log.read_text()[-4000:]}")
    return out


def train_args(data: Path, project: Path, **kw) -> dict:
    """Arguments for a seconds-long CPU training run of a tiny ECC."""
    return {"data": str(data), "imgsz": 96, "batch": 8, "epochs": 1, "plots": False, "device": "cpu",
            "project": str(project), "exist_ok": True, "workers": 0, **kw}
