"""Tracking of the edge client's final answers (`ecc-yolo track`, ecc_yolo/serve/tracking.py), the synthetic
videos' ground-truth track ids and the MOTA/IDF1 scoring (ecc_yolo/eval/tracking.py)."""

from __future__ import annotations

import json
from copy import deepcopy
from itertools import pairwise

import numpy as np
import pytest
import torch
from ultralytics.data.loaders import LoadImagesAndVideos
from ultralytics.engine.results import Results

from ecc_yolo.data.synthetic import generate_video, load_video_labels
from ecc_yolo.eval.tracking import accumulate, summarize, track_metrics
from ecc_yolo.serve.tracking import StreamTracker, tracker_config

NAMES = {i: f"c{i}" for i in range(8)}
ZOO = "ecc-synth2-q-n-160"
ZOO_IMGSZ = 160


def textured(seed: int = 0, size: int = 160) -> np.ndarray:
    """A frame with texture, so that botsort's optical-flow motion compensation finds corners."""
    return np.random.default_rng(seed).integers(0, 255, (size, size, 3), dtype=np.uint8)


def result(det, path: str = "clip.mp4", image: np.ndarray | None = None) -> Results:
    r = Results(textured() if image is None else image, path=path, names=NAMES,
                boxes=torch.tensor(det, dtype=torch.float32).reshape(-1, 6))
    r.record = {"frame": 0, "route": "edge", "boxes": []}
    return r


def moving(frame: int) -> list[list[float]]:
    """Two objects drifting one pixel a frame, in opposite directions."""
    return [[10 + frame, 20, 40 + frame, 50, 0.9, 1], [100 - frame, 90, 130 - frame, 130, 0.8, 3]]


@pytest.mark.parametrize("tracker", ["bytetrack.yaml", "botsort.yaml", "reid"])
def test_ids_hold_for_slowly_moving_objects_and_records_carry_them(tracker, tmp_path):
    if tracker == "reid":  # botsort with ReID on and the detector's own features ("auto"): none here, IoU only
        cfg = vars(tracker_config("botsort.yaml")) | {"with_reid": True}
        tracker = tmp_path / "botsort-reid.yaml"
        tracker.write_text("".join(f"{k}: {v}\n" for k, v in cfg.items()))
    st = StreamTracker(tracker)
    ids, changes = [], []
    for f in range(20):
        r = st.update(result(moving(f)), stream=0, fps=15)
        assert r.boxes.is_track and len(r.boxes) == 2
        assert [b["track_id"] for b in r.record["boxes"]] == r.boxes.id.int().tolist()
        assert [b["cls"] for b in r.record["boxes"]] == r.boxes.cls.int().tolist()
        np.testing.assert_allclose([b["xyxy"] for b in r.record["boxes"]], r.boxes.xyxy.numpy(), atol=0.01)
        ids.append({b["cls"]: b["track_id"] for b in r.record["boxes"]})
        changes.append(st.changed(0))
    assert all(x == ids[0] for x in ids) and len(set(ids[0].values())) == 2  # one id per object, all along
    assert changes[0] and not any(changes[1:])  # tracks started on the first frame only
    assert st._trackers[0].args.track_buffer == 15  # 30 frames at 30 FPS: the same second at 15 FPS
    st.update(result(moving(20)[:1]), stream=0, fps=15)  # the second object leaves
    assert st.changed(0) and st.events(0) == (set(), {ids[0][3]})
    st.update(result(moving(21)[:1]), stream=0, fps=15)
    assert not st.changed(0)


def test_ids_hold_when_the_answer_switches_between_routes():
    """Alternate frames answered by two "routes" whose boxes differ (offset, size, confidence, order, class):
    the tracker sees boxes only, so each object keeps its id."""
    st = StreamTracker("bytetrack.yaml")
    rng = np.random.default_rng(0)
    seen = []
    for f in range(30):
        det = np.array(moving(f), dtype=np.float64)
        if f % 2:  # the "cloud": tighter boxes, more confident, the other order, another class for the weak one
            det[:, :4] += rng.normal(0, 1.0, (2, 4)) + [1, 1, -1, -1]
            det[:, 4] = [0.95, 0.9]
            det[1, 5] = 4
            det = det[::-1].copy()
        r = st.update(result(det), fps=15)
        seen.append(sorted((b["xyxy"][0] > 55, b["track_id"]) for b in r.record["boxes"]))  # (object, id)
    first = seen[0]
    assert len(first) == 2 and all(s == first for s in seen), seen


def test_a_new_source_and_other_streams_get_their_own_tracks():
    st = StreamTracker("bytetrack.yaml")
    for f in range(3):
        a = st.update(result(moving(f), path="a.mp4"), stream=0)
        b = st.update(result(moving(f)[:1], path="cam1"), stream=1)
    assert sorted(a.boxes.id.int().tolist()) == [1, 2] and b.boxes.id.int().tolist() == [1]
    assert not st.changed(0) and not st.changed(1)
    c = st.update(result(moving(0)[1:], path="b.mp4"), stream=0)  # the folder's next video: ids start again
    assert c.boxes.id.int().tolist() == [1] and st.changed(0)


def test_untracked_detections_are_dropped_and_empty_frames_stay_empty():
    st = StreamTracker("bytetrack.yaml")
    r = st.update(result([[10, 10, 40, 40, 0.05, 0]]))  # below every threshold: never a track
    assert len(r.boxes) == 0 and r.record["boxes"] == []
    r = st.update(result(np.zeros((0, 6))))
    assert len(r.boxes) == 0 and r.record["boxes"] == [] and not st.changed(0)


def test_tracker_config_refuses_unknown_trackers(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("tracker_type: sort\ntrack_buffer: 30\n")
    with pytest.raises(ValueError, match="tracker_type must be one of"):
        tracker_config(bad)
    with pytest.raises(FileNotFoundError):
        tracker_config(tmp_path / "missing.yaml")


# -- ground truth -------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("version", ["1.0", "2.0"])
def test_generator_writes_ground_truth_track_ids(tmp_path, version):
    schedule = [(8, "easy"), (8, "complex"), (8, "hard")]
    video = generate_video(tmp_path / "v.mp4", frames=24, fps=10, imgsz=96, schedule=schedule, seed=3,
                           progress=False, version=version)
    labels = load_video_labels(video)
    segments = [labels[i:i + 8] for i in (0, 8, 16)]
    used = set()
    for seg in segments:
        ids = seg[0]["track_ids"]
        assert len(ids) == len(set(ids)) == len(seg[0]["boxes"]) > 0
        assert not used & set(ids)  # a new scene's objects are new tracks
        used |= set(ids)
        for prev, cur in pairwise(seg):  # the same objects, moving a little
            assert cur["track_ids"] == ids and cur["classes"] == prev["classes"]
            assert np.abs(np.array(cur["boxes"]) - np.array(prev["boxes"])).max() <= 4
    assert min(used) == 1 and max(used) == len(used)


# -- metrics ------------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def gt_video(tmp_path_factory):
    return generate_video(tmp_path_factory.mktemp("gt") / "gt.mp4", frames=30, fps=15, imgsz=128,
                          schedule=[(15, "easy"), (15, "hard")], seed=5, progress=False)


def perfect(labels) -> list[dict]:
    return [{"frame": x["frame"], "boxes": [{"xyxy": b, "cls": c, "track_id": 100 + t}
                                            for b, c, t in zip(x["boxes"], x["classes"], x["track_ids"])]}
            for x in labels]


def test_perfect_tracks_score_one_and_each_error_lowers_the_scores(gt_video):
    labels = load_video_labels(gt_video)
    m = track_metrics(gt_video, perfect(labels))
    assert m["mota"] == m["idf1"] == m["recall"] == m["precision"] == 1.0 and m["id_switches"] == 0
    assert m["objects"] == sum(len(x["boxes"]) for x in labels) and m["gt_tracks"] == len(
        {t for x in labels for t in x["track_ids"]})

    swapped = perfect(labels)
    for rec in swapped[5:]:  # the first object's id changes after frame 4
        rec["boxes"][0]["track_id"] = 999
    m = track_metrics(labels, swapped)
    assert m["id_switches"] >= 1 and m["idf1"] < 1.0 and m["mota"] < 1.0 and m["misses"] == 0

    missing = perfect(labels)
    missing[3]["boxes"] = missing[3]["boxes"][1:]
    del missing[7]  # a frame without a record: all misses
    m = track_metrics(labels, missing)
    assert m["misses"] == 1 + len(labels[7]["boxes"]) and m["false_positives"] == 0 and m["mota"] < 1.0

    shifted = perfect(labels)
    for b in shifted[2]["boxes"]:  # IoU < 0.5: a false positive and a miss each
        x1, y1, x2, y2 = b["xyxy"]
        b["xyxy"] = [x1 + (x2 - x1) * 0.6, y1, x2 + (x2 - x1) * 0.6, y2]
    m = track_metrics(labels, shifted)
    assert m["false_positives"] == m["misses"] == len(labels[2]["boxes"])

    wrong_class = perfect(labels)
    wrong_class[4]["boxes"][0]["cls"] = (labels[4]["classes"][0] + 1) % 8
    assert track_metrics(labels, wrong_class)["false_positives"] == 1  # class-aware by default
    assert track_metrics(labels, wrong_class, class_aware=False)["mota"] == 1.0


def test_metrics_take_tracked_results_and_refuse_untracked_records(gt_video):
    labels = load_video_labels(gt_video)
    results = []
    for x in labels:
        data = [[*b, t, 0.9, c] for b, c, t in zip(x["boxes"], x["classes"], x["track_ids"])]
        r = Results(np.zeros((128, 128, 3), np.uint8), path="gt.mp4", names=NAMES,
                    boxes=torch.tensor(data, dtype=torch.float32).reshape(-1, 7))
        results.append(r)
    assert track_metrics(labels, results)["idf1"] == 1.0
    untracked = [{"frame": 0, "boxes": [{"xyxy": [0, 0, 5, 5], "cls": 0, "conf": 0.5}]}]
    with pytest.raises(ValueError, match="track_id"):
        track_metrics(labels, untracked)
    with pytest.raises(ValueError, match="labels do not have"):
        track_metrics(labels, [{"frame": 999, "boxes": []}])
    both = summarize({"a": accumulate(labels, perfect(labels)), "b": accumulate(labels, perfect(labels)[:15])})
    assert both["a"]["mota"] == 1.0 and both["b"]["mota"] < 1.0 and both["b"]["mota"] < both["overall"]["mota"] < 1


# -- end to end: the shipped zoo model, a loopback server ----------------------------------------------------------
@pytest.fixture(scope="module")
def zoo_model():
    from ecc_yolo.checkpoint import load_ecc

    return load_ecc(ZOO)[0]


@pytest.fixture(scope="module")
def zoo_server(zoo_model):
    from ecc_yolo.serve.engine import CloudEngine
    from ecc_yolo.serve.server import BackgroundServer, ServerSettings, build_app

    with BackgroundServer(build_app(CloudEngine(deepcopy(zoo_model), imgsz=ZOO_IMGSZ), ServerSettings())) as srv:
        yield srv


def run_track(model, server, video, tmp_path, route: str, track: bool = True) -> tuple[dict, list[dict]]:
    from ecc_yolo.args import get_args
    from ecc_yolo.serve.client import detect

    name = f"{route}-{video.stem}-{track}"
    args = get_args({"model": ZOO, "source": str(video), "route": route, "cloud": server.url, "save": True,
                     "tracker": "bytetrack.yaml", "project": str(tmp_path), "name": name, "verbose": False})
    summary = detect(args, model=model, overrides={}, track=track)
    return summary, [json.loads(line) for line in (tmp_path / name / "detections.jsonl").read_text().splitlines()]


def test_ids_of_real_objects_hold_across_forced_switches_between_edge_and_cloud(zoo_model, zoo_server, tmp_path):
    """The zoo's edge and cloud answers of an easy video, interleaved frame by frame (edge, cloud, edge, ...) and
    tracked: each real object keeps one id through every switch, as on the cloud's answers alone."""
    video = generate_video(tmp_path / "easy.mp4", frames=30, fps=15, imgsz=ZOO_IMGSZ, schedule=[(30, "easy")],
                           seed=900, progress=False)
    frames = [im for _, ims, _ in LoadImagesAndVideos(str(video)) for im in ims]
    answers = {route: run_track(zoo_model, zoo_server, video, tmp_path, route, track=False)[1]
               for route in ("edge", "cloud")}
    st, mixed = StreamTracker("bytetrack.yaml"), []
    for f, image in enumerate(frames):
        rec = deepcopy(answers["edge" if f % 2 == 0 else "cloud"][f])
        det = [[*b["xyxy"], b["conf"], b["cls"]] for b in rec["boxes"]]
        r = Results(image, path=str(video), names=zoo_model.names, boxes=torch.tensor(det).reshape(-1, 6))
        r.record = rec
        mixed.append(st.update(r, fps=15).record)
    m = track_metrics(video, mixed, class_aware=False)  # the edge names one object's class wrongly: boxes only
    assert m["id_switches"] == 0 and m["mostly_tracked"] == m["gt_tracks"] == 3 and m["idf1"] > 0.85, m
    ids_by_route = [{b["track_id"] for r in mixed[k::2] for b in r["boxes"]} for k in (0, 1)]
    assert len(ids_by_route[0] & ids_by_route[1]) >= 3  # the same ids on edge- and cloud-answered frames


def test_route_auto_tracks_across_its_own_switches(zoo_model, zoo_server, tmp_path):
    """`detect(..., track=True)` route=auto at the zoo's calibrated default on a complex scene, where it switches
    between the edge and the cloud: every box has a track id, a track lives through a switch, and the scores are
    computed from detections.jsonl."""
    video = generate_video(tmp_path / "complex.mp4", frames=30, fps=15, imgsz=ZOO_IMGSZ,
                           schedule=[(30, "complex")], seed=902, progress=False)
    summary, records = run_track(zoo_model, zoo_server, video, tmp_path, "auto")
    routes = [r["route"] for r in records]
    assert summary["frames"] == 30 and {"edge", "cloud"} <= set(routes) and summary["fallbacks"] == 0
    assert all("track_id" in b for r in records for b in r["boxes"])
    spans = {}
    for r in records:
        for b in r["boxes"]:
            spans.setdefault(b["track_id"], set()).add(r["route"])
    assert any(len(s) == 2 for s in spans.values())  # a track answered by both the edge and the cloud
    m = track_metrics(video, records)
    assert 0 < m["mota"] <= 1 and 0 < m["idf1"] <= 1


# -- the command line ---------------------------------------------------------------------------------------------
def test_track_command_line_on_a_tiny_video(serving_ckpt, synth_video, tmp_path, capsys):
    from ecc_yolo import cli

    assert cli.entrypoint(["track", f"model={serving_ckpt}", f"source={synth_video}", "route=edge", "imgsz=128",
                           f"project={tmp_path}", "tracker=bytetrack.yaml"]) == 0
    records = [json.loads(line) for line in (tmp_path / "track" / "detections.jsonl").read_text().splitlines()]
    assert len(records) == 30 and (tmp_path / "track" / "clip.avi").exists()
    assert any(r["boxes"] for r in records) and all("track_id" in b for r in records for b in r["boxes"])
    assert cli.entrypoint(["track", f"model={serving_ckpt}", f"source={synth_video}", "route=edge",
                           "tracker=nope.yaml"]) == 2
    assert cli.entrypoint(["track", f"model={serving_ckpt}", "route=edge"]) == 2
    assert "track needs source=" in capsys.readouterr().err
