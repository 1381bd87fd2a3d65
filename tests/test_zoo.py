"""The model zoo: the shipped entry (loads by name, every route runs, corruption is refused), checksum verification,
clear errors, and the pipeline that trains it (resumable)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch
from conftest import CFG_DIR

from ecc_yolo import zoo
from ecc_yolo.engine.model import ECC
from ecc_yolo.zoo_pipeline import Stages, checkpoint_epoch

SHIPPED = zoo.DEFAULT_MODEL  # the CPU zoo, shipped in ecc_yolo/assets/


def _iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU of every xyxy box in a (N, 4) with every box in b (M, 4)."""
    lt, rb = np.maximum(a[:, None, :2], b[None, :, :2]), np.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = np.clip(rb - lt, 0, None).prod(-1)
    area = lambda x: (x[:, 2:] - x[:, :2]).prod(-1)  # noqa: E731
    return inter / (area(a)[:, None] + area(b)[None] - inter)


def test_the_shipped_zoo_entry_is_listed_first_and_loads_by_name():
    assert zoo.available()[0] == SHIPPED, f"{zoo.ASSETS} must ship {SHIPPED}"
    manifest = json.loads((zoo.ASSETS / f"{SHIPPED}.json").read_text())
    assert "gpu" not in manifest["hardware"] and manifest["total_wall_minutes"] <= 150
    assert manifest["code"]["commit"] and not manifest["code"]["dirty"]
    ecc = ECC(SHIPPED)  # offline, by name, sha256-checked
    assert ecc.model.spec.name == "ecc-synth-yolo11q-n" and ecc.model.extension is not None


def test_every_route_of_the_shipped_zoo_finds_the_objects_of_easy_synthetic_frames():
    """Every route (and route=auto) on a batch of easy frames with known boxes: each finds most of the objects, and
    the cloud more than the edge. Measured on these 30 frames (69 objects, conf 0.25, 2026-12-07): edge 58%,
    extension 71%, adapted 91%, cloud 96%; 6 frames (11 objects) were too few for a stable share."""
    from ecc_yolo.data.synthetic import render_frame
    from ecc_yolo.deploy import model_settings

    ecc = ECC(SHIPPED)
    imgsz = model_settings(ecc.model).imgsz
    assert imgsz == 160
    frames = [render_frame(seed=999, index=i, difficulty="easy", imgsz=imgsz) for i in range(30)]
    objects = sum(len(f.boxes) for f in frames)
    assert objects >= 30
    found_by = {}
    for route in (*ecc.model.routes, "auto"):
        results = ecc.predict([f.image for f in frames], route=route, imgsz=imgsz, conf=0.25, verbose=False)
        found = 0
        for frame, result in zip(frames, results):
            boxes = result.boxes.xyxy.numpy()
            if len(boxes):
                iou = _iou(frame.boxes, boxes)
                hit = iou.max(1) >= 0.5
                cls_ok = result.boxes.cls.numpy()[iou.argmax(1)] == frame.classes
                found += int((hit & cls_ok).sum())
        found_by[route] = found
        assert found > 0.5 * objects, f"route {route}: {found} of {objects} objects found"
    assert found_by["cloud"] > found_by["edge"], found_by


def test_a_corrupted_copy_of_the_shipped_zoo_is_refused(tmp_path, monkeypatch):
    for suffix in (".pt", ".json"):
        shutil.copyfile(zoo.ASSETS / f"{SHIPPED}{suffix}", tmp_path / f"{SHIPPED}{suffix}")
    monkeypatch.setenv(zoo.ZOO_ENV, str(tmp_path))
    data = bytearray((tmp_path / f"{SHIPPED}.pt").read_bytes())
    data[len(data) // 2] ^= 0xFF  # one flipped byte in the middle of the weights
    (tmp_path / f"{SHIPPED}.pt").write_bytes(bytes(data))
    with pytest.raises(zoo.ZooError, match=f"{SHIPPED}.pt does not match its manifest.*corrupted"):
        ECC(SHIPPED)
    (tmp_path / f"{SHIPPED}.json").unlink()
    with pytest.raises(zoo.ZooError, match="no manifest"):
        zoo.resolve(SHIPPED)


def test_zoo_errors_say_what_is_wrong(tmp_path, monkeypatch):
    monkeypatch.setenv(zoo.ZOO_ENV, str(tmp_path))
    with pytest.raises(zoo.ZooError, match="not shipped in this build.*train_zoo.py"):
        ECC("ecc-synth-n-s")
    with pytest.raises(zoo.ZooError, match="unknown zoo name"):
        zoo.resolve("ecc-nonsense")


def test_every_shipped_zoo_entry_matches_its_manifest_within_the_size_limit():
    files = list(zoo.ASSETS.glob("*")) if zoo.ASSETS.is_dir() else []
    assert sum(f.stat().st_size for f in files) <= 40e6  # the package ships at most 40 MB of models
    for manifest in sorted(zoo.ASSETS.glob("*.json")):
        name = manifest.stem
        assert (zoo.ASSETS / f"{name}.pt").is_file(), f"{name}: manifest without checkpoint"
        assert zoo.resolve(name) == zoo.ASSETS / f"{name}.pt"


def test_the_v1_zoo_manifest_still_reproduces_its_data_with_its_recorded_commands(tmp_path):
    """The first zoo's recorded synth commands, run as recorded (only out= and the image counts made small), write
    generator 1.0 data: the same frames that version renders."""
    import shlex

    from ecc_yolo.cli import entrypoint
    from ecc_yolo.data.synthetic import render_frame

    manifest = json.loads((zoo.ASSETS / "ecc-synth-q-n-160.json").read_text())
    assert manifest["generator"]["version"] == "1.0"
    synth = [c["command"] for c in manifest["commands"] if c["command"].startswith("ecc-yolo synth")]
    assert len(synth) == 2
    for k, command in enumerate(synth):
        args = dict(a.split("=", 1) for a in shlex.split(command)[2:])
        args.update(out=str(tmp_path / f"d{k}"), train="2" if args["train"] != "0" else "0", val="2")
        assert entrypoint(["synth", *[f"{key}={v}" for key, v in args.items()]]) == 0
        coco = json.loads((tmp_path / f"d{k}" / "annotations" / "instances_val.json").read_text())
        assert coco["info"]["generator_version"] == "1.0"
        from ecc_yolo.data.synthetic import _split_seed  # the split's stream, as generate_split draws it

        first = coco["images"][0]
        frame = render_frame(_split_seed(int(args["seed"]), "val"), 0, first["difficulty"], int(args["imgsz"]),
                             version="1.0")
        got = [a["bbox"] for a in coco["annotations"] if a["image_id"] == first["id"]]
        want = [[x1, y1, x2 - x1, y2 - y1] for x1, y1, x2, y2 in frame.boxes.tolist()]
        assert got == want


@pytest.mark.slow
def test_the_pipeline_skips_finished_steps_and_resumes_an_interrupted_stage(synth_data, tmp_path):
    """A training stage killed after its first epoch resumes from last.pt on the re-run (Ultralytics' resume), its
    record then holds the full schedule; a third run skips it."""
    out, run_dir = tmp_path / "zoo", tmp_path / "zoo" / "runs" / "cloud"
    cmd = ["train", f"model={CFG_DIR / 'ecc-tiny-11.yaml'}", "stage=cloud", "epochs=3", "name=cloud",
           f"data={synth_data}", "imgsz=96", "batch=8", "device=cpu", f"project={run_dir.parent}", "exist_ok=True",
           "plots=False", "workers=0"]
    best = run_dir / "weights" / "best.pt"
    script = (f"from pathlib import Path; from ecc_yolo.zoo_pipeline import Stages; "
              f"Stages(Path({str(out)!r})).run('cloud', {cmd!r}, Path({str(best)!r}), Path({str(run_dir)!r}))")
    proc = subprocess.Popen([sys.executable, "-c", script], start_new_session=True, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, env={**os.environ, "YOLO_OFFLINE": "1"})
    results, last = run_dir / "results.csv", run_dir / "weights" / "last.pt"
    deadline = time.monotonic() + 300
    while True:  # stop the run when it holds a complete last.pt of an unfinished epoch, then kill it
        assert proc.poll() is None and time.monotonic() < deadline, "the first attempt ended before epoch 1 was saved"
        if last.is_file():
            os.killpg(proc.pid, signal.SIGSTOP)
            if (checkpoint_epoch(last) or -1) >= 0:
                break
            os.killpg(proc.pid, signal.SIGCONT)  # caught mid-write
        time.sleep(0.1)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not (out / "records" / "cloud.json").exists() and (run_dir / "weights" / "last.pt").is_file()
    epochs_before = len(results.read_text().splitlines()) - 1
    assert epochs_before < 3

    stages = Stages(out)
    entry = stages.run("cloud", cmd, best, run_dir)
    assert entry["resumed_with"] == f"ecc-yolo train resume={run_dir / 'weights' / 'last.pt'}"
    assert entry["metrics"]["epochs"] == 3 and entry["seconds"] > 0
    assert json.loads((out / "records" / "cloud.json").read_text()) == entry
    mtime = results.stat().st_mtime

    again = Stages(out).run("cloud", cmd, best, run_dir)  # finished: skipped, nothing runs
    assert again == entry and results.stat().st_mtime == mtime


def test_a_checkpoint_cut_off_mid_write_is_not_resumed(tmp_path):
    """Ultralytics writes last.pt in place: a kill during the write leaves a truncated file, which the pipeline must
    run again from scratch rather than fail on."""
    good = tmp_path / "good.pt"
    torch.save({"epoch": 4, "model": None}, good)
    truncated = tmp_path / "last.pt"
    truncated.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    assert checkpoint_epoch(good) == 4 and checkpoint_epoch(truncated) is None


def test_a_dry_run_plans_every_step_and_writes_nothing(tmp_path, capsys):
    from ecc_yolo.zoo_pipeline import STAGE_ORDER, train_zoo

    assert train_zoo(out=tmp_path / "zoo", dry_run=True) is None
    plan = capsys.readouterr().out.splitlines()[1:]
    assert [line.split()[0] for line in plan] == ["data", "test", *STAGE_ORDER, "val"]
    assert "version=2.0" in plan[0] and "seed=20261206" in plan[1]  # generator 2.0, the untouched test seed
    assert all(line.split()[1] == "runs" for line in plan) and not (tmp_path / "zoo").exists()


def test_a_step_whose_command_changed_runs_again_and_so_does_every_later_step(tmp_path):
    out = tmp_path / "zoo"

    def pipeline(val: int) -> list[dict]:
        stages = Stages(out)
        first = stages.run("first", ["synth", f"out={out / 'a'}", "train=2", f"val={val}", "imgsz=64"],
                           out / "a" / "data.yaml")
        second = stages.run("second", ["synth", f"out={out / 'b'}", "train=2", "val=1", "imgsz=64"],
                            out / "b" / "data.yaml")
        return [first, second]

    records = [out / "records" / f"{step}.json" for step in ("first", "second")]
    runs = pipeline(1)
    mtimes = [r.stat().st_mtime_ns for r in records]
    assert pipeline(1) == runs  # same commands: both skipped
    assert [r.stat().st_mtime_ns for r in records] == mtimes
    plan = Stages(out, dry_run=True)
    plan.run("first", ["synth", f"out={out / 'a'}", "train=2", "val=2", "imgsz=64"], out / "a" / "data.yaml")
    plan.run("second", ["synth", f"out={out / 'b'}", "train=2", "val=1", "imgsz=64"], out / "b" / "data.yaml")
    assert [line.split()[1:4] for line in plan.plan] == [["changed,", "runs", "again"], ["changed,", "runs", "again"]]
    again = pipeline(2)  # the first command changed: it runs, and the second (same command) runs after it
    assert "val=2" in again[0]["command"] and again[1]["command"] == runs[1]["command"]
    assert all(r.stat().st_mtime_ns > m for r, m in zip(records, mtimes))  # both ran (and were recorded) again
    assert all(entry["code"]["path"] for entry in again)  # each step records the code it ran


def test_independent_steps_rerun_only_what_they_need(tmp_path):
    out = tmp_path / "sweep"
    steps = {"x": ["synth", f"out={out / 'x'}", "train=1", "val=1", "imgsz=64"],
             "y": ["synth", f"out={out / 'y'}", "train=1", "val=1", "imgsz=64"]}
    for name, cmd in steps.items():
        Stages(out, chain=False).run(name, cmd, out / name / "data.yaml")
    stages = Stages(out, chain=False)
    stages.run("x", [*steps["x"][:-1], "imgsz=96"], out / "x" / "data.yaml")  # x changed and runs again
    y = stages.run("y", steps["y"], out / "y" / "data.yaml")
    z = stages.run("y-needs-x", steps["y"], out / "y" / "data.yaml", needs=("x",))
    assert stages.ran == ["x", "y-needs-x"] and y["command"] == z["command"]


def test_stage_args_merge_preset_method_and_per_stage_settings():
    from ecc_yolo.zoo_pipeline import PRESETS, stage_args

    cpu, tiny = PRESETS["cpu"], PRESETS["tiny"]
    assert stage_args(cpu, "adapt") == ["det=1.0", "optimizer=AdamW", "lr0=0.002"]
    assert stage_args(cpu, "edge") == ["distill=True"] and stage_args(cpu, "edge", no_distill=True) == []
    tiny_adapt = stage_args(tiny, "adapt")  # the preset's lr0=0.003 stays: no per-stage setting overrides it
    assert "lr0=0.003" in tiny_adapt and "det=1.0" in tiny_adapt and len(tiny_adapt) == len(set(tiny_adapt))
