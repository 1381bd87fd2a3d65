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


def bash_blocks(markdown: Path) -> list[str]:
    """Every command line of the ```bash blocks of a markdown file, in order."""
    import re

    blocks = re.findall(r"```bash\n(.*?)```", markdown.read_text(), flags=re.S)
    return [line for block in blocks for line in block.strip().splitlines() if line.strip()]


def user_env() -> dict[str, str]:
    """The environment of a user who installed ecc-yolo with this interpreter: `ecc-yolo` on PATH, offline."""
    import sys

    bin_dir = str(Path(sys.executable).parent)
    return {**os.environ, "YOLO_OFFLINE": "1", "PATH": f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}"}


def run_as_user(command: str, cwd: Path):
    """Run a documented command line with bash in `cwd`, as a user would type it; returns the CompletedProcess."""
    import subprocess

    return subprocess.run(["bash", "-c", command], cwd=cwd, env=user_env(), capture_output=True, text=True)


SHARED_ENV = "ECC_YOLO_TEST_SHARED"  # a folder all pytest-xdist workers of one run share (set by the controller)


class TinyZooJob:
    """`tools/train_zoo.py --tiny` (minutes of CPU), run once per test run, in the background from the end of
    collection, so the other tests run meanwhile; the tests that use it run last and wait for it. Every process of
    the run (pytest-xdist workers included) sees it through files in the shared folder."""

    def __init__(self, root: Path):
        self.out, self.log = root / "tiny-zoo", root / "tiny-zoo.log"
        self.pid_file, self.rc_file = root / "tiny-zoo.pid", root / "tiny-zoo.rc"

    def start(self) -> None:
        """Start the training unless a process of this run already has."""
        import subprocess
        import sys

        try:
            os.close(os.open(self.pid_file, os.O_CREAT | os.O_EXCL | os.O_WRONLY))
        except FileExistsError:
            return
        train = f'"{sys.executable}" "{REPO / "tools" / "train_zoo.py"}" --tiny --out "{self.out}"'
        rc_tmp = f"{self.rc_file}.tmp"
        proc = subprocess.Popen(["bash", "-c", f'{train} > "{self.log}" 2>&1; echo $? > "{rc_tmp}"; mv "{rc_tmp}" '
                                 f'"{self.rc_file}"'], cwd=REPO, env={**os.environ, "YOLO_OFFLINE": "1"},
                                start_new_session=True)
        self.pid_file.write_text(str(proc.pid))

    def wait(self, timeout_s: float = 3600) -> Path:
        """The trained zoo's folder, once the training has finished; raises with its log if it failed."""
        import time

        self.start()
        deadline = time.monotonic() + timeout_s
        while not self.rc_file.exists():
            if time.monotonic() > deadline:
                raise TimeoutError(f"tools/train_zoo.py --tiny did not finish in {timeout_s} s ({self.log})")
            time.sleep(1)
        if self.rc_file.read_text().strip() != "0":
            raise RuntimeError(f"tools/train_zoo.py --tiny failed:\n{self.log.read_text()[-4000:]}")
        return self.out

    def stop(self) -> None:
        """Kill the training if it still runs (an interrupted or failed run)."""
        import signal

        text = self.pid_file.read_text() if self.pid_file.is_file() else ""
        if text and not self.rc_file.exists():
            try:
                os.killpg(int(text), signal.SIGTERM)
            except ProcessLookupError:
                pass


def _uses_tiny_zoo(item) -> bool:
    return "tiny_zoo" in getattr(item, "fixturenames", ())


def pytest_configure(config) -> None:
    """The run's shared folder (controller only); under pytest-xdist (`-n 2`), one torch thread per worker: the
    tiny models' CPU training is bound by Python, not by torch's threads (2 threads: 34 s, 1 thread: 37 s for the
    same 3 epochs), so two one-thread workers run about twice as fast as one two-thread process. Subprocesses
    inherit both settings."""
    import tempfile

    if not hasattr(config, "workerinput"):
        config.ecc_shared = Path(tempfile.mkdtemp(prefix="ecc-yolo-tests-"))
        os.environ[SHARED_ENV] = str(config.ecc_shared)
    if os.environ.get("PYTEST_XDIST_WORKER"):
        os.environ.setdefault("OMP_NUM_THREADS", "1")
        import torch

        torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))


def pytest_unconfigure(config) -> None:
    import shutil

    if hasattr(config, "ecc_shared"):
        TinyZooJob(config.ecc_shared).stop()
        shutil.rmtree(config.ecc_shared, ignore_errors=True)


@pytest.hookimpl(trylast=True)
def pytest_collection_modifyitems(config, items) -> None:
    """Tests that use the tiny zoo run last, so it trains in the background while the others run."""
    items.sort(key=_uses_tiny_zoo)  # stable: the order within each part is kept


def pytest_collection_finish(session) -> None:
    if not session.config.option.collectonly and any(_uses_tiny_zoo(item) for item in session.items):
        TinyZooJob(Path(os.environ[SHARED_ENV])).start()


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
def tiny_zoo() -> Path:
    """The tiny zoo trained on CPU by `tools/train_zoo.py --tiny` (a few minutes, see TinyZooJob); returns its
    folder. Tests only read it."""
    return TinyZooJob(Path(os.environ[SHARED_ENV])).wait()


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
    from ecc_yolo.nn.adapters import calibrate_whitening
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
        calibrate_whitening(model.adapters, model.cloud_cuts, [images])  # adapted cut tensors on the cloud's scale
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
    from ecc_yolo.serve.local import free_port as free

    return free()


def ServerProcess(checkpoint: Path, log: Path, **args):  # noqa: N802 (reads like the class it builds)
    """`ecc-yolo serve` of a test checkpoint at imgsz 128 in a subprocess (killable and restartable)."""
    from ecc_yolo.serve.local import LocalServer

    return LocalServer(checkpoint, imgsz=128, log=log, **args)
