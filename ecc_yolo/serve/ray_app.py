"""The cloud server as a Ray Serve deployment: `ecc-yolo serve backend=ray replicas=N` (`pip install -e ".[ray]"`).

Each replica loads the checkpoint into its own `CloudEngine` and serves the very app of `server.py` through
`@serve.ingress` (built at replica start, `__serve_build_asgi_app__`), so routes, validation, errors and metrics are
identical to the one-process server; batching is Ray's `@serve.batch` instead of `MicroBatcher`, and Ray's proxy
spreads requests over the replicas. `/metrics` reports the replica that answers it.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Hashable
from typing import Any

from ray import serve
from ultralytics.utils import LOGGER

from ecc_yolo.serve.engine import CloudEngine
from ecc_yolo.serve.metrics import ServerMetrics
from ecc_yolo.serve.server import ROUTE_NAMES, ServerSettings, create_app

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
        self._batch.set_max_batch_size(settings.max_batch)
        self._batch.set_batch_wait_timeout_s(settings.max_wait_ms / 1000)

    def __serve_build_asgi_app__(self) -> Any:
        """The app of `server.py`, with this replica as its backend."""
        return create_app(self.engine, self, self.settings, self.metrics)

    async def detect(self, key: Hashable, item: Any) -> tuple[dict[str, Any], int]:
        """Answer one validated item through the batch queue (the DetectBackend protocol)."""
        return await self._batch((key, item))

    @serve.batch(max_batch_size=8, batch_wait_timeout_s=0.01)  # reset per replica from the settings in __init__
    async def _batch(self, requests: list[tuple[Hashable, Any]]) -> list[tuple[dict[str, Any], int]]:
        t0 = time.perf_counter()
        # Off the replica's event loop, so health checks and metrics stay answered while the model runs.
        answers = await asyncio.to_thread(self.engine.run_mixed, requests)
        elapsed = time.perf_counter() - t0
        for kind in {key[0] for key, _ in requests}:
            self.metrics.batch_size.observe(sum(key[0] == kind for key, _ in requests), ROUTE_NAMES[kind])
            self.metrics.inference.observe(elapsed, ROUTE_NAMES[kind])
        return [(a, a.pop("batch_size")) for a in answers]


def ray_application(model: str, settings: ServerSettings, engine_kwargs: dict[str, Any], replicas: int = 1) -> Any:
    """The bound Ray Serve application (for `serve.run`)."""
    # Each replica must accept enough concurrent requests to fill a batch (Ray's default is 5).
    ongoing = max(2 * settings.max_batch, 8)
    return ECCServeDeployment.options(num_replicas=replicas, max_ongoing_requests=ongoing).bind(
        model, settings, engine_kwargs
    )


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
    serve.start(http_options={"host": host, "port": port})
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
