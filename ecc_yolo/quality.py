"""Offload gains: how much answering one frame with another route improves detection over a set of frames.

A frame's **gain** from route r is its marginal contribution to mAP: the mAP50-95 of a set of frames when that frame
alone is answered by r instead of the edge, minus the mAP when every frame is answered by the edge, times the
number of frames (so gains read on the scale of an mAP, and those of all frames add up to about the change from
switching them all). Dataset mAP pools every frame's detections per class and ranks them by confidence across
frames, so a frame gains both from objects it now finds and from confident false alarms it stops raising; a
per-frame AP would see only the first.

The gate learns these gains (targets computed on each training batch, `ecc_yolo.losses`); the validator uses them
to say which frames needed offloading; the benchmark's oracle ranks frames by the same gains measured with
pycocotools over the whole evaluation set (`ecc_yolo.eval.coco_eval.RouteMixEvaluator.marginal_gains`).

Per-frame records follow Ultralytics' validator: {"tp": (N, 10) bool, "conf": (N,), "pred_cls": (N,),
"target_cls": (M,)}, detections matched class-aware and greedily at IoU 0.50:0.05:0.95.
"""

from __future__ import annotations

import numpy as np
import torch

IOU_THRESHOLDS = np.linspace(0.5, 0.95, 10)
RECALL_POINTS = np.linspace(0.0, 1.0, 101)


def match_predictions(
    pred_boxes: torch.Tensor, pred_cls: torch.Tensor, gt_boxes: torch.Tensor, gt_cls: torch.Tensor
) -> np.ndarray:
    """(N, 10) bool: is detection i (in descending-confidence order) a true positive at each IoU threshold.

    Greedy class-aware matching, each ground-truth box claimed at most once per threshold (as Ultralytics' validator
    and pycocotools do).
    """
    n = pred_boxes.shape[0]
    correct = np.zeros((n, len(IOU_THRESHOLDS)), dtype=bool)
    if n == 0 or gt_boxes.shape[0] == 0:
        return correct
    from ultralytics.utils.metrics import box_iou

    iou = (box_iou(gt_boxes, pred_boxes) * (gt_cls[:, None] == pred_cls[None, :])).cpu().numpy()
    claimed = np.zeros((iou.shape[0], len(IOU_THRESHOLDS)), dtype=bool)
    for j in np.flatnonzero((iou >= IOU_THRESHOLDS[0]).any(0)):
        available = np.where(claimed, 0.0, iou[:, j, None])
        k = available.argmax(0)
        correct[j] = available[k, range(len(IOU_THRESHOLDS))] >= IOU_THRESHOLDS
        claimed[k, range(len(IOU_THRESHOLDS))] |= correct[j]
    return correct


def image_stats(det: torch.Tensor, gt_boxes: torch.Tensor, gt_cls: torch.Tensor) -> dict[str, np.ndarray]:
    """One frame's record from (N, 6) [x1, y1, x2, y2, conf, cls] detections and its ground truth (same pixels)."""
    det = det[torch.argsort(det[:, 4], descending=True, stable=True)]
    return {
        "tp": match_predictions(det[:, :4], det[:, 5], gt_boxes.to(det.device), gt_cls.to(det.device)),
        "conf": det[:, 4].cpu().numpy(),
        "pred_cls": det[:, 5].cpu().numpy(),
        "target_cls": gt_cls.cpu().numpy(),
    }


def batch_stats(detections: list[torch.Tensor], batch: dict, imgsz: tuple[int, int]) -> list[dict[str, np.ndarray]]:
    """Records of a training batch's frames (labels: "batch_idx", "cls", normalised xywh "bboxes")."""
    from ultralytics.utils.ops import xywh2xyxy

    h, w = imgsz
    scale = torch.tensor([w, h, w, h], device=batch["bboxes"].device, dtype=batch["bboxes"].dtype)
    gt_all = xywh2xyxy(batch["bboxes"]) * scale
    out = []
    for i, det in enumerate(detections):
        mask = batch["batch_idx"] == i
        out.append(image_stats(det, gt_all[mask], batch["cls"][mask].view(-1)))
    return out


def dataset_map(stats: list[dict[str, np.ndarray]]) -> float:
    """mAP50-95 of a set of frames: per class, detections of all frames ranked by confidence, COCO's 101-point
    interpolated AP at each IoU threshold; mean over thresholds and over the classes that have objects."""
    target = np.concatenate([s["target_cls"] for s in stats]) if stats else np.zeros(0)
    if target.size == 0:
        return 0.0
    tp = np.concatenate([s["tp"] for s in stats])
    conf = np.concatenate([s["conf"] for s in stats])
    pred = np.concatenate([s["pred_cls"] for s in stats])
    aps = []
    for c in np.unique(target):
        n_gt = int((target == c).sum())
        sel = pred == c
        if not sel.any():
            aps.append(0.0)
            continue
        order = np.argsort(-conf[sel], kind="mergesort")
        hits = tp[sel][order].astype(np.float64)
        tpc = hits.cumsum(0)
        fpc = (1 - hits).cumsum(0)
        recall = tpc / n_gt
        precision = np.maximum.accumulate((tpc / (tpc + fpc))[::-1], axis=0)[::-1]
        ap = 0.0
        for t in range(hits.shape[1]):
            idx = np.searchsorted(recall[:, t], RECALL_POINTS, side="left")
            ap += np.where(idx < len(hits), precision[np.minimum(idx, len(hits) - 1), t], 0.0).mean()
        aps.append(ap / hits.shape[1])
    return float(np.mean(aps))


def marginal_gains(
    base: list[dict[str, np.ndarray]], route: list[dict[str, np.ndarray]], chunk: int | None = None
) -> np.ndarray:
    """(N,) gain of answering each frame with `route` instead of `base` (see the module docstring).

    Args:
        base: the frames' records under the base route (the edge).
        route: the same frames' records under the offload route.
        chunk: measure gains within consecutive groups of this many frames (cheaper on large sets; None: one group).
    """
    n = len(base)
    chunk = chunk or max(n, 1)
    gains = np.zeros(n)
    for start in range(0, n, chunk):
        group = list(base[start : start + chunk])
        reference = dataset_map(group)
        for j in range(len(group)):
            switched = group.copy()
            switched[j] = route[start + j]
            gains[start + j] = (dataset_map(switched) - reference) * len(group)
    return gains
