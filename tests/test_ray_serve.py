"""`ecc-yolo serve backend=ray`: the same app as a Ray Serve deployment, on a local single-node Ray."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import httpx
import numpy as np
import pytest
from conftest import free_port

from ecc_yolo.payload.codec import encode_jpeg
from ecc_yolo.serve.local import wait_healthy
from ecc_yolo.serve.protocol import FEATURES_PATH, HEALTH_PATH, IMAGE_PATH, METRICS_PATH, MODEL_PATH, bearer_header
from ecc_yolo.serve.server import ServerSettings

# Ray starts its worker processes at nice 15 (raylet's `worker_niceness`), so on 2 cores shared with the run's other
# xdist worker and the background tiny-zoo training (both nice 0) the Serve proxy barely got CPU: 290 s instead of 45 s
# for this test next to two busy loops. Its controller also kills a proxy that misses three 5 s readiness checks.
# Both settings reach Ray's processes through the raylet's environment, so they are set before `ray.init`.
RAY_TEST_ENV = {"RAY_worker_niceness": "0", "RAY_SERVE_PROXY_READY_CHECK_TIMEOUT_S": "60"}


def _start_serve(serve, settings: ServerSettings, port: int) -> None:
    """`serve.start` with the settings' proxy options, tolerating Ray's fixed 60 s driver-side wait for the proxy: the
    controller keeps starting it and the caller polls the health route until it answers."""
    from ecc_yolo.serve.ray_app import http_options

    try:
        serve.start(http_options=http_options(settings, "127.0.0.1", port))
    except TimeoutError:
        pass


@pytest.mark.slow
def test_ray_serve_answers_through_the_same_app(serving_ckpt, monkeypatch):
    ray = pytest.importorskip("ray")
    serve = pytest.importorskip("ray.serve")
    from ecc_yolo.checkpoint import load_ecc
    from ecc_yolo.serve.ray_app import DEPLOYMENT_NAME, ray_application

    model, _ = load_ecc(serving_ckpt)
    port = free_port()
    for name, value in RAY_TEST_ENV.items():
        monkeypatch.setenv(name, value)
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        # One request at a time per replica, one more queued at the proxy: a burst must meet Ray's backpressure.
        settings = ServerSettings(token="t", max_batch=4, max_wait_ms=5, max_concurrency=1, max_queue=1, timeout=60)
        _start_serve(serve, settings, port)
        serve.run(ray_application(str(serving_ckpt), settings, {"imgsz": 128}, replicas=1), name=DEPLOYMENT_NAME,
                  route_prefix="/")
        url = f"http://127.0.0.1:{port}"
        with httpx.Client(base_url=url, timeout=60) as c:
            assert wait_healthy(url, 180), "Ray Serve's proxy did not answer within 180 s"
            assert c.get(HEALTH_PATH).json() == {"status": "ok"}
            assert c.get(MODEL_PATH).json()["fingerprint"] == model.fingerprint().hex()
            assert c.get("/v2/models/image").json()["name"] == "image"  # the KServe v2 endpoints come along
            image = (np.random.default_rng(0).random((90, 120, 3)) * 255).astype(np.uint8)
            r = c.post(IMAGE_PATH, content=encode_jpeg(image), headers=bearer_header("t"))
            assert r.status_code == 200, r.text
            answer = r.json()
            assert answer["route"] == "cloud" and answer["image_shape"] == [90, 120] and answer["batch_size"] >= 1
            bad = c.post(FEATURES_PATH, content=b"junk", headers=bearer_header("t"))
            assert bad.status_code == 400 and bad.json()["error"]["kind"] == "bad_payload"
            assert c.post(IMAGE_PATH, content=encode_jpeg(image)).status_code == 401
            assert 'ecc_requests_total{route="cloud",status="200"}' in c.get(METRICS_PATH).text
            with ThreadPoolExecutor(12) as pool:  # overload: 12 at once against 1 running + 1 queued
                burst = list(pool.map(lambda _: c.post(IMAGE_PATH, content=encode_jpeg(image),
                                                       headers=bearer_header("t")), range(12)))
            statuses = [r.status_code for r in burst]
            assert set(statuses) <= {200, 503} and 200 in statuses and 503 in statuses, statuses
            assert all(int(r.headers["retry-after"]) >= 1 for r in burst if r.status_code == 503)
    finally:
        serve.shutdown()
        ray.shutdown()
