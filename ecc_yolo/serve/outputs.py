"""What `ecc-yolo detect` writes, like `yolo predict`: annotated videos/images, a live window, per-frame JSON lines.

Files go to one run folder: `<stem>.avi` (`.mp4` on macOS) per video or stream, `<stem>.jpg` per image (annotated with
Ultralytics' `Results.plot()`), `detections.jsonl` (one record per frame, in frame order) and `summary.json`.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import cv2
from ultralytics.engine.results import Results
from ultralytics.utils import MACOS, WINDOWS


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
