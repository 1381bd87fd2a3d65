"""The KServe v2 / Triton endpoints (`ecc_yolo.serve.kserve`), with the real `tritonclient.http` client against a
loopback server: metadata and readiness, inference equal to the server's own routes, auth, 503, malformed requests."""

from __future__ import annotations

import base64
import json
from concurrent.futures import ThreadPoolExecutor

import httpx
import numpy as np
import pytest
from test_overload import GatedEngine
from test_serve import AUTH, IMGSZ, MAX_BODY, TOKEN, frames, payload_bytes

from ecc_yolo.checkpoint import load_ecc
from ecc_yolo.payload.codec import encode_jpeg
from ecc_yolo.serve.engine import CloudEngine
from ecc_yolo.serve.kserve import ANSWER, DETECTIONS, HEADER_LENGTH, INPUT_NAME
from ecc_yolo.serve.protocol import (
    FEATURES,
    FEATURES_PATH,
    IMAGE,
    IMAGE_PATH,
    METRICS_PATH,
    SERVED_ROUTES,
    bearer_header,
    detections_array,
)
from ecc_yolo.serve.server import BackgroundServer, ServerSettings, build_app

httpclient = pytest.importorskip("tritonclient.http")
from tritonclient.utils import InferenceServerException  # after the importorskip


@pytest.fixture(scope="module")
def device_model(serving_ckpt):
    return load_ecc(serving_ckpt)[0].eval()


@pytest.fixture(scope="module")
def server(serving_ckpt):
    """A BackgroundServer with a token (its `.url`)."""
    engine = CloudEngine.from_checkpoint(serving_ckpt, imgsz=IMGSZ)
    with BackgroundServer(build_app(engine, ServerSettings(token=TOKEN, max_body=MAX_BODY, max_wait_ms=5))) as srv:
        yield srv


@pytest.fixture
def http(server):
    with httpx.Client(base_url=server.url, timeout=30) as client:
        yield client


def triton(srv) -> httpclient.InferenceServerClient:
    return httpclient.InferenceServerClient(srv.url.removeprefix("http://"), network_timeout=30)


def triton_infer(client, model: str, body: bytes, datatype: str = "BYTES", binary: bool = True, outputs=None,
                 headers=AUTH):
    """`body` sent with tritonclient as the one input tensor (BYTES: one element; UINT8: its bytes)."""
    array = np.array([body], dtype=np.object_) if datatype == "BYTES" else np.frombuffer(body, dtype=np.uint8)
    tensor = httpclient.InferInput(INPUT_NAME, list(array.shape), datatype)
    tensor.set_data_from_numpy(array, binary_data=binary)
    return client.infer(model, [tensor], outputs=outputs, headers=dict(headers))  # infer adds to the dict it gets


def assert_same_answer(result, want: dict) -> None:
    """A v2 result carries the detections of the server's own answer `want`, to the bit."""
    np.testing.assert_array_equal(result.as_numpy(DETECTIONS), detections_array(want["detections"]))
    answer = json.loads(result.as_numpy(ANSWER)[0])
    assert answer["detections"] == want["detections"]
    assert {k: answer[k] for k in ("route", "image_shape", "input_shape")} == {
        k: want[k] for k in ("route", "image_shape", "input_shape")}


def v2_request(data: bytes, datatype: str = "BYTES", name: str = INPUT_NAME, shape=None, prefix: int | None = None,
               size: int | None = None, **extra) -> tuple[dict[str, str], bytes]:
    """(headers, body) of a binary-extension v2 request carrying `data`; any field may be made to lie."""
    raw = ((len(data) if prefix is None else prefix).to_bytes(4, "little") + data) if datatype == "BYTES" else data
    tensor = {"name": name, "datatype": datatype, "shape": shape or ([1] if datatype == "BYTES" else [len(data)]),
              "parameters": {"binary_data_size": len(raw) if size is None else size}}
    head = json.dumps({"inputs": [tensor], **extra}).encode()
    return {**AUTH, HEADER_LENGTH: str(len(head))}, head + raw


def json_request(tensor: dict, **extra) -> tuple[dict[str, str], bytes]:
    """(headers, body) of a JSON-only v2 request with the one input `tensor`."""
    return AUTH, json.dumps({"inputs": [{"name": INPUT_NAME, **tensor}], **extra}).encode()


# -- metadata and readiness -----------------------------------------------------------------------------------------
def test_metadata_liveness_and_readiness(server):
    client = triton(server)  # no token: like /healthz and /v1/model, metadata is open
    assert client.is_server_live() and client.is_server_ready()
    meta = client.get_server_metadata()
    assert meta["name"] == "ecc-yolo" and "binary_tensor_data" in meta["extensions"] and meta["version"]
    assert len(SERVED_ROUTES) == 2
    for served in SERVED_ROUTES:  # one v2 model per served route, named by its request kind
        assert client.is_model_ready(served.kind) and client.is_model_ready(served.kind, "1")
        model = client.get_model_metadata(served.kind)
        assert model["name"] == served.kind and model["versions"] == ["1"]
        assert model["inputs"] == [{"name": INPUT_NAME, "datatype": "BYTES", "shape": [1]}]
        assert [(o["name"], o["datatype"]) for o in model["outputs"]] == [(DETECTIONS, "FP32"), (ANSWER, "BYTES")]
    assert not client.is_model_ready("nope") and not client.is_model_ready(IMAGE, "2")
    with pytest.raises(InferenceServerException) as e:
        client.get_model_metadata("nope")
    assert e.value.status() == "404" and "not_found" in e.value.message()
    client.close()


# -- inference equals the server's own routes ------------------------------------------------------------------------
def test_image_infer_equals_the_image_route(server, http):
    client, found = triton(server), 0
    for image in frames(3, seed=3):
        body = encode_jpeg(image)
        want = http.post(IMAGE_PATH, content=body, headers=AUTH).json()
        assert want["route"] == "cloud"
        found += len(want["detections"])
        for datatype, binary in (("BYTES", True), ("UINT8", True), ("UINT8", False)):  # JSON BYTES must be UTF-8
            assert_same_answer(triton_infer(client, IMAGE, body, datatype, binary), want)
        only = triton_infer(client, IMAGE, body, outputs=[httpclient.InferRequestedOutput(DETECTIONS, False)])
        assert only.as_numpy(ANSWER) is None and only.get_output(DETECTIONS)["data"] is not None
        np.testing.assert_array_equal(only.as_numpy(DETECTIONS), detections_array(want["detections"]))
    assert found > 0  # the comparison compared boxes
    client.close()


def test_features_infer_equals_the_features_route(server, http, device_model):
    client, found = triton(server), 0
    for image in frames(2, seed=4) + frames(1, shape=(128, 80), seed=5):
        body = payload_bytes(device_model, image)
        want = http.post(FEATURES_PATH, content=body, headers=AUTH).json()
        assert want["route"] == "adapted" and want["image_shape"] == list(image.shape[:2])
        found += len(want["detections"])
        for datatype in ("BYTES", "UINT8"):
            assert_same_answer(triton_infer(client, FEATURES, body, datatype), want)
        # JSON only, both ways: base64 BYTES in, JSON data out, the request id echoed
        headers, request = json_request({"datatype": "BYTES", "shape": [1], "data": [base64.b64encode(body).decode()],
                                         "parameters": {"content_type": "base64"}}, id="frame-7")
        r = http.post(f"/v2/models/{FEATURES}/versions/1/infer", content=request, headers=headers)
        assert r.status_code == 200 and HEADER_LENGTH.lower() not in r.headers, r.text
        answer = r.json()
        assert answer["id"] == "frame-7" and answer["model_name"] == FEATURES
        out = {o["name"]: o for o in answer["outputs"]}
        assert json.loads(out[ANSWER]["data"][0])["detections"] == want["detections"]
        got = np.asarray(out[DETECTIONS]["data"], dtype=np.float32).reshape(out[DETECTIONS]["shape"])
        np.testing.assert_array_equal(got, detections_array(want["detections"]))
    assert found > 0
    client.close()


# -- the guard: auth, 503 --------------------------------------------------------------------------------------------
def test_infer_needs_the_token(server):
    client, body = triton(server), encode_jpeg(frames(1)[0])
    for headers in ({}, bearer_header(TOKEN + "x")):
        with pytest.raises(InferenceServerException) as e:
            triton_infer(client, IMAGE, body, headers=headers)
        assert e.value.status() == "401" and e.value.message().startswith("unauthorized: "), e.value
    assert triton_infer(client, IMAGE, body, headers={"Authorization": f"Bearer {TOKEN}"}).as_numpy(DETECTIONS) \
        is not None
    client.close()


def test_overload_is_a_503_with_retry_after_and_readiness_follows(serving_ckpt, device_model):
    """max_concurrency=1: while one v2 request is in the model, the next is refused with 503 + Retry-After (the
    request guard's admission), and /v2/health/ready says not ready."""
    engine = GatedEngine(load_ecc(serving_ckpt)[0], imgsz=IMGSZ)
    settings = ServerSettings(max_batch=1, max_wait_ms=0, max_queue=1, max_concurrency=1, timeout=30)
    body = payload_bytes(device_model, frames(1)[0])
    with BackgroundServer(build_app(engine, settings)) as srv, httpx.Client(base_url=srv.url, timeout=30) as http:
        client = triton(srv)
        assert client.is_server_ready()
        with ThreadPoolExecutor(1) as pool:
            headers, request = v2_request(body)
            running = pool.submit(http.post, f"/v2/models/{FEATURES}/infer", content=request, headers=headers)
            assert engine.entered.wait(30)
            with pytest.raises(InferenceServerException) as e:
                triton_infer(client, FEATURES, body)
            assert e.value.status() == "503" and e.value.message().startswith("overloaded: "), e.value
            refused = http.post(f"/v2/models/{IMAGE}/infer", content=request, headers=headers)
            assert refused.status_code == 503 and int(refused.headers["retry-after"]) >= 1
            assert not client.is_server_ready() and not client.is_model_ready(FEATURES) and client.is_server_live()
            ready = http.get("/v2/health/ready")
            assert ready.status_code == 503 and "max_concurrency" in ready.json()["error"]
            engine.release.set()
            assert running.result(30).status_code == 200, running.result().text
        assert client.is_server_ready()  # the admission place is given back before the answer is sent
        client.close()


# -- malformed v2 requests: 4xx, never 500 ---------------------------------------------------------------------------
def _malformed(device_model) -> list[tuple[str, str, dict, bytes, int]]:
    """(case, model, headers, body, status): v2 requests that must be refused."""
    jpeg, payload = encode_jpeg(frames(1)[0]), payload_bytes(device_model, frames(1)[0])
    headers, good = v2_request(jpeg)
    head_len = int(headers[HEADER_LENGTH])
    u8 = {"datatype": "UINT8", "shape": [3]}
    short = json.dumps({"inputs": [{"name": INPUT_NAME, "datatype": "BYTES", "shape": [1],
                                    "parameters": {"binary_data_size": 2}}]}).encode()  # 2 bytes: no room for a prefix
    cases = [
        ("wrong input name", IMAGE, *v2_request(jpeg, name="INPUT0"), 400),
        ("FP32 input", IMAGE, *v2_request(jpeg, datatype="FP32", shape=[len(jpeg) // 4]), 400),
        ("two BYTES elements", IMAGE, *v2_request(jpeg, shape=[2]), 400),
        ("UINT8 shape over its bytes", IMAGE, *v2_request(jpeg, datatype="UINT8", shape=[len(jpeg) + 1]), 400),
        ("UINT8 shape [2, n/2]", IMAGE, *v2_request(jpeg[:100], datatype="UINT8", shape=[2, 50]), 400),
        ("negative shape", IMAGE, *v2_request(jpeg, shape=[-1]), 400),
        ("shape not a list", IMAGE, *v2_request(jpeg, shape="1"), 400),
        ("truncated binary body", IMAGE, headers, good[:-10], 400),
        ("binary_data_size over the body", IMAGE, *v2_request(jpeg, size=len(jpeg) + 1000), 400),
        ("binary_data_size not a number", IMAGE, *v2_request(jpeg, size="12"), 400),
        ("length prefix over the element", IMAGE, *v2_request(jpeg, prefix=len(jpeg) + 100), 400),
        ("length prefix under the element", IMAGE, *v2_request(jpeg, prefix=len(jpeg) - 1), 400),
        ("length prefix of 4 GiB", IMAGE, *v2_request(jpeg, prefix=2**32 - 1), 400),
        ("element shorter than its length prefix", IMAGE, {**AUTH, HEADER_LENGTH: str(len(short))}, short + b"\1\0",
         400),
        ("header length over the body", IMAGE, {**headers, HEADER_LENGTH: str(len(good) + 1)}, good, 400),
        ("header length cutting the JSON", IMAGE, {**headers, HEADER_LENGTH: str(head_len - 5)}, good, 400),
        ("header length not a number", IMAGE, {**headers, HEADER_LENGTH: "-1"}, good, 400),
        ("header length of 5000 digits", IMAGE, {**headers, HEADER_LENGTH: "0" * 4999 + "9"}, good, 400),
        ("header length, a non-ASCII digit", IMAGE, {**headers, HEADER_LENGTH: b"\xb2"}, good, 400),
        ("binary data without the header length", IMAGE, AUTH, good, 400),
        ("binary_data_size in a JSON-only body", IMAGE, AUTH, good[:head_len], 400),
        ("two inputs", IMAGE, AUTH, json.dumps({"inputs": [{"name": INPUT_NAME}] * 2}).encode(), 400),
        ("no inputs", IMAGE, AUTH, b'{"inputs": []}', 400),
        ("a JSON array", IMAGE, AUTH, b"[1, 2]", 400),
        ("not JSON", IMAGE, AUTH, b"\xff\xd8 not json", 400),
        ("JSON nested past the parser's depth", IMAGE, AUTH, b"[" * 50_000, 400),
        ("empty body", IMAGE, AUTH, b"", 400),
        ("UINT8 data over 255", IMAGE, *json_request({**u8, "data": [1, 2, 256]}), 400),
        ("UINT8 data of floats", IMAGE, *json_request({**u8, "data": [1, 2, 3.5]}), 400),
        ("UINT8 data of strings", IMAGE, *json_request({**u8, "data": ["a", "b", "c"]}), 400),
        ("UINT8 data not a list", IMAGE, *json_request({**u8, "data": "abc"}), 400),
        ("UINT8 data shorter than its shape", IMAGE, *json_request({**u8, "data": [1, 2]}), 400),
        ("BYTES data, bad base64", IMAGE, *json_request({"datatype": "BYTES", "shape": [1], "data": ["!!"],
                                                         "parameters": {"content_type": "base64"}}), 400),
        ("BYTES data not a string", IMAGE, *json_request({"datatype": "BYTES", "shape": [1], "data": [5]}), 400),
        ("no data", IMAGE, *json_request({"datatype": "BYTES", "shape": [1]}), 400),
        ("shared memory input", IMAGE, *json_request({"datatype": "BYTES", "shape": [1], "parameters": {
            "shared_memory_region": "r", "shared_memory_byte_size": 10}}), 400),
        ("unknown output", IMAGE, *v2_request(jpeg, outputs=[{"name": "boxes"}]), 400),
        ("an output twice", IMAGE, *v2_request(jpeg, outputs=[{"name": DETECTIONS}] * 2), 400),
        ("outputs not a list", IMAGE, *v2_request(jpeg, outputs={"name": DETECTIONS}), 400),
        ("request id not a string", IMAGE, *v2_request(jpeg, id=7), 400),
        ("parameters not an object", IMAGE, *v2_request(jpeg, parameters=[1]), 400),
        ("a payload to the image model", IMAGE, *v2_request(payload), 400),  # bad_image
        ("an image to the features model", FEATURES, *v2_request(jpeg), 400),  # bad_payload
        ("a JSON-text 'image'", IMAGE, *json_request({"datatype": "BYTES", "shape": [1], "data": ["\ud800"]}), 400),
        ("body over max_body", IMAGE, *v2_request(bytes(MAX_BODY)), 413),
        ("unknown model", "nope", *v2_request(jpeg), 404),
        ("unknown version", f"{IMAGE}/versions/2", *v2_request(jpeg), 404),
        ("no token", IMAGE, {HEADER_LENGTH: headers[HEADER_LENGTH]}, good, 401),
    ]
    return cases


def test_malformed_v2_requests_get_a_4xx_never_a_500(server, http, device_model):
    cases = _malformed(device_model)
    assert len(cases) > 40
    for case, model, headers, body, status in cases:
        r = http.post(f"/v2/models/{model}/infer", content=body, headers=headers)
        assert r.status_code == status, (case, r.status_code, r.text)
        error = r.json()["error"]
        assert isinstance(error, str) and ": " in error, (case, error)
    assert 'ecc_errors_total{kind="bad_request"}' in http.get(METRICS_PATH).text
    assert 'kind="internal"' not in http.get(METRICS_PATH).text
    headers, good = v2_request(encode_jpeg(frames(1)[0]))  # and the server keeps serving
    assert http.post(f"/v2/models/{IMAGE}/infer", content=good, headers=headers).status_code == 200


def test_a_large_json_header_is_refused_and_the_binary_form_is_not(server, http, monkeypatch):
    """Tensors in JSON are parsed only up to MAX_JSON_HEADER (413 beyond); the same bytes as binary data pass."""
    from ecc_yolo.serve import kserve

    jpeg = encode_jpeg(frames(1)[0])
    monkeypatch.setattr(kserve, "MAX_JSON_HEADER", len(jpeg))  # the test server's max_body is under the real cap
    headers, body = json_request({"datatype": "UINT8", "shape": [len(jpeg)], "data": list(jpeg)})
    r = http.post(f"/v2/models/{IMAGE}/infer", content=body, headers=headers)
    assert r.status_code == 413 and r.json()["error"].startswith("too_large: JSON header"), r.text
    headers, body = v2_request(jpeg, datatype="UINT8")
    assert http.post(f"/v2/models/{IMAGE}/infer", content=body, headers=headers).status_code == 200
