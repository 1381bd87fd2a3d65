"""Many streams per edge process: `detect source=<list>.streams` (ecc_yolo.serve.sources), budgets across streams."""

from __future__ import annotations

import json

import numpy as np
import pytest

from ecc_yolo.args import get_args
from ecc_yolo.checkpoint import load_ecc
from ecc_yolo.data.synthetic import generate_video
from ecc_yolo.policy import Budget, StreamBudgets
from ecc_yolo.serve.client import detect
from ecc_yolo.serve.engine import CloudEngine
from ecc_yolo.serve.server import BackgroundServer, ServerSettings, build_app

IMGSZ = 128


@pytest.fixture(scope="module")
def videos(tmp_path_factory):
    folder = tmp_path_factory.mktemp("streams")
    return [generate_video(folder / f"cam{i}.mp4", frames=n, fps=15, imgsz=128, seed=i, progress=False)
            for i, n in enumerate((12, 8, 10))]


def streams_file(path, sources) -> str:
    path.write_text("".join(f"{s}\n" for s in sources))
    return str(path)


def run(model, tmp_path, source, **overrides):
    args = get_args({"imgsz": IMGSZ, "project": str(tmp_path), "name": "run", "save": True, "verbose": False,
                     "source": source, **overrides})
    summary = detect(args, model=model)
    records = [json.loads(line) for line in (tmp_path / "run" / "detections.jsonl").read_text().splitlines()]
    return summary, records


def test_streams_file_runs_every_stream_in_one_process_each_in_order(serving_ckpt, videos, tmp_path, monkeypatch):
    model = load_ecc(serving_ckpt)[0]
    from ecc_yolo.edge import TorchEdge

    batches = []
    run_edge = TorchEdge.run
    monkeypatch.setattr(TorchEdge, "run", lambda self, x, **kw: batches.append(len(x)) or run_edge(self, x, **kw))
    summary, records = run(model, tmp_path, streams_file(tmp_path / "cams.streams", videos), route="edge")

    assert summary["frames"] == len(records) == 30
    for s, n in enumerate((12, 8, 10)):
        frames = [r["frame"] for r in records if r["stream"] == s]
        assert frames == list(range(n)), (s, frames)  # every frame of every stream, each stream in order
        assert summary["streams"][s]["frames"] == n
    assert batches[:8] == [3] * 8 and sum(batches) == 30  # the edge ran on one frame of each live stream per tick
    assert sorted(p.name for p in (tmp_path / "run").glob("*.avi")) == \
        ["stream0-cam0.avi", "stream1-cam1.avi", "stream2-cam2.avi"]  # per-stream outputs


def test_a_dead_or_unreadable_source_is_reported_and_the_others_keep_running(serving_ckpt, videos, tmp_path):
    broken = tmp_path / "broken.mp4"
    broken.write_bytes(b"not a video at all" * 100)
    missing = tmp_path / "missing.mp4"
    source = streams_file(tmp_path / "cams.streams", [videos[0], missing, broken, videos[1]])
    summary, records = run(load_ecc(serving_ckpt)[0], tmp_path, source, route="edge")

    assert set(summary["dead_sources"]) == {str(missing), str(broken)}
    assert summary["frames"] == len(records) == 12 + 8
    assert {r["stream"] for r in records} == {0, 3}


def test_a_single_bad_source_still_raises(serving_ckpt, tmp_path):
    with pytest.raises(FileNotFoundError):
        run(load_ecc(serving_ckpt)[0], tmp_path, str(tmp_path / "missing.mp4"), route="edge")


def test_stream_budgets_combine_a_total_and_a_per_stream_budget():
    budgets = StreamBudgets(Budget(ratio=0.5), Budget(ratio=0.1), start=0.0, fps={0: 10.0, 1: 30.0})
    assert budgets.total.fps == 40.0 and budgets.per_stream[1].fps == 30.0
    for _ in range(20):  # stream 0 overspends its own budget, stream 1 spends nothing
        budgets.record(0, True, 1000)
        budgets.record(1, False, 0)
    t0, t1 = budgets.thresholds([0, 1])
    assert t0 > t1  # stream 0's own budget binds: its frames need a higher score
    assert t0 == budgets.per_stream[0].threshold and t1 == max(budgets.total.threshold, budgets.per_stream[1].threshold)
    only_total = StreamBudgets(Budget(ratio=0.3), None, start=0.2, fps={0: 15.0})
    np.testing.assert_array_equal(only_total.thresholds([0, 0]), [0.2, 0.2])


@pytest.mark.slow
def test_streams_share_one_link_and_a_per_stream_budget_holds_each_stream(serving_ckpt, tmp_path_factory, tmp_path):
    folder = tmp_path_factory.mktemp("long")
    sources = [generate_video(folder / f"c{i}.mp4", frames=60, fps=15, imgsz=128, seed=10 + i, progress=False)
               for i in range(2)]
    engine = CloudEngine.from_checkpoint(serving_ckpt, imgsz=IMGSZ)
    with BackgroundServer(build_app(engine, ServerSettings(max_batch=4, max_wait_ms=2))) as server:
        summary, records = run(load_ecc(serving_ckpt)[0], tmp_path, streams_file(tmp_path / "c.streams", sources),
                               route="auto", cloud=server.url, stream_budget=0.25, timeout=30)
    assert summary["frames"] == 120 and summary["fallbacks"] == 0
    for s in (0, 1):
        ratio = summary["streams"][s]["offload_ratio"]
        assert 0.1 <= ratio <= 0.4, (s, ratio)  # each stream held near its own 25%
        assert any(r["stream"] == s and r["bytes_sent"] > 0 for r in records)  # both offloaded through the one link
    assert "stream_budget_thresholds" in summary


def test_a_cue_offloads_the_streams_next_frame_whatever_the_gate_says(serving_ckpt, videos):
    from ecc_yolo.serve.client import EdgeStreamClient, StreamSettings
    from ecc_yolo.serve.frames import FrameInput
    from ecc_yolo.serve.link import CloudLink

    class Link(CloudLink):  # no server: records what would be sent
        def __init__(self):
            self.sent, self.reconnects = [], 0

        def available(self):
            return True

        def send(self, path, body, deadline=None):
            from concurrent.futures import Future

            self.sent.append(path)
            return Future()

        def close(self):
            pass

    from ecc_yolo.edge import TorchEdge

    edge = TorchEdge(load_ecc(serving_ckpt)[0])
    args = get_args({"imgsz": IMGSZ, "route": "auto", "cloud": "http://unused", "gate_threshold": 1e9,
                     "router": "ECC_D"})
    client = EdgeStreamClient(edge, StreamSettings.from_args(args, edge), link=(link := Link()))
    image = np.zeros((128, 128, 3), np.uint8)
    frame = lambda i, s: FrameInput(i, "x", image, stream=s)  # noqa: E731
    assert [f.route for f in client.process([frame(0, 0), frame(0, 1)])] == ["edge", "edge"]
    client.cue(1)
    routes = [f.route for f in client.process([frame(1, 0), frame(1, 1)])]
    assert routes == ["edge", "adapted"] and len(link.sent) == 1  # only the cued stream's frame went
    assert [f.route for f in client.process([frame(2, 0), frame(2, 1)])] == ["edge", "edge"]  # one frame per cue


@pytest.mark.parametrize("fmt", ["onnx", "openvino"])
def test_an_export_traced_for_one_frame_reads_many_streams(serving_ckpt, videos, tmp_path, fmt):
    """An exported edge graph takes one frame; the pipeline runs a tick's frames through it one by one."""
    from ecc_yolo.edge import export_edge_onnx, export_edge_openvino, load_edge

    model = load_ecc(serving_ckpt)[0]
    path = (export_edge_onnx(model, tmp_path / "edge.onnx", imgsz=IMGSZ) if fmt == "onnx" else
            export_edge_openvino(model, tmp_path / "edge_openvino_model", imgsz=IMGSZ))
    edge = load_edge(path)
    assert edge.max_batch == 1
    summary, records = run(edge, tmp_path, streams_file(tmp_path / "c.streams", videos[:2]), route="edge")
    assert summary["frames"] == len(records) == 12 + 8 and set(summary["streams"]) == {0, 1}
