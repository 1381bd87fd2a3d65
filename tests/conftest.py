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


# -- serving: tests/test_serve.py, tests/test_detect.py, tests/test_ray_serve.py --------------------------------------
def make_serving_checkpoint(path: Path, seed: int = 0, gate_threshold: float | None = None) -> Path:
    """A tiny ECC checkpoint whose detections depend on the input, so served answers can be compared with in-process
    ones: an untrained tiny model's activations vanish with depth (every frame gets the same boxes), so BatchNorm
    statistics are set from random images, adapters calibrated, class biases raised and the gate randomised."""
    import torch

    from ecc_yolo.checkpoint import save_ecc
    from ecc_yolo.nn.ecc_model import ECCModel

    with torch.random.fork_rng(devices=[]):  # initial weights from `seed`, whatever ran before; global RNG untouched
        torch.manual_seed(seed)
        model = ECCModel(CFG_DIR / "ecc-tiny-11.yaml", verbose=False)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.momentum = 1.0  # one train-mode pass sets the running statistics to the batch's
        images = torch.rand(8, 3, 128, 128, generator=g)
        model.train()
        model.run_routes(images)
        model.eval()
        model.calibrate_adapters([images])  # adapted cut tensors on the cloud's own scale
        for part in (model.edge, model.cloud):
            for branch in part.model[-1].cv3:
                branch[-1].bias.fill_(-1.5)
        for p in model.gate.parameters():
            p.normal_(0, 0.3, generator=g)
    if gate_threshold is not None:
        model.gate_threshold = gate_threshold
    return save_ecc(model, path)


@pytest.fixture(scope="session")
def serving_ckpt(tmp_path_factory) -> Path:
    """Tiny ECC checkpoint for serving tests (see make_serving_checkpoint)."""
    return make_serving_checkpoint(tmp_path_factory.mktemp("serving") / "ecc.pt")


@pytest.fixture(scope="session")
def synth_video(tmp_path_factory) -> Path:
    """A 30-frame, 128 px synthetic video at 15 FPS (labels beside it as .jsonl)."""
    from ecc_yolo.data.synthetic import generate_video

    return generate_video(tmp_path_factory.mktemp("video") / "clip.mp4", frames=30, fps=15, imgsz=128, seed=0,
                          progress=False)


def free_port() -> int:
    """A TCP port free on the loopback interface now."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ServerProcess:
    """`ecc-yolo serve` in a subprocess on a fixed loopback port (so it can be killed and restarted)."""

    def __init__(self, checkpoint: Path, log: Path, **args) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.argv = ["serve", f"model={checkpoint}", f"port={self.port}", "imgsz=128", "verbose=False",
                     *[f"{k}={v}" for k, v in args.items()]]
        self.log, self.proc = log, None

    def start(self, timeout: float = 60.0) -> ServerProcess:
        import subprocess
        import sys
        import time

        import httpx

        with open(self.log, "a") as f:
            self.proc = subprocess.Popen([sys.executable, "-m", "ecc_yolo", *self.argv], cwd=REPO, stdout=f,
                                         stderr=subprocess.STDOUT, env={**os.environ, "YOLO_OFFLINE": "1"})
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"ecc-yolo serve exited:\n{self.log.read_text()[-3000:]}")
            try:
                if httpx.get(f"{self.url}/healthz", timeout=1).status_code == 200:
                    return self
            except httpx.HTTPError:
                time.sleep(0.2)
        self.kill()
        raise RuntimeError(f"ecc-yolo serve did not start:\n{self.log.read_text()[-3000:]}")

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(30)

    def __enter__(self) -> ServerProcess:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.kill()
