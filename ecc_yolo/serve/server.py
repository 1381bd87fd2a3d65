"""The cloud server: a FastAPI app (on uvicorn) that answers the routes of `ecc_yolo.serve.protocol`.

`create_app(engine, backend, settings, metrics)` builds the app around any backend that batches and runs requests:
`BatchedBackend` (one process, `MicroBatcher` on a worker thread) here, or the Ray Serve deployment in `ray_app.py`
(`@serve.batch`). Every inference route runs its request through `intake.RequestGuard` (auth, deadline, admission,
one bounded body read, validation on a parse thread, the batch raced against the deadline and the client's
disconnection); the routes differ only in how they parse a body and shape an answer.

Every refusal is a JSON `{"error": {"kind", "message"}}` (protocol.ERROR_STATUS); nothing from a request is unpickled.
uvicorn bounds what comes before the app: connections (`limit_concurrency`, `ServerSettings.max_connections`; beyond
it, uvicorn's own plain 503), header size (h11's 16 KiB), idle keep-alive connections (5 s) and graceful shutdown
(`timeout` seconds, then open requests are cancelled).
"""

from __future__ import annotations

import asyncio
import math
import os
import threading
import time
from collections.abc import AsyncIterator, Hashable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any, Protocol

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, PlainTextResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from ecc_yolo.payload.codec import MAX_IMAGE_PIXELS
from ecc_yolo.serve import metrics as metrics_text
from ecc_yolo.serve.batcher import DeadlineExceeded, MicroBatcher, Overloaded
from ecc_yolo.serve.engine import CloudEngine
from ecc_yolo.serve.intake import RequestGuard, body_parser
from ecc_yolo.serve.kserve import add_kserve_routes
from ecc_yolo.serve.metrics import ServerMetrics
from ecc_yolo.serve.protocol import (
    HEALTH_PATH,
    METRICS_PATH,
    MODEL_PATH,
    READY_PATH,
    SERVED_BY_KIND,
    SERVED_ROUTES,
    RequestError,
    ServedRoute,
    resolve_token,
)

MAX_RETRY_AFTER_S = 60  # cap of the Retry-After estimate, seconds


@dataclass(frozen=True)
class ServerSettings:
    """Server limits and security, validated from the run arguments."""

    token: str | None = None  # bearer token required on inference routes; None: no authentication
    max_body: int = 16 << 20  # bytes
    max_batch: int = 8  # requests per forward pass
    max_wait_ms: float = 10.0  # how long a batch waits to fill, milliseconds
    max_queue: int = 256  # waiting requests beyond which new ones get 503
    max_concurrency: int = 64  # inference requests in the process at once; beyond: 503 before the body is read
    timeout: float = 5.0  # seconds a request may take in the server, body upload included; clients may ask for less
    max_pixels: int = MAX_IMAGE_PIXELS  # largest image (width x height) the image route decodes
    parse_threads: int = field(default_factory=lambda: os.cpu_count() or 1)  # bodies validated/decoded at once

    @property
    def max_connections(self) -> int:
        """uvicorn's `limit_concurrency`: open connections (and tasks) beyond which uvicorn itself answers a plain
        503. Well above `max_concurrency`, so that refused, idle keep-alive and health-check connections fit and
        clients see this server's JSON 503 with Retry-After; it bounds what connections can buffer (about 80 KiB
        each: uvicorn's 64 KiB read-ahead and h11's 16 KiB header limit)."""
        return 16 * self.max_concurrency

    def uvicorn_options(self) -> dict[str, Any]:
        """The uvicorn settings these limits imply (for `uvicorn.run` / `uvicorn.Config`)."""
        # Every request ends by its deadline (`timeout`): the graceful shutdown waits for them, with a second to spare.
        return {"limit_concurrency": self.max_connections, "timeout_keep_alive": 5,
                "timeout_graceful_shutdown": math.ceil(self.timeout) + 1}

    @classmethod
    def from_args(cls, args: Any) -> ServerSettings:
        """From a validated argument namespace; the token falls back to the ECC_YOLO_TOKEN environment variable."""
        return cls(token=resolve_token(args.token), max_body=int(args.max_body),
                   max_batch=int(args.max_batch), max_wait_ms=float(args.max_wait_ms), max_queue=int(args.max_queue),
                   max_concurrency=int(args.max_concurrency), timeout=float(args.timeout),
                   max_pixels=int(args.max_pixels))


class DetectBackend(Protocol):
    """What runs validated requests: batches them and answers `(answer dict, batch size)`."""

    async def detect(self, key: Hashable, item: Any, deadline: float) -> tuple[dict[str, Any], int]:
        """Answer one validated item (see `CloudEngine.run`) unless `deadline` (`time.monotonic()` seconds) passes
        first; cancelling the call withdraws the item.

        Raises:
            RequestError: refused (overloaded, deadline_exceeded, or the item's own error).
        """

    def queue_depth(self) -> int:
        """Validated requests waiting for a batch."""

    def readiness(self) -> str | None:
        """None when requests can be taken now, else why not."""

    def retry_after(self) -> int:
        """Seconds a refused client should wait before trying again (Retry-After)."""


class BatchedBackend:
    """One-process backend: a `MicroBatcher` whose worker thread runs the engine."""

    def __init__(self, engine: CloudEngine, settings: ServerSettings, metrics: ServerMetrics) -> None:
        """Batch with the settings' max_batch / max_wait_ms / max_queue; record batch figures in `metrics`."""

        def on_batch(key: Hashable, size: int, seconds: float) -> None:
            metrics.batch_size.observe(size, SERVED_BY_KIND[key[0]].route)
            metrics.inference.observe(seconds, SERVED_BY_KIND[key[0]].route)

        self.batcher = MicroBatcher(engine.run, settings.max_batch, settings.max_wait_ms / 1000, settings.max_queue,
                                    on_batch=on_batch)

    async def detect(self, key: Hashable, item: Any, deadline: float = math.inf) -> tuple[dict[str, Any], int]:
        """Queue the item and await its batch (cancelling this withdraws it from the queue)."""
        try:
            future = self.batcher.submit(key, item, deadline)
        except Overloaded as e:
            raise RequestError("overloaded", f"server busy: {e} (max_queue); retry later") from None
        try:
            answer, size = await asyncio.wrap_future(future)
        except DeadlineExceeded as e:
            raise RequestError("deadline_exceeded", f"not computed: {e}") from None
        if isinstance(answer, RequestError):
            raise answer
        return answer, size

    def queue_depth(self) -> int:
        """Requests waiting in the batcher's queue."""
        return len(self.batcher)

    def readiness(self) -> str | None:
        """Not ready while the worker thread is not running or the queue is full."""
        if not self.batcher.alive():
            return "the batch worker is not running"
        if len(self.batcher) >= self.batcher.max_queue:
            return f"the queue is full ({len(self.batcher)} requests, max_queue)"
        return None

    def retry_after(self) -> int:
        """The time the current queue takes to drain, from the mean batch time; 1 to MAX_RETRY_AFTER_S seconds."""
        return min(max(1, math.ceil(self.batcher.wait_estimate())), MAX_RETRY_AFTER_S)

    def start(self) -> None:
        """Start the worker thread."""
        self.batcher.start()

    def close(self) -> None:
        """Finish queued requests and stop the worker thread."""
        self.batcher.close()


def create_app(engine: CloudEngine, backend: DetectBackend, settings: ServerSettings, metrics: ServerMetrics,
               lifespan: Any = None) -> FastAPI:
    """The FastAPI app serving `engine` through `backend` (routes: `ecc_yolo.serve.protocol`); `app.state.settings`
    holds `settings` (for the uvicorn options, see `BackgroundServer`)."""
    app = FastAPI(title="ecc-yolo cloud", version=str(engine.describe()["api_version"]), lifespan=lifespan,
                  docs_url=None, redoc_url=None, openapi_url=None)  # no schema endpoints: bodies are raw bytes
    app.state.settings = settings
    description = {**engine.describe(), "auth": settings.token is not None, "max_body": settings.max_body,
                   "max_batch": settings.max_batch, "max_wait_ms": settings.max_wait_ms,
                   "max_queue": settings.max_queue, "max_concurrency": settings.max_concurrency,
                   "timeout": settings.timeout, "max_pixels": settings.max_pixels}
    guard = app.state.guard = RequestGuard(backend, settings, metrics)  # also for routes added to the app later

    def endpoint(served: ServedRoute):
        parse = body_parser(engine, served.kind, settings)

        async def detect_route(request: Request) -> JSONResponse:
            return await guard.answer(request, served.route, parse, JSONResponse)

        detect_route.__doc__ = f"Answer a {served.kind} body with the {served.route} route."
        return detect_route

    for served in SERVED_ROUTES:  # one endpoint per served route (ecc_yolo.serve.protocol.SERVED_ROUTES)
        app.add_api_route(served.path, endpoint(served), methods=["POST"], name=f"detect_{served.kind}")
    add_kserve_routes(app, engine, guard, settings, metrics)  # KServe v2 / Triton endpoints (kserve.py)

    @app.get(HEALTH_PATH)
    async def healthz() -> dict[str, str]:
        """Liveness: the process answers."""
        metrics.requests.inc("healthz", 200)
        return {"status": "ok"}

    @app.get(READY_PATH)
    async def readyz() -> JSONResponse:
        """Readiness: whether a request sent now would be taken (503 + Retry-After while not)."""
        reason = guard.readiness()
        status = 200 if reason is None else 503
        metrics.requests.inc("readyz", status)
        if reason is None:
            return JSONResponse({"status": "ready"})
        return JSONResponse({"status": "not ready", "reason": reason}, status_code=503,
                            headers={"Retry-After": str(backend.retry_after())})

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


class BackgroundServer:
    """uvicorn serving an app on a daemon thread, for tests and benchmarks::

    with BackgroundServer(app) as server:
        httpx.get(server.url + "/healthz")
    """

    def __init__(self, app: Any, host: str = "127.0.0.1", port: int = 0, log_level: str = "warning") -> None:
        """Serve `app` on host:port (port 0: a free port, see `.url` once entered), with the uvicorn options of the
        app's `ServerSettings` (`app.state.settings`, set by `create_app`)."""
        import uvicorn

        state = getattr(app, "state", None)
        options = getattr(state, "settings", ServerSettings()).uvicorn_options()
        self.server = uvicorn.Server(uvicorn.Config(app, host=host, port=port, log_level=log_level, **options))
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
        self.stop()

    def stop(self, timeout: float = 30.0) -> float:
        """Shut the server down gracefully (uvicorn's graceful timeout is the settings' `timeout`); returns the
        seconds it took, or raises TimeoutError after `timeout` seconds."""
        t0 = time.monotonic()
        self.server.should_exit = True
        self.thread.join(timeout)
        if self.thread.is_alive():
            raise TimeoutError(f"the server did not stop within {timeout:g} s")
        return time.monotonic() - t0
