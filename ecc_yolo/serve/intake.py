"""What every inference request passes in the cloud server, whatever it asks for: `RequestGuard`.

In order: the bearer token (401) and the deadline the client may shorten (X-ECC-Timeout-Ms); admission, refused with
503 + Retry-After before the body is read when `max_concurrency` requests are in the process; one read of the body
into one buffer (413 over `max_body`, 408 when not complete by the deadline); validation on a parse thread (the
decoders enforce their own caps before they allocate); the backend's batch, raced against the deadline and the
client's disconnection. Every refusal becomes a JSON error response; a bug becomes a 500 and the server keeps
serving. The server's own routes (`server.create_app`) and the KServe v2 routes differ only in how they parse a body
and shape an answer, so they share this.
"""

from __future__ import annotations

import asyncio
import hmac
import math
import time
from collections.abc import Awaitable, Callable, Hashable
from typing import Any

import anyio
from fastapi import Request
from fastapi.responses import JSONResponse, Response
from starlette.requests import ClientDisconnect
from ultralytics.utils import LOGGER

from ecc_yolo.serve.metrics import ServerMetrics
from ecc_yolo.serve.protocol import IMAGE, TIMEOUT_HEADER, RequestError

Parse = Callable[[bytearray], tuple[Hashable, Any]]  # body -> (batch key, validated item); raises RequestError
Respond = Callable[[dict[str, Any]], Response]  # the answer (with batch_size and server_ms) -> the 200 response
ErrorBody = Callable[[RequestError], Any]  # a refusal -> its JSON body


class Admission:
    """Counts the inference requests in the process, from before their body is read until they are answered, and
    refuses new ones beyond `limit`. Used from the event loop only (one thread), so it needs no lock."""

    def __init__(self, limit: int) -> None:
        """At most `limit` requests at once."""
        self.limit, self.count = limit, 0

    def enter(self) -> bool:
        """Take a place; False if none is free."""
        if self.count >= self.limit:
            return False
        self.count += 1
        return True

    def leave(self) -> None:
        """Give a place back."""
        self.count -= 1


def request_deadline(request: Request, timeout: float) -> float:
    """The request's deadline (`time.monotonic()` seconds): its arrival plus the shorter of the server's `timeout`
    and what the client asks for in X-ECC-Timeout-Ms."""
    seconds = timeout
    asked = request.headers.get(TIMEOUT_HEADER)
    if asked is not None:
        try:
            ms = float(asked)
        except ValueError:
            ms = math.nan
        if not (math.isfinite(ms) and ms > 0):
            raise RequestError("bad_request", f"invalid {TIMEOUT_HEADER} {asked[:40]!r}: milliseconds > 0 expected")
        seconds = min(seconds, ms / 1000)
    return time.monotonic() + seconds


async def read_body(request: Request, limit: int, deadline: float = math.inf) -> bytearray:
    """The request body, read once into one buffer that grows only as bytes arrive: refused (413) before reading when
    Content-Length says it is over `limit` bytes, and as soon as the limit is passed otherwise; 408 when it is not
    complete by `deadline` (`time.monotonic()` seconds); `client_disconnected` when the client goes away."""
    declared = request.headers.get("content-length")
    if declared is not None:
        if not declared.isdigit():
            raise RequestError("bad_request", f"invalid Content-Length {declared[:40]!r}")
        if int(declared) > limit:
            raise RequestError("too_large", f"body of {int(declared)} bytes exceeds the {limit}-byte limit (max_body)")
    body = bytearray()

    async def fill() -> None:
        async for chunk in request.stream():
            if len(body) + len(chunk) > limit:
                raise RequestError("too_large", f"body exceeds the {limit}-byte limit (max_body)")
            body.extend(chunk)

    try:
        await asyncio.wait_for(fill(), max(deadline - time.monotonic(), 0.0))
    except asyncio.TimeoutError:
        raise RequestError("body_timeout", f"body incomplete at the request's deadline ({len(body)} bytes "
                                           f"received)") from None
    except ClientDisconnect:
        raise RequestError("client_disconnected", f"the client disconnected mid-body ({len(body)} bytes "
                                                  f"received)") from None
    return body


async def _disconnect(request: Request) -> None:
    """Returns when the client disconnects (the body must have been read: its messages are consumed here)."""
    while (await request.receive())["type"] != "http.disconnect":
        pass


async def until_answered(request: Request, work: Awaitable[Any], deadline: float) -> Any:
    """`await work`, unless the client disconnects or `deadline` (`time.monotonic()` seconds) passes first: then the
    work is cancelled (which withdraws a queued request) and this raises RequestError."""
    task = asyncio.ensure_future(work)
    task.add_done_callback(lambda t: t.cancelled() or t.exception())  # a cancelled task's late error is not news
    gone = asyncio.ensure_future(_disconnect(request))
    try:
        done, _ = await asyncio.wait({task, gone}, timeout=max(deadline - time.monotonic(), 0.0),
                                     return_when=asyncio.FIRST_COMPLETED)
    finally:
        gone.cancel()
        task.cancel()  # no-op when done
    if task in done:
        return task.result()
    if gone in done:
        raise RequestError("client_disconnected", "the client disconnected before its answer; its work was withdrawn")
    raise RequestError("deadline_exceeded", "no answer before the request's deadline; retry later")


def body_parser(engine: Any, kind: str, settings: Any) -> Parse:
    """How a body of request kind `kind` (`protocol.IMAGE` or `protocol.FEATURES`) is validated: the engine's decoder,
    under the settings' cap (`max_pixels` for an image, `max_body` for a feature payload)."""
    if kind == IMAGE:
        return lambda body: engine.parse_image(body, settings.max_pixels)
    return lambda body: engine.parse_features(body, settings.max_body)


class RequestGuard:
    """Runs inference requests through the steps above for one server (one admission count, one parse pool)."""

    def __init__(self, backend: Any, settings: Any, metrics: ServerMetrics) -> None:
        """Guard requests to `backend` (a `server.DetectBackend`) under `settings` (`server.ServerSettings`)."""
        self.backend, self.settings, self.metrics = backend, settings, metrics
        self.admission = Admission(settings.max_concurrency)
        self.parse_limiter = anyio.CapacityLimiter(settings.parse_threads)
        self._expected_auth = f"Bearer {settings.token}".encode() if settings.token is not None else None
        metrics.in_flight.track(lambda: self.admission.count)
        metrics.queue_depth.track(backend.queue_depth)

    def check_auth(self, request: Request) -> None:
        """Raise `unauthorized` unless the request carries the server's bearer token (when it has one)."""
        if self._expected_auth is None:
            return
        given = request.headers.get("authorization", "").encode()
        if not hmac.compare_digest(given, self._expected_auth):  # constant time: no token prefix can be probed
            raise RequestError("unauthorized", "missing or wrong bearer token (Authorization: Bearer <token>)")

    def error_response(self, e: RequestError, error_body: ErrorBody = RequestError.body) -> JSONResponse:
        """The refusal's response: its status, Retry-After on 503, WWW-Authenticate on 401."""
        headers = {}
        if e.kind == "unauthorized":
            headers["WWW-Authenticate"] = "Bearer"
        if e.status == 503:
            headers["Retry-After"] = str(self.backend.retry_after())
        if e.kind == "body_timeout":
            headers["Connection"] = "close"  # uvicorn would otherwise keep reading (and discarding) the slow body
        return JSONResponse(error_body(e), status_code=e.status, headers=headers)

    def readiness(self) -> str | None:
        """None when a request sent now would be taken, else why not."""
        reason = self.backend.readiness()
        if reason is None and self.admission.count >= self.admission.limit:
            reason = f"{self.admission.count} requests in flight (max_concurrency)"
        return reason

    async def answer(self, request: Request, route: str, parse: Parse, respond: Respond,
                     error_body: ErrorBody = RequestError.body) -> Response:
        """Take `request` through every step; `route` labels its metrics, `parse` validates its body (on a parse
        thread), `respond` shapes the backend's answer (with its batch size and the server's milliseconds added),
        `error_body` a refusal."""
        t0 = time.perf_counter()
        admitted = False
        try:
            self.check_auth(request)
            deadline = request_deadline(request, self.settings.timeout)
            if not self.admission.enter():
                raise RequestError("overloaded", f"server busy: {self.admission.count} requests in flight "
                                                 f"(max_concurrency); retry later")
            admitted = True
            body = await read_body(request, self.settings.max_body, deadline)
            self.metrics.bytes_in.inc(route, amount=len(body))

            async def validate_and_run(body: bytearray) -> tuple[dict[str, Any], int]:
                key, item = await anyio.to_thread.run_sync(parse, body, limiter=self.parse_limiter)
                del body  # the buffer is freed once parsed, not held while the item waits for its batch
                return await self.backend.detect(key, item, deadline)

            work = validate_and_run(body)
            del body
            answer, batch_size = await until_answered(request, work, deadline)
            seconds = time.perf_counter() - t0
            # Built here, inside the error handling: an answer that cannot be serialised is answered as a bug.
            response = respond({**answer, "batch_size": batch_size, "server_ms": round(seconds * 1000, 3)})
        except RequestError as e:
            self.metrics.errors.inc(e.kind)
            self.metrics.requests.inc(route, e.status)
            return self.error_response(e, error_body)
        except Exception as e:  # a bug: answer it as one, keep serving
            LOGGER.exception(f"ecc-yolo serve: internal error on {request.url.path}: {e}")
            err = RequestError("internal", f"internal server error ({type(e).__name__})")
            self.metrics.errors.inc(err.kind)
            self.metrics.requests.inc(route, err.status)
            return self.error_response(err, error_body)
        finally:
            if admitted:
                self.admission.leave()
        self.metrics.latency.observe(seconds, route)
        self.metrics.requests.inc(route, 200)
        return response
