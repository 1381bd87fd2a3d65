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
