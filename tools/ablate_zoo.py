#!/usr/bin/env python
"""Ablations and training-seed repeats of one zoo run: single stages retrained from that run's own checkpoints,
each evaluated on the run's test split with `ecc-yolo val`. Resumable like the zoo pipeline (finished steps are
skipped, an interrupted one resumes); a step whose input checkpoint does not exist yet waits (`--wait`) or is left
for a later call.

    python tools/ablate_zoo.py --zoo runs/zoo/ecc-synth2-q-n-160 --out runs/ablate --wait
    python tools/ablate_zoo.py --zoo ... --out ... --only edge-plain,adapt-frozen-tail

Variants (what each isolates; the reference is the zoo run's own stage):
    edge-plain         the edge trained without distillation from the cloud (reference: the zoo's distilled edge)
    adapt-frozen-tail  the adapted route with the cloud tail frozen (reference: its trainable copy, `tail: copy`)
    gate-seed1/2       the gate stage again with training seeds 1 and 2 (spread of the routers)
    adapt-seed1/2      the adapt stage again with training seeds 1 and 2 (spread of the adapted route)
The paired comparison with intervals is `tools/ablation_report.py`, which reads the val folders written here.
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

# name -> (stage, the zoo run's checkpoint it starts from ("cfg": the preset's YAML), extra arguments)
VARIANTS: dict[str, tuple[str, str, list[str]]] = {
    "edge-plain": ("edge", "cfg", ["distill=False"]),
    "adapt-frozen-tail": ("adapt", "edge", ["freeze=adapted_cloud"]),
    "gate-seed1": ("gate", "extension", ["seed=1"]),
    "gate-seed2": ("gate", "extension", ["seed=2"]),
    "adapt-seed1": ("adapt", "edge", ["seed=1"]),
    "adapt-seed2": ("adapt", "edge", ["seed=2"]),
}


def main(argv: list[str] | None = None) -> None:
    """Train and evaluate the variants whose input exists (all of them, in order, with --wait)."""
    from ecc_yolo.spec import CFG_DIR
    from ecc_yolo.zoo_pipeline import PRESETS, TRAIN_SEED, Stages, stage_args

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--zoo", required=True, help="output folder of a tools/train_zoo.py run")
    p.add_argument("--out", required=True, help="ablation folder")
    p.add_argument("--preset", default="cpu", help="the zoo run's preset (image size, batch, epochs)")
    p.add_argument("--only", default=",".join(VARIANTS), help="comma-separated variants, in order")
    p.add_argument("--wait", action="store_true", help="wait for a variant's input checkpoint to appear")
    opt = p.parse_args(argv)
    os.environ.setdefault("YOLO_OFFLINE", "1")
    preset = PRESETS[opt.preset]
    zoo, out = Path(opt.zoo).resolve(), Path(opt.out).resolve()
    stages = Stages(out, chain=False)
    imgsz, batch = preset["imgsz"], preset["batch"]
    for name in opt.only.split(","):
        stage, source, extra = VARIANTS[name]
        model = CFG_DIR / preset["cfg"] if source == "cfg" else zoo / "runs" / source / "weights" / "best.pt"
        # a finished stage has its record; best.pt alone may be mid-run
        ready = source == "cfg" or (zoo / "records" / f"{source}.json").is_file()
        while not ready and opt.wait:
            time.sleep(30)
            ready = (zoo / "records" / f"{source}.json").is_file()
        if not ready:
            print(f"{name}: waiting for {model} (the zoo's {source} stage); run again later")
            continue
        keys = {kv.split("=", 1)[0] for kv in extra}
        base = [a for a in [f"seed={TRAIN_SEED}", *stage_args(preset, stage)] if a.split("=", 1)[0] not in keys]
        run_dir = out / "runs" / name
        stages.run(name, ["train", f"model={model}", f"stage={stage}", f"epochs={preset['epochs'][stage]}",
                          f"name={name}", f"data={zoo / 'data' / 'data.yaml'}", f"imgsz={imgsz}", f"batch={batch}",
                          "device=cpu", f"project={out / 'runs'}", "exist_ok=True", "plots=False", *base, *extra],
                   run_dir / "weights" / "best.pt", run_dir=run_dir)
        stages.run(f"{name}-val", ["val", f"model={run_dir / 'weights' / 'best.pt'}",
                                   f"data={zoo / 'test' / 'data.yaml'}", f"imgsz={imgsz}", f"batch={batch}",
                                   "device=cpu", f"project={out / 'val'}", f"name={name}", "exist_ok=True",
                                   "bootstrap=0", "rate_curve=False"],  # tools/ablation_report.py bootstraps the pairs
                   out / "val" / name / "summary.json", needs=(name,))


if __name__ == "__main__":
    main()
