"""The cloud server (`ecc-yolo serve`): routes, answers against in-process inference, batching, bad input, metrics."""

from __future__ import annotations

import dataclasses
import re
import struct
import threading
import time
import zlib
from concurrent.futures import ThreadPoolExecutor

import cv2
import httpx
import numpy as np
import pytest
import torch

from ecc_yolo.checkpoint import load_ecc
from ecc_yolo.infer import input_tensor
from ecc_yolo.payload.codec import FORMAT_VERSION, encode_features, encode_jpeg
from ecc_yolo.serve.batcher import MicroBatcher, Overloaded
from ecc_yolo.serve.engine import CloudEngine
from ecc_yolo.serve.local import LocalServer
from ecc_yolo.serve.protocol import (
    FEATURES_PATH,
    HEALTH_PATH,
    IMAGE_PATH,
    METRICS_PATH,
    MODEL_PATH,
    READY_PATH,
    bearer_header,
    detections_array,
)
from ecc_yolo.serve.server import BackgroundServer, ServerSettings, build_app

TOKEN = "test-token"
AUTH = bearer_header(TOKEN)
MAX_BODY = 64 << 10
IMGSZ = 128


@pytest.fixture(scope="module")
def device_model(serving_ckpt):
    """The checkpoint as an edge device holds it (unfused, fp32)."""
    model, _ = load_ecc(serving_ckpt)
    return model.eval()


@pytest.fixture(scope="module")
def engine(serving_ckpt):
    return CloudEngine.from_checkpoint(serving_ckpt, imgsz=IMGSZ)


@pytest.fixture(scope="module")
def server(engine):
    settings = ServerSettings(token=TOKEN, max_body=MAX_BODY, max_batch=8, max_wait_ms=5)
    with BackgroundServer(build_app(engine, settings)) as srv:
        with httpx.Client(base_url=srv.url, timeout=30) as client:
            yield client


def frames(n: int, shape=(96, 128), seed: int = 0) -> list[np.ndarray]:
    """`n` random BGR frames with some structure (blurred noise), so detections differ between frames."""
    rng = np.random.default_rng(seed)
    return [cv2.GaussianBlur((rng.random((*shape, 3)) * 255).astype(np.uint8), (0, 0), 3) for _ in range(n)]


def letterbox(image: np.ndarray) -> np.ndarray:
    from ultralytics.data.augment import LetterBox

    return LetterBox((IMGSZ, IMGSZ), auto=False, stride=32)(image=image)


@torch.inference_mode()
def payload_bytes(model, image: np.ndarray, fingerprint: bytes | None = None) -> bytes:
    x = input_tensor([letterbox(image)])
    (payload,) = model.payloads_from_features(model.edge_features(x), image.shape[:2], tuple(x.shape[2:]),
                                              fingerprint=fingerprint)
    return encode_features(payload)


@torch.inference_mode()
def reference(model, out, input_shape, image_shape) -> np.ndarray:
    """Post-process a head output exactly as the server does, with the unfused device-side model."""
    from ultralytics.utils import nms, ops

    det = nms.non_max_suppression(out, 0.25, 0.7, max_det=300, end2end=model.cloud.end2end)[0][:, :6].float()
    det[:, :4] = ops.scale_boxes(input_shape, det[:, :4], image_shape)
    return det.numpy()


def assert_same_detections(got: np.ndarray, want: np.ndarray) -> None:
    """Same detections up to float noise (the server runs the fused model): sorted by confidence."""
    assert len(got) == len(want) and len(want) > 0, (len(got), len(want))
    got, want = got[np.argsort(-got[:, 4], kind="stable")], want[np.argsort(-want[:, 4], kind="stable")]
    np.testing.assert_allclose(got[:, :5], want[:, :5], atol=0.05, rtol=1e-3)
    np.testing.assert_array_equal(got[:, 5], want[:, 5])


# -- routes --------------------------------------------------------------------------------------------------------
def test_health_and_model_description(server, device_model):
    assert server.get(HEALTH_PATH).json() == {"status": "ok"}
    assert server.get(READY_PATH).json() == {"status": "ready"}
    info = server.get(MODEL_PATH).json()
    assert info["fingerprint"] == device_model.fingerprint().hex()  # the fused engine reports the checkpoint's
    assert {int(k): v for k, v in info["names"].items()} == device_model.names
    assert info["imgsz"] == [IMGSZ, IMGSZ] and info["auth"] is True and info["max_body"] == MAX_BODY
    assert (info["max_concurrency"], info["max_queue"], info["timeout"]) == (64, 256, 5.0)
    assert info["cfg"]["name"] == device_model.spec.name and info["payload_version"] == FORMAT_VERSION == 2


def test_features_route_matches_in_process_cloud_tail(server, device_model):
    for image in frames(3) + frames(1, shape=(128, 80), seed=1):
        data = payload_bytes(device_model, image)
        r = server.post(FEATURES_PATH, content=data, headers=AUTH)
        assert r.status_code == 200, r.text
        answer = r.json()
        assert answer["route"] == "adapted" and answer["image_shape"] == list(image.shape[:2])
        assert answer["server_ms"] > 0 and answer["batch_size"] >= 1
        assert {"xyxy", "conf", "cls", "name"} <= set(answer["detections"][0])
        from ecc_yolo.payload.codec import decode_features

        payload = decode_features(data)
        with torch.inference_mode():
            out = device_model.adapted_tail(device_model.decode(device_model.received_latents([payload])))
        assert_same_detections(detections_array(answer["detections"]),
                               reference(device_model, out, payload.input_shape, image.shape[:2]))


def test_image_route_matches_in_process_cloud_forward(server, device_model):
    for image in frames(2, shape=(100, 150), seed=2):
        ok, png = cv2.imencode(".png", image)  # lossless, so the reference sees the server's pixels
        r = server.post(IMAGE_PATH, content=png.tobytes(), headers=AUTH)
        assert r.status_code == 200, r.text
        answer = r.json()
        assert answer["route"] == "cloud" and answer["image_shape"] == [100, 150]
        with torch.inference_mode():
            out = device_model.cloud_forward(input_tensor([letterbox(image)]))
        assert_same_detections(detections_array(answer["detections"]),
                               reference(device_model, out, (IMGSZ, IMGSZ), image.shape[:2]))
        assert all(d["name"] == device_model.names[d["cls"]] for d in answer["detections"])


# -- bad input -----------------------------------------------------------------------------------------------------
def _bad_requests(model) -> list[tuple[str, str, bytes, dict, int, str]]:
    image = frames(1)[0]
    good = payload_bytes(model, image)
    from ecc_yolo.payload.codec import decode_features

    payload = decode_features(good)
    wrong_fingerprint = encode_features(dataclasses.replace(payload, fingerprint=bytes(16)))
    wrong_shape = encode_features(dataclasses.replace(payload, tensors=payload.tensors[:-1]))
    too_big_input = encode_features(dataclasses.replace(payload, input_shape=(IMGSZ * 2, IMGSZ * 2)))
    ranged = bytearray(encode_features(payload, "range")[:-4])  # a range-coded body, its words then cut short
    words_at = 44 + sum(12 + 4 * t.shape[0] for t in payload.tensors) + 3 * payload.tensors[0].shape[0]
    struct.pack_into("<I", ranged, words_at, 1 << 28)  # the first tensor claims 2**28 words (1 GiB)
    range_truncated = bytes(ranged) + struct.pack("<I", zlib.crc32(bytes(ranged)))
    v1 = bytearray(good[:-4])
    struct.pack_into("<H", v1, 4, 1)  # format version 1 (float32 scales), with a valid checksum
    version_1 = bytes(v1) + struct.pack("<I", zlib.crc32(bytes(v1)))
    rng = np.random.default_rng(0)
    return [
        ("no token", FEATURES_PATH, good, {}, 401, "unauthorized"),
        ("wrong token", FEATURES_PATH, good, bearer_header("nope"), 401, "unauthorized"),
        ("wrong token, image", IMAGE_PATH, encode_jpeg(image), bearer_header(TOKEN + "x"), 401, "unauthorized"),
        ("oversized body", FEATURES_PATH, good + bytes(MAX_BODY), AUTH, 413, "too_large"),
        ("oversized image", IMAGE_PATH, b"\xff\xd8\xff" + bytes(MAX_BODY), AUTH, 413, "too_large"),
        ("truncated payload", FEATURES_PATH, good[: len(good) // 2], AUTH, 400, "bad_payload"),
        ("range body claiming 1 GiB of words", FEATURES_PATH, range_truncated, AUTH, 400, "bad_payload"),
        ("payload format version 1", FEATURES_PATH, version_1, AUTH, 400, "bad_payload"),
        ("header only", FEATURES_PATH, good[:30], AUTH, 400, "bad_payload"),
        ("empty body", FEATURES_PATH, b"", AUTH, 400, "bad_payload"),
        ("wrong fingerprint", FEATURES_PATH, wrong_fingerprint, AUTH, 409, "fingerprint_mismatch"),
        ("wrong tensor shapes", FEATURES_PATH, wrong_shape, AUTH, 422, "shape_mismatch"),
        ("input size over imgsz", FEATURES_PATH, too_big_input, AUTH, 422, "shape_mismatch"),
        ("non-image bytes", IMAGE_PATH, b"GIF89a not an image at all", AUTH, 400, "bad_image"),
        ("corrupt JPEG", IMAGE_PATH, encode_jpeg(image)[:40], AUTH, 400, "bad_image"),
        ("random bytes as features", FEATURES_PATH, rng.bytes(2000), AUTH, 400, "bad_payload"),
        ("random bytes as image", IMAGE_PATH, rng.bytes(2000), AUTH, 400, "bad_image"),
    ]


def test_bad_requests_get_a_clear_4xx_and_the_server_keeps_serving(server, device_model):
    good = payload_bytes(device_model, frames(1, seed=5)[0])
    for name, path, body, headers, status, kind in _bad_requests(device_model):
        r = server.post(path, content=body, headers=headers)
        assert r.status_code == status, (name, r.status_code, r.text)
        error = r.json()["error"]
        assert error["kind"] == kind and error["message"], name
        ok = server.post(FEATURES_PATH, content=good, headers=AUTH)
        assert ok.status_code == 200, (name, ok.text)
    chunked = server.post(FEATURES_PATH, content=(bytes(16 << 10) for _ in range(8)), headers=AUTH)  # no length
    assert chunked.status_code == 413 and chunked.json()["error"]["kind"] == "too_large"
    assert server.get("/v2/nothing").json()["error"]["kind"] == "not_found"
    assert server.get(IMAGE_PATH).status_code == 405


class _Touch:
    """Unpickling this creates the file `path` (pickle calls `open(path, "w")`): proof that something unpickled."""

    def __init__(self, path):
        self.path = str(path)

    def __reduce__(self):
        return open, (self.path, "w")


def test_a_pickle_is_never_unpickled_even_inside_a_well_framed_payload(server, device_model, tmp_path):
    """Pickles get nowhere: bare, they are refused; framed as a payload's body with a valid header and CRC, they are
    refused by the length checks or, padded to the length the records promise, read as plain codes. No route ever
    unpickles them (the file the pickle would create never appears)."""
    import pickle
    import struct
    import zlib

    from ecc_yolo.payload.codec import decode_features

    marker = tmp_path / "unpickled"
    evil = pickle.dumps(_Touch(marker))
    good = payload_bytes(device_model, frames(1, seed=6)[0])
    payload = decode_features(good)
    raw = bytearray(encode_features(payload, "raw"))  # a raw body: the pickle's bytes are the codes
    body_len = struct.unpack_from("<I", raw, 36)[0]
    head = raw[: len(raw) - 4 - body_len]

    def framed(body: bytes, declared: int) -> bytes:
        data = bytearray(head) + body
        struct.pack_into("<II", data, 36, declared, len(body))
        return bytes(data + struct.pack("<I", zlib.crc32(data)))

    padded = (evil * (body_len // len(evil) + 1))[:body_len]
    for path, body, status in [
        (FEATURES_PATH, evil, 400),
        (IMAGE_PATH, evil, 400),
        (FEATURES_PATH, framed(evil, len(evil)), 400),  # header, records, CRC all fine; lengths do not match
        (FEATURES_PATH, framed(evil, body_len), 400),
        (FEATURES_PATH, framed(padded, body_len), 200),  # a valid payload whose codes happen to be a pickle
    ]:
        r = server.post(path, content=body, headers=AUTH)
        assert r.status_code == status, (path, r.status_code, r.text)
    assert not marker.exists(), "a request body was unpickled"
    pickle.loads(evil)  # the test's own check that the marker works
    assert marker.exists()


# -- batching ------------------------------------------------------------------------------------------------------
def test_concurrent_requests_share_a_forward_pass_and_get_their_own_answers(engine, device_model):
    images = frames(8, seed=3)
    bodies = [payload_bytes(device_model, im) for im in images]
    settings = ServerSettings(max_batch=8, max_wait_ms=1000)  # a long window so all 8 requests meet in it
    with BackgroundServer(build_app(engine, settings)) as srv, httpx.Client(base_url=srv.url, timeout=30) as c:
        alone = [c.post(FEATURES_PATH, content=b).json() for b in bodies[:2]]  # one at a time: batches of 1
        with ThreadPoolExecutor(8) as pool:
            together = list(pool.map(lambda b: c.post(FEATURES_PATH, content=b).json(), bodies))
        text = c.get(METRICS_PATH).text
    assert all(a["batch_size"] == 1 for a in alone)
    assert max(a["batch_size"] for a in together) > 1
    for a, b in zip(alone, together):  # batched answers are each caller's own
        assert_same_detections(detections_array(b["detections"]), detections_array(a["detections"]))
    for image, answer in zip(images, together):
        assert answer["image_shape"] == list(image.shape[:2])
    assert len({str(a["detections"]) for a in together}) > 1  # frames differ, so answers do
    assert re.search(r'ecc_batch_size_count\{route="adapted"\} \d+', text)


def test_micro_batcher_groups_by_key_and_answers_in_order():
    calls = []

    def run(key, items):
        calls.append((key, list(items)))
        return [f"{key}:{i}" for i in items]

    batcher = MicroBatcher(run, max_batch=3, max_wait_s=0.0)
    futures = [batcher.submit(k, i) for i, k in enumerate("aabab a".replace(" ", ""))]  # queued before the worker
    batcher.start()
    answers = [f.result(10) for f in futures]
    batcher.close()
    assert [a for a, _ in answers] == [f"{k}:{i}" for i, k in enumerate("aababa")]
    assert calls[0] == ("a", [0, 1, 3]) and calls[1] == ("b", [2, 4]) and calls[2] == ("a", [5])
    assert [n for _, n in answers] == [3, 3, 2, 3, 2, 1]


def test_micro_batcher_refuses_when_full_and_passes_errors_to_callers():
    def boom(key, items):
        raise RuntimeError("model failed")

    batcher = MicroBatcher(boom, max_batch=2, max_wait_s=0.0, max_queue=2)
    futures = [batcher.submit("k", 1), batcher.submit("k", 2)]
    with pytest.raises(Overloaded):
        batcher.submit("k", 3)
    batcher.start()
    for f in futures:
        with pytest.raises(RuntimeError, match="model failed"):
            f.result(10)
    batcher.close()
    with pytest.raises(RuntimeError, match="closed"):
        batcher.submit("k", 4)


def test_model_work_runs_off_the_event_loop(serving_ckpt, device_model):
    """While a batch is running, /healthz and /metrics still answer."""
    entered, release = threading.Event(), threading.Event()

    class SlowEngine(CloudEngine):
        def run(self, key, items):
            entered.set()
            release.wait(30)
            return super().run(key, items)

    engine = SlowEngine(load_ecc(serving_ckpt)[0], imgsz=IMGSZ)
    body = payload_bytes(device_model, frames(1)[0])
    with BackgroundServer(build_app(engine, ServerSettings())) as srv, httpx.Client(base_url=srv.url) as c:
        with ThreadPoolExecutor(1) as pool:
            pending = pool.submit(c.post, FEATURES_PATH, content=body, timeout=60)
            assert entered.wait(30)
            assert not pending.done()
            assert c.get(HEALTH_PATH, timeout=10).status_code == 200
            assert c.get(METRICS_PATH, timeout=10).status_code == 200
            release.set()
            assert pending.result(60).status_code == 200


# -- metrics and settings -----------------------------------------------------------------------------------------
def test_metrics_in_prometheus_text_format(server, device_model):
    server.post(FEATURES_PATH, content=payload_bytes(device_model, frames(1)[0]), headers=AUTH)
    server.post(FEATURES_PATH, content=b"x", headers={})
    r = server.get(METRICS_PATH)
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")
    text = r.text
    for pattern in (
        r'ecc_requests_total\{route="adapted",status="200"\} [1-9]',
        r'ecc_requests_total\{route="adapted",status="401"\} [1-9]',
        r'ecc_errors_total\{kind="unauthorized"\} [1-9]',
        r'ecc_request_bytes_total\{route="adapted"\} [1-9]',
        r'ecc_batch_size_bucket\{route="adapted",le="\+Inf"\} [1-9]',
        r'ecc_request_latency_seconds_bucket\{route="adapted",le="0.1"\} \d+',
        r'ecc_request_latency_seconds_count\{route="adapted"\} [1-9]',
        r'ecc_inference_seconds_sum\{route="adapted"\} [0-9.e-]+',
        r"# TYPE ecc_batch_size histogram",
        r"# TYPE ecc_queue_depth gauge\necc_queue_depth 0",
        r"# TYPE ecc_requests_in_flight gauge\necc_requests_in_flight 0",
    ):
        assert re.search(pattern, text), pattern
    for line in text.strip().splitlines():  # every sample line is `name{labels} value`
        assert line.startswith("# ") or re.fullmatch(r'[a-z_]+(\{[^}]*\})? [0-9.e+-]+', line), line


def test_token_comes_from_the_argument_or_the_environment(monkeypatch):
    from ecc_yolo.args import get_args

    monkeypatch.setenv("ECC_YOLO_TOKEN", "from-env")
    assert ServerSettings.from_args(get_args({})).token == "from-env"
    assert ServerSettings.from_args(get_args({"token": "given"})).token == "given"
    monkeypatch.delenv("ECC_YOLO_TOKEN")
    assert ServerSettings.from_args(get_args({})).token is None


@pytest.mark.parametrize("given", ["0x10", "none", "None", "true", "1e3", "[1, 2]", "'quoted'", "000123"])
def test_a_token_on_the_command_line_is_taken_verbatim(given):
    """Ultralytics' value parsing would turn token=0x10 into 16 and token=none into None (no authentication)."""
    from ecc_yolo.args import get_args
    from ecc_yolo.cli import parse_pairs

    args = parse_pairs([f"token={given}", "max_batch=0x10"])
    assert args == {"token": given, "max_batch": 16}  # other values are still typed
    assert ServerSettings.from_args(get_args(args)).token == given


@pytest.mark.parametrize(
    "argv, message",
    [
        (["serve", "model=cfg/ecc-tiny-11.yaml"], "serve needs model=<an ECC checkpoint (.pt) or a zoo name>"),
        (["serve", "model=x.pt", "port=70000"], "port must be an integer in 1..65535"),
        (["serve", "model=x.pt", "backend=k8s"], "backend must be one of fastapi, ray"),
        (["serve", "model=x.pt", "max_batch=0"], "max_batch must be an integer >= 1"),
        (["detect", "model=x.pt"], "detect needs source="),
        (["detect", "model=x.pt", "source=v.mp4", "imgsz=128"], "needs cloud=<server URL"),  # imgsz: not loaded
        (["detect", "model=x.pt", "source=v.mp4", "cloud=ftp://h"], "cloud must be empty or an http"),
        (["detect", "model=x.pt", "source=v.mp4", "budget=lots"], "budget must be empty, an offload ratio"),
        (["detect", "model=x.pt", "source=v.mp4", "timeout=0"], "timeout must be a number > 0"),
    ],
)
def test_serving_command_lines_fail_clearly(argv, message, capsys):
    from ecc_yolo.cli import entrypoint

    assert entrypoint(argv) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


# -- local server -------------------------------------------------------------------------------------------------
def test_local_server_reports_a_server_that_exits_with_its_log(tmp_path):
    log = tmp_path / "serve.log"
    start = time.monotonic()
    with pytest.raises(RuntimeError, match="ecc-yolo serve exited") as err:
        LocalServer(tmp_path / "missing.pt", imgsz=64, log=log).start(timeout=120)
    assert time.monotonic() - start < 60  # noticed when the process ends, not at the timeout
    assert "missing.pt" in str(err.value)  # the log's end is in the message


def test_one_table_maps_each_served_route_to_its_request_kind_and_path(engine):
    """The server registers exactly the endpoints of SERVED_ROUTES, each answering with its route; the client sends a
    route's frames to that route's path (no second table)."""
    from ecc_yolo.serve import client
    from ecc_yolo.serve.kserve import MODEL_PATHS
    from ecc_yolo.serve.protocol import SERVED_BY_ROUTE, SERVED_ROUTES

    app = build_app(engine, ServerSettings())
    posts = {r.path for r in app.routes if "POST" in getattr(r, "methods", set())}
    v2 = {f"{path}/infer" for path in MODEL_PATHS}  # KServe v2: one infer path, one v2 model per served route
    assert posts - v2 == {r.path for r in SERVED_ROUTES} and len(posts - v2) == 2 and v2 <= posts
    assert {r.route for r in SERVED_ROUTES} == {"cloud", "adapted"} and set(SERVED_BY_ROUTE) == {"cloud", "adapted"}
    assert not hasattr(client, "ROUTE_PATHS")
