"""The edge's connection to one cloud server: offload requests in flight, health probes, exponential back-off.

The link is "up" while offloads succeed. A failed offload (connection refused or reset, timeout, 5xx, any refusal)
takes it down: the client answers frames on the edge until a health probe (`/healthz`, then `/v1/model`, which must
hold the client's model) succeeds. Probes run on their own thread, first `backoff[0]` seconds after the failure and
then at doubling intervals up to `backoff[1]`, so a dead server costs the stream nothing and a restarted one is
picked up within the current interval.
"""

from __future__ import annotations

import time
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import httpx
from ultralytics.utils import LOGGER

from ecc_yolo.serve.protocol import HEALTH_PATH, MODEL_PATH, bearer_header


class ModelMismatchError(RuntimeError):
    """The server holds another model (fingerprint or class names differ) than the edge client."""


class OffloadError(RuntimeError):
    """An offload that did not come back with detections; `kind` names why (timeout, connect, http_503, ...)."""

    def __init__(self, kind: str, message: str):
        """Failure `kind` with a readable `message`."""
        super().__init__(message)
        self.kind = kind


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
    ) -> None:
        """Args:
        url: server base URL, e.g. http://127.0.0.1:8000.
        fingerprint: the edge model's fingerprint; the server's must match.
        names: the edge model's class names; the server's must match.
        token: bearer token for the inference routes.
        timeout: seconds for each phase of a request (connect, send, wait for the answer).
        max_inflight: most concurrent offload requests.
        backoff: (first, longest) seconds between health probes while the server is unreachable.
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
        self.up = False
        self.server_info: dict[str, Any] | None = None
        self.reconnects = 0  # times the link came back after being down
        self._warned: set[str] = set()

    # -- model identity -------------------------------------------------------------------------------------------
    def verify(self) -> dict[str, Any]:
        """Probe the server and check it holds this model; returns its /v1/model description.

        Raises:
            ModelMismatchError: the server holds another model.
            httpx.HTTPError: the server cannot be reached or answers with an error.
        """
        self._http.get(HEALTH_PATH).raise_for_status()
        info = self._http.get(MODEL_PATH).json()
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
        except httpx.HTTPError as e:
            LOGGER.warning(f"ecc-yolo detect: cloud {self.url} unreachable ({e}); answering on the edge until it is")
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
            self._schedule()
        if self._probe is None and time.monotonic() >= self._next_probe:
            self._probe = self._prober.submit(self.verify)
        return False

    def _schedule(self) -> None:
        self._next_probe = time.monotonic() + self._interval
        self._interval = min(self._interval * 2, self.backoff[1])

    def _down(self) -> None:
        self.up = False
        self._schedule()

    def failed(self, error: OffloadError) -> None:
        """An offload failed: take the link down (probes decide when it is back)."""
        self._warn_once(error.kind, f"ecc-yolo detect: offload failed ({error}); answering on the edge, retrying "
                                    f"with back-off")
        if self.up:
            self.up = False
            self._interval = self.backoff[0]
            self._schedule()

    def _warn_once(self, key: str, message: str) -> None:
        if key not in self._warned:
            self._warned.add(key)
            LOGGER.warning(message)

    # -- offloading -----------------------------------------------------------------------------------------------
    def send(self, path: str, body: bytes) -> Future:
        """POST `body` to `path` on a sender thread; the future resolves to the answer dict or raises
        OffloadError."""
        return self._senders.submit(self._post, path, body)

    def _post(self, path: str, body: bytes) -> dict[str, Any]:
        try:
            r = self._http.post(path, content=body, headers={"Content-Type": "application/octet-stream"})
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
            raise OffloadError(f"http_{r.status_code}", f"HTTP {r.status_code} ({detail})")
        try:
            return r.json()
        except ValueError:
            raise OffloadError("protocol", "the server's answer is not JSON") from None

    def close(self) -> None:
        """Stop the sender and probe threads and close connections (pending requests are abandoned)."""
        self._senders.shutdown(wait=False, cancel_futures=True)
        self._prober.shutdown(wait=False, cancel_futures=True)
        self._http.close()
