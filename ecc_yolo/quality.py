"""Per-image detection quality: how good one route's answer is on one image, and the offload gains built from it.

Quality of an image's detections (`image_ap`): the image's AP50-95, i.e. for each IoU threshold 0.50:0.05:0.95,
the area under the precision-recall curve of its detections (sorted by confidence, matched greedily and class-aware
to the ground truth, COCO's 101-point interpolation), averaged over thresholds; classes are pooled within the image.
An image without ground-truth objects has no recall to measure: its quality is exp(-n), n = detections with
confidence >= `EMPTY_IMAGE_CONF` (1 when the route stays silent, lower with every confident false alarm).

Gain of offloading an image to route r (the gate's training target): quality(r) - quality(edge), in [-1, 1].
"""

from __future__ import annotations

import math

import numpy as np
import torch

IOU_THRESHOLDS = np.linspace(0.5, 0.95, 10)
RECALL_POINTS = np.linspace(0.0, 1.0, 101)
EMPTY_IMAGE_CONF = 0.25


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


def image_ap(tp: np.ndarray, conf: np.ndarray, n_gt: int) -> float:
    """AP50-95 of one image from its (N, 10) true-positive matrix and (N,) confidences (see module docstring)."""
    if n_gt == 0:
        return math.exp(-int((conf >= EMPTY_IMAGE_CONF).sum()))
    if tp.shape[0] == 0:
        return 0.0
    order = np.argsort(-conf, kind="stable")
    tp = tp[order].astype(np.float64)
    tpc = tp.cumsum(0)
    fpc = (1 - tp).cumsum(0)
    recall = tpc / n_gt
    precision = tpc / (tpc + fpc)
    aps = []
    for t in range(tp.shape[1]):
        # precision envelope, then sample at 101 recall points (COCO)
        envelope = np.maximum.accumulate(precision[::-1, t])[::-1]
        idx = np.searchsorted(recall[:, t], RECALL_POINTS, side="left")
        sampled = np.where(idx < len(envelope), envelope[np.minimum(idx, len(envelope) - 1)], 0.0)
        aps.append(sampled.mean())
    return float(np.mean(aps))


def batch_quality(
    detections: list[torch.Tensor], batch: dict, imgsz: tuple[int, int]
) -> torch.Tensor:
    """Per-image quality (B,) of NMS'ed detections against a training batch's labels.

    Args:
        detections: per image, (N, 6) [x1, y1, x2, y2, conf, cls] in input pixels.
        batch: Ultralytics batch with "batch_idx", "cls" and normalised xywh "bboxes".
        imgsz: (h, w) of the network input.
    """
    from ultralytics.utils.ops import xywh2xyxy

    h, w = imgsz
    scale = torch.tensor([w, h, w, h], device=batch["bboxes"].device, dtype=batch["bboxes"].dtype)
    gt_all = xywh2xyxy(batch["bboxes"]) * scale
    out = []
    for i, det in enumerate(detections):
        mask = batch["batch_idx"] == i
        gt_boxes, gt_cls = gt_all[mask], batch["cls"][mask].view(-1)
        det = det.to(gt_boxes.device)
        tp = match_predictions(det[:, :4], det[:, 5], gt_boxes, gt_cls)
        out.append(image_ap(tp, det[:, 4].cpu().numpy(), int(mask.sum())))
    return torch.tensor(out, dtype=torch.float32)
