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
from ecc_yolo.quality import dataset_map, image_stats, marginal_gains


def _scene(rng: np.random.Generator, n_images: int, n_classes: int = 3):
    """Ground truth and jittered detections (with misses and false alarms) for a few images."""
    images = []
    for _ in range(n_images):
        n = int(rng.integers(1, 6))
        xy = rng.uniform(0, 500, (n, 2))
        gt = np.concatenate([xy, xy + rng.uniform(40, 120, (n, 2))], 1)
        gt_cls = rng.integers(0, n_classes, n).astype(np.float32)
        found = rng.random(n) < 0.8
        det = gt[found] + rng.normal(0, 6, (found.sum(), 4))
        det_cls = gt_cls[found]
        k = int(rng.integers(0, 3))
        false = rng.uniform(0, 560, (k, 2))
        det = np.concatenate([det, np.concatenate([false, false + 50], 1)])
        det_cls = np.concatenate([det_cls, rng.integers(0, n_classes, k).astype(np.float32)])
        conf = rng.uniform(0.05, 1.0, len(det))
        images.append((gt, gt_cls, np.concatenate([det, conf[:, None], det_cls[:, None]], 1).astype(np.float32)))
    return images


def _stats(images):
    return [image_stats(torch.from_numpy(det), torch.tensor(gt, dtype=torch.float32), torch.from_numpy(gt_cls))
            for gt, gt_cls, det in images]


def _pycocotools_map(images) -> float:
    img_list, anns, res = [], [], []
    for i, (gt, gt_cls, det) in enumerate(images, start=1):
        img_list.append({"id": i, "width": 640, "height": 640})
        for b, c in zip(gt, gt_cls):
            anns.append({"id": len(anns) + 1, "image_id": i, "category_id": int(c) + 1, "iscrowd": 0,
                         "bbox": [b[0], b[1], b[2] - b[0], b[3] - b[1]], "area": float((b[2] - b[0]) * (b[3] - b[1]))})
        res += [{"image_id": i, "category_id": int(d[5]) + 1, "bbox": [d[0], d[1], d[2] - d[0], d[3] - d[1]],
                 "score": float(d[4])} for d in det.tolist()]
    coco = COCO()
    coco.dataset = {"images": img_list, "annotations": anns, "categories": [{"id": k} for k in (1, 2, 3)]}
    with contextlib.redirect_stdout(io.StringIO()):
        coco.createIndex()
        e = COCOeval(coco, coco.loadRes(res), "bbox")
        e.evaluate()
        e.accumulate()
        e.summarize()
    return float(e.stats[0])


@pytest.mark.parametrize("seed", range(5))
def test_dataset_map_matches_pycocotools(seed):
    images = _scene(np.random.default_rng(seed), n_images=6)
    assert dataset_map(_stats(images)) == pytest.approx(_pycocotools_map(images), abs=1e-6)


def test_marginal_gains_value_suppressed_false_alarms_and_found_objects():
    rng = np.random.default_rng(3)
    images = _scene(rng, n_images=8)
    base = _stats(images)
    assert np.allclose(marginal_gains(base, base), 0)  # same answer, no gain
    # a route that answers image 0 without its false alarms: its own AP is unchanged (they rank below its hits) ...
    gt, gt_cls, det = images[0]
    hits = image_stats(torch.from_numpy(det), torch.tensor(gt, dtype=torch.float32), torch.from_numpy(gt_cls))
    keep = hits["tp"][:, 0]
    clean = [dict(s) for s in base]
    clean[0] = {k: (v[keep] if k != "target_cls" else v) for k, v in hits.items()}
    # ... but the dataset's mAP rises, since those false alarms outranked other images' true objects
    gains = marginal_gains(base, clean)
    assert gains[0] > 0 and np.allclose(gains[1:], 0)
    # a route that finds every object of image 1 exactly, with top confidence, gains too
    perfect = [dict(s) for s in base]
    gt1, cls1, _ = images[1]
    perfect[1] = image_stats(torch.tensor(np.concatenate([gt1, np.ones((len(gt1), 1)), cls1[:, None]], 1),
                                          dtype=torch.float32), torch.tensor(gt1, dtype=torch.float32),
                             torch.from_numpy(cls1))
    assert marginal_gains(base, perfect)[1] > 0
    assert marginal_gains(base, perfect, chunk=4).shape == (8,)


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
