"""Evaluation: the pycocotools mAP path, route mixes, router sweeps and the benchmark script."""

from __future__ import annotations

import contextlib
import io
import json
import os
import subprocess
import sys

import cv2
import numpy as np
import pytest
import torch
from conftest import CFG_DIR, REPO
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from ecc_yolo.eval.cache import RouteCache
from ecc_yolo.eval.coco_eval import RouteMixEvaluator
from ecc_yolo.eval.dataset import (
    DatasetError,
    EvalDataset,
    from_coco_json,
    load_dataset,
    map_categories,
)
from ecc_yolo.eval.routers import RouterSweep, auc

NAMES = {0: "cat", 1: "dog", 2: "bird"}
CAT_IDS = {0: 17, 1: 18, 2: 90}  # non-contiguous, as in COCO's 91-id map


def _coco_dataset(tmp_path, n_images=6, seed=0, crowd=True):
    """A hand-built COCO json: crowd boxes, an empty image, non-contiguous category ids; images on disk."""
    rng = np.random.default_rng(seed)
    images, anns = [], []
    (tmp_path / "images").mkdir(exist_ok=True)
    for i in range(n_images):
        image_id = 100 + 7 * i  # arbitrary, non-contiguous image ids
        cv2.imwrite(str(tmp_path / "images" / f"{image_id}.jpg"), np.zeros((200, 300, 3), np.uint8))
        images.append({"id": image_id, "file_name": f"{image_id}.jpg", "width": 300, "height": 200})
        if i == 1:
            continue  # an image without objects
        for _ in range(int(rng.integers(1, 5))):
            x, y = rng.uniform(0, 200), rng.uniform(0, 120)
            w, h = rng.uniform(20, 90), rng.uniform(20, 70)
            anns.append({"id": len(anns) + 1, "image_id": image_id, "category_id": CAT_IDS[int(rng.integers(3))],
                         "bbox": [x, y, w, h], "area": w * h, "iscrowd": 0})
        if crowd and i == 2:
            anns.append({"id": len(anns) + 1, "image_id": image_id, "category_id": 17, "bbox": [0, 0, 120, 80],
                         "area": 9600.0, "iscrowd": 1})
    coco = {"images": images, "annotations": anns,
            "categories": [{"id": CAT_IDS[k], "name": v} for k, v in NAMES.items()]}
    path = tmp_path / "instances.json"
    path.write_text(json.dumps(coco))
    return from_coco_json(tmp_path / "images", path, NAMES)


def _detections(dataset: EvalDataset, seed: int, noise: float, miss: float, false: int) -> list[np.ndarray]:
    """Per-image detections derived from the ground truth: jittered, some missed, some false alarms."""
    rng = np.random.default_rng(seed)
    cat_to_class = {c: k for k, c in dataset.class_to_cat.items()}
    out = []
    for image_id in dataset.image_ids:
        rows = []
        for a in dataset.coco["annotations"]:
            if a["image_id"] != image_id or a.get("iscrowd") or rng.random() < miss:
                continue
            x, y, w, h = np.array(a["bbox"]) + rng.normal(0, noise, 4)
            rows.append([x, y, x + w, y + h, rng.uniform(0.3, 1.0), cat_to_class[a["category_id"]]])
        for _ in range(false):
            x, y = rng.uniform(0, 250, 2)
            rows.append([x, y, x + 40, y + 40, rng.uniform(0.0, 0.6), int(rng.integers(3))])
        out.append(np.array(rows, dtype=np.float32).reshape(-1, 6))
    return out


def _pycocotools_map(dataset: EvalDataset, detections: list[np.ndarray], image_ids=None) -> float:
    """Reference: pycocotools' own loadRes + evaluate + accumulate + summarize."""
    gt = COCO()
    gt.dataset = dataset.coco
    with contextlib.redirect_stdout(io.StringIO()):
        gt.createIndex()
        res = [{"image_id": i, "category_id": dataset.class_to_cat[int(d[5])],
                "bbox": [float(d[0]), float(d[1]), float(d[2] - d[0]), float(d[3] - d[1])], "score": float(d[4])}
               for i, det in zip(dataset.image_ids, detections) for d in det]
        e = COCOeval(gt, gt.loadRes(res), "bbox")
        e.params.imgIds = list(image_ids if image_ids is not None else dataset.image_ids)
        e.evaluate()
        e.accumulate()
        e.summarize()
    return float(e.stats[0])


def test_route_mixes_equal_pycocotools_on_the_mixed_detections(tmp_path):
    dataset = _coco_dataset(tmp_path)
    routes = {"edge": _detections(dataset, 1, 12, 0.4, 2), "cloud": _detections(dataset, 2, 3, 0.1, 1),
              "adapted": _detections(dataset, 3, 6, 0.2, 1)}
    ev = RouteMixEvaluator(dataset, routes)
    for name in routes:
        assert ev.route_map(name)[0] == pytest.approx(_pycocotools_map(dataset, routes[name]), abs=1e-9)
    assignment = np.array([0, 1, 2, 1, 0, 2])
    mixed = [routes[ev.routes[a]][i] for i, a in enumerate(assignment)]
    assert ev.map(assignment)[0] == pytest.approx(_pycocotools_map(dataset, mixed), abs=1e-9)
    subset = np.array([True, False, True, True, False, True])
    expected = _pycocotools_map(dataset, mixed, [i for i, s in zip(dataset.image_ids, subset) if s])
    assert ev.map(assignment, subset)[0] == pytest.approx(expected, abs=1e-9)


def test_map_agrees_with_ultralytics_validator_on_the_same_predictions(tmp_path):
    from ultralytics.models.yolo.detect import DetectionValidator
    from ultralytics.utils.metrics import DetMetrics, box_iou

    dataset = _coco_dataset(tmp_path, n_images=60, seed=5, crowd=False)
    dets = _detections(dataset, 9, 2.5, 0.15, 2)
    ours = RouteMixEvaluator(dataset, {"edge": dets}).route_map("edge")[0]

    validator = DetectionValidator()
    metrics = DetMetrics(names=NAMES)
    cat_to_class = {c: k for k, c in dataset.class_to_cat.items()}
    for image_id, det in zip(dataset.image_ids, dets):
        anns = [a for a in dataset.coco["annotations"] if a["image_id"] == image_id]
        gt = torch.tensor([[a["bbox"][0], a["bbox"][1], a["bbox"][0] + a["bbox"][2], a["bbox"][1] + a["bbox"][3]]
                           for a in anns]).reshape(-1, 4)
        gt_cls = torch.tensor([cat_to_class[a["category_id"]] for a in anns], dtype=torch.float32)
        det = torch.from_numpy(det[np.argsort(-det[:, 4])])
        tp = validator.match_predictions(det[:, 5], gt_cls, box_iou(gt, det[:, :4])).numpy() if len(gt) and len(det) \
            else np.zeros((len(det), 10), bool)
        metrics.update_stats({"tp": tp, "conf": det[:, 4].numpy(), "pred_cls": det[:, 5].numpy(),
                              "target_cls": gt_cls.numpy(), "target_img": np.unique(gt_cls.numpy()),
                              "im_name": str(image_id)})
    metrics.process()
    ultralytics_map = metrics.box.map
    assert ours > 0.3  # a meaningful level, not two zeros agreeing
    assert abs(ours - ultralytics_map) <= 0.01, (ours, ultralytics_map)


def test_dataset_errors_are_clear(tmp_path):
    dataset = _coco_dataset(tmp_path)
    with pytest.raises(DatasetError, match="annotation file .* not found"):
        from_coco_json(tmp_path / "images", tmp_path / "nope.json", NAMES)
    (tmp_path / "empty").mkdir()
    empty = tmp_path / "empty.json"
    empty.write_text(json.dumps({"images": [], "annotations": [], "categories": dataset.coco["categories"]}))
    with pytest.raises(DatasetError, match="no images"):
        from_coco_json(tmp_path / "empty", empty, NAMES)
    with pytest.raises(DatasetError, match="do not match the model"):
        map_categories({0: "car", 1: "dog"}, dataset.coco["categories"])
    with pytest.raises(DatasetError, match="neither a data YAML nor a COCO layout"):
        load_dataset(tmp_path / "instances.json", NAMES)


def _fake_cache(dataset, seed=0) -> RouteCache:
    """A cached run without running a model: edge weak, adapted better, cloud best; gate scores correlate."""
    routes = {"edge": _detections(dataset, seed, 14, 0.5, 3), "cloud": _detections(dataset, seed + 1, 2, 0.05, 0),
              "adapted": _detections(dataset, seed + 2, 5, 0.2, 1)}
    n = len(dataset)
    rng = np.random.default_rng(seed)
    costs = {"edge_gflops": 1.0, "gate_gflops": 0.001, "adapter_encoder_gflops": 0.01, "adapted_cloud_gflops": 3.0,
             "cloud_gflops": 6.0, "adapted_gflops_ratio": 0.5}
    return RouteCache(routes, rng.normal(size=(n, 2)), np.full(n, 2000), np.full(n, 10000), costs, {})


def test_router_sweep_endpoints_costs_and_oracle(tmp_path):
    dataset = _coco_dataset(tmp_path, n_images=40, seed=3)
    cache = _fake_cache(dataset)
    ev = RouteMixEvaluator(dataset, cache.detections)
    curves = RouterSweep(cache, ev, seeds=3).all_curves(np.round(np.linspace(0, 1, 11), 3))
    edge, cloud, adapted = (ev.route_map(r)[0] for r in ("edge", "cloud", "adapted"))
    for router in ("ECC_D", "ECC_I", "ECC_D+", "oracle_D", "random_D"):
        assert curves[router][0].map == pytest.approx(edge)  # offload ratio 0 = edge only
        assert curves[router][0].bytes_per_frame == 0 and curves[router][0].cloud_gflops == 0
    assert curves["ECC_I"][-1].map == pytest.approx(cloud)  # ratio 1 with ECC_I = the cloud
    assert curves["ECC_D"][-1].map == pytest.approx(adapted) == pytest.approx(curves["ECC_A"][0].map)
    last = curves["ECC_D"][-1]
    assert last.bytes_per_frame == 2000 and last.bytes_per_offloaded_frame == 2000
    assert last.cloud_gflops == pytest.approx(3.0) and last.device_gflops == pytest.approx(1.011)
    assert curves["ECC_I"][-1].bytes_per_frame == 10000 and curves["ECC_I"][-1].cloud_gflops == pytest.approx(6.0)
    for router, oracle in (("ECC_D", "oracle_D"), ("ECC_I", "oracle_I"), ("random_D", "oracle_D")):
        assert all(o.map >= r.map - 1e-9 for o, r in zip(curves[oracle], curves[router]))
    assert auc(curves["oracle_D"]) > auc(curves["random_D"])


@pytest.fixture(scope="module")
def coco_layout(tmp_path_factory):
    """A COCO layout (val2017/ + annotations/instances_val2017.json) made of synthetic images, with ids like COCO's."""
    from ecc_yolo.data.synthetic import CLASS_NAMES, generate_split

    root = tmp_path_factory.mktemp("coco")
    coco_json = generate_split(root / "src", "val", 16, imgsz=96, seed=3, progress=False)
    coco = json.loads(coco_json.read_text())
    remap = {c["id"]: 10 + 3 * c["id"] for c in coco["categories"]}  # non-contiguous category ids
    for c in coco["categories"]:
        c["id"] = remap[c["id"]]
    for a in coco["annotations"]:
        a["category_id"] = remap[a["category_id"]]
    (root / "val2017").mkdir()
    for im in coco["images"]:
        (root / "val2017" / im["file_name"]).write_bytes((root / "src" / "images" / "val" / im["file_name"]).read_bytes())
    (root / "annotations").mkdir()
    (root / "annotations" / "instances_val2017.json").write_text(json.dumps(coco))
    assert len(CLASS_NAMES) == 8
    return root


def _bench(*args, cwd=REPO):
    env = {**os.environ, "YOLO_OFFLINE": "1"}
    return subprocess.run([sys.executable, str(REPO / "tools" / "benchmark_coco.py"), *args], cwd=cwd, env=env,
                          capture_output=True, text=True)


@pytest.mark.slow
def test_benchmark_script_on_a_coco_layout_with_official_style_checkpoints(coco_layout, tmp_path):
    """A cfg plus edge/cloud Ultralytics .pt files (as a user with yolo11n.pt / yolo11l.pt runs it), COCO layout."""
    from copy import deepcopy

    from ultralytics.nn.tasks import DetectionModel

    from ecc_yolo.data.synthetic import CLASS_NAMES
    from ecc_yolo.spec import load_spec

    tiny = load_spec(CFG_DIR / "ecc-tiny-11.yaml").to_dict()
    paths = []
    for part in ("edge", "cloud"):
        m = DetectionModel(tiny[part], nc=8, verbose=False)
        m.names = dict(enumerate(CLASS_NAMES))
        paths.append(tmp_path / f"{part}.pt")
        torch.save({"model": deepcopy(m).half(), "train_args": {}}, paths[-1])
    out = tmp_path / "run"
    args = ["--cfg", str(CFG_DIR / "ecc-tiny-11.yaml"), "--edge", str(paths[0]), "--cloud", str(paths[1]),
            "--coco", str(coco_layout), "--imgsz", "96", "--batch", "8", "--out", str(out)]
    r = _bench(*args)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    summary = json.loads((out / "summary.json").read_text())
    for key in ("images", "edge_map", "cloud_map", "adapted_map", "adapted_cloud_gflops_share_of_cloud",
                "adapted_end_to_end_gflops_share_of_cloud", "ecc_d_normalised_score", "ecc_d_raw_auc_vs_oracle",
                "ecc_d_offload_at_99pct_cloud", "ecc_d_bytes_per_offloaded_frame", "ecc_d_bytes_per_frame",
                "ecc_d_plus_normalised_score", "ecc_d_plus_offload_at_99pct_cloud",
                "ecc_d_plus_bytes_per_offloaded_frame"):
        assert key in summary
    assert summary["images"] == 16 and 0 <= summary["cloud_map"] <= 1
    for name in ("curve.csv", "summary.md", "map_vs_offload.png", "map_vs_gflops.png", "map_vs_kb.png", "pareto.png"):
        assert (out / name).stat().st_size > 0
    # A trained ECC checkpoint evaluated twice: the second run only re-sweeps (a cfg-built model gets fresh random
    # adapters each time, so its cache rightly does not match).
    from ecc_yolo.engine.model import ECC

    ECC(str(CFG_DIR / "ecc-tiny-11.yaml"), edge_model=str(paths[0]), cloud_model=str(paths[1])).save(tmp_path / "e.pt")
    again = ["--model", str(tmp_path / "e.pt"), "--coco", str(coco_layout), "--imgsz", "96", "--out", str(out / "m")]
    assert _bench(*again).returncode == 0
    cache_time = (out / "m" / "cache.npz").stat().st_mtime_ns
    r = _bench(*again)
    assert r.returncode == 0 and (out / "m" / "cache.npz").stat().st_mtime_ns == cache_time
    assert "running edge, adapted and cloud routes" not in r.stderr + r.stdout

    no_annotations = tmp_path / "no_annotations"
    (no_annotations / "val2017").mkdir(parents=True)
    bad = _bench("--cfg", str(CFG_DIR / "ecc-tiny-11.yaml"), "--coco", str(no_annotations), "--imgsz", "96")
    assert bad.returncode != 0 and "annotation file" in bad.stderr and "not found" in bad.stderr
    empty = tmp_path / "empty"
    (empty / "val2017").mkdir(parents=True)
    (empty / "annotations").mkdir()
    coco = json.loads((coco_layout / "annotations" / "instances_val2017.json").read_text())
    (empty / "annotations" / "instances_val2017.json").write_text(json.dumps({**coco, "images": [], "annotations": []}))
    bad = _bench("--cfg", str(CFG_DIR / "ecc-tiny-11.yaml"), "--coco", str(empty), "--imgsz", "96")
    assert bad.returncode != 0 and "no images" in bad.stderr
    r = _bench("--model", "ecc-synth-n-s", "--coco", str(coco_layout))
    assert r.returncode != 0 and "not shipped" in r.stderr + r.stdout or "zoo" in r.stderr


@pytest.mark.slow
def test_synthetic_preset_runs_on_a_fresh_seed(tmp_path):
    from ecc_yolo.engine.model import ECC

    ECC(str(CFG_DIR / "ecc-tiny-26.yaml")).save(tmp_path / "ecc.pt")
    r = _bench("--preset", "synthetic", "--model", str(tmp_path / "ecc.pt"), "--seed", "777", "--images", "24",
               "--imgsz", "96", "--out", str(tmp_path / "run"), "--no-plots", cwd=tmp_path)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["images"] == 24 and set(summary["per_difficulty"]) <= {"easy", "hard", "complex"}


def test_fast_map_equals_pycocotools_on_random_mixes(tmp_path):
    dataset = _coco_dataset(tmp_path, n_images=30, seed=11)
    routes = {"edge": _detections(dataset, 1, 10, 0.4, 2), "cloud": _detections(dataset, 2, 3, 0.1, 1),
              "adapted": _detections(dataset, 3, 6, 0.2, 1)}
    ev = RouteMixEvaluator(dataset, routes)
    rng = np.random.default_rng(0)
    for _ in range(5):
        assignment = rng.integers(0, 3, len(dataset))
        assert ev.fast_map(assignment) == pytest.approx(ev.map(assignment), abs=1e-12)
    gains = ev.marginal_gains("cloud")
    assert gains.shape == (30,) and np.isfinite(gains).all()


def test_fast_map_on_an_image_subset_and_chunked_gains_equal_pycocotools(tmp_path):
    dataset = _coco_dataset(tmp_path, n_images=20, seed=5)
    routes = {"edge": _detections(dataset, 1, 10, 0.4, 2), "cloud": _detections(dataset, 2, 3, 0.1, 1)}
    ev = RouteMixEvaluator(dataset, routes)
    subset = np.arange(20) >= 12
    assignment = np.random.default_rng(1).integers(0, 2, 20)
    assert ev.fast_map(assignment, subset) == pytest.approx(ev.map(assignment, subset), abs=1e-12)
    gains = ev.marginal_gains("cloud", chunk=8)  # groups 0-7, 8-15, 16-19
    base = np.zeros(20, dtype=np.int64)
    group = (np.arange(20) >= 16)
    switched = base.copy()
    switched[17] = 1
    expected = (ev.map(switched, group)[0] - ev.map(base, group)[0]) * 4
    assert gains[17] == pytest.approx(expected, abs=1e-9)
    assert not np.allclose(gains, ev.marginal_gains("cloud"))  # groups change what an image's gain is measured on


@pytest.mark.slow
def test_training_validation_and_the_benchmark_report_the_same_map(tiny_zoo, tmp_path):
    """Training-time validation (`ECCValidator`) and `ecc-yolo val` score the same images with one mAP: every route
    and ECC_D at the operating offload ratio agree within 0.002. The benchmark is the zoo pipeline's own
    `ecc-yolo val model=ecc-synth-tiny.pt data=test/data.yaml imgsz=128 batch=16` (runs/test_val)."""
    import csv

    from ecc_yolo.engine.validator import ECCValidator

    ckpt, data = tiny_zoo / "ecc-synth-tiny.pt", tiny_zoo / "test" / "data.yaml"
    bench = tiny_zoo / "runs" / "test_val"
    v = ECCValidator(args=dict(model=str(ckpt), data=str(data), imgsz=128, batch=16, plots=False, stage="gate",
                               offload=0.3, device="cpu", project=str(tmp_path), name="val", exist_ok=True))
    v(model=str(ckpt))
    summary = json.loads((bench / "summary.json").read_text())
    assert summary["imgsz"] == 128 and summary["data"] == str(data)
    rows = list(csv.DictReader(open(bench / "curve.csv")))
    eccd = next(r for r in rows if r["router"] == "ECC_D" and float(r["ratio"]) == pytest.approx(0.3))
    pairs = {"ECC_D": (v.metrics.ecc["metrics/eccd_mAP50-95(B)"], float(eccd["map"])),
             "ECC_D mAP50": (v.metrics.ecc["metrics/eccd_mAP50(B)"], float(eccd["map50"]))}
    for route in v.routes:
        pairs[route] = (v.metrics.ecc[f"metrics/{route}_mAP50-95(B)"], summary[f"{route}_map"])
        pairs[f"{route} mAP50"] = (v.metrics.ecc[f"metrics/{route}_mAP50(B)"], summary[f"{route}_map50"])
    assert summary["images"] == len(v.gate_scores_all)
    assert max(b for _, b in pairs.values()) > 0, "nothing detected: the comparison would be vacuous"
    off = {k: (a, b) for k, (a, b) in pairs.items() if abs(a - b) > 0.002}
    assert not off, f"validation vs benchmark: {off}"


def test_the_headline_goals_are_judged_from_the_summary():
    from ecc_yolo.eval.benchmark import goals

    def est(value, lo, hi):
        return {"value": value, "ci": [lo, hi]}

    summary = {"adapted_share_of_cloud_map": est(0.975, 0.96, 0.99), "adapted_end_to_end_gflops_share_of_cloud": 0.55,
               "ecc_d_offload_at_99pct_cloud": 0.6, "ecc_d_plus_offload_at_99pct_cloud": 0.45,
               "ecc_d_normalised_score": est(0.9, 0.8, 1.0), "ecc_d_plus_normalised_score": est(0.5, 0.3, 0.7),
               "ecc_i_normalised_score": est(0.85, 0.7, 0.95), "ecc_d_gain_share_vs_oracle_at_0.2": est(0.5, 0.4, 0.6),
               "ecc_d_plus_gain_share_vs_oracle_at_0.2": est(0.9, 0.8, 1.0),
               "ecc_i_gain_share_vs_oracle_at_0.2": est(0.85, 0.7, 0.9),
               "ecc_d_bytes_per_offloaded_frame_share_of_jpeg": est(0.08, 0.07, 0.09),
               "meanet": {"extension_share_in_sweep": 0.0,
                          "at_equal_total_gflops": {"ratios_at_least_ecc_d": 0.85,
                                                    "mean_difference": est(0.01, 0, 0.02)}}}
    judged = goals(summary, 0.99)
    assert [g["met"] for g in judged.values()] == [True, True, True, True, False]  # 5: the extension is never used
    summary["ecc_d_plus_vs_best_single"] = {"ratios_significantly_below": [],
                                            "largest_share_in_sweep": {"edge": 1.0, "features": 0.3, "jpeg": 0.05}}
    assert [g["met"] for g in goals(summary, 0.99).values()] == [True, True, True, True, False, False]  # 7: JPEG 5%
    summary["ecc_d_plus_vs_best_single"]["largest_share_in_sweep"]["jpeg"] = 0.5
    assert list(goals(summary, 0.99).values())[-1]["met"]
    summary["ecc_d_plus_vs_best_single"]["ratios_significantly_below"] = [0.4]
    assert not list(goals(summary, 0.99).values())[-1]["met"]
    del summary["ecc_d_plus_vs_best_single"]
    for g in judged.values():
        assert {"met", "value", "ci", "threshold", "checks"} <= set(g)
    assert list(judged.values())[2]["value"] == 0.85 and list(judged.values())[2]["ci"] == [0.7, 0.95]  # ECC_I
    summary["meanet"]["extension_share_in_sweep"] = 0.1
    summary.update(adapted_share_of_cloud_map=est(0.925, 0.9, 0.95), ecc_d_plus_offload_at_99pct_cloud=None,
                   ecc_i_normalised_score=est(0.6, 0.5, 0.7),
                   ecc_d_bytes_per_offloaded_frame_share_of_jpeg=est(0.2, 0.18, 0.22))
    assert [g["met"] for g in goals(summary, 0.99).values()] == [False, False, False, False, True]


def test_the_benchmark_reports_the_default_operating_point_and_ecc_d_plus_against_the_best_single_router(tiny_zoo):
    """The tiny zoo's test benchmark: what route=auto does at the gate stage's calibrated thresholds (recomputed here
    from the cached gate outputs), and ECC_D+ against max(ECC_D, ECC_I) per offload ratio."""
    from dataclasses import replace

    from ecc_yolo.checkpoint import load_ecc
    from ecc_yolo.deploy import model_settings
    from ecc_yolo.eval.cache import RouteCache

    bench = tiny_zoo / "runs" / "test_val"
    summary = json.loads((bench / "summary.json").read_text())
    settings = model_settings(load_ecc(tiny_zoo / "ecc-synth-tiny.pt")[0])
    assert settings.calibration["split"] == "validation" and settings.calibration["offload_share"] == 0.3
    op = summary["default_operating_point"]
    assert op["router"] == settings.router and op["calibration"] == settings.calibration
    cache = RouteCache.load(bench)
    for router, row in op["routers"].items():
        decision = replace(settings, router=router).decide(cache.gate, cache.router)
        assert row["offload_share"] == pytest.approx(decision.offloaded.mean())
        assert sum(row["route_shares"].values()) == pytest.approx(1.0)
    three = summary["ecc_d_plus_vs_best_single"]
    assert [p["ratio"] for p in three["difference_by_ratio"]] == pytest.approx(np.linspace(0, 1, 21).tolist())
    assert three["difference_by_ratio"][0]["value"] == 0.0  # nothing offloaded: all three are the edge
    assert three["largest_share_in_sweep"]["edge"] == 1.0
