"""The edge stream client (`ecc-yolo detect`) against a real server on loopback."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
from copy import deepcopy

import numpy as np
import pytest
import torch
from conftest import REPO, ServerProcess, free_port, make_serving_checkpoint
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response

from ecc_yolo.args import get_args
from ecc_yolo.checkpoint import load_ecc
from ecc_yolo.infer import input_tensor
from ecc_yolo.payload.codec import JPEG_QUALITY, decode_features, decode_image, encode_features, encode_jpeg
from ecc_yolo.serve.client import EdgeStreamClient, StreamSettings, detect
from ecc_yolo.serve.engine import CloudEngine
from ecc_yolo.serve.link import ModelMismatchError
from ecc_yolo.serve.protocol import FEATURES_PATH, MODEL_PATH, READY_PATH
from ecc_yolo.serve.server import BackgroundServer, ServerSettings, build_app

IMGSZ = 128


@pytest.fixture(scope="module")
def server(serving_ckpt):
    engine = CloudEngine.from_checkpoint(serving_ckpt, imgsz=IMGSZ)
    with BackgroundServer(build_app(engine, ServerSettings(max_batch=4, max_wait_ms=2))) as srv:
        yield srv


@pytest.fixture
def model(serving_ckpt):
    return load_ecc(serving_ckpt)[0]


def video_frames(video) -> list[np.ndarray]:
    from ultralytics.data.loaders import LoadImagesAndVideos

    return [im for _, ims, _ in LoadImagesAndVideos(str(video)) for im in ims]


def run_detect(model, tmp_path, **overrides) -> tuple[dict, list[dict]]:
    args = get_args({"imgsz": IMGSZ, "project": str(tmp_path), "name": "run", "save": True, "verbose": False,
                     **overrides})
    summary = detect(args, model=model)
    lines = (tmp_path / "run" / "detections.jsonl").read_text().splitlines()
    return summary, [json.loads(line) for line in lines]


def boxes(record: dict) -> np.ndarray:
    return np.array([[*b["xyxy"], b["conf"], b["cls"]] for b in record["boxes"]], dtype=np.float64).reshape(-1, 6)


def assert_close(got: np.ndarray, want: np.ndarray, atol: float = 0.05) -> None:
    assert len(got) == len(want), (len(got), len(want))
    got, want = got[np.argsort(-got[:, 4], kind="stable")], want[np.argsort(-want[:, 4], kind="stable")]
    np.testing.assert_allclose(got[:, :5], want[:, :5], atol=atol, rtol=1e-3)
    np.testing.assert_array_equal(got[:, 5], want[:, 5])


class Reference:
    """What the device and the cloud compute for a frame, in process, with the same fused model and letterbox."""

    def __init__(self, model):
        from ultralytics.data.augment import LetterBox

        self.model = deepcopy(model).eval().fuse(verbose=False)
        self.letterbox = LetterBox((IMGSZ, IMGSZ), auto=False, stride=32)

    @torch.inference_mode()
    def post(self, out, input_shape, image_shape, end2end: bool) -> np.ndarray:
        from ultralytics.utils import nms, ops

        det = nms.non_max_suppression(out, 0.25, 0.7, max_det=300, end2end=end2end)[0][:, :6].float()
        det[:, :4] = ops.scale_boxes(input_shape, det[:, :4], image_shape)
        return det.numpy()

    @torch.inference_mode()
    def adapted(self, image: np.ndarray, fingerprint: bytes) -> tuple[np.ndarray, int]:
        m = self.model
        x = input_tensor([self.letterbox(image=image)])
        (payload,) = m.payloads_from_features(m.edge_features(x), image.shape[:2], (IMGSZ, IMGSZ), fingerprint)
        data = encode_features(payload)
        out = m.adapted_tail(m.decode(m.received_latents([decode_features(data)])))
        return self.post(out, (IMGSZ, IMGSZ), image.shape[:2], (m.adapted_cloud or m.cloud).end2end), len(data)

    @torch.inference_mode()
    def cloud(self, image: np.ndarray) -> tuple[np.ndarray, int]:
        lb = self.letterbox(image=image)
        data = encode_jpeg(lb, JPEG_QUALITY)  # the quality the client sends (one home: ecc_yolo.payload.codec)
        received = decode_image(data)
        det = self.post(self.model.cloud_forward(input_tensor([self.letterbox(image=received)])), (IMGSZ, IMGSZ),
                        received.shape[:2], self.model.cloud.end2end)
        from ultralytics.utils import ops

        det[:, :4] = ops.scale_boxes(lb.shape[:2], det[:, :4], image.shape[:2])
        return det, len(data)


def test_adapted_stream_through_the_server_matches_in_process(server, model, synth_video, tmp_path):
    fingerprint = model.fingerprint()
    summary, records = run_detect(model, tmp_path, source=str(synth_video), route="adapted", cloud=server.url)
    frames = video_frames(synth_video)
    assert summary["frames"] == len(frames) == 30 == len(records)
    assert [r["frame"] for r in records] == list(range(30))  # one line per frame, in order
    assert summary["routes"]["adapted"] == 30 and summary["fallbacks"] == 0 and summary["offload_ratio"] == 1.0
    assert (tmp_path / "run" / "clip.avi").stat().st_size > 0 and (tmp_path / "run" / "summary.json").exists()
    ref = Reference(model)
    for record, image in zip(records, frames):
        want, n_bytes = ref.adapted(image, fingerprint)
        assert record["route"] == "adapted" and record["bytes_sent"] == n_bytes and record["latency_ms"] > 0
        assert_close(boxes(record), want)
    assert summary["mean_bytes_per_frame"] == pytest.approx(np.mean([r["bytes_sent"] for r in records]), abs=0.1)
    assert records[1]["time_s"] == pytest.approx(1 / 15, abs=1e-3)


def test_cloud_route_sends_the_letterboxed_jpeg(server, model, synth_video, tmp_path):
    summary, records = run_detect(model, tmp_path, source=str(synth_video), route="cloud", cloud=server.url)
    assert summary["routes"]["cloud"] == 30 and len(records) == 30
    ref = Reference(model)
    for record, image in list(zip(records, video_frames(synth_video)))[::6]:
        want, n_bytes = ref.cloud(image)
        assert record["route"] == "cloud" and record["bytes_sent"] == n_bytes
        assert_close(boxes(record), want)


def test_edge_route_never_contacts_the_cloud_and_matches_predict(serving_ckpt, model, synth_video, tmp_path):
    from ecc_yolo.engine.model import ECC

    summary, records = run_detect(model, tmp_path, source=str(synth_video), route="edge",
                                  cloud=f"http://127.0.0.1:{free_port()}")  # nobody listens there
    assert summary["routes"] == {"edge": 30, "extension": 0, "adapted": 0, "cloud": 0, "fallback": 0}
    assert summary["bytes_sent"] == 0 and summary["errors"] == {}
    predicted = ECC(str(serving_ckpt)).predict(str(synth_video), route="edge", imgsz=IMGSZ, verbose=False, stream=True)
    n_boxes = 0
    for record, result in zip(records, predicted, strict=True):  # every frame is compared: none is skipped
        want = torch.cat([result.boxes.xyxy, result.boxes.conf[:, None], result.boxes.cls[:, None]], 1).numpy()
        got = boxes(record)
        # The serving checkpoint's confidences stay far from 1 (make_serving_checkpoint), so no two boxes tie there.
        assert want[:, 4].max(initial=0) < 0.99, "saturated confidences: NMS may keep either of two tied boxes"
        assert_close(got, want, atol=0.05)
        n_boxes += len(got)
    assert n_boxes >= len(records)  # there was something to compare


def test_auto_route_offloads_exactly_the_frames_the_gate_picks(server, model, synth_video, tmp_path):
    model.gate_threshold = 1e3  # not in the fingerprint: the server's model still matches
    summary, records = run_detect(model, tmp_path / "a", source=str(synth_video), route="auto", cloud=server.url)
    assert summary["routes"]["edge"] == 30 and summary["bytes_sent"] == 0
    model.gate_threshold = float(np.median([r["gain"] for r in records]))
    summary, records = run_detect(model, tmp_path / "b", source=str(synth_video), route="auto", cloud=server.url)
    offloaded = [r["gain"] > model.gate_threshold for r in records]
    assert 0 < sum(offloaded) < 30, "the median gain splits the video"
    assert [r["route"] for r in records] == ["adapted" if o else "edge" for o in offloaded]
    assert all((r["bytes_sent"] > 0) == o for r, o in zip(records, offloaded))
    assert summary["offload_ratio"] == pytest.approx(sum(offloaded) / 30, abs=1e-3)


def test_budget_moves_the_threshold_online(server, model, synth_video, tmp_path):
    model.gate_threshold = -1e3  # alone, this would offload every frame
    summary, records = run_detect(model, tmp_path, source=str(synth_video), route="auto", cloud=server.url,
                                  budget=1.0)
    assert summary["offload_ratio"] == 1.0
    model.gate_threshold = float(np.median([r["gain"] for r in records]))  # a realistic starting point
    summary, records = run_detect(model, tmp_path / "b", source=str(synth_video), route="auto", cloud=server.url,
                                  budget=0.1)
    assert summary["budget_threshold"] > model.gate_threshold  # overspending raised it
    assert summary["offload_ratio"] < 0.5  # the gate's threshold alone offloads about half


def test_a_server_with_another_model_is_refused(server, serving_ckpt, synth_video, tmp_path):
    other, _ = load_ecc(make_serving_checkpoint(tmp_path / "other.pt", seed=1))
    with pytest.raises(ModelMismatchError, match="fingerprint"):
        run_detect(other, tmp_path, source=str(synth_video), route="adapted", cloud=server.url)
    # The served checkpoint itself (rebuilding it is not bit-exact once Ultralytics' select_device has set torch to
    # one thread: BatchNorm statistics are reduced in another order).
    same, _ = load_ecc(serving_ckpt)
    with pytest.raises(ModelMismatchError, match="exceeds the server's input size"):
        run_detect(same, tmp_path / "big", source=str(synth_video), route="adapted", cloud=server.url, imgsz=160)


def fake_cloud(serving_ckpt, answer) -> tuple[FastAPI, list]:
    """A server that describes the served model like the real one (so the client connects) but answers feature
    requests with `answer(n)` (n: the request's index); returns the app and the list of requests it received."""
    engine = CloudEngine.from_checkpoint(serving_ckpt, imgsz=IMGSZ)
    app, received, info = FastAPI(), [], engine.describe()
    app.state.settings = ServerSettings(timeout=1.0)  # BackgroundServer's uvicorn options: a short graceful shutdown

    @app.get(READY_PATH)
    async def ready() -> dict:
        return {"status": "ready"}

    @app.get(MODEL_PATH)
    async def model() -> dict:
        return info

    @app.post(FEATURES_PATH)
    async def detect_features(request: Request) -> Response:
        received.append(len(await request.body()))
        return await answer(len(received) - 1)

    return app, received


def stream_against(model, url: str, video, timeout: float = 5.0) -> tuple[list[dict], dict]:
    """Stream `video` at a live-like pace with a fast back-off, so several requests go out; (records, summary)."""
    settings = StreamSettings(route="adapted", imgsz=(IMGSZ, IMGSZ), cloud=url, timeout=timeout, max_inflight=2,
                              backoff=(0.02, 0.05))
    client = EdgeStreamClient(model, settings)
    try:
        assert client.connect()
        records = []
        for result in client.stream(str(video)):
            records.append(result.record)
            time.sleep(0.03)
        return records, client.summary()
    finally:
        client.close()


def test_an_unreachable_cloud_falls_back_on_every_frame(model, synth_video, tmp_path):
    summary, records = run_detect(model, tmp_path, source=str(synth_video), route="adapted",
                                  cloud=f"http://127.0.0.1:{free_port()}", timeout=1.0)
    assert summary["frames"] == 30 and summary["fallbacks"] == 30 and len(records) == 30
    assert {r["route"] for r in records} == {"fallback"} and all(r["bytes_sent"] == 0 for r in records)
    assert summary["errors"] == {"cloud_unavailable": 30}  # nothing was sent: it never connected


def test_a_cloud_that_never_answers_costs_each_sent_frame_its_timeout_only(serving_ckpt, model, synth_video):
    """Requests are sent and never answered: each such frame falls back at its timeout, counted as "timeout"."""
    async def hang(n: int) -> Response:
        await asyncio.sleep(60)

    app, received = fake_cloud(serving_ckpt, hang)
    with BackgroundServer(app) as srv:
        t0 = time.monotonic()
        records, summary = stream_against(model, srv.url, synth_video, timeout=0.5)
        seconds = time.monotonic() - t0
    assert [r["frame"] for r in records] == list(range(30)) and summary["fallbacks"] == 30
    assert len(received) >= 2 and summary["errors"]["timeout"] >= 2  # requests did go out, and timed out
    assert sum(summary["errors"].values()) == 30 and set(summary["errors"]) <= {"timeout", "cloud_unavailable"}
    assert seconds < 30


def test_malformed_answers_fall_back_per_frame_and_never_end_the_stream(serving_ckpt, model, synth_video):
    """A server answering 200 with garbage: not JSON, not a detect answer, a NaN box, an answer for another frame.
    Each such frame gets its edge result, counted as "bad_answer"; the stream goes on."""
    good_shape = [96, 128]
    bad = [
        Response(b"<html>not json</html>", media_type="text/html"),
        JSONResponse({"detections": "none"}),
        Response(b'{"route": "adapted", "image_shape": [96, 128], "detections": [{"xyxy": [NaN, 0, 1, 1], '
                 b'"conf": 0.5, "cls": 0}]}', media_type="application/json"),
        JSONResponse({"route": "adapted", "image_shape": [1, 1], "detections": []}),  # another frame's answer
        JSONResponse({"route": "cloud", "image_shape": good_shape, "detections": []}),  # another route's
        JSONResponse([1, 2, 3]),
    ]

    async def garbage(n: int) -> Response:
        return bad[n % len(bad)]

    app, received = fake_cloud(serving_ckpt, garbage)
    with BackgroundServer(app) as srv:
        records, summary = stream_against(model, srv.url, synth_video)
    assert [r["frame"] for r in records] == list(range(30)) and summary["fallbacks"] == 30
    assert len(received) >= len(bad) and summary["errors"]["bad_answer"] == len(received)
    assert sum(summary["errors"].values()) == 30


def test_refusals_fall_back_per_frame(serving_ckpt, model, synth_video, tmp_path):
    """A server that refuses (wrong token: 401) costs no frame: each one falls back to its edge result."""
    engine = CloudEngine.from_checkpoint(serving_ckpt, imgsz=IMGSZ)
    with BackgroundServer(build_app(engine, ServerSettings(token="right"))) as srv:
        summary, records = run_detect(model, tmp_path, source=str(synth_video), route="adapted", cloud=srv.url,
                                      token="wrong")
    assert summary["frames"] == 30 == len(records) and summary["fallbacks"] == 30
    assert summary["errors"].get("http_401", 0) >= 1


def test_detect_command_line_writes_like_predict(serving_ckpt, synth_video, tmp_path):
    exe = [sys.executable, "-m", "ecc_yolo"]
    r = subprocess.run([*exe, "detect", f"model={serving_ckpt}", f"source={synth_video}", "route=edge",
                        f"imgsz={IMGSZ}", f"project={tmp_path}", "name=cli"], cwd=REPO, capture_output=True,
                       text=True, env={**os.environ, "YOLO_OFFLINE": "1"}, timeout=300)
    assert r.returncode == 0, r.stderr
    out = tmp_path / "cli"
    assert len((out / "detections.jsonl").read_text().splitlines()) == 30 and (out / "clip.avi").exists()
    assert "30 frames" in r.stdout + r.stderr and "Results saved to" in r.stdout + r.stderr
    again = subprocess.run([*exe, "detect", f"model={serving_ckpt}", f"source={synth_video}", "route=edge",
                            f"imgsz={IMGSZ}", f"project={tmp_path}", "name=cli", "save=False"], cwd=REPO,
                           capture_output=True, text=True, env={**os.environ, "YOLO_OFFLINE": "1"}, timeout=300)
    assert again.returncode == 0 and not (tmp_path / "cli2").exists()


@pytest.mark.slow
def test_server_killed_mid_stream_then_restarted(serving_ckpt, model, tmp_path):
    """Kill the server (a subprocess) mid-stream: frames fall back, none is lost; restart it: offloading resumes."""
    from ecc_yolo.data.synthetic import generate_video

    video = generate_video(tmp_path / "long.mp4", frames=90, fps=15, imgsz=IMGSZ, seed=1, progress=False)
    server = ServerProcess(serving_ckpt, tmp_path / "serve.log").start()
    settings = StreamSettings(route="adapted", imgsz=(IMGSZ, IMGSZ), cloud=server.url, timeout=2.0,
                              max_inflight=2, backoff=(0.2, 1.0))
    client = EdgeStreamClient(model, settings)
    try:
        assert client.connect()
        routes = []
        for i, result in enumerate(client.stream(str(video))):
            routes.append(result.route)
            assert result.record["frame"] == i
            if i == 10:
                server.kill()
            if i == 25:
                server.start()  # blocks until it answers /healthz; the stream waits like a slow camera would
            time.sleep(0.05)  # a live-like pace, so the back-off probes find the server again
    finally:
        client.close()
        server.kill()
    assert len(routes) == 90
    assert set(routes[:5]) == {"adapted"}
    assert "fallback" in routes[10:26]
    resumed = [i for i, r in enumerate(routes) if i > 26 and r == "adapted"]
    assert resumed and routes[-1] == "adapted", routes
    assert client.summary()["reconnects"] >= 1 and client.summary()["fallbacks"] > 0
