"""mAP by pycocotools for any per-image mix of routes, without re-matching detections: the one mAP of ecc-yolo.

`ecc-yolo val` (the benchmark) and training-time validation (`ecc_yolo.engine.validator`) both score routes, routers
and per-image gains with `RouteMixEvaluator`, so they report the same mAP on the same detections. (Training targets of
the gate are measured per batch by `ecc_yolo.quality`, a fast path tested equal to pycocotools.)

pycocotools evaluates in two steps: `evaluate()` matches detections to ground truth per (category, area range,
image), and `accumulate()` turns those per-image records into precision/recall. Matching is the expensive part and
is independent per image, so each route is matched once; the mAP of a system that answers image i with route r_i
is then `accumulate()` over the records that route r_i produced for image i.
"""

from __future__ import annotations

import contextlib
import copy
import io
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from ecc_yolo.eval.dataset import EvalDataset
from ecc_yolo.eval.stats import Bootstrap
from ecc_yolo.routes import EDGE, ROUTE_CODES


def _quiet():
    return contextlib.redirect_stdout(io.StringIO())  # pycocotools prints progress to stdout


def ground_truth(dataset: EvalDataset) -> COCO:
    """A pycocotools COCO object of the dataset's ground truth."""
    coco = COCO()
    coco.dataset = copy.deepcopy(dataset.coco)
    with _quiet():
        coco.createIndex()
    return coco


def detections_to_coco(gt: COCO, dataset: EvalDataset, detections: list[np.ndarray]) -> COCO:
    """A COCO results object from per-image (N, 6) detections (what `COCO.loadRes` builds, also when empty)."""
    anns = []
    for image_id, det in zip(dataset.image_ids, detections):
        for x1, y1, x2, y2, conf, cls in det:
            cat = dataset.class_to_cat.get(int(cls))
            if cat is None:  # a class the data does not annotate
                continue
            w, h = float(x2 - x1), float(y2 - y1)
            anns.append({"id": len(anns) + 1, "image_id": image_id, "category_id": cat,
                         "bbox": [float(x1), float(y1), w, h], "area": w * h, "score": float(conf), "iscrowd": 0})
    res = COCO()
    res.dataset = {"images": gt.dataset["images"], "categories": gt.dataset["categories"], "annotations": anns}
    with _quiet():
        res.createIndex()
    return res

_CELLS = 1_000_000  # (mix x IoU threshold x true positive) cells evaluated at once: bounds memory to ~100 MB


@dataclass
class _CategoryTable:
    """One category's detections of every route, in the order pycocotools' accumulate would sort them, reduced to
    what AP needs: the detections that are a true positive at some IoU threshold ("hits"), and per image and route
    how many detections (and ignored detections) sort at or before each hit."""

    route: np.ndarray  # (M,) route index of each hit
    image: np.ndarray  # (M,) pycocotools image index of each hit
    tp: np.ndarray  # (T, M) the hit is a true positive at IoU threshold t
    seen: np.ndarray  # (R, n, M) detections of route r and image i sorted at or before each hit
    ignored: np.ndarray | None  # (R, n, T, M) the same for detections ignored at threshold t; None: none are
    gt: np.ndarray  # (n,) non-ignored ground truth per image

    @classmethod
    def build(cls, route: np.ndarray, image: np.ndarray, tp: np.ndarray, ignored: np.ndarray, gt: np.ndarray,
              routes: int) -> _CategoryTable:
        """From every detection of the category, already in accumulate's order."""
        hits = np.flatnonzero(tp.any(axis=0))
        n = len(gt)

        def at_hits(mask: np.ndarray) -> np.ndarray:  # (R, n, M) detections selected by `mask` up to each hit
            out = np.zeros((routes, n, len(hits)), dtype=np.float32)  # counts, exact in float32 below 2**24
            for r in range(routes):
                pick = mask & (route == r)
                onehot = np.zeros((n, len(route)), dtype=np.int32)
                onehot[image[pick], np.flatnonzero(pick)] = 1
                out[r] = np.cumsum(onehot, axis=1)[:, hits]
            return out

        everything = np.ones(len(route), dtype=bool)
        ignored_at = np.stack([at_hits(ignored[t]) for t in range(len(tp))], axis=2) if ignored.any() else None
        return cls(route[hits], image[hits], tp[:, hits], at_hits(everything), ignored_at, gt)


def _category_ap(table: _CategoryTable, route_of: np.ndarray, weight_of: np.ndarray,
                 rec_thrs: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One category's AP50-95 and AP50 for B weighted mixes (0 where it has no ground truth), and whether it counts.

    Why this equals pycocotools: a detection of weight c is c identical, adjacent detections. Recall rises only at
    true positives, and precision never falls along a run of true positives, so the interpolated precision at a
    recall threshold is the largest precision at a true positive whose recall reaches it; only the hits are visited.
    A hit of weight 0 (another route's, a left-out image's, or a false positive at this threshold) repeats the
    previous recall with no higher precision, so it changes nothing.
    """
    rows = len(route_of)
    npig = weight_of @ table.gt
    scored = npig > 0
    hit_weight = weight_of[:, table.image] * (route_of[:, table.image] == table.route)  # (B, M)
    keep = np.flatnonzero(hit_weight.any(axis=0))  # hits of weight 0 in every mix change nothing: drop them
    if not keep.size:
        return np.zeros(rows), np.zeros(rows), scored
    hit_weight, tp = hit_weight[:, keep], table.tp[:, keep]
    counted = np.zeros((rows, 1 if table.ignored is None else len(tp), keep.size))  # non-ignored detections
    for r in np.unique(route_of):
        in_route = (weight_of * (route_of == r)).astype(np.float32)  # float32 BLAS: integer sums stay exact
        counted += (in_route @ table.seen[r][:, keep])[:, None]
        if table.ignored is not None:  # ignored detections are neither true nor false positives
            ignored = table.ignored[r][:, :, keep].reshape(len(table.gt), -1)
            some = np.flatnonzero(ignored.any(axis=0))  # they are rare: multiply only the columns that have any
            flat = counted.reshape(rows, -1)
            flat[:, some] -= in_route @ ignored[:, some]
    tp_sum = np.cumsum(hit_weight[:, None, :] * tp[None], axis=2)  # (B, T, M), integers
    precision = tp_sum / (counted + np.spacing(1))
    envelope = np.maximum.accumulate(precision[..., ::-1], axis=2)[..., ::-1]
    # the first hit whose recall reaches each threshold, for every (mix, IoU threshold) row in one integer search:
    # recall = tp_sum / npig, so reaching threshold x means tp_sum >= the least count c with c / npig >= x (float
    # division, as pycocotools compares), and rows are offset so that they form one sorted array
    m, flat_rows = keep.size, rows * len(tp)
    per_row_npig = np.repeat(np.where(scored, npig, 1), len(tp))[:, None].astype(float)
    need = np.ceil(rec_thrs[None] * per_row_npig).astype(np.int64) - 1
    need = np.where(need / per_row_npig >= rec_thrs[None], need, need + 1)
    need = np.where(need / per_row_npig >= rec_thrs[None], need, need + 1)
    stride = int(max(npig.max(), need.max())) + 1
    offset = np.arange(flat_rows)[:, None] * stride
    first = np.searchsorted((tp_sum.reshape(flat_rows, m) + offset).ravel(), (need + offset).ravel(), side="left")
    first = first.reshape(flat_rows, -1) - np.arange(flat_rows)[:, None] * m
    q = np.where(first < m, np.take_along_axis(envelope.reshape(flat_rows, m), np.minimum(first, m - 1), 1), 0.0)
    q = q.reshape(rows, len(tp), -1)
    return np.where(scored, q.mean(axis=(1, 2)), 0.0), np.where(scored, q[:, 0].mean(axis=1), 0.0), scored


class RouteMixEvaluator:
    """pycocotools mAP of any assignment of routes to images (see the module docstring)."""

    def __init__(self, dataset: EvalDataset, detections: dict[str, list[np.ndarray]],
                 answered_as: dict[str, str] | None = None):
        """Match each route's detections once.

        Args:
            dataset: the evaluation dataset (its image order is the order of `detections`).
            detections: route -> per-image (N, 6) detections in image pixels.
            answered_as: route code name -> the detections that answer a frame a router assigns to it (the benchmark
                passes `ecc_yolo.routes.ANSWERED_AS`: a frame sent to the cloud is answered on its decoded JPEG);
                ignored where those detections are absent. `route_map(name)` always scores `name` itself.
        """
        self.dataset = dataset
        self.routes = list(detections)
        self.answered_as = {k: v for k, v in (answered_as or {}).items() if v in detections}
        self.gt = ground_truth(dataset)
        self.evals: dict[str, COCOeval] = {}
        for route, dets in detections.items():
            e = COCOeval(self.gt, detections_to_coco(self.gt, dataset, dets), "bbox")
            e.params.imgIds = list(dataset.image_ids)
            with _quiet():
                e.evaluate()
            self.evals[route] = e
        first = self.evals[self.routes[0]]
        self.sorted_ids = list(first.params.imgIds)  # pycocotools sorts image ids
        position = {image_id: i for i, image_id in enumerate(self.sorted_ids)}
        self.order = np.array([position[i] for i in dataset.image_ids])  # dataset index -> pycocotools index
        self.blocks = len(first.evalImgs) // len(self.sorted_ids)  # categories x area ranges
        self.detections = detections

    def assignment(self, codes: np.ndarray) -> np.ndarray:
        """Route codes (`ecc_yolo.routes.ROUTE_CODES`) per dataset image -> this evaluator's route indices (what
        `map` and `fast_map` take)."""
        lookup = np.full(len(ROUTE_CODES), -1)
        for name, code in ROUTE_CODES.items():
            name = self.answered_as.get(name, name)
            if name in self.routes:
                lookup[code] = self.routes.index(name)
        return lookup[np.asarray(codes)]

    def map(self, assignment: np.ndarray, image_subset: np.ndarray | None = None) -> tuple[float, float]:
        """(mAP50-95, mAP50) of the system answering dataset image i with route `self.routes[assignment[i]]`.

        Args:
            assignment: (I,) route index per dataset image.
            image_subset: optional boolean (I,) mask: evaluate on these images only.
        """
        n = len(self.sorted_ids)
        route_of = np.empty(n, dtype=np.int64)
        route_of[self.order] = np.asarray(assignment)
        keep = np.arange(n) if image_subset is None else np.sort(self.order[np.flatnonzero(image_subset)])
        base = self.evals[self.routes[0]]
        mixed = copy.copy(base)
        mixed.params = copy.deepcopy(base.params)
        mixed._paramsEval = copy.deepcopy(base._paramsEval)
        # accumulate() indexes evalImgs by position in _paramsEval.imgIds, so a subset gets its own, shorter list
        mixed.params.imgIds = mixed._paramsEval.imgIds = [self.sorted_ids[j] for j in keep]
        evals = [self.evals[r].evalImgs for r in self.routes]
        mixed.evalImgs = [evals[route_of[j]][block * n + j] for block in range(self.blocks) for j in keep]
        with _quiet():
            mixed.accumulate()
        precision = mixed.eval["precision"][:, :, :, 0, -1]  # all areas, maxDets=100 (COCO's AP)
        ap = float(np.mean(precision[precision > -1])) if (precision > -1).any() else 0.0
        p50 = precision[0]
        ap50 = float(np.mean(p50[p50 > -1])) if (p50 > -1).any() else 0.0
        return ap, ap50

    def _category_tables(self) -> list[_CategoryTable]:
        """Per category: every route's detections (area 'all', 100 per image) merged and sorted the way
        pycocotools' accumulate sorts one mix's detections, so that any mix is a 0/1 weighting of them (built once)."""
        if getattr(self, "_tables", None) is None:
            params = self.evals[self.routes[0]].params
            max_det = params.maxDets[-1]
            n, areas = len(self.sorted_ids), len(params.areaRng)
            tables = []
            for k in range(self.blocks // areas):
                scores, route, image, tp, ignored = [], [], [], [], []
                gt = np.zeros(n, dtype=np.int64)
                for i in range(n):  # image-major, as pycocotools concatenates, so score ties break the same way
                    for r, name in enumerate(self.routes):
                        e = self.evals[name].evalImgs[k * areas * n + i]  # area index 0 = 'all'
                        if e is None:
                            continue
                        gt[i] = np.count_nonzero(e["gtIgnore"] == 0)  # the same ground truth for every route
                        ignore = e["dtIgnore"][:, :max_det].astype(bool)
                        matched = e["dtMatches"][:, :max_det] != 0
                        scores.append(np.asarray(e["dtScores"][:max_det], dtype=float))
                        route.append(np.full(len(scores[-1]), r))
                        image.append(np.full(len(scores[-1]), i))
                        tp.append(matched & ~ignore)
                        ignored.append(ignore)
                thresholds = len(params.iouThrs)
                if scores:
                    order = np.argsort(-np.concatenate(scores), kind="mergesort")
                    tables.append(_CategoryTable.build(
                        np.concatenate(route)[order], np.concatenate(image)[order],
                        np.concatenate(tp, axis=1)[:, order], np.concatenate(ignored, axis=1)[:, order], gt,
                        len(self.routes)))
                else:
                    empty = np.zeros((len(self.routes), n, 0), dtype=np.int64)
                    tables.append(_CategoryTable(np.zeros(0, int), np.zeros(0, int), np.zeros((thresholds, 0), bool),
                                                 empty, None, gt))
            self._tables = tables
        return self._tables

    def resampled_maps(self, assignments: np.ndarray, counts: np.ndarray) -> np.ndarray:
        """(B, 2) mAP50-95 and mAP50 of B route mixes, each on a multiset of images, computed like pycocotools'
        accumulate + summarize (area 'all', 100 detections per image) and equal to `map` on the same images.

        An image counted c times contributes its detections and its ground truth c times, exactly as if the dataset
        held c copies of it (a bootstrap resample; 0 leaves it out, as an image subset does). About 1 ms per
        (mix, resample) on 300 images of 8 classes; batches of rows are vectorised.

        Args:
            assignments: (B, I) or (I,) route index per dataset image.
            counts: (B, I) or (I,) how many times each dataset image counts.
        """
        assignments, counts = np.atleast_2d(assignments), np.atleast_2d(counts)
        rows = max(len(assignments), len(counts))
        n = len(self.sorted_ids)
        route_of = np.empty((len(assignments), n), dtype=np.int64)
        route_of[:, self.order] = assignments
        weight_of = np.empty((len(counts), n), dtype=np.int64)
        weight_of[:, self.order] = counts
        route_of = np.broadcast_to(route_of, (rows, n))
        weight_of = np.broadcast_to(weight_of, (rows, n))
        rec_thrs = self.evals[self.routes[0]].params.recThrs
        ap, ap50, categories = np.zeros(rows), np.zeros(rows), np.zeros(rows)
        for table in self._category_tables():
            step = max(1, _CELLS // max(table.tp.size, 1))  # rows per chunk, to bound memory
            for start in range(0, rows, step):
                part = slice(start, start + step)
                cat_ap, cat_ap50, scored = _category_ap(table, route_of[part], weight_of[part], rec_thrs)
                ap[part] += cat_ap
                ap50[part] += cat_ap50
                categories[part] += scored
        # categories without ground truth in a mix are left out of the mean, as pycocotools does (-1)
        with np.errstate(invalid="ignore", divide="ignore"):
            out = np.stack([ap / categories, ap50 / categories], axis=1)
        return np.where(categories[:, None] > 0, out, 0.0)

    def bootstrap_maps(self, resamples: int, seed: int = 0) -> Callable[[np.ndarray], np.ndarray]:
        """A function of route codes (`ROUTE_CODES`, one per dataset image) -> (1 + resamples,) mAP50-95 of that mix:
        on all images, then on each of `resamples` seeded bootstrap resamples of them (`Bootstrap`'s draws, the same
        for every call, so that differences between calls are paired; `ecc_yolo.deploy.fit_margin`)."""
        counts = Bootstrap(len(self.dataset), resamples, seed).counts_with_all
        return lambda codes: self.resampled_maps(self.assignment(codes), counts)[:, 0]

    def fast_map(self, assignment: np.ndarray, image_subset: np.ndarray | None = None,
                 resample: np.ndarray | None = None) -> tuple[float, float]:
        """(mAP50-95, mAP50) of a route mix, equal to `map` to float precision (tested) and many times faster. Used
        where thousands of mixes are scored (the oracles, the bootstrap).

        Args:
            assignment: (I,) route index per dataset image.
            image_subset: optional boolean (I,) mask: evaluate on these images only.
            resample: optional dataset image indices, repeats allowed: evaluate on this multiset of images (a
                repeated image counts its detections and its ground truth once per repeat).
        """
        n = len(self.dataset)
        counts = np.ones(n, dtype=np.int64)
        if image_subset is not None:
            counts = np.asarray(image_subset, dtype=bool).astype(np.int64)
        if resample is not None:
            counts = counts * np.bincount(np.asarray(resample, dtype=np.int64), minlength=n)
        ap, ap50 = self.resampled_maps(np.asarray(assignment), counts)[0]
        return float(ap), float(ap50)

    def marginal_gains(self, route: str, base: str = EDGE, chunk: int | None = None) -> np.ndarray:
        """(I,) how much the dataset's mAP50-95 rises when image i alone is answered by `route` instead of `base`,
        times the number of images (so that the gains of all images add up to about the change from switching
        every image, and one image's gain reads on the scale of an mAP).

        Args:
            route: the offload route.
            base: the route every other image keeps.
            chunk: measure gains within consecutive groups of this many images (cheaper on large sets; None: one
                group, the whole dataset).
        """
        n = len(self.dataset)
        chunk = chunk or max(n, 1)
        base_assignment = np.full(n, self.routes.index(base))
        gains = np.empty(n)
        for start in range(0, n, chunk):
            members = np.arange(start, min(start + chunk, n))
            group = np.zeros(n, dtype=np.int64)
            group[members] = 1
            reference = self.resampled_maps(base_assignment, group)[0, 0]
            switched = np.repeat(base_assignment[None], len(members), axis=0)
            switched[np.arange(len(members)), members] = self.routes.index(route)
            gains[members] = (self.resampled_maps(switched, group)[:, 0] - reference) * len(members)
        return gains

    def route_map(self, route: str, image_subset: np.ndarray | None = None) -> tuple[float, float]:
        """(mAP50-95, mAP50) of one route on every image (or a subset)."""
        return self.map(np.full(len(self.dataset), self.routes.index(route)), image_subset)
