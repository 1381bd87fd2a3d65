"""What `ecc-yolo detect` reads: one source, or several listed in a `.streams` file, frames taken in turn.

A `.streams` file (Ultralytics' convention: one source per line, any of files, folders, videos, stream URLs, webcam
indices) makes the client read every source with Ultralytics' own loader and take one frame from each live source per
tick, so that the edge runs on a batch of all streams' frames and one link and one budget serve them all. A source
that cannot be opened, or fails while being read, is reported (`dead`, a warning) and the others go on. A single
source is read as before and its errors are raised: there is nothing else to keep running.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

from ultralytics.data.build import load_inference_source
from ultralytics.utils import LOGGER

from ecc_yolo.serve.frames import FrameInput

STREAMS_SUFFIX = ".streams"


def source_fps(dataset: Any) -> float:
    """Frames per second of an Ultralytics loader's (first) source; 30 when it does not say."""
    fps = getattr(dataset, "fps", None)
    fps = fps[0] if isinstance(fps, (list, tuple)) and fps else fps
    return float(fps) if fps and fps > 0 else 30.0


def listed_sources(source: Any) -> list[str] | None:
    """The sources a `.streams` file lists (None: `source` is not one)."""
    if not (isinstance(source, (str, Path)) and str(source).endswith(STREAMS_SUFFIX) and Path(source).is_file()):
        return None
    return [s.strip() for s in Path(source).read_text().splitlines() if s.strip()]


class StreamSources:
    """One or several sources, read frame by frame in turn (see the module docstring)."""

    def __init__(self, source: Any, vid_stride: int = 1, buffer: bool = False) -> None:
        """Open `source` (anything Ultralytics' loaders read, a loader instance, or a `.streams` file)."""
        listed = listed_sources(source)
        self.multi = listed is not None
        self.sources = listed if listed is not None else [source]
        if self.multi and not self.sources:
            raise ValueError(f"{source} lists no sources")
        self.datasets: dict[int, Any] = {}
        self.dead: dict[int, str] = {}  # stream -> why it stopped
        for i, s in enumerate(self.sources):
            try:
                self.datasets[i] = load_inference_source(s, batch=1, vid_stride=vid_stride, buffer=buffer)
            except Exception as e:
                if not self.multi:
                    raise
                self._bury(i, f"cannot be opened: {type(e).__name__}: {e}")
        self.fps = {i: source_fps(d) for i, d in self.datasets.items()}

    def stream_of(self, i: int) -> int | None:
        """The `stream` field of stream i's frames: its index in a multi-stream run, None for a single source."""
        return i if self.multi else None

    def mode(self, i: int | None) -> str:
        """The loader's mode ("video", "stream", "image") of stream i."""
        return getattr(self.datasets.get(i or 0), "mode", "image")

    def total_frames(self) -> int | None:
        """Frames to come when every source is a video file (for a progress bar), else None."""
        ds = list(self.datasets.values())
        if not ds or any(getattr(d, "mode", "") != "video" for d in ds):
            return None
        return sum(int(getattr(d, "frames", 0)) for d in ds)

    def __iter__(self) -> Iterator[list[FrameInput]]:
        """Per tick, the next frame of every live source."""
        iterators = {i: iter(d) for i, d in self.datasets.items()}
        counts = dict.fromkeys(iterators, 0)
        try:
            while iterators:
                batch = []
                for i in list(iterators):
                    try:
                        paths, images, _ = next(iterators[i])
                    except StopIteration:
                        self._close(i, iterators)
                        continue
                    except Exception as e:
                        if not self.multi:
                            raise
                        self._close(i, iterators)
                        self._bury(i, f"failed while read: {type(e).__name__}: {e}")
                        continue
                    d = self.datasets[i]
                    time_s = ((d.frame - 1) * getattr(d, "vid_stride", 1) / self.fps[i]
                              if getattr(d, "mode", "") == "video" else None)
                    for path, image in zip(paths, images):
                        batch.append(FrameInput(counts[i], str(path), image, time_s, stream=self.stream_of(i)))
                        counts[i] += 1
                if batch:
                    yield batch
        finally:
            for i in list(iterators):
                self._close(i, iterators)

    def _close(self, i: int, iterators: dict[int, Any]) -> None:
        iterators.pop(i, None)
        if hasattr(self.datasets[i], "close"):
            self.datasets[i].close()

    def _bury(self, i: int, why: str) -> None:
        self.dead[i] = why
        LOGGER.warning(f"ecc-yolo detect: source {i} ({self.sources[i]}) {why}; the other streams go on")
