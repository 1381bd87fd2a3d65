"""Label-free adaptation: the synthetic generator's target domains and `stage=adapt_label_free` (a registry stage)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

import cv2
import numpy as np
import pytest
import torch
from conftest import CFG_DIR, REPO
from test_training import part_state, results, same_state

from ecc_yolo.checkpoint import load_ecc
from ecc_yolo.data.synthetic import DOMAINS, generate_dataset, render_frame
from ecc_yolo.engine.model import ECC
from ecc_yolo.infer import input_tensor
from ecc_yolo.zoo_pipeline import PRESETS

TINY = str(CFG_DIR / "ecc-tiny-11.yaml")


def test_a_target_domain_shows_the_same_scene_in_other_colours():
    for difficulty in ("easy", "hard", "complex"):
        source, dusk = render_frame(3, 7, difficulty, 96), render_frame(3, 7, difficulty, 96, domain="dusk")
        assert np.array_equal(source.boxes, dusk.boxes) and np.array_equal(source.classes, dusk.classes)
        assert len(source.boxes) > 0
        assert dusk.image.mean() < 0.8 * source.image.mean()  # low light
        b, g, r = dusk.image.reshape(-1, 3).mean(0) / np.maximum(source.image.reshape(-1, 3).mean(0), 1)
        assert b > r  # a blue cast
        assert np.array_equal(render_frame(3, 7, difficulty, 96, domain="dusk").image, dusk.image)  # deterministic
    assert np.array_equal(render_frame(3, 7, "hard", 96, domain="source").image, render_frame(3, 7, "hard", 96).image)
    with pytest.raises(ValueError, match="unknown domain 'night'.*source"):
        render_frame(3, 7, "easy", 96, domain="night")
    assert DOMAINS[0] == "source"


def test_a_target_dataset_records_its_domain(tmp_path):
    from ultralytics.utils import YAML

    data = generate_dataset(tmp_path / "dusk", train=4, val=2, imgsz=64, domain="dusk", progress=False)
    assert YAML.load(data)["synthetic"]["domain"] == "dusk"
    source = generate_dataset(tmp_path / "source", train=4, val=2, imgsz=64, progress=False)
    assert "domain" not in YAML.load(source)["synthetic"]  # source settings as before: old datasets are reused
    for name in ("000001.jpg", "000002.jpg"):  # same seed, same scenes, other camera
        a, b = (cv2.imread(str(tmp_path / d / "images" / "train" / name)) for d in ("source", "dusk"))
        assert a.shape == b.shape and a.mean() > b.mean()
    labels = [(tmp_path / d / "labels" / "train" / "000001.txt").read_text() for d in ("source", "dusk")]
    assert labels[0] == labels[1] and labels[0]


def _train(tmp_path, data, *extra: str) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "ecc_yolo", "train", f"model={tmp_path / 'start.pt'}", f"data={data}",
           "stage=adapt", "epochs=2", "imgsz=96", "batch=8", "plots=True", f"project={tmp_path}", "name=run",
           "exist_ok=True", "workers=0", *extra]
    return subprocess.run(cmd, cwd=REPO, env={**os.environ, "YOLO_OFFLINE": "1"}, capture_output=True, text=True)


@pytest.mark.slow
def test_label_free_adaptation_trains_on_images_without_any_label_file(tmp_path):
    data = generate_dataset(tmp_path / "dusk", train=24, val=16, imgsz=96, domain="dusk", progress=False)
    shutil.rmtree(tmp_path / "dusk" / "labels" / "train")  # target images only
    ECC(TINY).save(tmp_path / "start.pt")

    plain = _train(tmp_path, data)  # Ultralytics refuses a training split without labels ...
    assert plain.returncode != 0 and "No labels found" in plain.stdout + plain.stderr
    shutil.rmtree(tmp_path / "run", ignore_errors=True)
    r = _train(tmp_path, data, "stage=adapt_label_free", "det=1.0")  # ... label-free adaptation needs none
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert "det=1.0 set to 0" in r.stdout + r.stderr
    assert not (tmp_path / "dusk" / "labels" / "train").exists()  # nothing was read there, nor cached
    rows = results(tmp_path / "run")
    assert len(rows) == 2 and all(row["train/det"] == 0 for row in rows)
    assert all(row["train/feat"] > 0 and row["train/kd"] > 0 for row in rows)

    before, _ = load_ecc(tmp_path / "start.pt")
    after, _ = load_ecc(tmp_path / "run" / "weights" / "best.pt")
    last, _ = load_ecc(tmp_path / "run" / "weights" / "last.pt")
    assert not same_state(part_state(before, "adapters"), part_state(after, "adapters"))
    for part in ("edge", "cloud"):
        assert same_state(part_state(before, part), part_state(after, part)), f"frozen {part} changed"
    assert same_state(part_state(last, "adapters"), part_state(after, "adapters"))  # best.pt is the last epoch


def test_label_free_adaptation_is_one_registry_stage_and_label_free_true_selects_it():
    """The label-free stage is a registry entry like any other (what it trains, that it reads no labels, that its
    last epoch is best.pt); `label_free=True` is only a shorthand that names it."""
    from ecc_yolo.stages import LAST_EPOCH, STAGES, get_stage, stage_for

    free, adapt = get_stage("adapt_label_free"), get_stage("adapt")
    assert not free.reads_labels and adapt.reads_labels
    assert free.trainable == adapt.trainable and free.objective == adapt.objective == "adapt"
    assert free.metric == LAST_EPOCH and adapt.metric != LAST_EPOCH
    assert stage_for("adapt", label_free=True) is free and stage_for("adapt") is adapt
    assert stage_for("adapt_label_free", label_free=True) is free
    assert [s.name for s in STAGES.values() if not s.reads_labels] == ["adapt_label_free"]


def test_label_free_is_refused_outside_stage_adapt(tmp_path):
    from ecc_yolo.engine.trainer import ECCTrainer

    with pytest.raises(ValueError, match="label_free=True is an option of stage=adapt"):
        ECCTrainer(overrides={"model": TINY, "data": "unused.yaml", "stage": "gate", "label_free": True,
                              "project": str(tmp_path)})


@pytest.mark.slow
def test_label_free_adaptation_moves_the_adapted_route_towards_the_cloud_on_the_target_domain(tiny_zoo, tmp_path):
    """From the tiny zoo's source-trained model: adapting on unlabeled dusk images lowers the feature-matching
    distance to the cloud on held-out dusk images it never saw (the objective that needs no labels)."""
    target = generate_dataset(tmp_path / "target", train=128, val=32, imgsz=128, seed=1, domain="dusk",
                              progress=False, version=PRESETS["tiny"]["generator"])  # the tiny zoo's source data
    shutil.rmtree(tmp_path / "target" / "labels" / "train")
    ckpt = tiny_zoo / "ecc-synth-tiny.pt"
    cmd = [sys.executable, "-m", "ecc_yolo", "train", f"model={ckpt}", f"data={target}", "stage=adapt",
           "label_free=True", "epochs=6", "imgsz=128", "batch=16", "plots=False", f"project={tmp_path}",
           "name=lf", "exist_ok=True", "optimizer=AdamW", "lr0=0.002", "workers=0"]
    r = subprocess.run(cmd, cwd=REPO, env={**os.environ, "YOLO_OFFLINE": "1"}, capture_output=True, text=True)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    files = sorted((tmp_path / "target" / "images" / "val").glob("*.jpg"))
    images = torch.cat([input_tensor([cv2.imread(str(f))]) for f in files])
    models = [load_ecc(ckpt)[0], load_ecc(tmp_path / "lf" / "weights" / "best.pt")[0]]
    with torch.no_grad():
        distance = [float(m.feature_distance(m.adapt(m.edge_features(images)), m.cloud_cuts(images))) for m in models]
    assert distance[1] < 0.9 * distance[0], distance
