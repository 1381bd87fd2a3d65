"""Multi-object tracking of the edge client's final answers (`ecc-yolo track`, `detect(..., track=True)`).

Ultralytics' own trackers (`ultralytics.trackers`: bytetrack, botsort, tracktrack, ocsort, deepocsort, fasttrack)
run on each frame's *final* detections, whichever route gave them (edge, extension, cloud, adapted or fallback), so
a track keeps its id when the answer switches between the device and the cloud: the tracker sees boxes, not routes.

Per stream, one tracker, created on the stream's first frame and reset when its source (the result's path) changes,
as Ultralytics' `on_predict_postprocess_end` does without `persist`. A result's boxes become the tracked boxes with
their ids (Ultralytics' `results.update(boxes=...)`: the Kalman-smoothed box, the matched detection's confidence and
class); detections the tracker did not confirm (too weak to start a track, or a new track not yet confirmed) are
dropped. Unlike Ultralytics, a frame without any tracked box is emptied too, so an answer is always exactly its
tracked boxes. `result.record["boxes"]` is re-written to the same boxes, each with its `"track_id"`.

`track_buffer` (frames a lost track is kept) counts frames at 30 FPS, as Ultralytics' `BYTETracker(frame_rate=)`
used to scale it: a 15 FPS stream keeps a lost track for half as many frames, the same second.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from ultralytics.engine.results import Results
from ultralytics.utils import YAML, IterableSimpleNamespace
from ultralytics.utils.checks import check_yaml

from ecc_yolo.serve.protocol import detections_json

TRACK_ID = "track_id"  # the key a tracked box of a record carries


def tracker_config(tracker: str | Path = "bytetrack.yaml") -> IterableSimpleNamespace:
    """The settings of an Ultralytics tracker YAML (a built-in name such as `bytetrack.yaml`, or a path).

    Raises:
        FileNotFoundError: no such YAML.
        ValueError: its `tracker_type` is not one of Ultralytics' trackers.
    """
    from ultralytics.trackers.track import TRACKER_MAP

    cfg = IterableSimpleNamespace(**YAML.load(check_yaml(str(tracker))))
    if getattr(cfg, "tracker_type", None) not in TRACKER_MAP:
        raise ValueError(f"tracker={tracker}: tracker_type must be one of {sorted(TRACKER_MAP)}, "
                         f"got {getattr(cfg, 'tracker_type', None)!r}")
    return cfg


class StreamTracker:
    """Ultralytics trackers over the final answers of one or more streams, one tracker per stream."""

    def __init__(self, tracker: str | Path = "bytetrack.yaml", device: str | torch.device | None = None) -> None:
        """Args:
        tracker: an Ultralytics tracker YAML (`bytetrack.yaml`, `botsort.yaml`, ... or a path); botsort's default
            motion compensation (sparseOptFlow) is OpenCV only and its ReID is off, so both run offline.
        device: where a ReID model of the YAML runs (`with_reid: True` with a model file); default Ultralytics'.
        """
        self.cfg = tracker_config(tracker)
        if device is not None:
            self.cfg.device = device
        self._trackers: dict[int, Any] = {}
        self._paths: dict[int, str] = {}
        self._ids: dict[int, set[int]] = {}  # ids of the last update's tracked boxes
        self._seen: dict[int, set[int]] = {}  # every id the current source has shown
        self._events: dict[int, tuple[set[int], set[int]]] = {}  # (started, lost) by the last update

    def _tracker_for(self, stream: int, path: str, fps: float) -> Any:
        """The stream's tracker: created on its first frame with its frame rate, reset when its source changes."""
        from ultralytics.trackers.track import TRACKER_MAP

        if stream in self._trackers and self._paths[stream] == path:
            return self._trackers[stream]
        if stream not in self._trackers:
            cfg = IterableSimpleNamespace(**vars(self.cfg))
            cfg.track_buffer = max(1, int(float(fps) / 30.0 * self.cfg.track_buffer))
            self._trackers[stream] = TRACKER_MAP[cfg.tracker_type](args=cfg)
        else:  # the next file of a folder: a new scene, ids start again at 1
            self._trackers[stream].reset()
        self._paths[stream], self._ids[stream], self._seen[stream] = path, set(), set()
        return self._trackers[stream]

    def update(self, result: Results, stream: int = 0, fps: float = 30.0) -> Results:
        """Track `result` (a frame of `stream`, whose source runs at `fps` frames/s) in place and return it: its
        boxes become the tracked boxes with ids, its `record["boxes"]` (when it has a record) the same with a
        `track_id` each."""
        stream = int(stream)
        tracker = self._tracker_for(stream, str(result.path), fps)
        tracks = tracker.update(result.boxes.cpu().numpy(), result.orig_img)
        tracks = np.asarray(tracks, dtype=np.float32).reshape(-1, 8)  # x1, y1, x2, y2, id, conf, cls, det index
        result.update(boxes=torch.as_tensor(tracks[:, :7], device=result.boxes.data.device))
        data = result.boxes.data.cpu().numpy()  # clipped to the image, as Results.update leaves them
        ids = data[:, 4].astype(int).tolist()
        if hasattr(result, "record"):
            boxes = detections_json(data[:, [0, 1, 2, 3, 5, 6]], result.names)
            for box, track_id in zip(boxes, ids):
                box[TRACK_ID] = track_id
            result.record["boxes"] = boxes
        now, before, seen = set(ids), self._ids[stream], self._seen[stream]
        self._events[stream] = (now - seen, before - now)
        self._ids[stream] = now
        seen |= now
        return result

    def changed(self, stream: int = 0) -> bool:
        """Whether the last update of `stream` started a new track or lost one (a track of the frame before
        without a box now): a cue for asking the cloud."""
        started, lost = self._events.get(int(stream), (set(), set()))
        return bool(started or lost)

    def events(self, stream: int = 0) -> tuple[set[int], set[int]]:
        """(ids started, ids lost) by the last update of `stream`."""
        started, lost = self._events.get(int(stream), (set(), set()))
        return set(started), set(lost)


__all__ = ["TRACK_ID", "StreamTracker", "tracker_config"]
