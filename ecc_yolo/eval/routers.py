"""Routers on the cached run: mAP versus offload ratio, with the computation and bytes each point really costs,
their scores against random routing and the oracles, with bootstrap intervals (`ecc_yolo.eval.stats`).

Each router ranks frames for offloading and says where an offloaded frame goes:

| router | ranks frames by | offloaded frames go to |
|---|---|---|
| ECC_I | the gate's predicted cloud gain | the full cloud (the device sends the JPEG) |
| ECC_D | the gate's predicted adapted gain | the adapted route (the device sends features) |
| ECC_D+ | the predicted gain of the route it would take | the cloud if its predicted gain beats the adapted one by the margin (the model's at that ratio, `DeploySettings.margin_at`), else adapted |
| oracle_I / oracle_D / oracle_D+ (greedy oracle) | each image's isolated true gain: how much the dataset's mAP50-95 rises when that image alone is answered by the route | as above, with true gains |
| refined_oracle_* | the greedy oracle's set, then local search at each ratio: frames near the cut are swapped when the whole-set mAP of the mix rises (`refine_rounds` rounds, `refine_window` frames each side) | as above |
| best_oracle_* (reference oracle) | per ratio, the better of the greedy and the refined oracle | as above |
| random_I / random_D | a random order (mean over seeds) | cloud / adapted |
| MEANet (multi-exit edges) | the router's probability that a frame is complex | adapted; the others stop at the main exit, or at the extension exit when the router rates them more likely hard than easy |

mAP is not additive over images, so the greedy oracle (isolated gains) is a heuristic, not an upper bound; the
refined oracle is a better heuristic, never below the greedy one, and still not a proven bound.

ECC_A (every frame to the adapted route) is the single point at offload ratio 1 of ECC_D. At offload ratio r a
router offloads exactly round(r * I) frames. Per point, all mean per frame: device GFLOPs (edge and gate always,
adapter encoders for frames that send features, the exit router and extension for MEANet), cloud GFLOPs (decoders and
tail for adapted frames, the whole cloud for JPEG frames), their total, bytes sent per frame and per offloaded frame.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass

import numpy as np

from ecc_yolo.deploy import ECC_D, ECC_D_PLUS, ECC_I, MEANET
from ecc_yolo.eval.cache import RouteCache
from ecc_yolo.eval.coco_eval import RouteMixEvaluator
from ecc_yolo.eval.stats import Bootstrap, Estimate, gain_share, normalised_score
from ecc_yolo.eval.stats import auc as auc_of
from ecc_yolo.policy import THREE_WAY_MARGIN, decide
from ecc_yolo.routes import ADAPTED, CLOUD, EDGE, EXTENSION, ROUTE_CODES

RATIOS = np.round(np.linspace(0.0, 1.0, 21), 3)
GAIN_SHARE_RATIOS = (0.1, 0.2, 0.3)  # offload ratios at which gain shares are reported
REFINE_ROUNDS = 2  # local-search rounds of the refined oracle at each ratio
REFINE_WINDOW = 40  # frames on each side of the cut it tries to swap per round
SCORE_RANDOM_SEEDS = 2  # random orders averaged in the random baseline of the scores (each costs a bootstrap curve)
TARGETS = {"D": (ADAPTED,), "I": (CLOUD,), "D+": (ADAPTED, CLOUD)}  # oracle target -> routes an offload may use
ROUTER_TYPE = {ECC_D: "D", ECC_I: "I", ECC_D_PLUS: "D+", MEANET: "D"}  # the oracle and random it is scored by


@dataclass
class CurvePoint:
    """One operating point of a router; costs are means per frame over all frames unless named otherwise."""

    router: str
    ratio: float
    map: float  # mAP50-95, 0..1
    map50: float
    device_gflops: float  # edge + gate (+ encoders of feature frames, + exit router and extension for MEANet)
    cloud_gflops: float  # adapted decoders and tail for feature frames, the whole cloud for JPEG frames
    total_gflops: float  # device + cloud
    bytes_per_frame: float  # bytes sent, averaged over every frame (0 for frames kept on the device)
    bytes_per_offloaded_frame: float | None  # bytes sent, averaged over the offloaded frames only (None: none)
    jpeg_bytes_per_offloaded_frame: float | None  # the same frames' JPEG size (what ECC_I would send for them)
    adapted_share: float
    cloud_share: float
    extension_share: float = 0.0
    map_lo: float | None = None  # bootstrap 95% interval of `map` (None: not bootstrapped)
    map_hi: float | None = None

    def row(self) -> dict:
        """As a flat dict (CSV row)."""
        return asdict(self)


def oracle_keys(target: str) -> tuple[str, str, str]:
    """(greedy, refined, best) oracle curve names for a target ("D", "I", "D+")."""
    return f"oracle_{target}", f"refined_oracle_{target}", f"best_oracle_{target}"


class RouterSweep:
    """Curves of every router over a cached run."""

    def __init__(self, cache: RouteCache, evaluator: RouteMixEvaluator,
                 margin: float | Callable[[float], float] = THREE_WAY_MARGIN,
                 seeds: int = 5, refine_rounds: int = REFINE_ROUNDS, refine_window: int = REFINE_WINDOW):
        """Prepare to score routers (the oracles' true gains are computed on first use).

        Args:
            cache: the cached run.
            evaluator: pycocotools evaluator over the cache's detections.
            margin: ECC_D+ sends the JPEG only when the cloud's predicted gain beats the adapted one by this much;
                or a function of the offload ratio that gives it (`DeploySettings.margin_at`).
            seeds: random orders averaged for the random routers.
            refine_rounds: local-search rounds of the refined oracle per ratio (0: refined = greedy).
            refine_window: frames on each side of the cut the refined oracle tries per round. One round at one ratio
                scores about (2 + targets) x window mixes with `fast_map` (about 3 ms each on 300 images).
        """
        self.cache, self.evaluator, self.margin, self.seeds = cache, evaluator, margin, seeds
        self.refine_rounds, self.refine_window = refine_rounds, refine_window
        self.n = len(cache.gate)
        self._true_gain: np.ndarray | None = None
        self.multi_exit = EXTENSION in evaluator.routes and cache.router is not None
        self.assignments: dict[str, list[list[np.ndarray]]] = {}  # router -> per ratio, its route codes (per seed)
        self._samples: dict[bytes, np.ndarray] = {}

    @property
    def true_gain(self) -> np.ndarray:
        """(I, 2) each image's true gain from the adapted route and from the cloud (computed once, when needed)."""
        if self._true_gain is None:
            ev = self.evaluator
            self._true_gain = np.stack([ev.marginal_gains(ADAPTED), ev.marginal_gains(CLOUD)], 1)
        return self._true_gain

    def _assignment(self, router: str, ratio: float, seed: int = 0) -> np.ndarray:
        """Route code (ROUTE_CODES) of every frame for a router at an offload ratio (`ecc_yolo.policy.decide`)."""
        if router == MEANET:
            return decide(exit_logits=self.cache.router, ratio=ratio).routes
        if router.startswith("random"):  # a random order: the same random "gain" for either route
            gains = np.repeat(np.random.default_rng(seed).random(self.n)[:, None], 2, axis=1)
        else:
            gains = self.cache.gate if router.startswith("ECC") else self.true_gain
        if router in (ECC_D_PLUS, "oracle_D+"):
            return decide(gains, ratio=ratio, margin=self.margin_at(ratio) if router == ECC_D_PLUS else 0.0).routes
        target = CLOUD if router in (ECC_I, "oracle_I", "random_I") else ADAPTED
        return decide(gains, ratio=ratio, offload_to=target).routes

    def margin_at(self, ratio: float) -> float:
        """ECC_D+'s margin at an offload ratio."""
        return float(self.margin(ratio)) if callable(self.margin) else float(self.margin)

    def point(self, router: str, assignment: np.ndarray, ratio: float) -> CurvePoint:
        """Score one assignment: pycocotools mAP and mean costs per frame."""
        ap, ap50 = self.evaluator.map(self.evaluator.assignment(assignment))
        return self._with_costs(router, ratio, assignment, ap, ap50)

    def _with_costs(self, router: str, ratio: float, assignment: np.ndarray, ap: float, ap50: float) -> CurvePoint:
        c = self.cache.costs
        adapted = assignment == ROUTE_CODES[ADAPTED]
        cloud = assignment == ROUTE_CODES[CLOUD]
        extension = assignment == ROUTE_CODES[EXTENSION]
        offloaded = adapted | cloud
        sent = float(self.cache.feature_bytes[adapted].sum() + self.cache.jpeg_bytes[cloud].sum())
        device = c["edge_gflops"] + c["gate_gflops"] + adapted.mean() * c["adapter_encoder_gflops"]
        if router == MEANET:  # its router runs on every frame, its extension on the frames it stops there
            device += c["router_gflops"] + extension.mean() * c["extension_gflops"]
        cloud_gflops = adapted.mean() * c["adapted_cloud_gflops"] + cloud.mean() * c["cloud_gflops"]
        return CurvePoint(
            router=router,
            ratio=float(ratio),
            map=ap,
            map50=ap50,
            device_gflops=float(device),
            cloud_gflops=float(cloud_gflops),
            total_gflops=float(device + cloud_gflops),
            bytes_per_frame=sent / self.n,
            bytes_per_offloaded_frame=sent / offloaded.sum() if offloaded.any() else None,
            jpeg_bytes_per_offloaded_frame=float(self.cache.jpeg_bytes[offloaded].mean()) if offloaded.any() else None,
            adapted_share=float(adapted.mean()),
            cloud_share=float(cloud.mean()),
            extension_share=float(extension.mean()),
        )

    def curve(self, router: str, ratios: np.ndarray = RATIOS) -> list[CurvePoint]:
        """A router's points over offload ratios (random routers: mean mAP and costs over seeds)."""
        points, assignments = [], []
        for ratio in ratios:
            if router.startswith("random"):
                codes = [self._assignment(router, ratio, s) for s in range(self.seeds)]
                runs = [self.point(router, a, ratio) for a in codes]
                mean = {}
                for k in ("map", "map50", "device_gflops", "cloud_gflops", "total_gflops", "bytes_per_frame",
                          "bytes_per_offloaded_frame", "jpeg_bytes_per_offloaded_frame", "adapted_share",
                          "cloud_share", "extension_share"):
                    values = [getattr(p, k) for p in runs]
                    mean[k] = None if values[0] is None else float(np.mean(values))
                points.append(CurvePoint(router=router, ratio=float(ratio), **mean))
            else:
                codes = [self._assignment(router, ratio)]
                points.append(self.point(router, codes[0], ratio))
            assignments.append(codes)
        self.assignments[router] = assignments
        return points

    def _priority(self, target: str) -> np.ndarray:
        """The greedy oracle's ranking score of each frame for a target."""
        gain = self.true_gain
        return {"D": gain[:, 0], "I": gain[:, 1], "D+": gain.max(axis=1)}[target]

    def refine(self, target: str, start: np.ndarray) -> np.ndarray:
        """Local search from an oracle's assignment at one ratio: each round re-measures, in the context of the current
        mix, what reverting each of the `refine_window` least promising offloaded frames loses and what offloading
        each of the `refine_window` most promising kept frames gains (whole-set mAP50-95, `fast_map`), then tries
        swapping the best 1, 2, 4, ... pairs and keeps the best mix if it beats the current one. Never worse than
        `start`; the number of offloaded frames is unchanged."""
        ev, edge = self.evaluator, ROUTE_CODES[EDGE]
        routes = [ROUTE_CODES[r] for r in TARGETS[target]]
        priority = self._priority(target)
        codes = start.copy()
        current = ev.resampled_maps(ev.assignment(codes), np.ones(self.n, dtype=np.int64))[0, 0]
        ones = np.ones(self.n, dtype=np.int64)
        for _ in range(self.refine_rounds):
            off, kept = np.flatnonzero(codes != edge), np.flatnonzero(codes == edge)
            if not off.size or not kept.size:
                break
            off = off[np.argsort(priority[off], kind="stable")][: self.refine_window]
            kept = kept[np.argsort(-priority[kept], kind="stable")][: self.refine_window]
            variants = []
            for i in off:  # revert an offloaded frame to the edge
                v = codes.copy()
                v[i] = edge
                variants.append(v)
            for route in routes:  # offload a kept frame
                for j in kept:
                    v = codes.copy()
                    v[j] = route
                    variants.append(v)
            values = ev.resampled_maps(ev.assignment(np.stack(variants)), ones)[:, 0]
            loss = current - values[: off.size]
            gains = values[off.size:].reshape(len(routes), kept.size) - current
            best_route = np.array(routes)[gains.argmax(axis=0)]
            gain = gains.max(axis=0)
            off, loss = off[np.argsort(loss)], np.sort(loss)
            order = np.argsort(-gain)
            kept, gain, best_route = kept[order], gain[order], best_route[order]
            pairs = int(np.sum(gain[: min(off.size, kept.size)] - loss[: min(off.size, kept.size)] > 0))
            if pairs == 0:
                break
            candidates = []
            for m in sorted({min(2 ** k, pairs) for k in range(int(np.log2(pairs)) + 2)}):
                v = codes.copy()
                v[off[:m]] = edge
                v[kept[:m]] = best_route[:m]
                candidates.append(v)
            scores = ev.resampled_maps(ev.assignment(np.stack(candidates)), ones)[:, 0]
            if scores.max() <= current + 1e-12:
                break
            codes, current = candidates[int(scores.argmax())], float(scores.max())
        return codes

    def oracle_curves(self, target: str, ratios: np.ndarray = RATIOS) -> dict[str, list[CurvePoint]]:
        """The greedy, refined and best (reference) oracle curves of a target."""
        greedy_key, refined_key, best_key = oracle_keys(target)
        greedy = self.curve(greedy_key, ratios)
        refined, best, refined_codes, best_codes = [], [], [], []
        for ratio, g, (codes,) in zip(ratios, greedy, self.assignments[greedy_key]):
            better = self.refine(target, codes) if 0 < ratio < 1 else codes
            p = self.point(refined_key, better, ratio)
            if p.map < g.map:  # fast_map equals pycocotools to float precision: keep the refined never below greedy
                p, better = self._with_costs(refined_key, ratio, codes, g.map, g.map50), codes
            refined.append(p)
            refined_codes.append([better])
            winner = p if p.map >= g.map else g
            best.append(CurvePoint(**{**winner.row(), "router": best_key}))
            best_codes.append([better] if p.map >= g.map else [codes])
        self.assignments[refined_key], self.assignments[best_key] = refined_codes, best_codes
        return {greedy_key: greedy, refined_key: refined, best_key: best}

    def all_curves(self, ratios: np.ndarray = RATIOS) -> dict[str, list[CurvePoint]]:
        """Every router's curve (greedy, refined and best oracles included), plus the single-route points edge,
        ECC_A and cloud."""
        names = [ECC_D, ECC_D_PLUS, ECC_I, "random_D", "random_I"]
        curves = {name: self.curve(name, ratios) for name in names + ([MEANET] if self.multi_exit else [])}
        for target in TARGETS:
            curves.update(self.oracle_curves(target, ratios))
        for name, code, ratio in ((EDGE, EDGE, 0.0), ("ECC_A", ADAPTED, 1.0), (CLOUD, CLOUD, 1.0)):
            curves[name] = [self.point(name, np.full(self.n, ROUTE_CODES[code]), ratio)]
            self.assignments[name] = [[np.full(self.n, ROUTE_CODES[code])]]
        return curves

    def samples(self, codes: list[np.ndarray], boot: Bootstrap) -> np.ndarray:
        """(1 + B,) mAP50-95 of the mean over `codes` (route code arrays, e.g. random seeds): on all images, then on
        each bootstrap resample (cached per assignment)."""
        out = []
        for c in codes:
            key = c.tobytes()
            if key not in self._samples:
                self._samples[key] = self.evaluator.resampled_maps(self.evaluator.assignment(c),
                                                                   boot.counts_with_all)[:, 0]
            out.append(self._samples[key])
        return np.mean(out, axis=0)

    def route_samples(self, route: str, boot: Bootstrap) -> np.ndarray:
        """(1 + B,) mAP50-95 of one evaluated route on every image (`route_map`'s figure), then per resample."""
        key = ("route", route)
        if key not in self._samples:
            everywhere = np.full(self.n, self.evaluator.routes.index(route))
            self._samples[key] = self.evaluator.resampled_maps(everywhere, boot.counts_with_all)[:, 0]
        return self._samples[key]

    def curve_samples(self, router: str, boot: Bootstrap, seeds: int | None = None) -> np.ndarray:
        """(1 + B, ratios) a router's mAP50-95 curve on all images, then per resample (random: mean of the first
        `seeds` orders)."""
        return np.stack([self.samples(codes[:seeds], boot) for codes in self.assignments[router]], axis=1)


def with_intervals(points: list[CurvePoint], samples: np.ndarray, boot: Bootstrap) -> list[CurvePoint]:
    """The points with `map_lo`/`map_hi` from (1 + B, ratios) samples (`RouterSweep.curve_samples`)."""
    out = []
    for p, column in zip(points, samples.T):
        lo, hi = boot.percentile(column[1:])
        out.append(CurvePoint(**{**p.row(), "map_lo": lo, "map_hi": hi}))
    return out


def score_routers(curves: dict[str, list[CurvePoint]], sweep: RouterSweep,
                  boot: Bootstrap) -> dict[str, dict[str, Estimate]]:
    """Normalised AUC scores and gain shares, each with a paired bootstrap interval.

    For each router (ECC_D, ECC_I, ECC_D+, MEANet when present) and, for reference, each best oracle and random router:
    `normalised_score` = (AUC - AUC_random) / (AUC_best_oracle - AUC_random) with the random and oracle of its type
    (ECC_D+: the better of the two randoms), `gain_share_at_r` = (mAP(r) - edge) / (cloud - edge) at
    `GAIN_SHARE_RATIOS`, `gain_share_vs_oracle_at_r` = its gain share over its best oracle's, and
    `raw_auc_vs_oracle` (AUC / AUC_best_oracle, secondary: random routing already scores high on it). The random
    baseline is the mean of the first `SCORE_RANDOM_SEEDS` random orders. The edge, cloud, random and oracle figures
    are recomputed on each resample with the router's own, so the intervals are paired. With `boot.resamples == 0`
    the figures have no interval.
    """
    ratios = np.asarray([p.ratio for p in curves[ECC_D]])
    edge = sweep.samples(sweep.assignments[EDGE][0], boot)
    cloud = sweep.samples(sweep.assignments[CLOUD][0], boot)
    seeds = min(sweep.seeds, SCORE_RANDOM_SEEDS)
    random = {t: sweep.curve_samples(f"random_{t}", boot, seeds) for t in ("D", "I")}
    random_auc = {t: auc_of(ratios, v) for t, v in random.items()}
    better = "D" if random_auc["D"][0] >= random_auc["I"][0] else "I"
    random["D+"], random_auc["D+"] = random[better], random_auc[better]
    oracle = {t: sweep.curve_samples(oracle_keys(t)[2], boot) for t in TARGETS}
    oracle_auc = {t: auc_of(ratios, v) for t, v in oracle.items()}
    at = {r: int(np.argmin(np.abs(ratios - r))) for r in GAIN_SHARE_RATIOS}

    def estimate(values: np.ndarray) -> Estimate:  # row 0: all images; the rest: resamples
        return boot.estimate(values[0], values[1:] if len(values) > 1 else None)

    def figures(curve: np.ndarray, kind: str, scored: bool = True) -> dict[str, Estimate]:
        out = {}
        if scored:
            area = auc_of(ratios, curve)
            out["normalised_score"] = estimate(normalised_score(area, random_auc[kind], oracle_auc[kind]))
            out["raw_auc_vs_oracle"] = estimate(area / oracle_auc[kind])
        for r, i in at.items():
            share = gain_share(curve[:, i], edge, cloud)
            out[f"gain_share_at_{r:g}"] = estimate(share)
            if scored:
                out[f"gain_share_vs_oracle_at_{r:g}"] = estimate(
                    share / gain_share(oracle[kind][:, i], edge, cloud))
        return out

    scores: dict[str, dict[str, Estimate]] = {}
    for router, kind in ROUTER_TYPE.items():
        if router in curves:
            samples = sweep.curve_samples(router, boot)
            scores[router] = figures(samples, kind)
    for kind in TARGETS:
        scores[oracle_keys(kind)[2]] = figures(oracle[kind], kind, scored=False)
        scores[oracle_keys(kind)[2]]["raw_auc"] = estimate(oracle_auc[kind])
    for kind in ("D", "I"):
        scores[f"random_{kind}"] = figures(random[kind], kind)
    return scores


def auc(points: list[CurvePoint]) -> float:
    """Area under mAP50-95 versus offload ratio (trapezoids)."""
    return float(auc_of(np.array([p.ratio for p in points]), np.array([p.map for p in points])))


def first_reaching(points: list[CurvePoint], target_map: float) -> CurvePoint | None:
    """The lowest-ratio point whose mAP reaches `target_map`, or None."""
    for p in sorted(points, key=lambda p: p.ratio):
        if p.map >= target_map:
            return p
    return None
