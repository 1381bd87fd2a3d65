"""The cloud server: a FastAPI app (on uvicorn) that answers the routes of `ecc_yolo.serve.protocol`.

`create_app(engine, backend, settings, metrics)` builds the app around any backend that batches and runs requests:
`BatchedBackend` (one process, `MicroBatcher` on a worker thread) here, or the Ray Serve deployment in `ray_app.py`
(`@serve.batch`). Every inference route checks the bearer token first, then the body size (from Content-Length, and
again while reading, for chunked bodies), then validates the body in a thread pool (`CloudEngine.parse_*`), and only
then queues it. Every refusal is a 4xx with `{"error": {"kind", "message"}}`; nothing from a request is unpickled.
"""

from __future__ import annotations

import asyncio
import hmac
import os
import threading
import time
from collections.abc import AsyncIterator, Hashable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any, Protocol

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, PlainTextResponse
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException
from ultralytics.utils import LOGGER

from ecc_yolo.serve import metrics as metrics_text
from ecc_yolo.serve.batcher import MicroBatcher, Overloaded
from ecc_yolo.serve.engine import CloudEngine
from ecc_yolo.serve.metrics import ServerMetrics
from ecc_yolo.serve.protocol import (
    FEATURES_PATH,
    HEALTH_PATH,
    IMAGE_PATH,
    METRICS_PATH,
    MODEL_PATH,
    TOKEN_ENV,
    RequestError,
)

ROUTE_NAMES = {"image": "cloud", "features": "adapted"}  # batch-key kind -> route label in metrics and answers


@dataclass(frozen=True)
class ServerSettings:
    """Server limits and security, validated from the run arguments."""

    token: str | None = None  # bearer token required on inference routes; None: no authentication
    max_body: int = 16 << 20  # bytes
    max_batch: int = 8  # requests per forward pass
    max_wait_ms: float = 10.0  # how long a batch waits to fill, milliseconds
    max_queue: int = 256  # waiting requests beyond which new ones get 503

    @classmethod
    def from_args(cls, args: Any) -> ServerSettings:
        """From a validated argument namespace; the token falls back to the ECC_YOLO_TOKEN environment variable."""
        token = args.token if args.token not in (None, "") else os.environ.get(TOKEN_ENV) or None
        return cls(token=None if token is None else str(token), max_body=int(args.max_body),
                   max_batch=int(args.max_batch), max_wait_ms=float(args.max_wait_ms), max_queue=int(args.max_queue))


class DetectBackend(Protocol):
    """What runs validated requests: batches them and answers `(answer dict, batch size)`."""

    async def detect(self, key: Hashable, item: Any) -> tuple[dict[str, Any], int]:
        """Answer one validated item (see `CloudEngine.run`)."""


class BatchedBackend:
    """One-process backend: a `MicroBatcher` whose worker thread runs the engine."""

    def __init__(self, engine: CloudEngine, settings: ServerSettings, metrics: ServerMetrics) -> None:
        """Batch with the settings' max_batch / max_wait_ms / max_queue; record batch figures in `metrics`."""

        def on_batch(key: Hashable, size: int, seconds: float) -> None:
            metrics.batch_size.observe(size, ROUTE_NAMES[key[0]])
            metrics.inference.observe(seconds, ROUTE_NAMES[key[0]])

        self.batcher = MicroBatcher(engine.run, settings.max_batch, settings.max_wait_ms / 1000, settings.max_queue,
                                    on_batch=on_batch)

    async def detect(self, key: Hashable, item: Any) -> tuple[dict[str, Any], int]:
        """Queue the item and await its batch."""
        try:
            future = self.batcher.submit(key, item)
        except Overloaded as e:
            raise RequestError("overloaded", f"server busy: {e}; retry later") from None
        return await asyncio.wrap_future(future)

    def start(self) -> None:
        """Start the worker thread."""
        self.batcher.start()

    def close(self) -> None:
        """Finish queued requests and stop the worker thread."""
        self.batcher.close()


def _error(e: RequestError) -> JSONResponse:
    return JSONResponse(e.body(), status_code=e.status,
                        headers={"WWW-Authenticate": "Bearer"} if e.kind == "unauthorized" else None)


async def read_body(request: Request, limit: int) -> bytes:
    """The request body, refusing (413) anything over `limit` bytes before reading it when Content-Length says so,
    and as soon as the limit is passed otherwise."""
    declared = request.headers.get("content-length")
    if declared is not None:
        if not declared.isdigit():
            raise RequestError("bad_request", f"invalid Content-Length {declared!r}")
        if int(declared) > limit:
            raise RequestError("too_large", f"body of {int(declared)} bytes exceeds the {limit}-byte limit (max_body)")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise RequestError("too_large", f"body exceeds the {limit}-byte limit (max_body)")
        chunks.append(chunk)
    return b"".join(chunks)


def create_app(engine: CloudEngine, backend: DetectBackend, settings: ServerSettings, metrics: ServerMetrics,
               lifespan: Any = None) -> FastAPI:
    """The FastAPI app serving `engine` through `backend` (routes: `ecc_yolo.serve.protocol`)."""
    app = FastAPI(title="ecc-yolo cloud", version=str(engine.describe()["api_version"]), lifespan=lifespan,
                  docs_url=None, redoc_url=None, openapi_url=None)  # no schema endpoints: bodies are raw bytes
    description = {**engine.describe(), "auth": settings.token is not None, "max_body": settings.max_body,
                   "max_batch": settings.max_batch, "max_wait_ms": settings.max_wait_ms}
    expected_auth = f"Bearer {settings.token}".encode() if settings.token is not None else None

    def check_auth(request: Request) -> None:
        if expected_auth is None:
            return
        given = request.headers.get("authorization", "").encode()
        if not hmac.compare_digest(given, expected_auth):  # constant time: no token prefix can be probed
            raise RequestError("unauthorized", "missing or wrong bearer token (Authorization: Bearer <token>)")

    async def detect(request: Request, kind: str) -> JSONResponse:
        t0 = time.perf_counter()
        route = ROUTE_NAMES[kind]
        try:
            check_auth(request)
            body = await read_body(request, settings.max_body)
            metrics.bytes_in.inc(route, amount=len(body))
            if kind == "image":
                key, item = await run_in_threadpool(engine.parse_image, body)
            else:
                key, item = await run_in_threadpool(engine.parse_features, body, settings.max_body)
            answer, batch_size = await backend.detect(key, item)
        except RequestError as e:
            metrics.errors.inc(e.kind)
            metrics.requests.inc(route, e.status)
            return _error(e)
        except Exception as e:  # a bug: answer it as one, keep serving
            LOGGER.exception(f"ecc-yolo serve: internal error on {request.url.path}: {e}")
            err = RequestError("internal", f"internal server error ({type(e).__name__})")
            metrics.errors.inc(err.kind)
            metrics.requests.inc(route, err.status)
            return _error(err)
        seconds = time.perf_counter() - t0
        metrics.latency.observe(seconds, route)
        metrics.requests.inc(route, 200)
        return JSONResponse({**answer, "batch_size": batch_size, "server_ms": round(seconds * 1000, 3)})

    @app.post(IMAGE_PATH)
    async def detect_image(request: Request) -> JSONResponse:
        """Full cloud detector on a JPEG/PNG body (ECC_I)."""
        return await detect(request, "image")

    @app.post(FEATURES_PATH)
    async def detect_features(request: Request) -> JSONResponse:
        """Adapter decoders + cloud tail on a feature payload (ECC_A/ECC_D)."""
        return await detect(request, "features")

    @app.get(HEALTH_PATH)
    async def healthz() -> dict[str, str]:
        """Liveness."""
        metrics.requests.inc("healthz", 200)
        return {"status": "ok"}

    @app.get(MODEL_PATH)
    async def model_info() -> dict[str, Any]:
        """The served model's identity and the server's limits."""
        metrics.requests.inc("model", 200)
        return description

    @app.get(METRICS_PATH)
    async def prometheus() -> PlainTextResponse:
        """Prometheus text exposition."""
        metrics.requests.inc("metrics", 200)
        return PlainTextResponse(metrics.render(), media_type=metrics_text.CONTENT_TYPE)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        kind = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "bad_request")
        metrics.errors.inc(kind)
        return JSONResponse({"error": {"kind": kind, "message": f"{request.method} {request.url.path}: {exc.detail}"}},
                            status_code=exc.status_code)

    return app


def build_app(engine: CloudEngine, settings: ServerSettings) -> FastAPI:
    """The one-process server app: its micro-batcher starts and stops with the app."""
    metrics = ServerMetrics()
    backend = BatchedBackend(engine, settings, metrics)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        backend.start()
        try:
            yield
        finally:
            backend.close()

    return create_app(engine, backend, settings, metrics, lifespan=lifespan)


def engine_kwargs(args: Any) -> dict[str, Any]:
    """CloudEngine settings from a validated argument namespace (Ultralytics' predict arguments)."""
    return {"imgsz": args.imgsz, "conf": 0.25 if args.conf is None else float(args.conf), "iou": float(args.iou),
            "max_det": int(args.max_det), "classes": args.classes, "agnostic_nms": bool(args.agnostic_nms)}


def serve(args: Any) -> None:
    """Run the server until interrupted (`ecc-yolo serve`): uvicorn, or Ray Serve with backend=ray."""
    from ultralytics.utils.torch_utils import select_device

    settings = ServerSettings.from_args(args)
    auth = "bearer token required" if settings.token else "no authentication (set token= or ECC_YOLO_TOKEN)"
    if args.backend == "ray":
        from ecc_yolo.serve.ray_app import serve_ray

        LOGGER.info(f"ecc-yolo serve: Ray Serve, {args.replicas} replica(s), {auth}")
        serve_ray(str(args.model), settings, {**engine_kwargs(args), "device": str(args.device or "cpu")},
                  host=args.host, port=args.port, replicas=args.replicas)
        return
    engine = CloudEngine.from_checkpoint(args.model, device=select_device(args.device, verbose=False),
                                         **engine_kwargs(args))
    LOGGER.info(f"ecc-yolo serve: {engine.model.spec.name} fingerprint {engine.fingerprint.hex()} at "
                f"http://{args.host}:{args.port} (imgsz {engine.input_shape}, max_batch {settings.max_batch}, "
                f"max_wait_ms {settings.max_wait_ms}), {auth}")
    import uvicorn

    uvicorn.run(build_app(engine, settings), host=args.host, port=args.port,
                log_level="info" if args.verbose else "warning")


class BackgroundServer:
    """uvicorn serving an app on a daemon thread, for tests and benchmarks::

    with BackgroundServer(app) as server:
        httpx.get(server.url + "/healthz")
    """

    def __init__(self, app: Any, host: str = "127.0.0.1", port: int = 0, log_level: str = "warning") -> None:
        """Serve `app` on host:port (port 0: a free port, see `.url` once entered)."""
        import uvicorn

        self.server = uvicorn.Server(uvicorn.Config(app, host=host, port=port, log_level=log_level))
        self.host = host
        self.thread = threading.Thread(target=self.server.run, name="ecc-uvicorn", daemon=True)
        self.url = ""

    def __enter__(self) -> BackgroundServer:
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("the server did not start")
            time.sleep(0.02)
        port = self.server.servers[0].sockets[0].getsockname()[1]
        self.url = f"http://{self.host}:{port}"
        return self

    def __exit__(self, *exc: Any) -> None:
        self.server.should_exit = True
        self.thread.join(15)
