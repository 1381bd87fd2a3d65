#!/usr/bin/env python
"""The adapted route's rate-accuracy-compute frontier: `stage=adapt` trained at several design points (cut, bottleneck
widths, bits) from one zoo run's edge stage, each measured on the zoo's untouched test split (and its validation
split, which is what may choose among them) beside the cloud on JPEG (docs/BENCHMARKS.md, section 5i).

    python tools/sweep_frontier.py --zoo runs/zoo/ecc-synth2-q-n-160 --out runs/frontier            # every design
    python tools/sweep_frontier.py --zoo ... --out ... --design bits2 --design entry5              # some of them
    python tools/sweep_frontier.py --zoo ... --out ... --report docs/benchmarks/frontier.json      # tables + plot

A design is a cfg derived from the zoo's own (`DESIGNS`): the same edge, cloud, gate and tail, another cut and
adapters. Its model starts from the zoo's edge-stage checkpoint (`pretrained=`: edge and cloud weights; the tail copy
starts as the trained cloud's tail), trains the adapt stage with the zoo preset's settings for `--epochs` epochs,
and is measured by `ecc_yolo.eval.frontier.design_point`. Resumable: finished steps are skipped, an interrupted
training resumes; two processes may run different designs into the same folder at once.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

import yaml

# name -> (entry, {cloud cut layer: bottleneck channels sent}, bits per value, extra `ecc-yolo train` arguments). The
# zoo's cfg enters YOLO11n's neck at layer 11 (cut set P3/P4/P5 = layers 4, 6, 10); entering at 7 needs layers 4 and
# 6, at 5 layer 4 only, and the cloud then runs more of its backbone on the adapted features. `rate=` weighs the
# adapt loss's rate term (bits per value, `ecc_yolo.losses.rate_bits`): rate-distortion training.
DESIGNS = {
    "base": (11, {4: 8, 6: 16, 10: 32}, 4, ()),  # the shipped zoo's design, at the sweep's epochs
    "bits2": (11, {4: 8, 6: 16, 10: 32}, 2, ()),
    "bits8": (11, {4: 8, 6: 16, 10: 32}, 8, ()),
    "half": (11, {4: 4, 6: 8, 10: 16}, 4, ()),
    "half-bits2": (11, {4: 4, 6: 8, 10: 16}, 2, ()),
    "double": (11, {4: 16, 6: 32, 10: 64}, 4, ()),
    "entry7": (7, {4: 8, 6: 16}, 4, ()),
    "entry5": (5, {4: 8}, 4, ()),
    "base-rd0.5": (11, {4: 8, 6: 16, 10: 32}, 4, ("rate=0.5",)),
    "base-rd2": (11, {4: 8, 6: 16, 10: 32}, 4, ("rate=2.0",)),
}
SWEEP_EPOCHS = 16  # per design; the shipped zoo's adapt stage ran 24 (the 2-core time budget of one session)


def design_cfg(base: dict, entry: int, bottlenecks: dict[int, int], bits: int, name: str) -> dict:
    """The zoo cfg with another cut: one adapter per cut layer (edge layer = cloud layer, the decoder widths of the
    base cfg's adapter for that layer), every adapter at `bits`."""
    widths = {a["cloud"]: a.get("channels") for a in base["adapters"]}
    cfg = {k: v for k, v in base.items() if k not in ("entry", "adapters", "adapter")}
    cfg["entry"] = entry
    cfg["adapter"] = {**base.get("adapter", {}), "bits": bits}
    cfg["adapters"] = [{"cloud": layer, "edge": layer, "bottleneck": b, "channels": widths.get(layer, 32)}
                       for layer, b in bottlenecks.items()]
    cfg["name"] = name
    return cfg


def main(argv: list[str] | None = None) -> None:
    """Train and measure the designs asked for; with --report, write the frontier tables and plot."""
    from ecc_yolo.zoo_pipeline import PRESETS, TRAIN_SEED, Stages, stage_args

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--zoo", required=True, help="output folder of a tools/train_zoo.py run (its edge stage is used)")
    p.add_argument("--out", required=True, help="sweep folder")
    p.add_argument("--preset", default="cpu", help="the zoo run's preset (cfg, image size, batch, adapt settings)")
    p.add_argument("--design", action="append", choices=sorted(DESIGNS), help="designs to run (default: all)")
    p.add_argument("--epochs", type=int, default=SWEEP_EPOCHS)
    p.add_argument("--report", default=None, help="write the frontier (JSON) here, its table beside it (.md)")
    p.add_argument("--rate", action="append", default=None,
                   help="the image codec's rate curve on the test split (CSV; repeatable; default: the zoo's)")
    p.add_argument("--small-images", default=None, metavar="CSV",
                   help="measure the cloud on JPEG/WebP at scale 0.5 of the frame (test split) into this CSV first, "
                        "so that the smallest design points have image points to compare with")
    p.add_argument("--plot", default="docs/images/frontier.png")
    opt = p.parse_args(argv)
    os.environ.setdefault("YOLO_OFFLINE", "1")
    preset = PRESETS[opt.preset]
    zoo, out = Path(opt.zoo).resolve(), Path(opt.out).resolve()
    base = yaml.safe_load((Path(__file__).resolve().parents[1] / "ecc_yolo" / "cfg" / preset["cfg"]).read_text())
    edge = zoo / "runs" / "edge" / "weights" / "best.pt"
    stages = Stages(out, chain=False)
    for name in opt.design or ([] if (opt.report or opt.small_images) else list(DESIGNS)):
        entry, bottlenecks, bits, extra = DESIGNS[name]
        cfg_path = out / "cfgs" / f"{name}.yaml"
        cfg_path.parent.mkdir(parents=True, exist_ok=True)
        cfg_path.write_text(yaml.safe_dump(design_cfg(base, entry, bottlenecks, bits, name), sort_keys=False))
        run_dir = out / "runs" / name
        stages.run(name, ["train", f"model={cfg_path}", f"pretrained={edge}", "stage=adapt", f"name={name}",
                          f"data={zoo / 'data' / 'data.yaml'}", f"imgsz={preset['imgsz']}", f"batch={preset['batch']}",
                          "device=cpu", f"project={out / 'runs'}", "exist_ok=True", "plots=False",
                          f"seed={TRAIN_SEED}", f"epochs={opt.epochs}", *stage_args(preset, "adapt"), *extra],
                   run_dir / "weights" / "best.pt", run_dir=run_dir)
        measure(name, run_dir / "weights" / "best.pt", zoo, out, preset)
    rates = [Path(r) for r in (opt.rate or ["docs/benchmarks/zoo2-test-rate.csv"])]
    if opt.small_images:
        small_image_rate(zoo, preset, Path(opt.small_images))
        rates.append(Path(opt.small_images))
    if opt.report:
        write_report(out, Path(opt.report), rates, Path(opt.plot))


def measure(name: str, weights: Path, zoo: Path, out: Path, preset: dict) -> None:
    """design_point on the test and the validation split -> <out>/points/<name>.json (skipped when present for
    these weights and this payload format)."""
    from ecc_yolo.checkpoint import load_ecc
    from ecc_yolo.eval.frontier import design_point
    from ecc_yolo.payload.codec import FORMAT_VERSION

    path = out / "points" / f"{name}.json"
    done = json.loads(path.read_text()) if path.is_file() else {}
    if (done.get("weights_mtime"), done.get("payload_version")) == (weights.stat().st_mtime, FORMAT_VERSION):
        return
    model, _ = load_ecc(weights, device="cpu")
    splits = {"test": zoo / "test" / "data.yaml", "val": zoo / "data" / "data.yaml"}
    point = {"name": name, "design_cfg": DESIGNS[name], "weights": str(weights),
             "weights_mtime": weights.stat().st_mtime, "payload_version": FORMAT_VERSION,
             **{split: design_point(model, data, out / "eval" / split / name, preset["imgsz"], preset["batch"])
                for split, data in splits.items()}}
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(point, indent=1))
    print(f"[frontier] {name}: test adapted {point['test']['map']['adapted']}, "
          f"{point['test']['feature_bytes']['mean']:.0f} B, {point['test']['gflops']['end_to_end_share_of_cloud']}")


def small_image_rate(zoo: Path, preset: dict, path: Path) -> None:
    """The zoo's cloud on JPEG and WebP at half the frame's side, every quality of the rate curve (test split)."""
    from ecc_yolo.checkpoint import load_ecc
    from ecc_yolo.eval.dataset import load_dataset
    from ecc_yolo.eval.rate import rate_curve, write_rate_csv

    if path.is_file():
        return
    model, _ = load_ecc(zoo / f"{preset['name']}.pt", device="cpu")
    dataset = load_dataset(zoo / "test" / "data.yaml", model.names)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_rate_csv(rate_curve(model, dataset, preset["imgsz"], scales=(0.5,)), path)


def write_report(out: Path, record: Path, rate_csvs: list[Path], plot: Path) -> None:
    """frontier.json (every measured point, the rows with the goal checks), frontier.md and the plot."""
    import csv

    from ecc_yolo.eval.frontier import frontier_rows, plot_frontier

    points = [json.loads(p.read_text()) for p in sorted((out / "points").glob("*.json"))]
    for point in points:
        record_file = out / "records" / f"{point['name']}.json"
        if record_file.is_file():  # the training step's record: epochs and wall time
            step = json.loads(record_file.read_text())
            point["epochs"], point["train_seconds"] = step.get("metrics", {}).get("epochs"), step.get("seconds")
    rate_rows = [row for path in rate_csvs for row in csv.DictReader(path.open())]
    rows = frontier_rows(points, rate_rows)
    cloud = points[0]["test"]["map"]["cloud"]["value"] if points else None
    plot_frontier(rows, rate_rows, plot, cloud)
    record.parent.mkdir(parents=True, exist_ok=True)
    record.write_text(json.dumps({"rows": rows, "points": points}, indent=1))
    head = ("| design | entry | cut | bottleneck | bits | mAP50-95 [95% CI] | bytes/frame (raw / deflate / range; sent) "
            "| end-to-end GFLOPs / cloud | JPEG at these bytes (best at <= them) | goal |")
    lines = [head, "|---" * 10 + "|"]
    for r in rows:
        c, ci = r["bytes_by_coder"], r["map"]["ci"] or [float("nan")] * 2
        jpeg = r["jpeg_compared"]
        jpeg_text = (f"q{jpeg['quality']} x{float(jpeg['scale']):g}, {float(jpeg['mean_bytes']):.0f} B: "
                     f"{float(jpeg['map']):.3f}" + (" (smallest measured)" if jpeg["bound"] else ""))
        lines.append(f"| {r['name']} | {r['entry']} | {r['cut']} | {r['bottleneck']} | {r['bits'][0]} | "
                     f"{r['map']['value']:.3f} [{ci[0]:.3f}, {ci[1]:.3f}] | {c.get('raw', 0):.0f} / "
                     f"{c.get('deflate', 0):.0f} / {c.get('range', 0):.0f}; {r['bytes']:.0f} | "
                     f"{r['gflops']['end_to_end_share_of_cloud']:.3f} | {jpeg_text} | "
                     f"{'met' if r['goal']['met'] else 'not met'} |")
    record.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
