"""The HTTP protocol between `ecc-yolo detect` (edge) and `ecc-yolo serve` (cloud), shared by both sides.

Routes:
    POST /v1/detect/image     body: a JPEG or PNG file; the full cloud detector answers (ECC_I)
    POST /v1/detect/features  body: a feature payload (`ecc_yolo.codec`, format version 1); the adapter decoders
                              and the cloud tail answer (ECC_A/ECC_D)
    GET  /healthz             liveness: {"status": "ok"}
    GET  /v1/model            what the server holds: cfg, fingerprint (hex), class names, input size, limits
    GET  /metrics             Prometheus text format

Both detect routes answer::

    {"route": "cloud" | "adapted", "detections": [{"xyxy": [x1, y1, x2, y2], "conf": c, "cls": k, "name": n}, ...],
     "image_shape": [h, w], "input_shape": [h, w], "batch_size": n, "server_ms": t}

with boxes in pixels of the original image (the image sent, or the `image_shape` a feature payload declares) and
`server_ms` the time from the request's arrival to its answer (queueing, batching and inference included). Errors
answer `{"error": {"kind": KIND, "message": "..."}}` with the status code `ERROR_STATUS[KIND]`.
"""

from __future__ import annotations

from typing import Any

import numpy as np

API_VERSION = 1
HEALTH_PATH = "/healthz"
MODEL_PATH = "/v1/model"
METRICS_PATH = "/metrics"
IMAGE_PATH = "/v1/detect/image"
FEATURES_PATH = "/v1/detect/features"
TOKEN_ENV = "ECC_YOLO_TOKEN"  # where the bearer token comes from when token= is not given

ERROR_STATUS: dict[str, int] = {
    "bad_request": 400,  # a malformed HTTP request (e.g. a bad Content-Length)
    "bad_payload": 400,  # a feature payload that is malformed, truncated, corrupt or of another format version
    "bad_image": 400,  # an image body that is not a decodable JPEG/PNG, or too many pixels
    "unauthorized": 401,  # missing or wrong bearer token
    "not_found": 404,
    "method_not_allowed": 405,
    "fingerprint_mismatch": 409,  # a feature payload made by another model
    "too_large": 413,  # body over the server's max_body
    "shape_mismatch": 422,  # a feature payload whose tensors or input size this model cannot take
    "overloaded": 503,  # the request queue is full; retry later
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


def detections_array(detections: list[dict[str, Any]]) -> np.ndarray:
    """The JSON list of detections -> float32 (N, 6) [x1, y1, x2, y2, conf, cls]."""
    rows = [[*d["xyxy"], d["conf"], d["cls"]] for d in detections]
    return np.asarray(rows, dtype=np.float32).reshape(-1, 6)


def bearer_header(token: str | None) -> dict[str, str]:
    """The Authorization header that carries `token` (none without a token)."""
    return {"Authorization": f"Bearer {token}"} if token else {}
