"""The cloud server as a Ray Serve deployment: `ecc-yolo serve backend=ray replicas=N` (`pip install -e ".[ray]"`).

Each replica loads the checkpoint into its own `CloudEngine` and serves the very app of `server.py` through
`@serve.ingress` (built at replica start, `__serve_build_asgi_app__`), so routes, validation, errors and metrics are
identical to the one-process server; batching is Ray's `@serve.batch` instead of `MicroBatcher`, and Ray's proxy
spreads requests over the replicas. `/metrics` reports the replica that answers it.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Hashable
from typing import Any

from ray import serve
from ultralytics.utils import LOGGER

from ecc_yolo.serve.engine import CloudEngine
from ecc_yolo.serve.metrics import ServerMetrics
from ecc_yolo.serve.protocol import SERVED_BY_KIND, RequestError
from ecc_yolo.serve.server import ServerSettings, create_app

DEPLOYMENT_NAME = "ecc-yolo"


@serve.deployment(name=DEPLOYMENT_NAME)
@serve.ingress()
class ECCServeDeployment:
    """One replica: a cloud engine behind the FastAPI app, with Ray Serve batching."""

    def __init__(self, model: str, settings: ServerSettings, engine_kwargs: dict[str, Any]) -> None:
        """Load `model` (an ECC checkpoint path) with `engine_kwargs` (see `CloudEngine`)."""
        self.engine = CloudEngine.from_checkpoint(model, **engine_kwargs)
        self.settings = settings
        self.metrics = ServerMetrics()
        self.waiting = 0  # validated requests awaiting their batch in this replica
        self._batch.set_max_batch_size(settings.max_batch)
        self._batch.set_batch_wait_timeout_s(settings.max_wait_ms / 1000)

    def __serve_build_asgi_app__(self) -> Any:
        """The app of `server.py`, with this replica as its backend."""
        return create_app(self.engine, self, self.settings, self.metrics)

    async def detect(self, key: Hashable, item: Any, deadline: float = math.inf) -> tuple[dict[str, Any], int]:
        """Answer one validated item through the batch queue (the DetectBackend protocol)."""
        self.waiting += 1
        try:
            answer, size = await self._batch((key, item, deadline))
        finally:
            self.waiting -= 1
        if isinstance(answer, RequestError):
            raise answer
        return answer, size

    def queue_depth(self) -> int:
        """Validated requests in this replica awaiting (or in) their batch."""
        return self.waiting

    def readiness(self) -> str | None:
        """Always ready: Ray's proxy queues and refuses requests, and restarts replicas that fail health checks."""
        return None

    def retry_after(self) -> int:
        """Seconds a refused client should wait (Retry-After)."""
        return 1

    @serve.batch(max_batch_size=8, batch_wait_timeout_s=0.01)  # reset per replica from the settings in __init__
    async def _batch(self, requests: list[tuple[Hashable, Any, float]]) -> list[tuple[Any, int]]:
        now = time.monotonic()
        live = [i for i, (_, _, deadline) in enumerate(requests) if deadline > now]  # expired ones are not computed
        answers: list[tuple[Any, int]] = [(RequestError("deadline_exceeded", "not computed: the deadline passed "
                                                         "before its batch ran"), 0)] * len(requests)
        if not live:
            return answers
        t0 = time.perf_counter()
        # Off the replica's event loop, so health checks and metrics stay answered while the model runs.
        done = await asyncio.to_thread(self.engine.run_mixed, [requests[i][:2] for i in live])
        elapsed = time.perf_counter() - t0
        for kind in {requests[i][0][0] for i in live}:
            self.metrics.batch_size.observe(sum(requests[i][0][0] == kind for i in live), SERVED_BY_KIND[kind].route)
            self.metrics.inference.observe(elapsed, SERVED_BY_KIND[kind].route)
        for i, answer in zip(live, done):
            answers[i] = answer
        return answers


def ray_application(model: str, settings: ServerSettings, engine_kwargs: dict[str, Any], replicas: int = 1) -> Any:
    """The bound Ray Serve application (for `serve.run`), with the settings' limits as Ray's backpressure."""
    return ECCServeDeployment.options(
        num_replicas=replicas,
        max_ongoing_requests=settings.max_concurrency,  # per replica; Ray's default (5) could not fill a batch of 8
        max_queued_requests=settings.max_queue,  # per caller (the proxy): beyond it, 503
        backpressure_config={"status_code": 503, "retry_after_s": 1},
        graceful_shutdown_timeout_s=settings.timeout,
    ).bind(model, settings, engine_kwargs)


def http_options(settings: ServerSettings, host: str, port: int) -> dict[str, Any]:
    """Ray Serve's HTTP proxy options for these settings (for `serve.start`)."""
    return {"host": host, "port": port, "request_timeout_s": settings.timeout, "keep_alive_timeout_s": 5}


def serve_ray(model: str, settings: ServerSettings, engine_kwargs: dict[str, Any], host: str = "127.0.0.1",
              port: int = 8000, replicas: int = 1) -> None:
    """Start Ray (or join the cluster in RAY_ADDRESS), deploy, and block until interrupted."""
    import signal

    import ray

    def stop(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt  # SIGTERM (e.g. from a process manager) shuts Ray Serve down like Ctrl+C does

    signal.signal(signal.SIGTERM, stop)
    if not ray.is_initialized():
        ray.init(include_dashboard=False)
    serve.start(http_options=http_options(settings, host, port))
    serve.run(ray_application(model, settings, engine_kwargs, replicas), name=DEPLOYMENT_NAME, route_prefix="/")
    LOGGER.info(f"ecc-yolo serve: Ray Serve at http://{host}:{port} with {replicas} replica(s); Ctrl+C stops")
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        pass
    finally:
        serve.shutdown()
        ray.shutdown()
