"""CLEAR-MOT and identity metrics of tracked boxes against a synthetic video's ground-truth tracks (motmetrics).

Ground truth: the `.jsonl` beside a video from `ecc_yolo.data.synthetic.generate_video` (per frame: `boxes`, `classes`
and `track_ids`). Predictions: per frame, boxes with a track id, either detect's records (`detections.jsonl` of
`ecc-yolo track`, or `Results.record`: `{"frame", "boxes": [{"xyxy", "cls", "track_id", ...}]}`) or tracked
Ultralytics `Results` (`boxes.id`).

Matching (motmetrics' CLEAR-MOT accumulator): the distance of a ground-truth box and a predicted box is 1 - IoU,
pairs under IoU 0.5 (`min_iou`) never match. **Class-aware by default**: a box of another class never matches (it
counts as a false positive and a miss), so a route that finds the object but names it wrongly scores lower;
`class_aware=False` matches on boxes alone (MOTChallenge's single-class setting). Every ground-truth frame is
evaluated: a frame without a prediction has no predicted boxes (all misses); frame-skipping runs (vid_stride > 1)
therefore do not compare. Needs `pip install motmetrics` (in the dev and track extras).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import numpy as np

# motmetrics name -> ours; motp is reported as the matched boxes' mean IoU (motmetrics gives the mean distance)
METRICS = {"mota": "mota", "motp": "mean_iou", "idf1": "idf1", "idp": "idp", "idr": "idr", "precision": "precision",
           "recall": "recall", "num_switches": "id_switches", "num_fragmentations": "fragmentations",
           "num_false_positives": "false_positives", "num_misses": "misses", "num_objects": "objects",
           "num_predictions": "predictions", "num_unique_objects": "gt_tracks", "mostly_tracked": "mostly_tracked",
           "mostly_lost": "mostly_lost"}
COUNTS = {"id_switches", "fragmentations", "false_positives", "misses", "objects", "predictions", "gt_tracks",
          "mostly_tracked", "mostly_lost"}

Tracks = tuple[np.ndarray, np.ndarray, np.ndarray]  # ids (N,), xyxy boxes (N, 4), classes (N,)


def _tracks(ids: Any, boxes: Any, classes: Any) -> Tracks:
    return (np.asarray(ids, np.int64).reshape(-1), np.asarray(boxes, np.float64).reshape(-1, 4),
            np.asarray(classes, np.int64).reshape(-1))


def ground_truth(labels: str | Path | Iterable[Mapping[str, Any]]) -> dict[int, Tracks]:
    """Frame -> ground-truth tracks, from a video's labels (`load_video_labels`) or the video/.jsonl path.

    Raises:
        ValueError: labels without `track_ids` (written before generate_video wrote them: regenerate the video).
    """
    if isinstance(labels, (str, Path)):
        from ecc_yolo.data.synthetic import load_video_labels

        labels = load_video_labels(labels)
    out = {}
    for x in labels:
        if "track_ids" not in x:
            raise ValueError(f"frame {x.get('frame')} of the labels has no track_ids: regenerate the video with "
                             f"ecc_yolo.data.synthetic.generate_video")
        out[int(x["frame"])] = _tracks(x["track_ids"], x["boxes"], x["classes"])
    return out


def predicted_tracks(predictions: Iterable[Any]) -> dict[int, Tracks]:
    """Frame -> predicted tracks, from detect records (dicts) or tracked `Results` (a `Results` without a `.record`
    takes its position in `predictions` as its frame).

    Raises:
        ValueError: a box without a track id (the records of `ecc-yolo detect`, not `ecc-yolo track`), or a frame
            given twice.
    """
    out: dict[int, Tracks] = {}
    for i, p in enumerate(predictions):
        record = p if isinstance(p, Mapping) else getattr(p, "record", None)
        frame = int(record["frame"]) if record is not None else i
        if isinstance(p, Mapping):
            if any("track_id" not in b for b in p["boxes"]):
                raise ValueError(f"frame {frame}: a box without a track_id (records of `ecc-yolo track` have them)")
            tracks = _tracks([b["track_id"] for b in p["boxes"]], [b["xyxy"] for b in p["boxes"]],
                             [b["cls"] for b in p["boxes"]])
        else:
            boxes = p.boxes.cpu().numpy()
            if len(boxes) and boxes.id is None:
                raise ValueError(f"frame {frame}: boxes without track ids (track the results first)")
            tracks = _tracks(boxes.id if len(boxes) else [], boxes.xyxy, boxes.cls)
        if frame in out:
            raise ValueError(f"frame {frame} is given twice (records of several streams? pass one stream's)")
        out[frame] = tracks
    return out


def _iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    from ultralytics.utils.metrics import bbox_ioa

    return bbox_ioa(a, b, iou=True) if len(a) and len(b) else np.zeros((len(a), len(b)))


def accumulate(labels: Any, predictions: Any, class_aware: bool = True, min_iou: float = 0.5) -> Any:
    """A motmetrics `MOTAccumulator` of `predictions` against `labels` over every ground-truth frame (see the
    module's docstring for the inputs and the matching rule).

    Raises:
        ValueError: a prediction for a frame the labels do not have (another video, or another stream's records).
    """
    import motmetrics as mm

    gt = ground_truth(labels)
    pred = predictions if isinstance(predictions, dict) else predicted_tracks(predictions)
    extra = sorted(set(pred) - set(gt))
    if extra:
        raise ValueError(f"predictions for frames the labels do not have: {extra[:5]}")
    acc = mm.MOTAccumulator(auto_id=False)
    empty = _tracks([], [], [])
    for frame in sorted(gt):
        (gt_ids, gt_boxes, gt_cls), (ids, boxes, cls) = gt[frame], pred.get(frame, empty)
        dist = 1.0 - _iou(gt_boxes, boxes)
        dist[dist > 1.0 - min_iou] = np.nan  # motmetrics: NaN = may not match
        if class_aware:
            dist[gt_cls[:, None] != cls[None, :]] = np.nan
        acc.update(gt_ids.tolist(), ids.tolist(), dist, frameid=frame)
    return acc


def summarize(accumulators: Mapping[str, Any]) -> dict[str, dict[str, float | int]]:
    """Name -> metrics (MOTA, IDF1, ID switches, false positives, misses, ...; see METRICS) of each accumulator, and
    "overall" (all of them pooled, as motmetrics' `generate_overall` does) when there are several."""
    import motmetrics as mm

    names = list(accumulators)
    table = mm.metrics.create().compute_many([accumulators[n] for n in names], metrics=list(METRICS), names=names,
                                             generate_overall=len(names) > 1)
    out = {}
    for name, row in table.iterrows():
        values = {ours: row[theirs] for theirs, ours in METRICS.items()}
        values["mean_iou"] = 1.0 - values["mean_iou"]
        out["overall" if name == "OVERALL" else str(name)] = {
            k: int(v) if k in COUNTS else (round(float(v), 4) if np.isfinite(v) else None) for k, v in values.items()}
    return out


def track_metrics(labels: Any, predictions: Any, class_aware: bool = True, min_iou: float = 0.5
                  ) -> dict[str, float | int]:
    """MOTA, IDF1, ID switches, false positives, misses, ... (see METRICS) of one video's `predictions` (detect
    records or tracked Results) against its `labels` (the video, its .jsonl, or `load_video_labels`)."""
    return summarize({"video": accumulate(labels, predictions, class_aware, min_iou)})["video"]


__all__ = ["METRICS", "accumulate", "ground_truth", "predicted_tracks", "summarize", "track_metrics"]
