"""How the model zoo is made: the whole pipeline, each step a real `ecc-yolo` command recorded in the manifest.

Steps:
    1. `ecc-yolo synth`: the synthetic dataset at a fixed seed, and a held-out split at a seed training never sees;
    2. `ecc-yolo train stage=cloud`: the cloud detector from its YAML;
    3. `ecc-yolo train stage=edge`: the edge detector (distilled from the trained cloud unless no_distill);
    4. `ecc-yolo train stage=adapt`: knowledge adaptation of the adapters, edge and cloud frozen;
    5. `ecc-yolo train stage=extension`: MEANet's extension exit on the device, edge and cloud frozen;
    6. `ecc-yolo train stage=gate`: the offload gate and the exit router, with recall-rate boosting;
    7. `ecc-yolo val` of the result on the held-out split (the benchmark: every route, every router).
Outputs in `out`: `<name>.pt` (the ECC checkpoint), `manifest.json` (sha256 of every file, generator version and
seeds, commands, hardware, wall time per stage, per-part mAP50-95), and the runs/ and data/ folders. The `full`
preset is the shipped zoo (GPU, `tools/train_zoo.py --device 0 --install`); `tiny` is the same pipeline with tiny
models that a 2-core CPU runs in minutes.
"""

from __future__ import annotations

import json
import os
import platform
import shutil
import subprocess
import sys
import time
from pathlib import Path

from ultralytics.utils import LOGGER

from ecc_yolo.data.synthetic import GENERATOR_VERSION
from ecc_yolo.spec import CFG_DIR
from ecc_yolo.zoo import ASSETS, sha256

TRAIN_SEED, HELDOUT_SEED = 0, 12345
PRESETS = {
    "full": {
        "name": "ecc-synth-n-s",
        "cfg": "ecc-synth-yolo11n-s.yaml",
        "train": 3000,
        "val": 600,
        "heldout": 500,
        "imgsz": 256,
        "batch": 64,
        "epochs": {"cloud": 40, "edge": 40, "adapt": 20, "extension": 20, "gate": 10},
        "device": "0",
        "mix": None,  # the generator's default easy/hard/complex mix, 50/30/20
        "hyp": [],  # Ultralytics' default hyper-parameters, as measured in ../shared/docs/MEASUREMENTS.md
    },
    "tiny": {
        "name": "ecc-synth-tiny",
        "cfg": "ecc-tiny-meanet.yaml",
        "train": 256,
        "val": 64,
        "heldout": 64,
        "imgsz": 128,
        "batch": 16,
        "epochs": {"cloud": 15, "edge": 10, "adapt": 8, "extension": 6, "gate": 5},
        "device": "cpu",
        # Minutes of CPU cannot learn complex frames at 128 px; easy and hard frames still give the edge/cloud gap
        # and per-frame gains the tests need. A higher learning rate with a short warm-up suits the short schedule.
        "mix": [0.7, 0.3, 0.0],
        "hyp": ["optimizer=AdamW", "lr0=0.003", "warmup_epochs=1", "mosaic=0.5"],
    },
}
STAGE_ORDER = ("cloud", "edge", "adapt", "extension", "gate")
STAGE_ARGS = {"edge": ["distill=True"], "gate": ["rrb=2.0"]}  # adapt: the defaults (feat=4, det=0.25, kd=1)


def run(cmd: list[str], log: list[dict], stage: str) -> float:
    """Run one `ecc-yolo` command (through this interpreter), record it, return its wall time in seconds."""
    printable = "ecc-yolo " + " ".join(cmd)
    LOGGER.info(f"\n[zoo {stage}] {printable}")
    t0 = time.time()
    subprocess.run([sys.executable, "-m", "ecc_yolo", *cmd], check=True)
    seconds = time.time() - t0
    log.append({"stage": stage, "command": printable, "seconds": round(seconds, 1)})
    return seconds


def hardware(device: str) -> dict:
    """What the run ran on."""
    info = {"python": platform.python_version(), "platform": platform.platform(), "cpu_count": os.cpu_count()}
    try:
        import torch

        info["torch"] = torch.__version__
        if device not in ("cpu", "") and torch.cuda.is_available():
            info["gpu"] = torch.cuda.get_device_name(0)
    except ImportError:
        pass
    return info


def train_zoo(tiny: bool = False, out: str | Path | None = None, device: str | None = None, no_distill: bool = False,
              epochs_scale: float = 1.0, install: bool = False) -> Path:
    """Run the pipeline (see the module docstring); returns the manifest's path.

    Args:
        tiny: the tiny CPU preset instead of the shipped zoo's.
        out: output folder (default ./runs/zoo/<name>).
        device: "cpu" or a GPU index (default: the preset's).
        no_distill: train the edge without distillation from the cloud.
        epochs_scale: multiply every stage's epochs.
        install: copy the checkpoint and manifest into ecc_yolo/assets/ (ships it with the package).
    """
    preset = PRESETS["tiny" if tiny else "full"]
    device = device or preset["device"]
    out = Path(out or Path.cwd() / "runs" / "zoo" / preset["name"]).resolve()
    out.mkdir(parents=True, exist_ok=True)
    data, heldout, runs = out / "data", out / "heldout", out / "runs"
    imgsz, batch = preset["imgsz"], preset["batch"]
    log: list[dict] = []

    mix = [f"mix={list(preset['mix'])}".replace(" ", "")] if preset["mix"] else []
    run(["synth", f"out={data}", f"train={preset['train']}", f"val={preset['val']}", f"imgsz={imgsz}",
         f"seed={TRAIN_SEED}", *mix], log, "data")
    run(["synth", f"out={heldout}", "train=0", f"val={preset['heldout']}", f"imgsz={imgsz}", f"seed={HELDOUT_SEED}",
         *mix], log, "heldout")

    model = str(CFG_DIR / preset["cfg"])
    common = [f"data={data / 'data.yaml'}", f"imgsz={imgsz}", f"batch={batch}", f"device={device}",
              f"project={runs}", "exist_ok=True", "plots=False", f"seed={TRAIN_SEED}", *preset["hyp"]]
    for stage in STAGE_ORDER:
        epochs = max(1, round(preset["epochs"][stage] * epochs_scale))
        extra = [a for a in STAGE_ARGS.get(stage, []) if not (no_distill and a.startswith("distill"))]
        run(["train", f"model={model}", f"stage={stage}", f"epochs={epochs}", f"name={stage}", *common, *extra],
            log, stage)
        model = str(runs / stage / "weights" / "best.pt")

    final = out / f"{preset['name']}.pt"
    shutil.copyfile(model, final)
    val_name = "heldout_val"
    run(["val", f"model={final}", f"data={heldout / 'data.yaml'}", f"imgsz={imgsz}", f"batch={batch}",
         f"device={device}", f"project={runs}", f"name={val_name}", "exist_ok=True"], log, "val")

    summary = json.loads((runs / val_name / "summary.json").read_text())
    routes = {f"{r}_map50_95": round(summary[f"{r}_map"], 4) for r in ("edge", "adapted", "cloud")}
    routes["per_difficulty"] = {level: {k: round(v, 4) if isinstance(v, float) else v for k, v in d.items()}
                                for level, d in summary["per_difficulty"].items()}
    manifest = {
        "name": preset["name"],
        "preset": "tiny" if tiny else "full",
        "files": {final.name: {"sha256": sha256(final), "bytes": final.stat().st_size}},
        "generator": {"version": GENERATOR_VERSION, "train_seed": TRAIN_SEED, "heldout_seed": HELDOUT_SEED,
                      "train": preset["train"], "val": preset["val"], "heldout": preset["heldout"], "imgsz": imgsz,
                      "mix": preset["mix"]},
        "commands": log,
        "hardware": hardware(device),
        "wall_seconds": {entry["stage"]: entry["seconds"] for entry in log},
        "heldout_map50_95": routes,
        "heldout_benchmark": str(runs / val_name),
    }
    path = out / "manifest.json"
    path.write_text(json.dumps(manifest, indent=2))
    if install:
        ASSETS.mkdir(exist_ok=True)
        shutil.copyfile(final, ASSETS / final.name)
        shutil.copyfile(path, ASSETS / f"{preset['name']}.json")
        LOGGER.info(f"installed {preset['name']} into {ASSETS}")
    LOGGER.info(f"\nzoo checkpoint: {final}\nmanifest: {path}\n" + json.dumps(routes, indent=2))
    return path


