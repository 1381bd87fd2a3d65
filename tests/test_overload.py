"""Overload and slow clients: admission before the body is read, 503 + Retry-After, deadlines, withdrawn work,
readiness, slow uploads cut off, bounded shutdown, and the edge client's back-off."""

from __future__ import annotations

import random
import re
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from urllib.parse import urlparse

import cv2
import httpx
import numpy as np
import pytest
import torch
from conftest import ServerProcess

from ecc_yolo.checkpoint import load_ecc
from ecc_yolo.infer import input_tensor
from ecc_yolo.payload.codec import encode_features
from ecc_yolo.serve.batcher import DeadlineExceeded, MicroBatcher
from ecc_yolo.serve.engine import CloudEngine
from ecc_yolo.serve.link import CloudLink, OffloadError
from ecc_yolo.serve.metrics import ServerMetrics
from ecc_yolo.serve.protocol import FEATURES_PATH, HEALTH_PATH, METRICS_PATH, READY_PATH, TIMEOUT_HEADER
from ecc_yolo.serve.server import BackgroundServer, BatchedBackend, ServerSettings, build_app, create_app

IMGSZ = 128


@pytest.fixture(scope="module")
def device_model(serving_ckpt):
    return load_ecc(serving_ckpt)[0].eval()


@torch.inference_mode()
def payload(model, shape: tuple[int, int], seed: int = 0) -> bytes:
    """A feature payload for a random frame of `shape` (h, w): its image_shape tells answers apart."""
    from ultralytics.data.augment import LetterBox

    image = cv2.GaussianBlur((np.random.default_rng(seed).random((*shape, 3)) * 255).astype(np.uint8), (0, 0), 3)
    x = input_tensor([LetterBox((IMGSZ, IMGSZ), auto=False, stride=32)(image=image)])
    (p,) = model.payloads_from_features(model.edge_features(x), shape, (IMGSZ, IMGSZ))
    return encode_features(p)


class GatedEngine(CloudEngine):
    """A CloudEngine whose first batch waits for `release`, and which records the image shapes it computed."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.entered, self.release, self.computed = threading.Event(), threading.Event(), []

    def run(self, key, items):
        self.computed.extend(tuple(p.image_shape) for p in items)
        self.entered.set()
        self.release.wait(30)
        return super().run(key, items)


def raw_request(url: str, path: str, head: bytes = b"", body: bytes = b"", length: int | None = None) -> socket.socket:
    """A connected socket that has sent a POST's request line and headers (Content-Length `length`) and `body`."""
    u = urlparse(url)
    sock = socket.create_connection((u.hostname, u.port), timeout=10)
    length = len(body) if length is None else length
    sock.sendall(f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Length: {length}\r\n".encode() + head + b"\r\n" + body)
    return sock


def read_response(sock: socket.socket) -> bytes:
    """One HTTP response (head and Content-Length body) from `sock`."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        assert chunk, f"connection closed after {data!r}"
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    length = int(re.search(rb"content-length: (\d+)", head.lower()).group(1))
    while len(body) < length:
        body += sock.recv(65536)
    return head + b"\r\n\r\n" + body


def read_all(sock: socket.socket) -> bytes:
    """Everything the server sends until it closes the connection."""
    chunks = []
    while chunk := sock.recv(65536):
        chunks.append(chunk)
    return b"".join(chunks)


# -- the batcher -------------------------------------------------------------------------------------------------
def test_batcher_drops_expired_and_cancelled_items_before_computing_them():
    ran = []
    batcher = MicroBatcher(lambda key, items: ran.extend(items) or list(items), max_batch=8, max_wait_s=0.0,
                           max_queue=3)
    now = time.monotonic()
    expired = batcher.submit("k", "expired", deadline=now - 1)
    cancelled = batcher.submit("k", "cancelled")
    live = batcher.submit("k", "live", deadline=now + 60)
    assert cancelled.cancel()
    late = batcher.submit("k", "late", deadline=now + 60)  # full: the stale places are freed first
    batcher.start()
    assert live.result(10) == ("live", 2) and late.result(10) == ("late", 2)
    with pytest.raises(DeadlineExceeded):
        expired.result(10)
    batcher.close()
    assert ran == ["live", "late"]


# -- admission, deadlines, disconnects, readiness ------------------------------------------------------------------
def test_deadlines_and_disconnects_withdraw_queued_work(serving_ckpt, device_model):
    """While the worker is busy: a request whose deadline passes gets 503 + Retry-After, one whose client hangs up is
    withdrawn, and neither is ever computed; a patient one is answered."""
    engine = GatedEngine(load_ecc(serving_ckpt)[0], imgsz=IMGSZ)
    settings = ServerSettings(max_batch=1, max_wait_ms=0, timeout=30)
    with BackgroundServer(build_app(engine, settings)) as srv, httpx.Client(base_url=srv.url, timeout=30) as c:
        with ThreadPoolExecutor(2) as pool:
            first = pool.submit(c.post, FEATURES_PATH, content=payload(device_model, (90, 128)))
            assert engine.entered.wait(30)  # the worker is now busy with the first request
            t0 = time.monotonic()
            hurried = c.post(FEATURES_PATH, content=payload(device_model, (91, 128)), headers={TIMEOUT_HEADER: "300"})
            waited = time.monotonic() - t0
            gone = raw_request(srv.url, FEATURES_PATH, body=payload(device_model, (92, 128)))
            time.sleep(0.3)  # queued
            gone.close()  # the client hangs up without reading its answer
            patient = pool.submit(c.post, FEATURES_PATH, content=payload(device_model, (93, 128)))
            time.sleep(0.3)
            assert "ecc_queue_depth 1" in c.get(METRICS_PATH).text  # only the patient one waits now
            engine.release.set()
            assert first.result(30).status_code == 200 and patient.result(30).status_code == 200
        text = c.get(METRICS_PATH).text
    assert hurried.status_code == 503 and hurried.json()["error"]["kind"] == "deadline_exceeded"
    assert int(hurried.headers["retry-after"]) >= 1 and 0.3 <= waited < 5
    assert engine.computed == [(90, 128), (93, 128)]  # the hurried and the vanished request never ran
    assert re.search(r'ecc_errors_total\{kind="client_disconnected"\} 1', text)


def test_admission_refuses_before_the_body_and_readiness_follows(serving_ckpt, device_model):
    """max_concurrency=2: the third request is refused with 503 + Retry-After without its body being read (it is
    never sent), /readyz says not ready while full (and when the queue is full), /healthz stays ok."""
    engine = GatedEngine(load_ecc(serving_ckpt)[0], imgsz=IMGSZ)
    settings = ServerSettings(max_batch=1, max_wait_ms=0, max_queue=1, max_concurrency=2, timeout=30)
    with BackgroundServer(build_app(engine, settings)) as srv, httpx.Client(base_url=srv.url, timeout=30) as c:
        assert c.get(READY_PATH).status_code == 200
        with ThreadPoolExecutor(2) as pool:
            running = pool.submit(c.post, FEATURES_PATH, content=payload(device_model, (90, 128)))
            assert engine.entered.wait(30)
            queued = pool.submit(c.post, FEATURES_PATH, content=payload(device_model, (91, 128)))
            time.sleep(0.3)
            ready = c.get(READY_PATH)
            assert ready.status_code == 503 and "queue is full" in ready.json()["reason"]
            assert int(ready.headers["retry-after"]) >= 1 and c.get(HEALTH_PATH).status_code == 200
            # Headers only, announcing 10 MB: refused at once, before a byte of the body is sent.
            sock = raw_request(srv.url, FEATURES_PATH, length=10_000_000)
            answer = read_response(sock)
            sock.close()
            assert answer.startswith(b"HTTP/1.1 503") and b"retry-after: " in answer.lower(), answer[:300]
            assert b'"kind":"overloaded"' in answer and b"max_concurrency" in answer
            engine.release.set()
            assert running.result(30).status_code == 200 and queued.result(30).status_code == 200
        assert c.get(READY_PATH).status_code == 200


def test_readiness_says_not_ready_when_the_worker_is_not_running(serving_ckpt):
    engine = CloudEngine.from_checkpoint(serving_ckpt, imgsz=IMGSZ)
    settings, metrics = ServerSettings(), ServerMetrics()
    backend = BatchedBackend(engine, settings, metrics)  # never started: no worker thread
    with BackgroundServer(create_app(engine, backend, settings, metrics)) as srv:
        r = httpx.get(srv.url + READY_PATH)
        assert r.status_code == 503 and "worker is not running" in r.json()["reason"]
        assert httpx.get(srv.url + HEALTH_PATH).status_code == 200  # liveness is another question


# -- slow clients and shutdown -----------------------------------------------------------------------------------
def test_slow_uploads_are_cut_off_others_are_served_and_shutdown_is_bounded(serving_ckpt, device_model):
    """timeout=1: uploads that trickle get 408 and a closed connection about 1 s after they started, while other
    clients are served; shutdown with slow uploads, idle and half-sent connections open takes at most
    timeout + 2 s (SHUTDOWN_BOUND_S)."""
    timeout = 1.0
    shutdown_bound_s = timeout + 2.0
    engine = CloudEngine.from_checkpoint(serving_ckpt, imgsz=IMGSZ)
    body = payload(device_model, (96, 128))
    srv = BackgroundServer(build_app(engine, ServerSettings(timeout=timeout))).__enter__()
    stop = threading.Event()

    def trickle(sock: socket.socket) -> None:
        try:
            while not stop.is_set():
                sock.sendall(b"x")
                time.sleep(0.1)
        except OSError:  # the server closed it
            pass

    try:
        slow = [raw_request(srv.url, FEATURES_PATH, body=body[:10], length=len(body)) for _ in range(3)]
        t0 = time.monotonic()
        for sock in slow:
            threading.Thread(target=trickle, args=(sock,), daemon=True).start()
        with httpx.Client(base_url=srv.url, timeout=10) as c:
            served = [c.post(FEATURES_PATH, content=body).status_code for _ in range(5)]
        answers = [read_all(sock) for sock in slow]  # returns when the server closes the connection
        cut_after = time.monotonic() - t0
        assert served == [200] * 5
        for answer in answers:
            assert answer.startswith(b"HTTP/1.1 408") and b'"kind":"body_timeout"' in answer, answer[:300]
        assert timeout <= cut_after < timeout + 2.0, cut_after
        # Shutdown while slow uploads, an idle connection and a half-sent request head are open.
        slow = [raw_request(srv.url, FEATURES_PATH, body=body[:10], length=len(body)) for _ in range(3)]
        for sock in slow:
            threading.Thread(target=trickle, args=(sock,), daemon=True).start()
        u = urlparse(srv.url)
        idle = socket.create_connection((u.hostname, u.port))
        half = socket.create_connection((u.hostname, u.port))
        half.sendall(b"POST /v1/detect/features HTTP/1.1\r\nHost: x\r\n")
        time.sleep(0.2)
        seconds = srv.stop()
        idle.close()
        half.close()
        assert seconds <= shutdown_bound_s, seconds
    finally:
        stop.set()
        srv.server.should_exit = True


# -- overload ------------------------------------------------------------------------------------------------------
@pytest.mark.slow
def test_64_clients_get_only_200_or_503_each_answer_their_own_and_the_stream_keeps_its_frames(
        serving_ckpt, device_model, synth_video, tmp_path):
    """64 concurrent clients against a small server (max_concurrency=12, max_queue=4): only 200 and 503 with
    Retry-After, no 500; every 200 is the answer to its own request (as answered alone); the server's RSS stays
    under RSS_BOUND_MB above its idle level; an edge stream running meanwhile emits exactly one result per frame, in
    order, its fallbacks counted by cause."""
    import psutil

    from ecc_yolo.serve.client import EdgeStreamClient, StreamSettings

    rss_bound_mb = 100  # measured: 12 to 14 MB above idle (docs/BENCHMARKS.md section 9)
    clients, rounds = 64, 4
    bodies = [payload(device_model, (64 + i, 128), seed=i) for i in range(clients)]  # image_shape tells them apart
    server = ServerProcess(serving_ckpt, tmp_path / "serve.log", max_batch=4, max_wait_ms=5, max_queue=4,
                           max_concurrency=12)
    with server, httpx.Client(base_url=server.url, timeout=30) as c:
        alone = [c.post(FEATURES_PATH, content=b).json() for b in bodies]  # the reference: each answered alone
        proc = psutil.Process(server.proc.pid)
        idle_mb, peak_mb = proc.memory_info().rss / 2**20, 0.0
        done = threading.Event()

        def sample() -> None:
            nonlocal peak_mb
            while not done.is_set():
                peak_mb = max(peak_mb, proc.memory_info().rss / 2**20)
                time.sleep(0.02)

        results: list[tuple[int, int, httpx.Response]] = []
        lock = threading.Lock()

        def client(i: int) -> None:
            with httpx.Client(base_url=server.url, timeout=30) as own:
                for _ in range(rounds):
                    t0 = time.perf_counter()
                    r = own.post(FEATURES_PATH, content=bodies[i])
                    with lock:
                        results.append((i, round((time.perf_counter() - t0) * 1000), r))

        def stream() -> tuple[list, dict]:
            settings = StreamSettings(route="adapted", imgsz=(IMGSZ, IMGSZ), cloud=server.url, timeout=2.0,
                                      max_inflight=2, backoff=(0.1, 0.5))
            edge = EdgeStreamClient(device_model, settings)
            try:
                edge.connect()
                return [r.record for r in edge.stream(str(synth_video))], edge.summary()
            finally:
                edge.close()

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        with ThreadPoolExecutor(clients + 1) as pool:
            streamed = pool.submit(stream)
            list(pool.map(client, range(clients)))
            records, summary = streamed.result(120)
        done.set()
        sampler.join()
        metrics = c.get(METRICS_PATH).text
    statuses = [r.status_code for _, _, r in results]
    assert len(results) == clients * rounds and set(statuses) <= {200, 503}, sorted(set(statuses))
    assert statuses.count(200) >= 12 and statuses.count(503) >= 1, (statuses.count(200), statuses.count(503))
    for i, _, r in results:
        if r.status_code == 503:
            assert int(r.headers["retry-after"]) >= 1 and r.json()["error"]["kind"] in ("overloaded",
                                                                                         "deadline_exceeded")
            continue
        answer, want = r.json(), alone[i]
        assert answer["image_shape"] == want["image_shape"] == [64 + i, 128]
        got, ref = sorted(answer["detections"], key=lambda d: -d["conf"]), want["detections"]
        assert len(got) == len(ref) and all(a["cls"] == b["cls"] and np.allclose(a["xyxy"], b["xyxy"], atol=0.05)
                                            for a, b in zip(got, sorted(ref, key=lambda d: -d["conf"])))
    assert peak_mb - idle_mb < rss_bound_mb, (idle_mb, peak_mb)
    assert 'ecc_errors_total{kind="internal"}' not in metrics and re.search(r"ecc_queue_depth \d", metrics)
    assert [r["frame"] for r in records] == list(range(30))  # one result per frame, in order
    assert summary["frames"] == 30 == sum(summary["routes"].values())
    assert summary["fallbacks"] == sum(summary["errors"].values())  # every fallback has its cause counted
    assert set(summary["errors"]) <= {"http_503", "timeout", "cloud_unavailable"}, summary["errors"]


# -- the edge client's back-off --------------------------------------------------------------------------------------
def test_backoff_has_full_jitter_and_honours_retry_after():
    link = CloudLink("http://127.0.0.1:9", bytes(16), {0: "a"}, backoff=(0.5, 4.0), rng=random.Random(0))
    try:
        waits = []
        for _ in range(8):  # the n-th wait is uniform in [0, min(4, 0.5 * 2**n)]
            bound = link._interval
            t0 = time.monotonic()
            link._schedule()
            waits.append(link._next_probe - t0)
            assert 0 <= waits[-1] <= bound + 1e-3
        assert link._interval == 4.0 and len({round(w, 3) for w in waits}) == len(waits)  # capped, and jittered
        link.up = True
        t0 = time.monotonic()
        link.failed(OffloadError("http_503", "busy", retry_after=3.0))
        assert not link.up and link._next_probe - t0 >= 3.0  # never before the server's Retry-After
    finally:
        link.close()
