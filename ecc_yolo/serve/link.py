"""The edge's connection to one cloud server: offload requests in flight, health probes, exponential back-off.

The link is "up" while offloads succeed. A failed offload (connection refused or reset, timeout, 5xx, any refusal,
an answer that is not a well-formed detect answer) takes it down: the client answers frames on the edge until a
probe (`/readyz`, then `/v1/model`, which must hold the client's model; both must answer 200) succeeds. Probes run
on their own thread with exponential back-off and full jitter: the n-th wait is uniform in
[0, min(backoff[1], backoff[0] * 2**n)] seconds, and never shorter than the server's Retry-After, so clients that
failed together do not come back together, a dead server costs the stream nothing, and a restarted one is picked up
within the current interval.
"""

from __future__ import annotations

import math
import random
import time
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import httpx
from ultralytics.utils import LOGGER

from ecc_yolo.serve.protocol import MODEL_PATH, READY_PATH, TIMEOUT_HEADER, bearer_header, check_answer


class ModelMismatchError(RuntimeError):
    """The server holds another model (fingerprint or class names differ) than the edge client."""


class OffloadError(RuntimeError):
    """An offload that did not come back with detections; `kind` names why (timeout, connect, http_503, ...)."""

    def __init__(self, kind: str, message: str, retry_after: float | None = None):
        """Failure `kind` with a readable `message`, and the server's Retry-After (seconds) if it sent one."""
        super().__init__(message)
        self.kind = kind
        self.retry_after = retry_after


def retry_after_seconds(value: str | None) -> float | None:
    """A Retry-After header's delay in seconds (the delay-seconds form; an HTTP date or junk gives None)."""
    try:
        seconds = float(value) if value is not None else math.nan
    except ValueError:
        return None
    return min(seconds, 3600.0) if math.isfinite(seconds) and seconds >= 0 else None


class CloudLink:
    """HTTP client of one `ecc-yolo serve`, thread-safe for the stream client's use (one caller thread)."""

    def __init__(
        self,
        url: str,
        fingerprint: bytes,
        names: dict[int, str],
        token: str | None = None,
        timeout: float = 5.0,
        max_inflight: int = 4,
        backoff: tuple[float, float] = (0.5, 8.0),
        rng: random.Random | None = None,
    ) -> None:
        """Args:
        url: server base URL, e.g. http://127.0.0.1:8000.
        fingerprint: the edge model's fingerprint; the server's must match.
        names: the edge model's class names; the server's must match.
        token: bearer token for the inference routes.
        timeout: seconds for each phase of a request (connect, send, wait for the answer).
        max_inflight: most concurrent offload requests.
        backoff: (base, cap) seconds of the jittered back-off between probes while the server is unreachable.
        rng: the jitter's random source (default: a fresh one).
        """
        self.url = url.rstrip("/")
        self.fingerprint, self.names = fingerprint, {int(k): str(v) for k, v in names.items()}
        self.timeout, self.backoff = float(timeout), (float(backoff[0]), float(backoff[1]))
        limits = httpx.Limits(max_connections=max_inflight + 1, max_keepalive_connections=max_inflight + 1)
        self._http = httpx.Client(base_url=self.url, timeout=httpx.Timeout(timeout), limits=limits,
                                  headers=bearer_header(token))
        self._senders = ThreadPoolExecutor(max_inflight, thread_name_prefix="ecc-offload")
        self._prober = ThreadPoolExecutor(1, thread_name_prefix="ecc-probe")
        self._probe: Future | None = None
        self._next_probe = 0.0
        self._interval = self.backoff[0]
        self._rng = rng or random.Random()
        self.up = False
        self.server_info: dict[str, Any] | None = None
        self.reconnects = 0  # times the link came back after being down
        self._warned: set[str] = set()

    # -- model identity -------------------------------------------------------------------------------------------
    def verify(self) -> dict[str, Any]:
        """Probe the server (ready, and holding this model); returns its /v1/model description.

        Raises:
            ModelMismatchError: the server holds another model.
            httpx.HTTPError: the server cannot be reached, or is not ready, or answers with an error status.
            OffloadError: its description is not a JSON object (kind "bad_answer").
        """
        self._http.get(READY_PATH).raise_for_status()
        r = self._http.get(MODEL_PATH)
        r.raise_for_status()
        try:
            info = r.json()
        except ValueError:
            info = None
        if not isinstance(info, dict):
            raise OffloadError("bad_answer", f"{self.url}{MODEL_PATH} did not answer a JSON object")
        theirs = {int(k): str(v) for k, v in info.get("names", {}).items()}
        if info.get("fingerprint") != self.fingerprint.hex():
            raise ModelMismatchError(
                f"cloud {self.url} serves model {info.get('name')!r} with fingerprint {info.get('fingerprint')}, "
                f"but this edge model's fingerprint is {self.fingerprint.hex()}: serve the same ECC checkpoint"
            )
        if theirs != self.names:
            raise ModelMismatchError(f"cloud {self.url} has class names {theirs}, this edge model {self.names}")
        return info

    def connect(self) -> bool:
        """First contact: True if the server holds this model, False (with a warning) if it cannot be reached yet.

        Raises:
            ModelMismatchError: the server holds another model.
        """
        try:
            self.server_info = self.verify()
        except (httpx.HTTPError, OffloadError) as e:
            LOGGER.warning(f"ecc-yolo detect: cloud {self.url} unreachable or not ready ({e}); answering on the edge "
                           f"until it is")
            self._down()
            return False
        self.up = True
        return True

    # -- health ---------------------------------------------------------------------------------------------------
    def available(self) -> bool:
        """Whether to offload now; while down, starts a due health probe (without waiting for it)."""
        if self.up:
            return True
        if self._probe is not None and self._probe.done():
            probe, self._probe = self._probe, None
            error = probe.exception()
            if error is None:
                self.server_info, self.up = probe.result(), True
                self._interval = self.backoff[0]
                self.reconnects += 1
                LOGGER.info(f"ecc-yolo detect: cloud {self.url} is back; offloading resumes")
                return True
            if isinstance(error, ModelMismatchError):
                self._warn_once("mismatch", f"ecc-yolo detect: {error}")
            response = error.response if isinstance(error, httpx.HTTPStatusError) else None
            self._schedule(retry_after_seconds(response.headers.get("retry-after")) if response is not None else None)
        if self._probe is None and time.monotonic() >= self._next_probe:
            self._probe = self._prober.submit(self.verify)
        return False

    def _schedule(self, retry_after: float | None = None) -> None:
        """Set the next probe: full jitter over the current interval, no sooner than `retry_after` seconds; then
        double the interval (up to the cap)."""
        self._next_probe = time.monotonic() + max(self._rng.uniform(0, self._interval), retry_after or 0.0)
        self._interval = min(self._interval * 2, self.backoff[1])

    def _down(self) -> None:
        self.up = False
        self._schedule()

    def failed(self, error: OffloadError) -> None:
        """An offload failed: take the link down (probes decide when it is back), honouring the server's
        Retry-After."""
        self._warn_once(error.kind, f"ecc-yolo detect: offload failed ({error}); answering on the edge, retrying "
                                    f"with back-off")
        if self.up:
            self.up = False
            self._interval = self.backoff[0]
            self._schedule(error.retry_after)

    def _warn_once(self, key: str, message: str) -> None:
        if key not in self._warned:
            self._warned.add(key)
            LOGGER.warning(message)

    # -- offloading -----------------------------------------------------------------------------------------------
    def send(self, path: str, body: bytes, deadline: float | None = None) -> Future:
        """POST `body` to `path` on a sender thread; the future resolves to the answer dict (checked by
        `protocol.check_answer`) or raises OffloadError. `deadline` (`time.perf_counter()` seconds, default: now
        + timeout) tells the server how long the answer is worth waiting for."""
        return self._senders.submit(self._post, path, body, time.perf_counter() + self.timeout
                                    if deadline is None else deadline)

    def _post(self, path: str, body: bytes, deadline: float) -> dict[str, Any]:
        left_ms = (deadline - time.perf_counter()) * 1000
        if left_ms <= 0:
            raise OffloadError("timeout", "the frame's deadline passed before its request could be sent")
        headers = {"Content-Type": "application/octet-stream", TIMEOUT_HEADER: f"{left_ms:.0f}"}
        try:
            r = self._http.post(path, content=body, headers=headers)
        except httpx.TimeoutException as e:
            raise OffloadError("timeout", f"no answer within {self.timeout:g} s ({type(e).__name__})") from None
        except httpx.TransportError as e:
            raise OffloadError("connect", f"{type(e).__name__}: {e}") from None
        if r.status_code != 200:
            try:
                err = r.json()["error"]
                detail = f"{err['kind']}: {err['message']}"
            except Exception:
                detail = r.text[:200]
            raise OffloadError(f"http_{r.status_code}", f"HTTP {r.status_code} ({detail})",
                               retry_after_seconds(r.headers.get("retry-after")))
        try:
            return check_answer(r.json())
        except ValueError as e:  # not JSON (JSONDecodeError is a ValueError), or not a detect answer
            raise OffloadError("bad_answer", f"the server's answer is malformed: {str(e)[:200]}") from None

    @staticmethod
    def answer_for(future: Future, route: str, sent_shape: tuple[int, int], timeout: float) -> dict[str, Any]:
        """The answer a `send` future holds, once it is known to answer the frame that was sent (its route and the
        (h, w) of the image the server was to answer in).

        Raises:
            OffloadError: not done (timeout), cancelled, failed, or an answer for another frame (bad_answer).
        """
        if not future.done():
            raise OffloadError("timeout", f"no answer within {timeout:g} s")
        if future.cancelled():  # the link was closed under the stream
            raise OffloadError("cancelled", "the connection was closed")
        error = future.exception()
        if error is not None:
            raise error if isinstance(error, OffloadError) else OffloadError("client", repr(error))
        answer = future.result()  # a well-formed answer (the link checked it) ...
        if answer["route"] != route or tuple(answer["image_shape"]) != tuple(sent_shape):
            raise OffloadError("bad_answer", f"answer for route {answer['route']} and image shape "
                                             f"{answer['image_shape']}, not for this frame")  # ... to another
        return answer

    def close(self) -> None:
        """Stop the sender and probe threads and close connections (pending requests are abandoned)."""
        self._senders.shutdown(wait=False, cancel_futures=True)
        self._prober.shutdown(wait=False, cancel_futures=True)
        self._http.close()
