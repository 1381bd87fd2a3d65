"""Per-image quality (the gate's targets) against pycocotools, and the stage losses' defining properties."""

from __future__ import annotations

import contextlib
import io

import numpy as np
import pytest
import torch
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from ecc_yolo.losses import gate_loss, head_distillation, rate_bits
from ecc_yolo.quality import EMPTY_IMAGE_CONF, image_ap, match_predictions


def _coco_single_image_ap(gt: np.ndarray, det: np.ndarray, scores: np.ndarray) -> float:
    """pycocotools AP50-95 of one image and one category (boxes xyxy)."""
    images = [{"id": 1, "width": 640, "height": 640}]
    anns = [
        {"id": i + 1, "image_id": 1, "category_id": 1, "bbox": [b[0], b[1], b[2] - b[0], b[3] - b[1]],
         "area": float((b[2] - b[0]) * (b[3] - b[1])), "iscrowd": 0}
        for i, b in enumerate(gt)
    ]
    coco = COCO()
    coco.dataset = {"images": images, "annotations": anns, "categories": [{"id": 1, "name": "x"}]}
    with contextlib.redirect_stdout(io.StringIO()):
        coco.createIndex()
        dets = coco.loadRes([
            {"image_id": 1, "category_id": 1, "bbox": [b[0], b[1], b[2] - b[0], b[3] - b[1]], "score": float(s)}
            for b, s in zip(det, scores)
        ])
        e = COCOeval(coco, dets, "bbox")
        e.evaluate()
        e.accumulate()
        e.summarize()
    return float(e.stats[0])


@pytest.mark.parametrize("seed", range(6))
def test_image_ap_matches_pycocotools_on_single_class_images(seed):
    rng = np.random.default_rng(seed)
    n = int(rng.integers(1, 6))
    xy = rng.uniform(0, 500, (n, 2))
    gt = np.concatenate([xy, xy + rng.uniform(40, 120, (n, 2))], 1)
    # detections: jittered copies of some objects plus false alarms
    keep = gt[rng.random(n) < 0.8]
    jitter = keep + rng.normal(0, 8, keep.shape)
    false = rng.uniform(0, 560, (int(rng.integers(0, 3)), 2))
    det = np.concatenate([jitter, np.concatenate([false, false + 50], 1)]) if len(false) else jitter
    if len(det) == 0:
        det = gt[:1] + 200
    scores = rng.uniform(0.1, 1.0, len(det))
    order = np.argsort(-scores)
    det, scores = det[order], scores[order]
    tp = match_predictions(torch.tensor(det, dtype=torch.float32), torch.zeros(len(det)),
                           torch.tensor(gt, dtype=torch.float32), torch.zeros(len(gt)))
    ours = image_ap(tp, scores, len(gt))
    assert ours == pytest.approx(_coco_single_image_ap(gt, det, scores), abs=1e-6)


def test_image_ap_edge_cases():
    assert image_ap(np.zeros((0, 10), bool), np.zeros(0), 3) == 0.0  # objects, no detections
    assert image_ap(np.zeros((0, 10), bool), np.zeros(0), 0) == 1.0  # empty image, silent route
    conf = np.array([0.9, 0.5, EMPTY_IMAGE_CONF - 0.01])
    assert image_ap(np.zeros((3, 10), bool), conf, 0) == pytest.approx(np.exp(-2))  # two confident false alarms
    assert image_ap(np.ones((2, 10), bool), np.array([0.9, 0.8]), 2) == pytest.approx(1.0)


def test_gate_loss_charges_missed_offloads_rrb_times_more():
    target = torch.tensor([[0.4, 0.4]])
    under, over = torch.tensor([[0.2, 0.2]]), torch.tensor([[0.6, 0.6]])
    assert gate_loss(under, target, 1.0) == pytest.approx(gate_loss(over, target, 1.0).item())
    assert gate_loss(under, target, 3.0) == pytest.approx(3 * gate_loss(over, target, 3.0).item())
    # the minimiser of the expected loss over a spread of targets moves up with rrb (an upper expectile)
    targets = torch.tensor([[0.0], [0.0], [0.0], [0.5]])
    grid = torch.linspace(0, 0.5, 501)
    best = [grid[torch.stack([gate_loss(g.expand(4, 1), targets, r) for g in grid]).argmin()].item() for r in (1, 4)]
    assert best[1] > best[0] + 0.1


def test_head_distillation_pulls_the_student_towards_the_teacher():
    g = torch.Generator().manual_seed(0)
    teacher = {"boxes": torch.randn(2, 64, 50, generator=g), "scores": torch.randn(2, 8, 50, generator=g)}
    student = {k: torch.randn(v.shape, generator=g, requires_grad=True) for k, v in teacher.items()}
    loss = head_distillation(student, teacher, reg_max=16)
    loss.backward()
    with torch.no_grad():
        moved = {k: v - 0.5 * v.grad for k, v in student.items()}
    assert head_distillation(moved, teacher, reg_max=16) < loss
    same = head_distillation({k: v.clone() for k, v in teacher.items()}, teacher, reg_max=16)
    assert same < loss  # at the teacher only the (irreducible) entropy of its class scores is left


def test_rate_proxy_is_bounded_by_the_bit_width_and_rewards_concentrated_latents():
    g = torch.Generator().manual_seed(1)
    spread = torch.randn(1, 4, 16, 16, generator=g)
    concentrated = spread.clone()
    concentrated[..., 1:, :] *= 0.01  # most values near the channel mean, a few far away
    for bits in (2, 4, 8):
        assert 0 <= rate_bits(spread, bits) <= bits
        assert rate_bits(concentrated, bits) < rate_bits(spread, bits)
