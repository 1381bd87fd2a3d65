#!/usr/bin/env python
"""Label-free adaptation to a new domain, measured: a zoo model's adapters re-trained on unlabeled target images.

    python tools/adapt_label_free.py --model ecc-synth2-q-n-160 --out runs/label-free      # the shipped zoo
    python tools/adapt_label_free.py --model runs/zoo/ecc-synth-tiny/ecc-synth-tiny.pt --preset tiny --out runs/lf

Steps (each an `ecc-yolo` command, resumable like the zoo pipeline):
    1. target training images: `ecc-yolo synth domain=dusk` at a seed the zoo never used; their label files are then
       deleted, so nothing but images exists for training;
    2. target held-out split (domain=dusk, the zoo's test seed), labelled, for measuring only (nothing is chosen
       on it: the epochs and learning rate are fixed before);
    3. the source validation split (the zoo's own, labelled): the training run's per-epoch report;
    4. `ecc-yolo val` of the model as shipped on the target held-out split (source-trained adapters);
    5. `ecc-yolo train stage=adapt_label_free`: feature matching and cloud-output distillation only;
    6. `ecc-yolo val` of the adapted model on the target held-out split, and on the source held-out split.
Writes <out>/label_free.json and <out>/label_free.md: every route's held-out mAP50-95 before and after, and goal 6
judged on the paired bootstrap interval of the adapted route's change on the target split; with
--record, a copy of the JSON in the repository (docs/benchmarks/), where docs figures come from.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
from pathlib import Path


def main(argv: list[str] | None = None) -> Path:
    """Run the experiment; returns the path of label_free.json."""
    from ultralytics.utils import YAML

    from ecc_yolo import zoo
    from ecc_yolo.checkpoint import load_ecc
    from ecc_yolo.eval.cache import RouteCache
    from ecc_yolo.eval.compare import paired_route_difference
    from ecc_yolo.eval.dataset import load_dataset
    from ecc_yolo.eval.stats import Bootstrap
    from ecc_yolo.zoo_pipeline import PRESETS, TRAIN_SEED, Stages

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True, help="a zoo name or an ECC checkpoint trained on the source domain")
    p.add_argument("--out", required=True, help="experiment folder (re-running it continues)")
    p.add_argument("--preset", default="cpu", help="the zoo preset the model was trained with (sizes, batch)")
    p.add_argument("--domain", default="dusk", help="target domain of the synthetic generator")
    p.add_argument("--train", type=int, default=None, help="unlabeled target images (default: the preset's train)")
    p.add_argument("--epochs", type=int, default=10, help="label-free adapt epochs")
    p.add_argument("--record", default=None, help="also write the JSON here (e.g. docs/benchmarks/label_free.json)")
    p.add_argument("--resamples", type=int, default=1000, help="bootstrap resamples of the target held-out images")
    p.add_argument("--hyp", nargs="*", default=["optimizer=AdamW", "lr0=0.002"], help="extra train key=value")
    opt = p.parse_args(argv)
    os.environ.setdefault("YOLO_OFFLINE", "1")
    preset = PRESETS[opt.preset]
    model = zoo.resolve(opt.model) if zoo.is_zoo_name(opt.model) else Path(opt.model).resolve()
    out = Path(opt.out).resolve()
    imgsz, batch, n_train = preset["imgsz"], preset["batch"], opt.train or preset["train"]
    target_seed = TRAIN_SEED + 1  # scenes the source model never saw, in another camera's colours
    stages = Stages(out)
    common = [f"imgsz={imgsz}", f"batch={batch}", f"device={preset['device']}"]
    mix = [f"mix={list(preset['mix'])}".replace(" ", "")] if preset["mix"] else []
    gen = [f"version={preset['generator']}"]  # the generator the model was trained on

    target = out / "target"
    stages.run("target", ["synth", f"out={target}", f"train={n_train}", "val=0", f"imgsz={imgsz}",
                          f"seed={target_seed}", f"domain={opt.domain}", *mix, *gen], target / "data.yaml")
    for unlabeled in (target / "labels", target / "annotations"):  # images only: the labels never existed
        shutil.rmtree(unlabeled, ignore_errors=True)
    heldout, source = out / "target-heldout", out / "source"
    stages.run("target-heldout", ["synth", f"out={heldout}", "train=0", f"val={preset['test']}", f"imgsz={imgsz}",
                                  f"seed={preset['test_seed']}", f"domain={opt.domain}", *mix, *gen], heldout / "data.yaml")
    stages.run("source", ["synth", f"out={source}", "train=0", f"val={preset['val']}", f"imgsz={imgsz}",
                          f"seed={TRAIN_SEED}", *mix], source / "data.yaml")
    source_heldout = out / "source-heldout"
    stages.run("source-heldout", ["synth", f"out={source_heldout}", "train=0", f"val={preset['test']}",
                                  f"imgsz={imgsz}", f"seed={preset['test_seed']}", *mix, *gen], source_heldout / "data.yaml")
    data = out / "adapt.yaml"  # train: unlabeled target images; val: the labelled source split (a report only)
    names = YAML.load(source / "data.yaml")["names"]
    YAML.save(data, {"path": str(out), "train": str(target / "images" / "train"),
                     "val": str(source / "images" / "val"), "nc": len(names), "names": names})

    def val(step: str, ckpt: Path, split: Path) -> dict:
        stages.run(step, ["val", f"model={ckpt}", f"data={split / 'data.yaml'}", *common,
                          f"project={out / 'val'}", f"name={step}", "exist_ok=True", "bootstrap=0", "rate_curve=False"],
                   out / "val" / step / "summary.json")  # the paired interval is computed below
        summary = json.loads((out / "val" / step / "summary.json").read_text())
        return {r: round(summary[f"{r}_map"], 4) for r in ("edge", "adapted", "cloud")}

    before = val("before-target", model, heldout)
    run_dir = out / "runs" / "label-free"
    stages.run("label-free", ["train", f"model={model}", "stage=adapt_label_free", f"data={data}",
                              f"epochs={opt.epochs}", *common, f"project={out / 'runs'}", "name=label-free",
                              "exist_ok=True", "plots=False", f"seed={TRAIN_SEED}", *opt.hyp],
               run_dir / "weights" / "best.pt", run_dir=run_dir)
    adapted = run_dir / "weights" / "best.pt"  # = the last epoch: label-free training has nothing to select by
    after = val("after-target", adapted, heldout)
    source_before = val("before-source", model, source_heldout)
    source_after = val("after-source", adapted, source_heldout)
    # Goal 6, judged like the benchmark's goals: the adapted route on the target held-out split, after minus before,
    # paired over the same images (95% bootstrap interval); met when the whole interval is above zero.
    dataset = load_dataset(heldout / "data.yaml", load_ecc(adapted)[0].names)
    change = paired_route_difference(dataset, RouteCache.load(out / "val" / "before-target"),
                                     RouteCache.load(out / "val" / "after-target"), "adapted",
                                     Bootstrap(len(dataset), opt.resamples, seed=0))
    gain = change["variant_minus_reference"]
    goal = {"goal": "6. label-free adaptation raises the adapted route on a new domain (no target labels)",
            "met": gain["ci"][0] > 0, **gain, "threshold": 0.0,
            "rule": "95% paired bootstrap interval of adapted mAP50-95 after - before, target held-out split, > 0"}
    result = {"model": str(model), "domain": opt.domain, "unlabeled_target_images": n_train, "epochs": opt.epochs,
              "target_heldout": {"before": before, "after": after},
              "source_heldout": {"before": source_before, "after": source_after},
              "target_adapted_change": change, "goal": goal, "commands": stages.log}
    path = out / "label_free.json"
    path.write_text(json.dumps(result, indent=2))
    if opt.record:
        Path(opt.record).parent.mkdir(parents=True, exist_ok=True)
        Path(opt.record).write_text(json.dumps(result, indent=2))
    lines = ["| held-out split | adapters | edge | adapted | cloud | adapted / cloud |", "|---|---|---|---|---|---|"]
    for split, rows in (("target (" + opt.domain + ")", (before, after)), ("source", (source_before, source_after))):
        for label, r in zip(("source-trained", "label-free adapted"), rows):
            lines.append(f"| {split} | {label} | {r['edge']:.3f} | {r['adapted']:.3f} | {r['cloud']:.3f} | "
                         f"{r['adapted'] / max(r['cloud'], 1e-9):.3f} |")
    lines.append(f"\nGoal 6 ({'met' if goal['met'] else 'not met'}): target adapted mAP50-95 after - before "
                 f"{gain['value']:+.3f} [{gain['ci'][0]:+.3f}, {gain['ci'][1]:+.3f}]")
    (out / "label_free.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return path


if __name__ == "__main__":
    main()
