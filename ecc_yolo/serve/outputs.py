"""What `ecc-yolo detect` reports and writes, like `yolo predict`: per-frame records and the stream's summary
(`StreamRecorder`), annotated videos/images, a live window and JSON lines (`StreamOutputs`).

Files go to one run folder: `<stem>.avi` (`.mp4` on macOS) per video or stream, `<stem>.jpg` per image (annotated with
Ultralytics' `Results.plot()`), `detections.jsonl` (one record per frame, in frame order) and `summary.json`.
"""

from __future__ import annotations

import json
import time
from collections import Counter
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch
from ultralytics.engine.results import Results
from ultralytics.utils import MACOS, WINDOWS

from ecc_yolo.routes import ADAPTED, CLOUD, FALLBACK, STREAM_ROUTES
from ecc_yolo.serve.protocol import detections_json


class StreamRecorder:
    """Turns each answered frame into its `Results` and JSON record, and counts routes, bytes and errors for the
    stream's summary."""

    def __init__(self, names: dict[int, str], route: str) -> None:
        """`names`: class names; `route`: the stream's route argument (reported in the summary)."""
        self.names, self.route = names, route
        self.stats: Counter = Counter()
        self.errors: Counter = Counter()
        self.t_start: float | None = None
        self.t_end: float | None = None
        self.per_stream: dict[int, Counter] = {}  # a multi-stream run's counts per stream
        self.dead_sources: dict[str, str] = {}  # source -> why it stopped

    def result(self, frame: Any, det: np.ndarray, route: str, server_ms: float | None) -> Results:
        """The frame's `Results` (with `.route` and `.record`), counted in the summary. `frame`: a
        `frames.Frame`; `det`: its final (N, 6) detections in its own pixels; `route`: who answered."""
        done = frame.done_at[0] if frame.done_at and route != FALLBACK else time.perf_counter()
        tally = {"frames": 1, route: 1, "bytes": frame.bytes_sent, "sent": int(frame.future is not None)}
        self.stats.update(tally)
        if frame.stream is not None:
            self.per_stream.setdefault(frame.stream, Counter()).update(tally)
        result = Results(frame.image, path=frame.path, names=self.names, boxes=torch.from_numpy(det))
        result.route = route
        result.record = {
            "frame": frame.index,
            **({"stream": frame.stream} if frame.stream is not None else {}),  # a multi-stream run's source
            "time_s": None if frame.time_s is None else round(frame.time_s, 4),
            "wall_time": round(frame.wall_time, 4),
            "route": route,
            "boxes": detections_json(det, self.names),
            "bytes_sent": frame.bytes_sent,
            "latency_ms": round((done - frame.t0) * 1000, 3),
            "fallback_cause": frame.fallback_cause,  # why an offloaded frame was answered by the edge (else None)
            **({"gain": round(frame.gain, 5)} if frame.gain is not None else {}),
            **({"server_ms": server_ms} if server_ms is not None else {}),
        }
        return result

    def summary(self, reconnects: int = 0, budgets: dict[str, Any] | None = None) -> dict[str, Any]:
        """Frames, frames/s, routes taken, offload ratio, bytes, fallbacks and errors of the stream so far."""
        n = self.stats["frames"]
        seconds = ((self.t_end or time.perf_counter()) - self.t_start) if self.t_start else 0.0
        out = {
            "frames": n,
            "seconds": round(seconds, 3),
            "fps": round(n / seconds, 2) if seconds > 0 else 0.0,
            "route": self.route,
            "routes": {r: self.stats[r] for r in STREAM_ROUTES},
            "offload_ratio": round(self.stats["sent"] / n, 4) if n else 0.0,
            "cloud_answered_ratio": round((self.stats[ADAPTED] + self.stats[CLOUD]) / n, 4) if n else 0.0,
            "bytes_sent": self.stats["bytes"],
            "mean_bytes_per_frame": round(self.stats["bytes"] / n, 1) if n else 0.0,
            "fallbacks": self.stats[FALLBACK],
            "errors": dict(self.errors),
            "reconnects": reconnects,
        }
        out.update(budgets or {})
        if self.per_stream:
            out["streams"] = {s: {"frames": c["frames"], "routes": {r: c[r] for r in STREAM_ROUTES if c[r]},
                                  "offload_ratio": round(c["sent"] / c["frames"], 4), "bytes_sent": c["bytes"]}
                              for s, c in sorted(self.per_stream.items())}
        if self.dead_sources:
            out["dead_sources"] = dict(self.dead_sources)
        return out


def format_summary(summary: dict[str, Any]) -> str:
    """One readable line of a stream summary."""
    routes = ", ".join(f"{k} {v}" for k, v in summary["routes"].items() if v)
    return (f"{summary['frames']} frames in {summary['seconds']:.1f} s ({summary['fps']:.1f} FPS), routes: {routes}; "
            f"offload ratio {summary['offload_ratio']:.1%}, {summary['mean_bytes_per_frame']:.0f} B/frame sent, "
            f"{summary['fallbacks']} fallbacks" + (f" {summary['errors']}" if summary["errors"] else "") +
            (f"; {len(summary['streams'])} streams" if "streams" in summary else "") +
            (f"; stopped sources: {summary['dead_sources']}" if summary.get("dead_sources") else ""))


class StreamOutputs:
    """Writes each frame's result as it is emitted."""

    def __init__(self, save_dir: Path | None, save: bool = True, show: bool = False,
                 plot_args: dict | None = None) -> None:
        """Args:
        save_dir: run folder (None: write nothing).
        save: write annotated frames (videos/images) and the JSON lines.
        show: show annotated frames in a window (press q to stop).
        plot_args: keyword arguments for `Results.plot` (line_width, conf, labels, boxes).
        """
        self.save_dir = Path(save_dir) if save_dir is not None and save else None
        self.show, self.plot_args = show, plot_args or {}
        self._writers: dict[str, cv2.VideoWriter] = {}
        self._jsonl = None
        self._windows: set[str] = set()
        if self.save_dir is not None:
            self.save_dir.mkdir(parents=True, exist_ok=True)
            self._jsonl = open(self.save_dir / "detections.jsonl", "w")

    def write(self, result: Results, record: dict[str, Any], mode: str, fps: float = 30.0) -> bool:
        """Write one frame (`mode`: the loader's "video", "stream" or "image"; `fps`: the source's frame rate, for
        written videos); False once the viewer pressed q."""
        if self._jsonl is not None:
            self._jsonl.write(json.dumps(record) + "\n")
        if self.save_dir is None and not self.show:
            return True
        frame = result.plot(**self.plot_args)
        if self.save_dir is not None:
            stem = Path(result.path).stem or "stream"
            if record.get("stream") is not None:  # a multi-stream run: two sources may share a name
                stem = f"stream{record['stream']}-{stem}"
            if mode == "image":
                cv2.imwrite(str(self.save_dir / f"{stem}.jpg"), frame)
            else:
                if stem not in self._writers:
                    suffix, fourcc = (".mp4", "avc1") if MACOS else (".avi", "WMV2") if WINDOWS else (".avi", "MJPG")
                    self._writers[stem] = cv2.VideoWriter(str(self.save_dir / f"{stem}{suffix}"),
                                                          cv2.VideoWriter_fourcc(*fourcc), fps,
                                                          (frame.shape[1], frame.shape[0]))
                self._writers[stem].write(frame)
        if self.show:
            name = str(result.path)
            if name not in self._windows:
                self._windows.add(name)
                cv2.namedWindow(name, cv2.WINDOW_NORMAL | cv2.WINDOW_KEEPRATIO)
            cv2.imshow(name, frame)
            if cv2.waitKey(300 if mode == "image" else 1) & 0xFF == ord("q"):
                return False
        return True

    def write_summary(self, summary: dict[str, Any]) -> None:
        """Write summary.json."""
        if self.save_dir is not None:
            (self.save_dir / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")

    def close(self) -> None:
        """Flush and close files, windows and video writers."""
        for w in self._writers.values():
            w.release()
        self._writers.clear()
        if self._jsonl is not None:
            self._jsonl.close()
            self._jsonl = None
        if self._windows:
            cv2.destroyAllWindows()
