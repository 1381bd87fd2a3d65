#!/usr/bin/env python
"""Router variants on the shipped zoo (docs/BENCHMARKS.md, section 5j): gain predictors fitted on the validation
split's true per-frame gains, scored on the untouched test split with the benchmark's normalised score (0 = random
routing, 1 = the reference oracle) and gain share at 20% offload, each with a 95% bootstrap interval.

    python tools/router_variants.py --model ecc-synth2-q-n-160 --val runs/zoo/ecc-synth2-q-n-160/data/data.yaml \\
        --test runs/zoo/ecc-synth2-q-n-160/test/data.yaml --out runs/router_variants \\
        --record docs/benchmarks/router_variants.json

Variants: the model's own gate (trained by stage=gate); ridge and MLP regressors on the edge output cues
(`ecc_yolo.eval.cues`: confidences, ambiguity, half-seen and small boxes); the same on the gate's outputs, the exit
router's logits and the cues together. MLPs are fitted at three seeds. ECC_D+'s margin is fitted on the validation
split for each variant, one per offload ratio (`ecc_yolo.deploy.fit_margins`). The routes' outputs are cached in
--out (val/, test/).
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import numpy as np

SEEDS = (0, 1, 2)
SCORED = ("ECC_D", "ECC_I", "ECC_D+")


def main(argv: list[str] | None = None) -> None:
    """Fit, score and write the variants table."""
    from ultralytics.utils.torch_utils import select_device

    from ecc_yolo.checkpoint import load_ecc
    from ecc_yolo.deploy import MARGIN_RESAMPLES, MARGIN_SEED, DeploySettings, fit_margins, model_settings
    from ecc_yolo.eval.cache import cached_routes
    from ecc_yolo.eval.coco_eval import RouteMixEvaluator
    from ecc_yolo.eval.cues import edge_output_cues, fit_gain_model
    from ecc_yolo.eval.dataset import load_dataset
    from ecc_yolo.eval.routers import RATIOS, RouterSweep, score_routers
    from ecc_yolo.eval.stats import Bootstrap
    from ecc_yolo.policy import decide
    from ecc_yolo.routes import ADAPTED, ANSWERED_AS, CLOUD, EDGE, ROUTE_CODES

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True)
    p.add_argument("--val", required=True, help="data YAML whose validation split fits the variants")
    p.add_argument("--test", required=True, help="data YAML whose validation split scores them (the test split)")
    p.add_argument("--out", required=True)
    p.add_argument("--bootstrap", type=int, default=500)
    p.add_argument("--record", default=None)
    p.add_argument("--mlp-seeds", type=int, nargs="*", default=list(SEEDS),
                   help="seeds of the MLP variants (none: ridge only; each variant fits its margins, minutes on CPU)")
    p.add_argument("--gain-chunk", type=int, default=None,
                   help="fit to true gains measured within groups of this many fitting images (default: the whole "
                        "split; an image's isolated gain grows with the split's size, docs/BENCHMARKS.md 5j)")
    opt = p.parse_args(argv)
    os.environ.setdefault("YOLO_OFFLINE", "1")
    start = time.time()
    model, _ = load_ecc(opt.model)
    imgsz = model_settings(model).imgsz
    out = Path(opt.out)

    def split(data: str, name: str):
        dataset = load_dataset(data, model.names)
        cache = cached_routes(model, dataset, imgsz, 32, select_device("cpu", verbose=False), out / name)
        shapes = {img["id"]: (img["height"], img["width"]) for img in dataset.coco["images"]}
        cues = edge_output_cues(cache.detections[EDGE], [shapes[i] for i in dataset.image_ids])
        inputs = {"cues": cues, "gate+cues": np.hstack([cache.gate, *([cache.router] if cache.router is not None
                                                                       else []), cues])}
        return dataset, cache, RouteMixEvaluator(dataset, cache.detections, answered_as=ANSWERED_AS), inputs

    _, val_cache, val_ev, val_x = split(opt.val, "val")
    test_set, test_cache, test_ev, test_x = split(opt.test, "test")
    val_gain = (RouterSweep(val_cache, val_ev).true_gain if opt.gain_chunk is None else
                np.stack([val_ev.marginal_gains(route, chunk=opt.gain_chunk) for route in (ADAPTED, CLOUD)], 1))
    shipped_test_gate, shipped_val_gate = test_cache.gate.copy(), val_cache.gate.copy()
    variants = {"gate (stage=gate)": (shipped_val_gate, shipped_test_gate)}
    for inputs in ("cues", "gate+cues"):
        model_fit = fit_gain_model(val_x[inputs], val_gain, "ridge", alpha=10.0)
        variants[f"{inputs} ridge"] = (model_fit.predict(val_x[inputs]), model_fit.predict(test_x[inputs]))
        for seed in opt.mlp_seeds:
            model_fit = fit_gain_model(val_x[inputs], val_gain, "mlp", seed=seed)
            variants[f"{inputs} mlp seed {seed}"] = (model_fit.predict(val_x[inputs]),
                                                     model_fit.predict(test_x[inputs]))

    sweep = RouterSweep(test_cache, test_ev)
    curves = sweep.all_curves(RATIOS)  # oracles and random once; the ECC routers are re-swept per variant below
    boot = Bootstrap(len(test_set), opt.bootstrap, 0)
    rows = []
    for name, (val_pred, test_pred) in variants.items():
        margins = fit_margins(val_pred, val_ev.bootstrap_maps(MARGIN_RESAMPLES, MARGIN_SEED))
        sweep.margin = DeploySettings(margins=margins).margin_at
        test_cache.gate = np.asarray(test_pred, dtype=np.float64)
        for router in SCORED:
            curves[router] = sweep.curve(router, RATIOS)
        scores = score_routers(curves, sweep, boot)
        row = {"variant": name, "ecc_d_plus_margins": margins}
        for router in SCORED:
            row[router] = {k: scores[router][k].as_dict() for k in
                           ("normalised_score", "gain_share_at_0.2", "gain_share_vs_oracle_at_0.2")}
            jpeg_share = [float(np.mean(decide(test_cache.gate, ratio=r, margin=sweep.margin_at(r)).routes
                                          == ROUTE_CODES[CLOUD]))
                          for r in RATIOS] if router == "ECC_D+" else None
            if jpeg_share is not None:
                row[router]["jpeg_share_by_ratio"] = jpeg_share
        rows.append(row)
        print(f"[variants] {name}: " + ", ".join(f"{r} {row[r]['normalised_score']['value']:.3f}" for r in SCORED))
    oracle = {k: scores[k]["gain_share_at_0.2"].as_dict() for k in scores if k.startswith("best_oracle")}
    result = {"model": str(opt.model), "val": opt.val, "test": opt.test, "gain_chunk": opt.gain_chunk,
              "images": {"val": len(val_cache.gate), "test": len(test_set)}, "bootstrap": opt.bootstrap,
              "oracle_gain_share_at_0.2": oracle,
              "variants": rows, "seconds": round(time.time() - start, 1)}
    (out / "router_variants.json").write_text(json.dumps(result, indent=1))
    if opt.record:
        Path(opt.record).write_text(json.dumps(result, indent=1))
    print(json.dumps(oracle))


if __name__ == "__main__":
    main()
