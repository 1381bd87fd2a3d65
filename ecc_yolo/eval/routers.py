"""Routers on the cached run: mAP versus offload ratio, with the computation and bytes each point really costs.

Each router ranks frames for offloading and says where an offloaded frame goes:

| router | ranks frames by | offloaded frames go to |
|---|---|---|
| ECC_I | the gate's predicted cloud gain | the full cloud (the device sends the JPEG) |
| ECC_D | the gate's predicted adapted gain | the adapted route (the device sends features) |
| ECC_D+ | the larger predicted gain | the cloud if its predicted gain beats the adapted one by `margin`, else adapted |
| oracle_I / oracle_D / oracle_D+ | the true gain of each image: how much the dataset's mAP50-95 rises when that image alone is answered by the route | as above, with true gains |
| random_I / random_D | a random order (mean over seeds) | cloud / adapted |
| MEANet (multi-exit edges) | the router's probability that a frame is complex | adapted; the others stop at the main exit, or at the extension exit when the router rates them more likely hard than easy |

ECC_A (every frame to the adapted route) is the single point at offload ratio 1 of ECC_D. At offload ratio r a
router offloads exactly round(r * I) frames. Per point: mean device GFLOPs per frame (edge and gate always, adapter
encoders for frames that send features), mean cloud GFLOPs per frame (decoders and tail for adapted frames, the
whole cloud for JPEG frames) and mean bytes sent per frame (the measured payload of each offloaded frame).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from ecc_yolo.eval.cache import RouteCache
from ecc_yolo.eval.coco_eval import RouteMixEvaluator
from ecc_yolo.policy import THREE_WAY_MARGIN, decide
from ecc_yolo.routes import ADAPTED, CLOUD, EDGE, EXTENSION, ROUTE_CODES

RATIOS = np.round(np.linspace(0.0, 1.0, 21), 3)


@dataclass
class CurvePoint:
    """One operating point of a router."""

    router: str
    ratio: float
    map: float  # mAP50-95, 0..1
    map50: float
    device_gflops: float  # mean per frame
    cloud_gflops: float  # mean per frame
    bytes: float  # mean bytes sent per frame
    adapted_share: float
    cloud_share: float
    extension_share: float = 0.0

    def row(self) -> dict:
        """As a flat dict (CSV row)."""
        return asdict(self)


class RouterSweep:
    """Curves of every router over a cached run."""

    def __init__(self, cache: RouteCache, evaluator: RouteMixEvaluator, margin: float = THREE_WAY_MARGIN,
                 seeds: int = 5):
        """Prepare to score routers (the oracles' true gains are computed on first use).

        Args:
            cache: the cached run.
            evaluator: pycocotools evaluator over the cache's detections.
            margin: ECC_D+ sends the JPEG only when the cloud's predicted gain beats the adapted one by this much.
            seeds: random orders averaged for the random routers.
        """
        self.cache, self.evaluator, self.margin, self.seeds = cache, evaluator, margin, seeds
        self.n = len(cache.gate)
        self._true_gain: np.ndarray | None = None
        self.multi_exit = EXTENSION in evaluator.routes and cache.router is not None

    @property
    def true_gain(self) -> np.ndarray:
        """(I, 2) each image's true gain from the adapted route and from the cloud (computed once, when needed)."""
        if self._true_gain is None:
            ev = self.evaluator
            self._true_gain = np.stack([ev.marginal_gains(ADAPTED), ev.marginal_gains(CLOUD)], 1)
        return self._true_gain

    def _assignment(self, router: str, ratio: float, seed: int = 0) -> np.ndarray:
        """Route code (ROUTE_CODES) of every frame for a router at an offload ratio (`ecc_yolo.policy.decide`)."""
        if router == "MEANet":
            return decide(exit_logits=self.cache.router, ratio=ratio).routes
        if router.startswith("random"):  # a random order: the same random "gain" for either route
            gains = np.repeat(np.random.default_rng(seed).random(self.n)[:, None], 2, axis=1)
        else:
            gains = self.cache.gate if router.startswith("ECC") else self.true_gain
        if router in ("ECC_D+", "oracle_D+"):
            return decide(gains, ratio=ratio, margin=self.margin if router == "ECC_D+" else 0.0).routes
        target = CLOUD if router in ("ECC_I", "oracle_I", "random_I") else ADAPTED
        return decide(gains, ratio=ratio, offload_to=target).routes

    def point(self, router: str, assignment: np.ndarray, ratio: float) -> CurvePoint:
        """Score one assignment: pycocotools mAP and mean costs per frame."""
        ap, ap50 = self.evaluator.map(self.evaluator.assignment(assignment))
        return self._with_costs(router, ratio, assignment, ap, ap50)

    def _with_costs(self, router: str, ratio: float, assignment: np.ndarray, ap: float, ap50: float) -> CurvePoint:
        c = self.cache.costs
        adapted = assignment == ROUTE_CODES[ADAPTED]
        cloud = assignment == ROUTE_CODES[CLOUD]
        extension = assignment == ROUTE_CODES[EXTENSION]
        sent = self.cache.feature_bytes[adapted].sum() + self.cache.jpeg_bytes[cloud].sum()
        device = c["edge_gflops"] + c["gate_gflops"] + adapted.mean() * c["adapter_encoder_gflops"]
        if router == "MEANet":  # its router runs on every frame, its extension on the frames it stops there
            device += c["router_gflops"] + extension.mean() * c["extension_gflops"]
        return CurvePoint(
            router=router,
            ratio=float(ratio),
            map=ap,
            map50=ap50,
            device_gflops=device,
            cloud_gflops=adapted.mean() * c["adapted_cloud_gflops"] + cloud.mean() * c["cloud_gflops"],
            bytes=float(sent / self.n),
            adapted_share=float(adapted.mean()),
            cloud_share=float(cloud.mean()),
            extension_share=float(extension.mean()),
        )

    def curve(self, router: str, ratios: np.ndarray = RATIOS) -> list[CurvePoint]:
        """A router's points over offload ratios (random routers: mean mAP and costs over seeds)."""
        points = []
        for ratio in ratios:
            if router.startswith("random"):
                runs = [self.point(router, self._assignment(router, ratio, s), ratio) for s in range(self.seeds)]
                mean = {k: float(np.mean([getattr(p, k) for p in runs])) for k in
                        ("map", "map50", "device_gflops", "cloud_gflops", "bytes", "adapted_share", "cloud_share",
                         "extension_share")}
                points.append(CurvePoint(router=router, ratio=float(ratio), **mean))
            else:
                points.append(self.point(router, self._assignment(router, ratio), ratio))
        return points

    def all_curves(self, ratios: np.ndarray = RATIOS) -> dict[str, list[CurvePoint]]:
        """Every router's curve, plus the single-route points edge, ECC_A and cloud."""
        names = ["ECC_D", "ECC_D+", "ECC_I", "oracle_D", "oracle_D+", "oracle_I", "random_D", "random_I"]
        curves = {name: self.curve(name, ratios) for name in names + (["MEANet"] if self.multi_exit else [])}
        for name, code, ratio in ((EDGE, EDGE, 0.0), ("ECC_A", ADAPTED, 1.0), (CLOUD, CLOUD, 1.0)):
            curves[name] = [self.point(name, np.full(self.n, ROUTE_CODES[code]), ratio)]
        return curves


def auc(points: list[CurvePoint]) -> float:
    """Area under mAP50-95 versus offload ratio (trapezoids)."""
    x = np.array([p.ratio for p in points])
    y = np.array([p.map for p in points])
    return float(np.sum((x[1:] - x[:-1]) * (y[1:] + y[:-1]) / 2))


def first_reaching(points: list[CurvePoint], target_map: float) -> CurvePoint | None:
    """The lowest-ratio point whose mAP reaches `target_map`, or None."""
    for p in sorted(points, key=lambda p: p.ratio):
        if p.map >= target_map:
            return p
    return None
