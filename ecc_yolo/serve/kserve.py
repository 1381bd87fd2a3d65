"""KServe v2 (Open Inference Protocol) endpoints, Triton-compatible, beside the server's own routes.

Paths (`add_kserve_routes`; a model path may also be spelled `/v2/models/{name}/versions/1/...`)::

    GET  /v2                         server metadata: {"name", "version", "extensions"}
    GET  /v2/health/live             200 while the process answers
    GET  /v2/health/ready            200, or 503 + Retry-After while the batch worker is dead or the server is full
    GET  /v2/models/{name}           model metadata: {"name", "versions", "platform", "inputs", "outputs"}
    GET  /v2/models/{name}/ready     as /v2/health/ready, 404 for a model that is not served
    POST /v2/models/{name}/infer     inference

Models: one per served route (`protocol.SERVED_ROUTES`), named by the kind of body it takes: `image` (a JPEG or PNG
file: the cloud detector, ECC_I) and `features` (a feature payload: adapter decoders and the cloud tail,
ECC_A/ECC_D); version `1`.

Input: one tensor named `input` holding the body the server's own route would take, as
    - BYTES, shape [1] (or [1, 1]): one element, the whole file or payload; or
    - UINT8, shape [N] (or [1, N]): its N bytes;
either in the binary tensor data extension (the JSON header's length in the `Inference-Header-Content-Length` request
header, the tensor's bytes after it, `parameters.binary_data_size` in the header; a BYTES element is a 4-byte
little-endian length and its bytes), which `tritonclient` sends by default, or in JSON `data`: UINT8 as a list of
integers, BYTES as a string, base64-decoded when the input's `parameters.content_type` is "base64" (else its UTF-8).

Outputs (all unless the request lists some; binary when the request's `parameters.binary_data_output` or the
output's `parameters.binary_data` says so, else JSON `data`):
    - `detections` FP32 [N, 6]: x1, y1, x2, y2 (pixels of the original image), confidence, class index; the numbers
      of the server's own answer (`protocol.detections_array` of its detections);
    - `answer` BYTES [1]: the server's own JSON answer (route, detections with class names, image_shape,
      input_shape, batch_size, server_ms), as UTF-8 text.

`infer` runs through the server's `intake.RequestGuard` like the other inference routes: the same bearer token,
deadline (X-ECC-Timeout-Ms), admission and 503 + Retry-After, `max_body` and decoders. A refusal answers
`{"error": "<kind>: <message>"}` with the status of `protocol.ERROR_STATUS[kind]`; a v2 request that is malformed
(a wrong input name, datatype or shape, a shape or `binary_data_size` that does not match the bytes sent, a lying
length prefix or header length) is a 400 `bad_request`; a JSON header over MAX_JSON_HEADER (1 MiB) is a 413
`too_large` (JSON costs several times its size to parse: large tensors go as binary data). Sizes the request
declares are only compared with the bytes it sent (already read within `max_body`), never used to allocate.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Hashable
from dataclasses import dataclass
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response

from ecc_yolo.serve.engine import CloudEngine
from ecc_yolo.serve.intake import RequestGuard, body_parser
from ecc_yolo.serve.metrics import ServerMetrics
from ecc_yolo.serve.protocol import SERVED_BY_KIND, SERVED_ROUTES, RequestError, ServedRoute, detections_array
from ecc_yolo.version import __version__

PREFIX = "/v2"
MODEL_VERSION = "1"
PLATFORM = "ecc-yolo"
INPUT_NAME = "input"
DETECTIONS, ANSWER = "detections", "answer"  # the output tensors
HEADER_LENGTH = "Inference-Header-Content-Length"  # binary tensor data extension: the JSON header's byte length
# Largest JSON header parsed. Parsing JSON costs far more CPU and memory per byte than the decoders (a UINT8 list
# takes about 5 bytes of memory per byte of text, and seconds per 10 MB), so a large tensor goes as binary data.
MAX_JSON_HEADER = 1 << 20
MODEL_PATHS = (f"{PREFIX}/models/{{name}}", f"{PREFIX}/models/{{name}}/versions/{{version}}")
OUTPUTS_METADATA = [{"name": DETECTIONS, "datatype": "FP32", "shape": [-1, 6]},
                    {"name": ANSWER, "datatype": "BYTES", "shape": [1]}]


@dataclass(frozen=True)
class InferRequest:
    """A validated v2 inference request: the body it carries, the outputs it wants (name -> binary), its id."""

    data: bytes
    outputs: dict[str, bool]
    id: str | None = None


def _bad(message: str) -> RequestError:
    return RequestError("bad_request", message)


def _dict(value: Any, what: str) -> dict[str, Any]:
    """`value` if it is a JSON object (None: an empty one), else a 400."""
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise _bad(f"{what} must be a JSON object")
    return value


def _split(body: bytearray, header_length: str | None) -> tuple[bytes, memoryview]:
    """(JSON header, binary data) of a request body, per its Inference-Header-Content-Length (None: all JSON)."""
    view = memoryview(body)
    if header_length is None:
        n = len(body)
    elif not (header_length.isascii() and header_length.isdigit() and len(header_length) <= 20 and
              int(header_length) <= len(body)):  # 20 digits: int() refuses over 4300
        raise _bad(f"{HEADER_LENGTH} {header_length[:40]!r} is not a byte count within the {len(body)}-byte body")
    else:
        n = int(header_length)
    if n > MAX_JSON_HEADER:
        raise RequestError("too_large", f"JSON header of {n} bytes exceeds {MAX_JSON_HEADER} bytes: send the "
                                        f"tensor as binary data ({HEADER_LENGTH})")
    return bytes(view[:n]), view[n:]


def _tensor_bytes(tensor: dict[str, Any], binary: memoryview) -> bytes:
    """The bytes the one input tensor carries, checked against its datatype and shape."""
    datatype, shape = tensor.get("datatype"), tensor.get("shape")
    if datatype not in ("BYTES", "UINT8"):
        raise _bad(f"input datatype {str(datatype)[:20]!r} is not served: BYTES (one element) or UINT8 expected")
    if not (isinstance(shape, list) and 1 <= len(shape) <= 2 and
            all(isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape) and
            all(d == 1 for d in shape[:-1])):
        raise _bad(f"input shape {str(shape)[:40]} is not [n] or [1, n]")
    params = _dict(tensor.get("parameters"), "input parameters")
    if "shared_memory_region" in params:
        raise _bad("shared-memory inputs are not supported")
    size = params.get("binary_data_size")
    if size is None and len(binary):
        raise _bad(f"{len(binary)} bytes follow the JSON header but the input declares no binary_data_size")
    if size is not None and (type(size) is not int or size != len(binary) or "data" in tensor):
        raise _bad(f"binary_data_size {str(size)[:20]} does not match the {len(binary)} bytes after the header "
                   f"(or the input has JSON data too)")
    n = shape[-1]
    if datatype == "UINT8":
        data = binary if size is not None else _uint8_json(tensor.get("data"))
        if len(data) != n:
            raise _bad(f"UINT8 input of shape {shape} but {len(data)} bytes")
        return bytes(data)
    if n != 1:
        raise _bad(f"BYTES input of shape {shape}: one element (the whole body) expected")
    if size is None:
        return _bytes_json(tensor.get("data"), params.get("content_type"))
    if len(binary) < 4 or int.from_bytes(binary[:4], "little") != len(binary) - 4:
        raise _bad(f"the BYTES element's 4-byte length prefix does not match the {len(binary)}-byte tensor data")
    return bytes(binary[4:])


def _uint8_json(data: Any) -> bytes:
    if not isinstance(data, list):
        raise _bad("UINT8 input without data: a list of integers (or binary data) expected")
    try:
        return bytes(data)
    except (TypeError, ValueError):
        raise _bad("UINT8 input data must be integers 0-255") from None


def _bytes_json(data: Any, content_type: Any) -> bytes:
    if not (isinstance(data, list) and len(data) == 1 and isinstance(data[0], str)):
        raise _bad("BYTES input without data: a list of one string (or binary data) expected")
    try:
        return base64.b64decode(data[0], validate=True) if content_type == "base64" else data[0].encode()
    except ValueError as e:  # binascii.Error, UnicodeEncodeError (a lone surrogate)
        raise _bad(f"BYTES input data cannot be decoded ({type(e).__name__})") from None


def _outputs(head: dict[str, Any]) -> dict[str, bool]:
    """The outputs a request asks for: name -> whether as binary data."""
    binary = _dict(head.get("parameters"), "request parameters").get("binary_data_output", False)
    requested = head.get("outputs")
    if requested is None:
        return {o["name"]: bool(binary) for o in OUTPUTS_METADATA}
    names = [o["name"] for o in OUTPUTS_METADATA]
    out: dict[str, bool] = {}
    for o in requested if isinstance(requested, list) else [None]:
        name = o.get("name") if isinstance(o, dict) else None
        if name not in names or name in out:
            raise _bad(f"requested outputs must be distinct objects named among {names}")
        out[name] = bool(_dict(o.get("parameters"), "output parameters").get("binary_data", binary))
    return out


def decode_request(body: bytearray, header_length: str | None) -> InferRequest:
    """Validate a v2 inference request body (its Inference-Header-Content-Length header: `header_length`).

    Raises:
        RequestError: `bad_request`, for anything malformed (see the module's description).
    """
    text, binary = _split(body, header_length)
    try:
        head = json.loads(text)
    except (ValueError, RecursionError):  # RecursionError: nested past the parser's depth
        raise _bad("the request header is not JSON") from None
    inputs = _dict(head, "the request").get("inputs")
    if not (isinstance(inputs, list) and len(inputs) == 1 and isinstance(inputs[0], dict)):
        raise _bad(f"one input tensor ({INPUT_NAME!r}) expected")
    if inputs[0].get("name") != INPUT_NAME:
        raise _bad(f"input {str(inputs[0].get('name'))[:40]!r} is not served: {INPUT_NAME!r} expected")
    request_id = head.get("id")
    if request_id is not None and not isinstance(request_id, str):
        raise _bad("the request id must be a string")
    return InferRequest(_tensor_bytes(inputs[0], binary), _outputs(head), request_id)


def encode_response(model: str, answer: dict[str, Any], request: InferRequest) -> Response:
    """The v2 response for the server's own `answer` (its JSON, batch_size and server_ms included)."""
    tensors, chunks = [], []
    for name, binary in request.outputs.items():
        if name == DETECTIONS:
            det = detections_array(answer["detections"])
            entry, raw, data = {"datatype": "FP32", "shape": list(det.shape)}, det.astype("<f4").tobytes(), det
        else:
            text = json.dumps(answer)
            encoded = text.encode()
            entry, raw, data = {"datatype": "BYTES", "shape": [1]}, len(encoded).to_bytes(4, "little") + encoded, [text]
        if binary:
            entry["parameters"] = {"binary_data_size": len(raw)}
            chunks.append(raw)
        else:
            entry["data"] = data.reshape(-1).tolist() if name == DETECTIONS else data
        tensors.append({"name": name, **entry})
    head = {"model_name": model, "model_version": MODEL_VERSION, "outputs": tensors}
    if request.id is not None:
        head["id"] = request.id
    header = json.dumps(head).encode()
    if not chunks:
        return Response(header, media_type="application/json")
    return Response(header + b"".join(chunks), media_type="application/octet-stream",
                    headers={HEADER_LENGTH: str(len(header))})


def error_body(e: RequestError) -> dict[str, str]:
    """v2's error shape."""
    return {"error": f"{e.kind}: {e.message}"}


def add_kserve_routes(app: FastAPI, engine: CloudEngine, guard: RequestGuard, settings: Any,
                      metrics: ServerMetrics) -> None:
    """Register the v2 endpoints (see the module's description) on `app`, the server of `engine` whose inference
    requests run through `guard` under `settings` (`server.ServerSettings`)."""
    parsers = {served.kind: body_parser(engine, served.kind, settings) for served in SERVED_ROUTES}

    def model_of(request: Request) -> ServedRoute:
        name, version = request.path_params["name"], request.path_params.get("version", MODEL_VERSION)
        if name not in SERVED_BY_KIND or version != MODEL_VERSION:
            raise RequestError("not_found", f"model {name[:40]!r} version {version[:20]!r} is not served: models "
                                            f"{sorted(SERVED_BY_KIND)}, version {MODEL_VERSION}")
        return SERVED_BY_KIND[name]

    def refusal(e: RequestError, label: str) -> JSONResponse:
        metrics.errors.inc(e.kind)
        metrics.requests.inc(label, e.status)
        return guard.error_response(e, error_body)

    def ready(label: str) -> JSONResponse:
        reason = guard.readiness()
        metrics.requests.inc(label, 200 if reason is None else 503)
        if reason is None:
            return JSONResponse({"ready": True})
        return guard.error_response(RequestError("overloaded", f"not ready: {reason}"), error_body)  # + Retry-After

    @app.get(PREFIX)
    async def server_metadata() -> dict[str, Any]:
        """Server metadata."""
        metrics.requests.inc("v2_metadata", 200)
        return {"name": PLATFORM, "version": __version__, "extensions": ["binary_tensor_data"]}

    @app.get(f"{PREFIX}/health/live")
    async def server_live() -> dict[str, bool]:
        """Liveness: the process answers."""
        metrics.requests.inc("v2_live", 200)
        return {"live": True}

    @app.get(f"{PREFIX}/health/ready")
    async def server_ready() -> JSONResponse:
        """Readiness: whether a request sent now would be taken."""
        return ready("v2_ready")

    async def model_metadata(request: Request) -> JSONResponse:
        """A served model's inputs and outputs."""
        try:
            served = model_of(request)
        except RequestError as e:
            return refusal(e, "v2_metadata")
        metrics.requests.inc("v2_metadata", 200)
        return JSONResponse({"name": served.kind, "versions": [MODEL_VERSION], "platform": PLATFORM,
                             "inputs": [{"name": INPUT_NAME, "datatype": "BYTES", "shape": [1]}],
                             "outputs": OUTPUTS_METADATA})

    async def model_ready(request: Request) -> JSONResponse:
        """Readiness of a served model (the server's)."""
        try:
            model_of(request)
        except RequestError as e:
            return refusal(e, "v2_ready")
        return ready("v2_ready")

    async def infer(request: Request) -> Response:
        """v2 inference: the body of a served route in a v2 request, answered through the request guard."""
        header_length = request.headers.get(HEADER_LENGTH)
        try:
            served: ServedRoute | None = model_of(request)
        except RequestError as e:
            served, unknown = None, e  # refused by `parse`, after the guard's token check, like any bad request
        decoded: list[InferRequest] = []  # what `parse` read, for `respond`

        def parse(body: bytearray) -> tuple[Hashable, Any]:
            if served is None:
                raise unknown
            decoded.append(decode_request(body, header_length))
            return parsers[served.kind](decoded[0].data)

        def respond(answer: dict[str, Any]) -> Response:
            return encode_response(request.path_params["name"], answer, decoded[0])

        route = served.route if served is not None else "v2_unknown_model"
        return await guard.answer(request, route, parse, respond, error_body)

    for path in MODEL_PATHS:
        app.add_api_route(path, model_metadata, methods=["GET"], name=f"v2_model_metadata{path.count('/')}")
        app.add_api_route(f"{path}/ready", model_ready, methods=["GET"], name=f"v2_model_ready{path.count('/')}")
        app.add_api_route(f"{path}/infer", infer, methods=["POST"], name=f"v2_infer{path.count('/')}")
