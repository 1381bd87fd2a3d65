"""MEANet's multi-exit edge: the extension block, the exit router, exit-by-exit costs, and what a main-exit frame runs."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from conftest import CFG_DIR, REPO

from ecc_yolo.checkpoint import load_ecc
from ecc_yolo.costs import ecc_costs
from ecc_yolo.engine.model import ECC
from ecc_yolo.eval.cache import RouteCache
from ecc_yolo.eval.coco_eval import RouteMixEvaluator
from ecc_yolo.eval.routers import RouterSweep
from ecc_yolo.nn.ecc_model import ECCModel
from ecc_yolo.policy import EXIT_CODES, three_exit_choice
from ecc_yolo.spec import ECCConfigError, load_spec

MEANET = CFG_DIR / "ecc-tiny-meanet.yaml"


@pytest.fixture(scope="module")
def meanet():
    return ECCModel(MEANET, verbose=False).eval()


@pytest.mark.parametrize(
    "extension, field, message",
    [
        ({"depth": 0}, "extension.depth", "positive integer"),
        ({"width": 3}, "extension.width", "unknown key"),
        ({"layers": [16, 40]}, "extension.layers", "not a feature-map layer"),
        ({"layers": [19, 16]}, "extension.layers", "increasing strides"),
        ("deep", "extension", "must be a mapping"),
    ],
)
def test_extension_block_cfg_is_validated(extension, field, message):
    cfg = {**load_spec(MEANET).to_dict(), "extension": extension}
    with pytest.raises(ECCConfigError) as e:
        ECCModel(cfg, verbose=False)
    assert f": {field}: " in str(e.value) and message in str(e.value)


def test_extension_is_a_detector_with_its_own_head(meanet):
    x = torch.rand(2, 3, 128, 128)
    with torch.no_grad():
        out = meanet.run_routes(x)
        assert set(out) >= {"edge", "extension", "adapted", "cloud", "gate", "router"}
        assert out["router"].shape == (2, 3)
        assert out["extension"][0].shape == out["edge"][0].shape  # same anchors and classes as the main exit
        assert torch.equal(meanet.set_route("extension")(x)[0], out["extension"][0])
    assert meanet.routes == ("edge", "cloud", "adapted", "extension")


def test_costs_are_counted_exit_by_exit(meanet):
    c = ecc_costs(meanet, 128)
    assert c["extension_gflops"] > 0 and c["router_gflops"] >= 0
    assert c["params"]["extension"] > 0 and c["params"]["router"] > 0
    # an evaluation that stops some frames at each exit charges each frame only what it ran
    n = 6
    dets = [np.zeros((0, 6), np.float32)] * n
    detections = {r: dets for r in ("edge", "cloud", "adapted", "extension")}
    logits = np.array([[5, 0, 0], [5, 0, 0], [0, 5, 0], [0, 5, 0], [0, 5, 0], [0, 0, 5]], dtype=np.float32)
    costs = {**c, "edge_gflops": 1.0, "gate_gflops": 0.01, "router_gflops": 0.02, "extension_gflops": 0.5,
             "adapter_encoder_gflops": 0.1, "adapted_cloud_gflops": 3.0, "cloud_gflops": 6.0}
    cache = RouteCache(detections, np.zeros((n, 2)), np.full(n, 1000), np.full(n, 9000), costs, {}, logits)
    from ecc_yolo.eval.dataset import EvalDataset

    dataset = EvalDataset([], list(range(1, n + 1)), {"images": [{"id": i, "width": 64, "height": 64}
                                                                 for i in range(1, n + 1)],
                                                      "annotations": [], "categories": [{"id": 1, "name": "0"}]},
                          {0: 1})
    sweep = RouterSweep(cache, RouteMixEvaluator(dataset, detections))
    from ecc_yolo.routes import exits_to_routes

    point = sweep.point("MEANet", exits_to_routes(three_exit_choice(logits)), 1 / 6)
    assert point.extension_share == pytest.approx(0.5) and point.adapted_share == pytest.approx(1 / 6)
    assert point.device_gflops == pytest.approx(1.0 + 0.01 + 0.02 + 0.5 * 0.5 + 0.1 / 6)
    assert point.cloud_gflops == pytest.approx(3.0 / 6) and point.bytes_per_frame == pytest.approx(1000 / 6)
    assert point.bytes_per_offloaded_frame == pytest.approx(1000)


def test_a_frame_stopped_at_the_main_exit_runs_neither_the_extension_nor_the_cloud(tmp_path):
    ecc = ECC(str(MEANET))
    with torch.no_grad():  # the router sends everything to the main exit
        ecc.model.router.mlp[-1].bias.copy_(torch.tensor([5.0, 0.0, 0.0]))
    calls = {"extension": 0, "cloud": 0, "adapters": 0}
    ecc.model.extension.register_forward_hook(lambda *a: calls.__setitem__("extension", calls["extension"] + 1))
    ecc.model.cloud.model[-1].register_forward_hook(lambda *a: calls.__setitem__("cloud", calls["cloud"] + 1))
    for adapter in ecc.model.adapters.values():
        adapter.register_forward_hook(lambda *a: calls.__setitem__("adapters", calls["adapters"] + 1))
    from ultralytics import ASSETS

    results = ecc.predict([str(ASSETS / "bus.jpg"), str(ASSETS / "zidane.jpg")], route="auto", imgsz=128,
                          verbose=False)
    assert [r.route for r in results] == ["edge", "edge"]
    assert calls == {"extension": 0, "cloud": 0, "adapters": 0}
    with torch.no_grad():  # now the router stops them at the extension exit: the cloud still does not run
        ecc.predictor.model.model.router.mlp[-1].bias.copy_(torch.tensor([0.0, 5.0, 0.0]))
    results = ecc.predict(str(ASSETS / "bus.jpg"), route="auto", imgsz=128, verbose=False)
    assert [r.route for r in results] == ["extension"]
    assert three_exit_choice(np.array([[0.0, 5.0, 0.0]]))[0] == EXIT_CODES["extension"]


@pytest.mark.slow
def test_extension_and_gate_stages_train_the_extension_and_the_router(synth_data, tmp_path):
    start = tmp_path / "start.pt"
    ECC(str(MEANET)).save(start)
    env = {**os.environ, "YOLO_OFFLINE": "1"}
    for stage, trained in (("extension", {"extension"}), ("gate", {"router"})):
        cmd = [sys.executable, "-m", "ecc_yolo", "train", f"model={start}", f"data={synth_data}", f"stage={stage}",
               "epochs=1", "imgsz=96", "batch=8", "plots=False", f"project={tmp_path}", f"name={stage}",
               "exist_ok=True"]
        r = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True)
        assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
        before, _ = load_ecc(start)
        after, _ = load_ecc(tmp_path / stage / "weights" / "last.pt")
        for part in ("edge", "cloud", "adapters", "extension", "router"):
            same = all(torch.equal(a.float(), b.float()) for a, b in
                       zip(getattr(before, part).state_dict().values(), getattr(after, part).state_dict().values()))
            assert same == (part not in trained), f"stage={stage}: {part}"
        header = (tmp_path / stage / "results.csv").read_text().splitlines()[0]
        assert "metrics/extension_mAP50-95(B)" in header and "metrics/meanet_mAP50-95(B)" in header


@pytest.mark.slow
def test_three_exit_benchmark_reports_shares_costs_and_difficulty_confusion(tiny_zoo):
    summary = json.loads((tiny_zoo / "runs" / "test_val" / "summary.json").read_text())
    meanet = summary["meanet"]
    assert abs(sum(meanet["exit_shares"].values()) - 1) < 1e-9
    assert set(meanet["confusion"]) <= {"easy", "hard", "complex"}
    assert sum(sum(row.values()) for row in meanet["confusion"].values()) == summary["images"]
    at = meanet["confusion_at_0.3"]  # at a fixed offload ratio: exactly that share of the frames is offloaded
    assert sum(sum(row.values()) for row in at.values()) == summary["images"]
    assert sum(row["cloud"] for row in at.values()) == round(0.3 * summary["images"])
    costs = json.loads((tiny_zoo / "runs" / "test_val" / "cache.json").read_text())["costs"]
    shares = meanet["exit_shares"]
    expected = (costs["edge_gflops"] + costs["gate_gflops"] + costs["router_gflops"]
                + shares["extension"] * costs["extension_gflops"] + shares["cloud"] * costs["adapter_encoder_gflops"])
    assert meanet["own_decision"]["device_gflops"] == pytest.approx(expected)
    assert "Three exits" in (tiny_zoo / "runs" / "test_val" / "summary.md").read_text()


def test_stream_client_stops_frames_at_the_exit_the_router_picks(synth_video, tmp_path):
    """detect route=auto on a multi-exit edge: frames the router sends to the extension are answered on the device."""
    from conftest import free_port

    from ecc_yolo.serve.client import detect

    ecc = ECC(str(MEANET))
    with torch.no_grad():
        ecc.model.router.mlp[-1].bias.copy_(torch.tensor([0.0, 5.0, 0.0]))  # every frame: hard, extension exit
    summary = detect({"model": str(ecc.save(tmp_path / "m.pt")), "source": str(synth_video), "route": "auto",
                      "cloud": f"http://127.0.0.1:{free_port()}", "imgsz": 128, "save": True,
                      "project": str(tmp_path), "name": "d", "verbose": False})
    assert summary["frames"] == 30 and summary["routes"]["extension"] == 30 and summary["bytes_sent"] == 0
    records = [json.loads(line) for line in (tmp_path / "d" / "detections.jsonl").read_text().splitlines()]
    assert [r["frame"] for r in records] == list(range(30)) and {r["route"] for r in records} == {"extension"}


def test_router_class_weights_lift_the_rare_exits():
    from ecc_yolo.losses import router_class_weights

    labels = np.array([0] * 30 + [1] * 2 + [2])  # mostly easy frames, as on the zoo
    w = router_class_weights(labels, rrb=2.0).numpy()
    assert w[1] > 5 * w[0] and w[2] > w[1]  # rarer classes weigh more, complex also by rrb
    assert np.isclose(w[2] / 2.0, (33 + 3) / (3 * 2))
    # a balanced batch: equal weights but for rrb; balance=False: the plain rrb weighting
    assert np.allclose(router_class_weights(np.array([0, 1, 2] * 5), rrb=1.0).numpy(), 1.0)
    assert np.allclose(router_class_weights(labels, rrb=2.0, balance=False).numpy(), [1, 1, 2])
    # the weighted loss of always answering "easy" is now higher than of spreading over the classes seen
    logits = torch.tensor([[5.0, 0.0, 0.0]]).repeat(len(labels), 1)
    target = torch.from_numpy(labels)
    plain = torch.nn.functional.cross_entropy(logits, target)
    weighted = torch.nn.functional.cross_entropy(logits, target, weight=torch.from_numpy(w).float())
    assert weighted > 3 * plain
