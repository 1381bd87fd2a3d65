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

import numpy as np
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from ecc_yolo.eval.dataset import EvalDataset
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


class RouteMixEvaluator:
    """pycocotools mAP of any assignment of routes to images (see the module docstring)."""

    def __init__(self, dataset: EvalDataset, detections: dict[str, list[np.ndarray]]):
        """Match each route's detections once.

        Args:
            dataset: the evaluation dataset (its image order is the order of `detections`).
            detections: route -> per-image (N, 6) detections in image pixels.
        """
        self.dataset = dataset
        self.routes = list(detections)
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

    def _fast_tables(self) -> list[list[list[tuple | None]]]:
        """Per route, category and image (pycocotools order): the records `fast_map` needs (area 'all', 100 dets)."""
        if getattr(self, "_tables", None) is None:
            max_det = self.evals[self.routes[0]].params.maxDets[-1]
            n, areas = len(self.sorted_ids), len(self.evals[self.routes[0]].params.areaRng)
            categories = self.blocks // areas
            tables = []
            for route in self.routes:
                evalimgs = self.evals[route].evalImgs
                per_cat = []
                for k in range(categories):
                    rows = []
                    for i in range(n):
                        e = evalimgs[k * areas * n + i]  # area index 0 = 'all'
                        if e is None:
                            rows.append(None)
                            continue
                        ignore = e["dtIgnore"][:, :max_det]
                        matched = e["dtMatches"][:, :max_det] != 0
                        rows.append((np.asarray(e["dtScores"][:max_det]), matched & ~ignore, ~matched & ~ignore,
                                     int(np.count_nonzero(e["gtIgnore"] == 0))))
                    per_cat.append(rows)
                tables.append(per_cat)
            self._tables = tables
        return self._tables

    def fast_map(self, assignment: np.ndarray, image_subset: np.ndarray | None = None) -> tuple[float, float]:
        """(mAP50-95, mAP50) of a route mix, computed like pycocotools' accumulate + summarize (area 'all', 100
        detections per image) but only for the numbers mAP needs: many times faster, equal to `map` to float
        precision (tested). Used where thousands of mixes are scored (the oracle's marginal gains).

        Args:
            assignment: (I,) route index per dataset image.
            image_subset: optional boolean (I,) mask: evaluate on these images only.
        """
        tables = self._fast_tables()
        route_of = np.empty(len(self.sorted_ids), dtype=np.int64)
        route_of[self.order] = np.asarray(assignment)
        keep = range(len(route_of)) if image_subset is None else np.sort(self.order[np.flatnonzero(image_subset)])
        rec_thrs = self.evals[self.routes[0]].params.recThrs
        aps, ap50s = [], []
        for k in range(len(tables[0])):
            rows = [tables[route_of[i]][k][i] for i in keep]
            rows = [row for row in rows if row is not None]
            npig = sum(row[3] for row in rows)
            if not rows or npig == 0:
                continue
            scores = np.concatenate([row[0] for row in rows])
            order = np.argsort(-scores, kind="mergesort")
            tps = np.concatenate([row[1] for row in rows], axis=1)[:, order]
            fps = np.concatenate([row[2] for row in rows], axis=1)[:, order]
            tp_sum, fp_sum = np.cumsum(tps, axis=1, dtype=float), np.cumsum(fps, axis=1, dtype=float)
            q = np.zeros((tps.shape[0], len(rec_thrs)))
            nd = tps.shape[1]
            if nd:
                recall = tp_sum / npig
                precision = tp_sum / (fp_sum + tp_sum + np.spacing(1))
                precision = np.maximum.accumulate(precision[:, ::-1], axis=1)[:, ::-1]
                for t in range(tps.shape[0]):
                    inds = np.searchsorted(recall[t], rec_thrs, side="left")
                    valid = inds < nd
                    q[t, valid] = precision[t, inds[valid]]
            aps.append(q.mean())
            ap50s.append(q[0].mean())
        return (float(np.mean(aps)), float(np.mean(ap50s))) if aps else (0.0, 0.0)

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
            group = np.zeros(n, dtype=bool)
            group[start : start + chunk] = True
            subset = None if group.all() else group
            size = int(group.sum())
            reference = self.fast_map(base_assignment, subset)[0]
            for i in range(start, min(start + chunk, n)):
                switched = base_assignment.copy()
                switched[i] = self.routes.index(route)
                gains[i] = (self.fast_map(switched, subset)[0] - reference) * size
        return gains

    def route_map(self, route: str, image_subset: np.ndarray | None = None) -> tuple[float, float]:
        """(mAP50-95, mAP50) of one route on every image (or a subset)."""
        return self.map(np.full(len(self.dataset), self.routes.index(route)), image_subset)
