"""The HTTP protocol between `ecc-yolo detect` (edge) and `ecc-yolo serve` (cloud), shared by both sides.

Routes:
    POST /v1/detect/image     body: a JPEG or PNG file; the full cloud detector answers (ECC_I)
    POST /v1/detect/features  body: a feature payload (`ecc_yolo.payload.codec`, format version 2); the adapter decoders
                              and the cloud tail answer (ECC_A/ECC_D)
    GET  /healthz             liveness: {"status": "ok"}
    GET  /readyz              readiness: 200 {"status": "ready"}, or 503 {"status": "not ready", "reason": ...} while
                              the batch worker is dead or the server is full
    GET  /v1/model            what the server holds: cfg, fingerprint (hex), class names, input size, limits
    GET  /metrics             Prometheus text format

Both detect routes answer::

    {"route": "cloud" | "adapted", "detections": [{"xyxy": [x1, y1, x2, y2], "conf": c, "cls": k, "name": n}, ...],
     "image_shape": [h, w], "input_shape": [h, w], "batch_size": n, "server_ms": t}

with boxes in pixels of the original image (the image sent, or the `image_shape` a feature payload declares) and
`server_ms` the time from the request's arrival to its answer (queueing, batching and inference included). Errors
answer `{"error": {"kind": KIND, "message": "..."}}` with the status code `ERROR_STATUS[KIND]`; a 503 carries
`Retry-After` (seconds).

A detect request may carry `X-ECC-Timeout-Ms: <ms>`, how long its client waits for the answer: the server gives up
on it after that (or after its own `timeout`, whichever is shorter) instead of computing an answer nobody reads.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import numpy as np

from ecc_yolo.routes import ADAPTED, CLOUD

API_VERSION = 1
HEALTH_PATH = "/healthz"
READY_PATH = "/readyz"
MODEL_PATH = "/v1/model"
METRICS_PATH = "/metrics"
IMAGE_PATH = "/v1/detect/image"
FEATURES_PATH = "/v1/detect/features"
IMAGE, FEATURES = "image", "features"  # request kinds: what a detect request's body is (the first part of its batch key)


@dataclass(frozen=True)
class ServedRoute:
    """A route the server answers: the ECC route (`ecc_yolo.routes`), the request kind its body is, its URL path."""

    route: str
    kind: str
    path: str


# The one table of what the server answers: the client sends a route's frames to its path, the server registers
# one endpoint per row, batches by kind and labels answers and metrics with the route.
SERVED_ROUTES = (ServedRoute(CLOUD, IMAGE, IMAGE_PATH), ServedRoute(ADAPTED, FEATURES, FEATURES_PATH))
SERVED_BY_ROUTE = {r.route: r for r in SERVED_ROUTES}
SERVED_BY_KIND = {r.kind: r for r in SERVED_ROUTES}
TOKEN_ENV = "ECC_YOLO_TOKEN"  # where the bearer token comes from when token= is not given
TIMEOUT_HEADER = "X-ECC-Timeout-Ms"  # request header: milliseconds the client waits for this answer

ERROR_STATUS: dict[str, int] = {
    "bad_request": 400,  # a malformed HTTP request (e.g. a bad Content-Length or X-ECC-Timeout-Ms)
    "bad_payload": 400,  # a feature payload that is malformed, truncated, corrupt, of another format version, or
    #                      whose values are out of range
    "bad_image": 400,  # an image body that is not a decodable JPEG/PNG, over the pixel caps, or too thin to letterbox
    "client_disconnected": 400,  # the client went away before its answer (logged and counted; nobody reads it)
    "unauthorized": 401,  # missing or wrong bearer token
    "not_found": 404,
    "method_not_allowed": 405,
    "body_timeout": 408,  # the body did not arrive before the request's deadline; the connection is closed
    "fingerprint_mismatch": 409,  # a feature payload made by another model
    "too_large": 413,  # body over the server's max_body
    "shape_mismatch": 422,  # a feature payload whose tensors or input size this model cannot take
    "overloaded": 503,  # too many requests in the server or in its queue; retry after Retry-After seconds
    "deadline_exceeded": 503,  # the request's deadline passed before the model could answer it; retry later
    "internal": 500,  # a server bug; never expected
}


class RequestError(Exception):
    """A request the server refuses; `kind` is a key of ERROR_STATUS."""

    def __init__(self, kind: str, message: str):
        """Refuse with error `kind` (which sets the status code) and a human-readable `message`."""
        super().__init__(message)
        self.kind = kind
        self.message = message
        self.status = ERROR_STATUS[kind]

    def body(self) -> dict[str, Any]:
        """The JSON error body."""
        return {"error": {"kind": self.kind, "message": self.message}}


def detections_json(det: np.ndarray, names: dict[int, str]) -> list[dict[str, Any]]:
    """(N, 6) [x1, y1, x2, y2, conf, cls] in original-image pixels -> the JSON list of detections."""
    return [
        {"xyxy": [round(float(v), 2) for v in row[:4]], "conf": round(float(row[4]), 5), "cls": int(row[5]),
         "name": names.get(int(row[5]), str(int(row[5])))}
        for row in np.asarray(det, dtype=np.float64).reshape(-1, 6)
    ]


def check_answer(answer: Any) -> dict[str, Any]:
    """`answer` if it is a well-formed detect answer (the route's JSON above); the edge client trusts nothing else.

    Raises:
        ValueError: not a dict with a route, a [h, w] image_shape and a list of detections with 4 finite box
            coordinates, a confidence in [0, 1] and a class index each.
    """
    if not isinstance(answer, dict) or not isinstance(answer.get("detections"), list):
        raise ValueError("not a detect answer (no detections list)")
    shape = answer.get("image_shape")
    if not isinstance(answer.get("route"), str) or not (isinstance(shape, list) and len(shape) == 2 and
                                                         all(isinstance(v, int) and v > 0 for v in shape)):
        raise ValueError("a detect answer needs a route and an image_shape [h, w]")
    for d in answer["detections"]:
        box, conf, cls = (d.get("xyxy"), d.get("conf"), d.get("cls")) if isinstance(d, dict) else (None,) * 3
        numbers = box if isinstance(box, list) and len(box) == 4 else [None]
        if not (all(_finite(v) for v in numbers) and _finite(conf) and 0 <= conf <= 1 and isinstance(cls, int)
                and not isinstance(cls, bool) and cls >= 0):
            raise ValueError(f"malformed detection {str(d)[:80]}")
    return answer


def _finite(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and np.isfinite(v)


def detections_array(detections: list[dict[str, Any]]) -> np.ndarray:
    """The JSON list of detections -> float32 (N, 6) [x1, y1, x2, y2, conf, cls]."""
    rows = [[*d["xyxy"], d["conf"], d["cls"]] for d in detections]
    return np.asarray(rows, dtype=np.float32).reshape(-1, 6)


def bearer_header(token: str | None) -> dict[str, str]:
    """The Authorization header that carries `token` (none without a token)."""
    return {"Authorization": f"Bearer {token}"} if token else {}


def resolve_token(token: Any) -> str | None:
    """The bearer token to use: `token` when given (taken verbatim, as a string), else the ECC_YOLO_TOKEN
    environment variable, else None (no authentication)."""
    token = token if token not in (None, "") else os.environ.get(TOKEN_ENV) or None
    return None if token is None else str(token)
