"""Prometheus metrics of one server process, rendered in the Prometheus text exposition format (version 0.0.4).

A small, dependency-free registry (counters, gauges and histograms with labels) held by the server instance, not a
module-level global, so several servers in one process (tests, benchmarks) keep separate figures.
"""

from __future__ import annotations

import bisect
import threading
from collections import defaultdict
from collections.abc import Callable

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)  # seconds
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64)  # requests per forward pass
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


def _labels(names: tuple[str, ...], values: tuple[str, ...], extra: str = "") -> str:
    parts = [f'{n}="{_escape(v)}"' for n, v in zip(names, values)] + ([extra] if extra else [])
    return "{" + ",".join(parts) + "}" if parts else ""


def _escape(value: str) -> str:
    return str(value).replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


class Counter:
    """A monotonically increasing value per label set."""

    def __init__(self, name: str, doc: str, labels: tuple[str, ...] = ()) -> None:
        """A counter `name` with help text `doc` and label names `labels`."""
        self.name, self.doc, self.labels = name, doc, labels
        self._values: dict[tuple[str, ...], float] = defaultdict(float)
        self._lock = threading.Lock()

    def inc(self, *labels: str, amount: float = 1.0) -> None:
        """Add `amount` to the series of `labels`."""
        with self._lock:
            self._values[tuple(map(str, labels))] += amount

    def value(self, *labels: str) -> float:
        """Current value of one series."""
        return self._values.get(tuple(map(str, labels)), 0.0)

    def render(self) -> list[str]:
        """Exposition lines."""
        with self._lock:
            items = sorted(self._values.items())
        lines = [f"# HELP {self.name} {self.doc}", f"# TYPE {self.name} counter"]
        return lines + [f"{self.name}{_labels(self.labels, k)} {v:g}" for k, v in items]


class Gauge:
    """A value that goes up and down, set by `set`/`add` or read from a function when rendered (`track`)."""

    def __init__(self, name: str, doc: str) -> None:
        """A gauge `name` with help text `doc` (no labels)."""
        self.name, self.doc = name, doc
        self._value = 0.0
        self._read: Callable[[], float] | None = None
        self._lock = threading.Lock()

    def add(self, amount: float) -> None:
        """Add `amount` (negative to subtract)."""
        with self._lock:
            self._value += amount

    def track(self, read: Callable[[], float]) -> None:
        """Report `read()` from now on (e.g. the length of a queue owned by someone else)."""
        self._read = read

    def value(self) -> float:
        """Current value."""
        return float(self._read()) if self._read is not None else self._value

    def render(self) -> list[str]:
        """Exposition lines."""
        return [f"# HELP {self.name} {self.doc}", f"# TYPE {self.name} gauge", f"{self.name} {self.value():g}"]


class Histogram:
    """Observations counted in cumulative buckets per label set."""

    def __init__(self, name: str, doc: str, buckets: tuple[float, ...], labels: tuple[str, ...] = ()) -> None:
        """A histogram `name` with upper bounds `buckets` (ascending) and label names `labels`."""
        self.name, self.doc, self.buckets, self.labels = name, doc, tuple(buckets), labels
        self._series: dict[tuple[str, ...], list] = {}  # labels -> [bucket counts..., sum, count]
        self._lock = threading.Lock()

    def observe(self, value: float, *labels: str) -> None:
        """Record one observation."""
        with self._lock:
            s = self._series.setdefault(tuple(map(str, labels)), [0] * len(self.buckets) + [0.0, 0])
            i = bisect.bisect_left(self.buckets, value)
            if i < len(self.buckets):
                s[i] += 1
            s[-2] += value
            s[-1] += 1

    def count(self, *labels: str) -> int:
        """Number of observations of one series."""
        s = self._series.get(tuple(map(str, labels)))
        return s[-1] if s else 0

    def render(self) -> list[str]:
        """Exposition lines (cumulative buckets, +Inf, sum, count)."""
        with self._lock:
            items = sorted((k, list(v)) for k, v in self._series.items())
        lines = [f"# HELP {self.name} {self.doc}", f"# TYPE {self.name} histogram"]
        for k, s in items:
            running = 0
            for bound, n in zip(self.buckets, s):
                running += n
                le = _labels(self.labels, k, 'le="%g"' % bound)
                lines.append(f"{self.name}_bucket{le} {running}")
            le = _labels(self.labels, k, 'le="+Inf"')
            lines.append(f"{self.name}_bucket{le} {s[-1]}")
            lines.append(f"{self.name}_sum{_labels(self.labels, k)} {s[-2]:g}")
            lines.append(f"{self.name}_count{_labels(self.labels, k)} {s[-1]}")
        return lines


class ServerMetrics:
    """Everything `GET /metrics` reports."""

    def __init__(self) -> None:
        """Empty series."""
        self.requests = Counter("ecc_requests_total", "HTTP requests answered, by route and status code.",
                                ("route", "status"))
        self.errors = Counter("ecc_errors_total", "Refused or failed requests, by error kind.", ("kind",))
        self.bytes_in = Counter("ecc_request_bytes_total", "Request body bytes received, by route.", ("route",))
        self.batch_size = Histogram("ecc_batch_size", "Requests per forward pass, by route.", BATCH_BUCKETS,
                                    ("route",))
        self.latency = Histogram("ecc_request_latency_seconds",
                                 "Time from a request's arrival to its answer (queueing and inference), by route.",
                                 LATENCY_BUCKETS, ("route",))
        self.inference = Histogram("ecc_inference_seconds", "Time of one batched forward pass with NMS, by route.",
                                   LATENCY_BUCKETS, ("route",))
        self.in_flight = Gauge("ecc_requests_in_flight",
                               "Inference requests admitted and not yet answered (reading, parsing, queued, running).")
        self.queue_depth = Gauge("ecc_queue_depth", "Validated requests waiting for a batch.")

    def render(self) -> str:
        """The whole exposition text."""
        metrics = (self.requests, self.errors, self.bytes_in, self.batch_size, self.latency, self.inference,
                   self.in_flight, self.queue_depth)
        return "\n".join(line for m in metrics for line in m.render()) + "\n"
