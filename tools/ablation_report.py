#!/usr/bin/env python
"""The ablation table and the training-seed spread of one zoo run, from the `ecc-yolo val` folders that
tools/ablate_zoo.py wrote, against the zoo run's own test-split benchmark (runs/test_val).

    python tools/ablation_report.py --zoo /work/zoo2-run --ablate /work/abl-run --out docs/benchmarks/ablations.json

Ablations (edge-plain, adapt-frozen-tail): the route the variant changes, scored for both models on the same test
images, and the paired difference with a bootstrap interval over images (`ecc_yolo.eval.compare`).
Seed repeats: the zoo's figure (training seed 0) and each repeat's, as mean and sample standard deviation over the
seeds that exist. Variants not trained yet are listed as missing, not left out silently.
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

# variant -> (route whose mAP it changes, what the comparison isolates)
ABLATIONS = {
    "edge-plain": ("edge", "edge trained without distillation from the cloud (reference: distilled)"),
    "adapt-frozen-tail": ("adapted", "adapted route with the cloud tail frozen (reference: trainable copy)"),
    # not trained by tools/ablate_zoo.py: `ecc-yolo val` of the zoo v2 asset shipped before 89465f4, whose tail copy
    # started from the cloud's initial weights; same edge and cloud, adapt/extension/gate trained from seed 0
    "adapt-init-tail": ("adapted", ("adapted route whose tail copy started from the cloud's initial weights "
                                    "(reference: from the trained cloud tail)")),
}
# stage repeated -> (variants, figures of summary.json whose spread is reported)
SEED_REPEATS = {
    "adapt": (("adapt-seed1", "adapt-seed2"), ("adapted_map",)),
    "gate": (("gate-seed1", "gate-seed2"), ("ecc_d_normalised_score", "ecc_i_normalised_score",
                                            "ecc_d_gain_share_at_0.2", "ecc_i_gain_share_at_0.2")),
}


def _value(summary: dict, key: str) -> float:
    v = summary[key]
    return float(v["value"] if isinstance(v, dict) else v)


def main(argv: list[str] | None = None) -> dict:
    """Write the report (JSON) and print it as Markdown tables."""
    from ecc_yolo.checkpoint import load_ecc
    from ecc_yolo.eval.cache import RouteCache
    from ecc_yolo.eval.compare import paired_route_difference
    from ecc_yolo.eval.dataset import load_dataset
    from ecc_yolo.eval.stats import Bootstrap

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--zoo", required=True, help="output folder of a tools/train_zoo.py run")
    p.add_argument("--ablate", required=True, help="output folder of tools/ablate_zoo.py on that run")
    p.add_argument("--out", required=True, help="JSON file to write")
    p.add_argument("--resamples", type=int, default=1000, help="bootstrap resamples over test images")
    opt = p.parse_args(argv)
    zoo, ablate = Path(opt.zoo), Path(opt.ablate)
    reference_dir = zoo / "runs" / "test_val"
    reference = RouteCache.load(reference_dir)
    names = load_ecc(zoo / "runs" / "gate" / "weights" / "best.pt")[0].names
    dataset = load_dataset(zoo / "test" / "data.yaml", names)
    boot = Bootstrap(len(dataset), opt.resamples, seed=0)
    report: dict = {"test_images": len(dataset), "resamples": opt.resamples, "reference": str(reference_dir),
                    "ablations": {}, "seed_spread": {}, "missing": []}

    for name, (route, what) in ABLATIONS.items():
        folder = ablate / "val" / name
        if not (folder / "cache.npz").is_file():
            report["missing"].append(name)
            continue
        report["ablations"][name] = {"isolates": what, **paired_route_difference(
            dataset, reference, RouteCache.load(folder), route, boot)}

    reference_summary = json.loads((reference_dir / "summary.json").read_text())
    for stage, (variants, keys) in SEED_REPEATS.items():
        summaries = {"seed0 (zoo)": reference_summary}
        for name in variants:
            file = ablate / "val" / name / "summary.json"
            if file.is_file():
                summaries[name] = json.loads(file.read_text())
            else:
                report["missing"].append(name)
        spread = {}
        for key in keys:
            values = {run: _value(s, key) for run, s in summaries.items()}
            spread[key] = {"per_seed": values, "mean": statistics.fmean(values.values()),
                           "sd": statistics.stdev(values.values()) if len(values) > 1 else None}
        report["seed_spread"][stage] = spread

    Path(opt.out).parent.mkdir(parents=True, exist_ok=True)
    Path(opt.out).write_text(json.dumps(report, indent=1) + "\n")
    print(markdown(report))
    return report


def _ci(e: dict) -> str:
    return f"{e['value']:.3f}" + (f" [{e['ci'][0]:.3f}, {e['ci'][1]:.3f}]" if e.get("ci") else "")


def markdown(report: dict) -> str:
    """The two tables docs/BENCHMARKS.md quotes."""
    lines = [(f"Ablations on the test split ({report['test_images']} images; 95% paired bootstrap, "
              f"{report['resamples']} resamples)"), "",
             "| variant | route | reference mAP50-95 | variant mAP50-95 | variant - reference |",
             "|---|---|---|---|---|"]
    for name, a in report["ablations"].items():
        lines.append(f"| {name}: {a['isolates']} | {a['route']} | {_ci(a['reference'])} | {_ci(a['variant'])} | "
                     f"{_ci(a['variant_minus_reference'])} |")
    lines += ["", "Training-seed spread (mean +- sample sd over the seeds listed)", "",
              "| stage | figure | per seed | mean +- sd |", "|---|---|---|---|"]
    for stage, spread in report["seed_spread"].items():
        for key, s in spread.items():
            per_seed = ", ".join(f"{run}: {v:.3f}" for run, v in s["per_seed"].items())
            sd = "n/a" if s["sd"] is None else f"{s['sd']:.3f}"
            lines.append(f"| {stage} | {key} | {per_seed} | {s['mean']:.3f} +- {sd} |")
    if report["missing"]:
        lines += ["", f"Not trained yet: {', '.join(report['missing'])}"]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
