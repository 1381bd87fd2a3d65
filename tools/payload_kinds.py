#!/usr/bin/env python
"""ECC_D+ over payload kinds (docs/BENCHMARKS.md, section 5l; issue 25, point 4): each offloaded frame goes as its
features (the adapted route) or as its letterboxed JPEG at one of several qualities, the cheapest way that gains
(`ecc_yolo.policy.cheapest_payload`), against every single-payload router on mAP vs bytes and vs cloud GFLOPs.

    python tools/payload_kinds.py --out /work/payload-kinds --record docs/benchmarks/payload_kinds.json \\
        --plot docs/images/payload_kinds.png --test-cache /work/diff26/cal24

Fitted on the validation split only (the val split of --val): the per-quality deltas (mean over images of the
cloud's per-image gain on pixels minus its gain on that JPEG, `RouteMixEvaluator.marginal_gains`) and the margin
(the tolerance rule ECC_D+'s margin had when this was measured: the largest candidate whose mAP averaged over offload
ratios 10-90%, `RULE_RATIOS`, is within `MARGIN_TOLERANCE` of the best candidate's; a second curve takes the margin by
the same rule on mAP at equal bytes per frame). Reported on the test split (the val split of --test) with 95% bootstrap intervals over
images, against ECC_D (features), ECC_I at each JPEG quality, the shipped ECC_D+ (features or the q30 JPEG, the
model's calibrated margin), random routing and the edge, on mAP vs bytes and vs cloud GFLOPs per frame. Every route's outputs are cached under --out/<split>/ (cache.npz:
`run_routes`; rate.npz: the cloud on the decoded JPEG at each quality, `rate_curve`), so a rerun only re-sweeps.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import numpy as np

QUALITIES = (10, 20, 30)
# offload ratios the tolerance rule averages mAP over (ECC_D+'s margin rule when section 5l was measured; the product
# now fits a margin per offload share, `ecc_yolo.deploy.fit_margins`)
RULE_RATIOS = tuple(np.round(np.arange(0.1, 0.91, 0.1), 2))
FEATURES = "features"
SHARE_RATIOS = (0.1, 0.2, 0.3)  # offload ratios whose mAP the table reports
SEEDS = 5  # random orders averaged in the random baselines
MIXED = "ECC_D+ over payload kinds"  # margin by the product's tolerance rule: the verdict's curve
MIXED_BYTES = "ECC_D+ over payload kinds, bytes-fitted margin"  # secondary: the same rule on mAP at equal bytes


def jpeg_route(quality: int) -> str:
    """Route name of the cloud on the decoded JPEG at `quality` (full size)."""
    return f"jpeg-q{quality}"


class Split:
    """One split: its dataset, route cache, the cloud on the JPEG at each quality, and an evaluator of all of them.

    Routes of the evaluator: edge, adapted (features), cloud (the frame's own pixels), jpeg-q<Q> per quality.
    """

    def __init__(self, model, data: str, folder: Path, imgsz: int, qualities: tuple[int, ...],
                 reuse: Path | None = None):
        from ultralytics.utils.torch_utils import select_device

        from ecc_yolo.eval.cache import cache_meta, load_cached, run_routes
        from ecc_yolo.eval.coco_eval import RouteMixEvaluator
        from ecc_yolo.eval.dataset import load_dataset
        from ecc_yolo.routes import ADAPTED, CLOUD, CLOUD_JPEG, EDGE

        folder.mkdir(parents=True, exist_ok=True)
        self.dataset = load_dataset(data, model.names)
        meta = cache_meta(model, self.dataset, imgsz)
        device = select_device("cpu", verbose=False)
        self.cache = load_cached(folder, meta)
        self.cache_source = str(folder)
        if self.cache is None and reuse is not None:
            self.cache = load_cached(reuse, meta)
            self.cache_source = str(reuse)
            if self.cache is not None:
                self.cache.save(folder)
        if self.cache is None:
            self.cache = run_routes(model, self.dataset, imgsz, 32, device)
            self.cache.save(folder)
            self.cache_source = "computed"
        self.jpeg = self._jpeg(model, folder, imgsz, qualities, meta, device)  # quality -> (detections, bytes)
        routes = {r: self.cache.detections[r] for r in (EDGE, ADAPTED, CLOUD)}
        routes.update({jpeg_route(q): dets for q, (dets, _) in self.jpeg.items()})
        if CLOUD_JPEG in self.cache.detections:  # the benchmark's own q30 answers, to check the two agree
            routes[CLOUD_JPEG] = self.cache.detections[CLOUD_JPEG]
        self.evaluator = RouteMixEvaluator(self.dataset, routes)
        self.n = len(self.dataset)

    def _jpeg(self, model, folder: Path, imgsz: int, qualities: tuple[int, ...], meta: dict,
              device) -> dict[int, tuple[list[np.ndarray], np.ndarray]]:
        """The cloud on the decoded full-size JPEG at each quality (`rate_curve`), cached in rate.npz/rate.json."""
        from ecc_yolo.eval.rate import rate_curve

        info = {"model": meta["model"], "dataset": meta["dataset"], "imgsz": imgsz, "qualities": list(qualities),
                "nms": meta["nms"]}
        npz, js = folder / "rate.npz", folder / "rate.json"
        if npz.is_file() and js.is_file() and json.loads(js.read_text()) == info:
            with np.load(npz) as z:
                return {q: (np.split(z[f"q{q}_dets"], np.cumsum(z[f"q{q}_counts"])[:-1]), z[f"q{q}_bytes"])
                        for q in qualities}
        points = rate_curve(model, self.dataset, imgsz, device, 32, qualities=qualities, scales=(1.0,),
                            codecs=("jpeg",))
        out = {p.quality: (p.detections, p.bytes_per_image) for p in points}
        arrays = {}
        for q, (dets, sizes) in out.items():
            arrays[f"q{q}_counts"] = np.array([len(d) for d in dets], dtype=np.int64)
            arrays[f"q{q}_dets"] = np.concatenate(dets) if dets else np.zeros((0, 6), np.float32)
            arrays[f"q{q}_bytes"] = sizes
        np.savez_compressed(npz, **arrays)
        js.write_text(json.dumps(info))
        return out

    def index(self, route: str) -> int:
        """The evaluator's index of a route."""
        return self.evaluator.routes.index(route)


class Sweep:
    """Curves over offload ratios on one split: per point the route of every frame (evaluator indices), mAP (with
    bootstrap samples when `boot` is given), mean bytes and cloud GFLOPs per frame, and the share of each route."""

    def __init__(self, split: Split, qualities: tuple[int, ...], boot=None):
        from ecc_yolo.routes import ADAPTED, EDGE

        self.split, self.boot = split, boot
        cache, n = split.cache, split.n
        self.kind_routes = [ADAPTED, *(jpeg_route(q) for q in qualities)]  # cheapest_payload's kinds, in order
        self.kind_bytes = np.column_stack([cache.feature_bytes, *(split.jpeg[q][1] for q in qualities)])
        routes = split.evaluator.routes
        self.bytes_of = np.zeros((len(routes), n))  # (routes, frames): bytes sent when that route answers
        self.gflops_of = np.zeros(len(routes))  # cloud GFLOPs per frame that route answers
        for route, sizes in zip(self.kind_routes, self.kind_bytes.T):
            self.bytes_of[split.index(route)] = sizes
            self.gflops_of[split.index(route)] = cache.costs["cloud_gflops"]
        self.gflops_of[split.index(ADAPTED)] = cache.costs["adapted_cloud_gflops"]
        self.edge = split.index(EDGE)
        self._samples: dict[bytes, np.ndarray] = {}

    def assign(self, offloaded: np.ndarray, routes: np.ndarray | int) -> np.ndarray:
        """Evaluator route index per frame: `routes` for the offloaded frames, the edge for the rest."""
        return np.where(offloaded, routes, self.edge).astype(np.int64)

    def samples(self, assignment: np.ndarray) -> np.ndarray:
        """(1 + B,) mAP50-95 on all images, then on each resample (B = 0 without a bootstrap); cached."""
        key = assignment.tobytes()
        if key not in self._samples:
            counts = np.ones((1, self.split.n), dtype=np.int64)
            if self.boot is not None:
                counts = np.vstack([counts, self.boot.counts])
            self._samples[key] = self.split.evaluator.resampled_maps(assignment, counts)[:, 0]
        return self._samples[key]

    def curve(self, name: str, assignments: list[list[np.ndarray]], ratios: np.ndarray) -> dict:
        """A curve from per-ratio assignments (several: random seeds, whose mean is taken and left without
        interval)."""
        n, routes = self.split.n, self.split.evaluator.routes
        maps, lo, hi, bytes_pf, gflops_pf, shares, samples = [], [], [], [], [], [], []
        for codes in assignments:
            s = np.mean([self.samples(c) for c in codes], axis=0)
            maps.append(float(s[0]))
            ci = self.boot.percentile(s[1:]) if self.boot is not None and len(codes) == 1 else (None, None)
            lo.append(ci[0])
            hi.append(ci[1])
            samples.append(s if len(codes) == 1 else None)
            bytes_pf.append(float(np.mean([self.bytes_of[c, np.arange(n)].mean() for c in codes])))
            gflops_pf.append(float(np.mean([self.gflops_of[c].mean() for c in codes])))
            shares.append({r: float(np.mean([np.mean(c == i) for c in codes])) for i, r in enumerate(routes)
                           if any((c == i).any() for c in codes)})
        return {"name": name, "ratio": [float(r) for r in ratios], "map": maps, "map_lo": lo, "map_hi": hi,
                "bytes_per_frame": bytes_pf, "cloud_gflops_per_frame": gflops_pf, "route_shares": shares,
                "_samples": None if any(s is None for s in samples) else np.stack(samples, axis=1)}


def build_curves(sweep: Sweep, gate: np.ndarray, deltas: np.ndarray, mixed: dict[str, float], shipped_margin: float,
                 qualities: tuple[int, ...], shipped_quality: int, ratios: np.ndarray,
                 randoms: bool = True) -> dict[str, dict]:
    """Every curve of the comparison on one split (see the module docstring); `mixed`: name -> margin of each
    ECC_D+ over payload kinds."""
    from ecc_yolo.policy import cheapest_payload, decide, top_share_mask
    from ecc_yolo.routes import ADAPTED, CLOUD, ROUTE_CODES

    split = sweep.split
    adapted = split.index(ADAPTED)
    curves = {}

    def at_ratios(name: str, scores: np.ndarray, routes: np.ndarray | int) -> None:
        curves[name] = sweep.curve(name, [[sweep.assign(top_share_mask(scores, r), routes)] for r in ratios], ratios)

    at_ratios("ECC_D (features)", gate[:, 0], adapted)
    for q in qualities:
        at_ratios(f"ECC_I (JPEG q{q})", gate[:, 1], split.index(jpeg_route(q)))
    for name, margin in mixed.items():
        kind, score = cheapest_payload(gate, deltas, sweep.kind_bytes, margin)
        at_ratios(name, score, np.array([split.index(r) for r in sweep.kind_routes])[kind])
    to_index = {ROUTE_CODES[ADAPTED]: adapted, ROUTE_CODES[CLOUD]: split.index(jpeg_route(shipped_quality))}
    shipped = []
    for r in ratios:
        codes = decide(gate, ratio=r, margin=shipped_margin).routes
        shipped.append([np.array([to_index.get(int(c), sweep.edge) for c in codes], dtype=np.int64)])
    curves[f"ECC_D+ shipped (features or q{shipped_quality})"] = sweep.curve("ECC_D+ shipped", shipped, ratios)
    if randoms:
        orders = [np.random.default_rng(seed).random(split.n) for seed in range(SEEDS)]
        for name, route in (("random (features)", adapted),
                            (f"random (JPEG q{shipped_quality})", split.index(jpeg_route(shipped_quality)))):
            curves[name] = sweep.curve(name, [[sweep.assign(top_share_mask(o, r), route) for o in orders]
                                              for r in ratios], ratios)
    return curves


def margin_candidates(gate: np.ndarray, deltas: np.ndarray) -> list[float]:
    """0 (the best predicted kind), quantiles (`MARGIN_QUANTILES`) of how far each frame's other kinds are predicted
    below its best, and one above every such gap (always the smallest payload)."""
    from ecc_yolo.deploy import MARGIN_QUANTILES

    predicted = np.column_stack([gate[:, 0], gate[:, 1:2] - deltas[None]])
    gaps = (predicted.max(axis=1, keepdims=True) - predicted).ravel()
    gaps = gaps[gaps > 0]
    values = {0.0, float(np.nextafter(gaps.max(), np.inf)) if gaps.size else 0.0}
    values |= {float(np.quantile(gaps, q)) for q in MARGIN_QUANTILES} if gaps.size else set()
    return sorted(values)


def fit_kind_margin(sweep: Sweep, gate: np.ndarray, deltas: np.ndarray, ratios: np.ndarray
                    ) -> tuple[dict[str, float], list[dict]]:
    """The margin, on the validation split, by two objectives, each with the product's tolerance rule
    (ECC_D+'s when section 5l was measured): of `margin_candidates`, the largest whose figure is within
    `MARGIN_TOLERANCE` of the best candidate's.

    - "tolerance" (the product's): mAP averaged over offload ratios `RULE_RATIOS` (mAP at equal offload ratio);
    - "bytes": mAP averaged over an even grid of bytes per frame from 0 to the smallest of the candidates' largest
      (each curve over `ratios` interpolated linearly: mAP at equal bytes).

    Returns the two margins and, per candidate, both figures, the mean bytes and cloud GFLOPs per frame over
    `RULE_RATIOS` and the share of each kind among the frames (where an offloaded frame would go)."""
    from ecc_yolo.deploy import MARGIN_TOLERANCE
    from ecc_yolo.policy import cheapest_payload, top_share_mask

    n = sweep.split.n
    kind_index = np.array([sweep.split.index(r) for r in sweep.kind_routes])
    table, by_bytes = [], []
    for m in margin_candidates(gate, deltas):
        kind, score = cheapest_payload(gate, deltas, sweep.kind_bytes, m)
        codes = [sweep.assign(top_share_mask(score, r), kind_index[kind]) for r in RULE_RATIOS]
        full = [sweep.assign(top_share_mask(score, r), kind_index[kind]) for r in ratios]
        by_bytes.append((np.array([sweep.bytes_of[c, np.arange(n)].mean() for c in full]),
                         np.array([sweep.samples(c)[0] for c in full])))
        table.append({"margin": m, "mean_map": float(np.mean([sweep.samples(c)[0] for c in codes])),
                      "mean_bytes_per_frame": float(np.mean([sweep.bytes_of[c, np.arange(n)].mean() for c in codes])),
                      "mean_cloud_gflops_per_frame": float(np.mean([sweep.gflops_of[c].mean() for c in codes])),
                      "kind_share": {r: float(np.mean(kind == k)) for k, r in enumerate(sweep.kind_routes)}})
    grid = np.linspace(0.0, min(x.max() for x, _ in by_bytes), 101)
    for row, (x, y) in zip(table, by_bytes):
        row["mean_map_over_bytes"] = float(np.interp(grid, x, y).mean())
    margins = {}
    for rule, key in (("tolerance", "mean_map"), ("bytes", "mean_map_over_bytes")):
        best = max(t[key] for t in table)
        margins[rule] = max(t["margin"] for t in table if t[key] >= best - MARGIN_TOLERANCE)
    return margins, table


def on_or_above(mixed: dict, single: dict, axis: str, boot) -> dict:
    """Is the mixed curve on or above a single-payload curve on `axis` ("bytes_per_frame" or
    "cloud_gflops_per_frame")? For each single point past ratio 0 (shared by every curve: the edge) whose x lies in
    the mixed curve's x range, the mixed mAP interpolated linearly at that x (its neighbouring points) against the
    point's interval (pass: >= its lower bound), and the paired bootstrap difference mixed(x) - single (the same
    resamples, the interpolation weights fixed by the full-data x): below / above when its interval excludes 0.
    Points beyond the mixed curve's largest x are reported apart, against its last point (it reaches that mAP with
    less)."""
    from ecc_yolo.eval.benchmark import equal_compute_weights

    xm = np.asarray(mixed[axis])
    order = np.argsort(xm, kind="stable")
    xm, sm = xm[order], mixed["_samples"][:, order]
    rows = []
    for k in range(1, len(single["ratio"])):
        x = single[axis][k]
        w = equal_compute_weights(np.array([x]), xm)[:, 0]
        at = sm @ w
        diff = at - single["_samples"][:, k]
        lo, hi = boot.percentile(diff[1:])
        rows.append({"ratio": single["ratio"][k], "x": x, "single_map": single["map"][k],
                     "single_lo": single["map_lo"][k], "single_hi": single["map_hi"][k],
                     "mixed_map_at_x": float(at[0]), "in_range": bool(x <= xm.max() + 1e-9),
                     "passes": bool(at[0] >= single["map_lo"][k]), "difference": float(diff[0]),
                     "difference_lo": lo, "difference_hi": hi,
                     "paired": "below" if hi < 0 else "above" if lo > 0 else "within"})
    inside = [r for r in rows if r["in_range"]]
    beyond = [r for r in rows if not r["in_range"]]
    return {"points_in_range": len(inside), "pass": sum(r["passes"] for r in inside),
            "fail": sum(not r["passes"] for r in inside),
            "paired_below": sum(r["paired"] == "below" for r in inside),
            "paired_above": sum(r["paired"] == "above" for r in inside),
            "beyond_range": len(beyond), "beyond_range_pass_vs_last_point": sum(r["passes"] for r in beyond),
            "points": {k: [r[k] for r in rows] for k in rows[0]} if rows else {}}  # one list per field


def figures(curve: dict, boot) -> dict:
    """Area under mAP vs ratio, mean mAP over the sweep, mAP at `SHARE_RATIOS` (with intervals), costs at 30%."""
    from ecc_yolo.eval.stats import auc

    ratios, maps = np.array(curve["ratio"]), np.array(curve["map"])
    out = {"auc": float(auc(ratios, maps)), "mean_map": float(maps.mean())}
    samples = curve["_samples"]
    if samples is not None and boot is not None:
        area = auc(ratios, samples)
        out["auc"] = boot.estimate(area[0], area[1:]).as_dict()
        mean = samples.mean(axis=1)
        out["mean_map"] = boot.estimate(mean[0], mean[1:]).as_dict()
    for r in SHARE_RATIOS:
        k = int(np.argmin(np.abs(ratios - r)))
        ci = None if curve["map_lo"][k] is None else [curve["map_lo"][k], curve["map_hi"][k]]
        out[f"map_at_{r:g}"] = {"value": curve["map"][k], "ci": ci}
    k = int(np.argmin(np.abs(ratios - 0.3)))
    out["bytes_per_frame_at_0.3"] = curve["bytes_per_frame"][k]
    out["cloud_gflops_per_frame_at_0.3"] = curve["cloud_gflops_per_frame"][k]
    return out


def plot(curves: dict[str, dict], mixed: list[str], singles: list[str], edge_map: float, title: str,
         path: Path) -> None:
    """Two panels: mAP vs KB per frame and vs cloud GFLOPs per frame; bands: 95% intervals of the mixed (first) and
    the single-payload curves."""
    import matplotlib

    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt

    colours = dict(zip(singles, ("tab:blue", "tab:orange", "tab:red", "tab:brown", "tab:pink")))
    styles = {mixed[0]: ("tab:purple", "-", 2.6)}
    styles.update({name: ("tab:purple", ":", 2.0) for name in mixed[1:]})
    styles.update({name: (colours[name], "-", 1.4) for name in singles})
    others = [k for k in curves if k not in styles]
    styles.update({name: (c, "--", 1.0) for name, c in zip(others, ("tab:green", "tab:grey", "tab:olive"))})
    fig, axes = plt.subplots(1, 2, figsize=(13, 5.2), dpi=120)
    for ax, (axis, label, scale) in zip(axes, (("bytes_per_frame", "mean KB sent per frame", 1000),
                                               ("cloud_gflops_per_frame", "mean cloud GFLOPs per frame", 1))):
        for name, (colour, style, width) in styles.items():
            c = curves[name]
            x = np.array(c[axis]) / scale
            same = [s for s in singles if name in mixed and curves[s]["map"] == c["map"]
                    and curves[s]["bytes_per_frame"] == c["bytes_per_frame"]]
            legend = name + (f" (= {same[0]})" if same else "")
            ax.plot(x, c["map"], style, color=colour, linewidth=width, label=legend, marker="o" if name in mixed
                    else None, markersize=3, zorder=5 if name in mixed else 2)
            if c["map_lo"][0] is not None and style == "-":
                ax.fill_between(x, c["map_lo"], c["map_hi"], color=colour, alpha=0.12, linewidth=0)
        ax.axhline(edge_map, color="black", linewidth=0.8, linestyle=":", label=f"edge only ({edge_map:.3f})")
        ax.set_xlabel(label)
        ax.set_ylabel("mAP50-95")
        ax.grid(alpha=0.3)
    axes[1].legend(fontsize=7, loc="lower right")
    fig.suptitle(title)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)


def rounded(value, digits: int = 5):
    """`value` with every float rounded to `digits` decimals (a smaller record)."""
    if isinstance(value, float):
        return round(value, digits)
    if isinstance(value, dict):
        return {k: rounded(v, digits) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [rounded(v, digits) for v in value]
    return value


def public(curve: dict) -> dict:
    """A curve without its bootstrap samples (for JSON)."""
    return {k: v for k, v in curve.items() if not k.startswith("_")}


def main(argv: list[str] | None = None) -> dict:
    """Fit on validation, sweep on test, check, write the record and the plot."""
    os.environ.setdefault("YOLO_OFFLINE", "1")
    from scipy.stats import spearmanr

    from ecc_yolo.checkpoint import load_ecc
    from ecc_yolo.deploy import MARGIN_TOLERANCE, model_settings
    from ecc_yolo.eval.routers import RATIOS
    from ecc_yolo.eval.stats import Bootstrap
    from ecc_yolo.payload.codec import JPEG_QUALITY
    from ecc_yolo.routes import ADAPTED, CLOUD, CLOUD_JPEG, EDGE

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="ecc-synth2-q-n-160")
    p.add_argument("--val", default="/work/zoo2-run/data/data.yaml", help="data YAML whose val split fits the rule")
    p.add_argument("--test", default="/work/zoo2-run/test/data.yaml", help="data YAML whose val split reports it")
    p.add_argument("--out", required=True, help="folder for the cached route outputs (val/, test/)")
    p.add_argument("--test-cache", default=None, help="a benchmark run folder whose cache.npz of the test split to "
                   "reuse when it matches (model, data, imgsz)")
    p.add_argument("--qualities", type=int, nargs="+", default=list(QUALITIES))
    p.add_argument("--bootstrap", type=int, default=1000)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--record", default=None, help="JSON result file")
    p.add_argument("--plot", default="docs/images/payload_kinds.png")
    opt = p.parse_args(argv)
    start = time.time()
    qualities = tuple(sorted(opt.qualities))
    if JPEG_QUALITY not in qualities:
        raise SystemExit(f"--qualities must include the shipped JPEG quality {JPEG_QUALITY}")
    model, _ = load_ecc(opt.model)
    deploy = model_settings(model)
    imgsz, out = deploy.imgsz, Path(opt.out)

    # validation: deltas and margin
    val = Split(model, opt.val, out / "val", imgsz, qualities)
    cloud_gain = val.evaluator.marginal_gains(CLOUD)
    losses = [cloud_gain - val.evaluator.marginal_gains(jpeg_route(q)) for q in qualities]  # per image
    deltas = np.array([float(np.mean(loss)) for loss in losses])
    val_sweep = Sweep(val, qualities)
    per_frame = {}  # could a device predict each frame's loss from what it knows? (Spearman correlations)
    for j, (q, loss) in enumerate(zip(qualities, losses)):
        cues = {"jpeg_bytes": val_sweep.kind_bytes[:, 1 + j], "gate_cloud_gain": val.cache.gate[:, 1],
                f"bytes_over_q{qualities[-1]}": val_sweep.kind_bytes[:, 1 + j] / val_sweep.kind_bytes[:, -1]}
        per_frame[str(q)] = {"sd": float(np.std(loss)), "share_positive": float(np.mean(loss > 0)),
                             "spearman": {k: float(spearmanr(loss, v)[0]) if np.ptp(v) > 0 else None
                                          for k, v in cues.items()}}
    margins, candidates = fit_kind_margin(val_sweep, val.cache.gate, deltas, RATIOS)
    mixed = {MIXED: margins["tolerance"], MIXED_BYTES: margins["bytes"]}
    print(f"validation: deltas {dict(zip(qualities, deltas.round(4)))}, margins {margins}")
    for c in candidates:
        print(f"  margin {c['margin']:.4f}: mean mAP {c['mean_map']:.4f} (over bytes {c['mean_map_over_bytes']:.4f}), "
              f"bytes/frame {c['mean_bytes_per_frame']:.0f}, kinds {({k: round(v, 3) for k, v in c['kind_share'].items()})}")
    val_curves = build_curves(val_sweep, val.cache.gate, deltas, mixed, deploy.margin, qualities, JPEG_QUALITY,
                              RATIOS, randoms=False)

    # test: report only
    test = Split(model, opt.test, out / "test", imgsz, qualities, Path(opt.test_cache) if opt.test_cache else None)
    boot = Bootstrap(test.n, opt.bootstrap, opt.seed)
    sweep = Sweep(test, qualities, boot)
    curves = build_curves(sweep, test.cache.gate, deltas, mixed, deploy.margin, qualities, JPEG_QUALITY, RATIOS)
    singles = ["ECC_D (features)", *(f"ECC_I (JPEG q{q})" for q in qualities)]
    axes = ("bytes_per_frame", "cloud_gflops_per_frame")
    keys = ("points_in_range", "pass", "fail", "paired_below", "paired_above", "beyond_range",
            "beyond_range_pass_vs_last_point")
    checks, totals = {}, {}
    for name in mixed:
        checks[name] = {axis: {s: on_or_above(curves[name], curves[s], axis, boot) for s in singles} for axis in axes}
        totals[name] = {axis: {k: sum(c[k] for c in per.values()) for k in keys} for axis, per in checks[name].items()}
    routes = {}
    for r in test.evaluator.routes:
        s = sweep.samples(np.full(test.n, test.index(r)))
        routes[r] = {"map": boot.estimate(s[0], s[1:]).as_dict()}
    for r, sizes in ((ADAPTED, test.cache.feature_bytes), *((jpeg_route(q), test.jpeg[q][1]) for q in qualities)):
        routes[r]["mean_bytes"] = float(np.mean(sizes))

    def device_facts(split: Split, kind_bytes: np.ndarray) -> dict:  # why the rule can or cannot mix kinds
        g = split.cache.gate
        return {"gate_adapted_above_cloud_minus_delta": {str(q): float(np.mean(g[:, 0] > g[:, 1] - d))
                                                         for q, d in zip(qualities, deltas)},
                "features_smaller_than_jpeg": {str(q): float(np.mean(kind_bytes[:, 0] < kind_bytes[:, 1 + j]))
                                               for j, q in enumerate(qualities)},
                "jpeg_bytes_grow_with_quality": float(np.mean(np.all(np.diff(kind_bytes[:, 1:], axis=1) > 0, 1)))}

    record = {
        "model": opt.model, "val_data": opt.val, "test_data": opt.test, "imgsz": imgsz, "qualities": list(qualities),
        "shipped_jpeg_quality": JPEG_QUALITY, "ratios": [float(r) for r in RATIOS],
        "rule": "offload score = max over kinds of predicted gain (features: gate adapted gain; JPEG q: gate cloud "
                "gain - delta_q); top-ratio share offloaded; an offloaded frame goes as the kind with the fewest bytes "
                "among those predicted within `margin` of its best (ecc_yolo.policy.cheapest_payload)",
        "mixed_curves": {MIXED: "margin by the product's tolerance rule (mAP at equal offload ratio): the verdict",
                         MIXED_BYTES: "margin by the same rule on mAP at equal bytes per frame (secondary)"},
        "validation": {
            "images": val.n, "deltas": dict(zip(map(str, qualities), deltas.tolist())),
            "delta_definition": "mean over validation images of marginal_gains(cloud) - marginal_gains(jpeg-q)",
            "per_frame_loss": per_frame,
            "margins": margins,
            "margin_rules": {"tolerance": f"largest candidate with mean mAP over ratios {list(RULE_RATIOS)} within "
                                          f"MARGIN_TOLERANCE={MARGIN_TOLERANCE} of the best candidate's",
                             "bytes": "largest candidate with mean mAP over an even grid of bytes per frame (0 to the "
                                      f"smallest of the candidates' largest) within {MARGIN_TOLERANCE} of the best"},
            "margin_candidates": candidates, "shipped_ecc_d_plus_margin": deploy.margin,
            "device_facts": device_facts(val, val_sweep.kind_bytes),
            "curves": {k: public(c) for k, c in val_curves.items()},
            "route_map": {r: val.evaluator.route_map(r)[0] for r in val.evaluator.routes},
        },
        "test": {
            "images": test.n, "cache": test.cache_source,
            "bootstrap": {"resamples": opt.bootstrap, "seed": opt.seed, "level": 0.95},
            "costs": {k: test.cache.costs[k] for k in ("cloud_gflops", "adapted_cloud_gflops", "edge_gflops")},
            "routes": routes,
            "q30_rate_curve_vs_benchmark_cloud_jpeg": {
                "rate_curve": routes[jpeg_route(JPEG_QUALITY)]["map"]["value"],
                "benchmark": routes[CLOUD_JPEG]["map"]["value"] if CLOUD_JPEG in routes else None},
            "edge_map": routes[EDGE]["map"]["value"],
            "device_facts": device_facts(test, sweep.kind_bytes),
            "curves": {k: public(c) for k, c in curves.items()},
            "figures": {k: figures(c, boot) for k, c in curves.items()},
            "on_or_above": checks, "on_or_above_totals": totals,
            "kind_shares": {name: {r: [s.get(r, 0.0) for s in curves[name]["route_shares"]]
                                   for r in (EDGE, *sweep.kind_routes)} for name in mixed},
        },
        "seconds": round(time.time() - start, 1),
    }
    for name, per in totals.items():
        for axis, t in per.items():
            print(f"{name}, {axis}: {t}")
    title = (f"{opt.model}, test split ({test.n} images): ECC_D+ over payload kinds vs single payloads "
             "(bands: 95% bootstrap)")
    plot(curves, list(mixed), singles, record["test"]["edge_map"], title, Path(opt.plot))
    text = json.dumps(rounded(record), indent=None, separators=(",", ":"))
    if opt.record:
        Path(opt.record).parent.mkdir(parents=True, exist_ok=True)
        Path(opt.record).write_text(text + "\n")
    (out / "payload_kinds.json").write_text(text + "\n")
    print(f"written in {record['seconds']:.0f} s")
    return record


if __name__ == "__main__":
    main()
