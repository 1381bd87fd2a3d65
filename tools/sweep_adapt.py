#!/usr/bin/env python
"""Measure what moves the adapted route: `stage=adapt` variants trained from one zoo run's edge stage, each then
evaluated on that run's validation split with `ecc-yolo val` (a sweep chooses settings, so it never sees the
test split). Resumable like the zoo pipeline (finished variants are
skipped, an interrupted one resumes).

    python tools/sweep_adapt.py --zoo runs/zoo/ecc-synth2-q-n-160 --out runs/sweep/adapt \\
        --variant base: --variant det1:det=1.0 --variant kd0:kd=0 --variant long:epochs=40

A variant is `name:key=value,key=value` (any `ecc-yolo train` argument; empty after the colon = the pipeline's own
adapt settings). Writes <out>/sweep.md and <out>/sweep.json (and, with --record, a copy of the JSON in the
repository, e.g. docs/benchmarks/sweep_adapt.json): per variant the validation mAP50-95 of the edge, the
adapted route and the cloud, the adapted/cloud ratio, the adapt stage's curve and its wall time.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path


def parse_variant(text: str) -> tuple[str, list[str]]:
    """`name:k=v,k=v` -> (name, ["k=v", ...])."""
    name, _, rest = text.partition(":")
    if not name:
        raise argparse.ArgumentTypeError(f"variant {text!r} needs a name before ':'")
    return name, [kv for kv in rest.split(",") if kv]


def main(argv: list[str] | None = None) -> Path:
    """Run the sweep; returns the path of sweep.json."""
    from ecc_yolo.zoo_pipeline import PRESETS, TRAIN_SEED, Stages, stage_args

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--zoo", required=True, help="output folder of a tools/train_zoo.py run (its edge stage is used)")
    p.add_argument("--out", required=True, help="sweep folder")
    p.add_argument("--preset", default="cpu", help="the zoo run's preset (image size, batch, adapt epochs)")
    p.add_argument("--record", default=None, help="also write sweep.json here (e.g. docs/benchmarks/)")
    p.add_argument("--variant", action="append", type=parse_variant, required=True)
    opt = p.parse_args(argv)
    os.environ.setdefault("YOLO_OFFLINE", "1")
    preset = PRESETS[opt.preset]
    zoo, out = Path(opt.zoo).resolve(), Path(opt.out).resolve()
    edge = zoo / "runs" / "edge" / "weights" / "best.pt"
    imgsz, batch = preset["imgsz"], preset["batch"]
    stages = Stages(out, chain=False)  # variants are independent; each val follows its train
    rows = []
    for name, overrides in opt.variant:
        keys = {kv.split("=", 1)[0] for kv in overrides}
        base = [f"epochs={preset['epochs']['adapt']}", *stage_args(preset, "adapt")]
        args = [a for a in base if a.split("=", 1)[0] not in keys] + overrides
        run_dir = out / "runs" / name
        train = stages.run(name, ["train", f"model={edge}", "stage=adapt", f"name={name}",
                                  f"data={zoo / 'data' / 'data.yaml'}", f"imgsz={imgsz}", f"batch={batch}",
                                  "device=cpu", f"project={out / 'runs'}", "exist_ok=True", "plots=False",
                                  f"seed={TRAIN_SEED}", *args], run_dir / "weights" / "best.pt", run_dir=run_dir)
        val_dir = out / "val" / name
        stages.run(f"{name}-val", ["val", f"model={run_dir / 'weights' / 'best.pt'}",
                                   f"data={zoo / 'data' / 'data.yaml'}", f"imgsz={imgsz}", f"batch={batch}",
                                   "device=cpu", f"project={out / 'val'}", f"name={name}", "exist_ok=True"],
                   val_dir / "summary.json", needs=(name,))
        summary = json.loads((val_dir / "summary.json").read_text())
        rows.append({"variant": name, "overrides": overrides or ["(pipeline defaults)"],
                     **{f"{r}_map50_95": round(summary[f"{r}_map"], 4) for r in ("edge", "adapted", "cloud")},
                     "adapted_over_cloud": round(summary["adapted_map"] / max(summary["cloud_map"], 1e-9), 3),
                     "adapt_curve": train["metrics"].get("curve_map50_95"), "adapt_seconds": train["seconds"]})
    path = out / "sweep.json"
    path.write_text(json.dumps(rows, indent=2))
    if opt.record:
        Path(opt.record).parent.mkdir(parents=True, exist_ok=True)
        Path(opt.record).write_text(json.dumps(rows, indent=2))
    lines = ["| variant | overrides | edge | adapted | cloud | adapted / cloud | adapt wall (s) |", "|---|---|---|---|---|---|---|"]
    lines += [f"| {r['variant']} | `{' '.join(r['overrides'])}` | {r['edge_map50_95']:.3f} | {r['adapted_map50_95']:.3f} | "
              f"{r['cloud_map50_95']:.3f} | {r['adapted_over_cloud']:.3f} | {r['adapt_seconds']:.0f} |" for r in rows]
    (out / "sweep.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return path


if __name__ == "__main__":
    main()
