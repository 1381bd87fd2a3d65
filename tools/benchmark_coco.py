#!/usr/bin/env python
"""The ECC benchmark a researcher runs: mAP versus offload ratio, computation and communication, against the oracle.

Real COCO with official weights (internet once, for yolo11n.pt / yolo11l.pt):
    python tools/benchmark_coco.py --cfg cfg/ecc-yolo11n-l.yaml --edge yolo11n.pt --cloud yolo11l.pt \\
        --coco datasets/coco --imgsz 640 --out runs/bench/coco
  (--coco is a folder with val2017/ and annotations/instances_val2017.json; adapters and gate should first be
  trained on train2017, see docs/TRAINING.md, and the trained ECC passed with --model.)

A trained ECC checkpoint or a zoo name on any Ultralytics data YAML:
    python tools/benchmark_coco.py --model runs/ecc/gate/weights/best.pt --data datasets/synth/data.yaml

The synthetic preset: a fresh evaluation split at a seed the zoo never trained on, then the shipped zoo model
(ecc-synth2-q-n-160 unless --model is given), at the image size the model was trained at:
    python tools/benchmark_coco.py --preset synthetic [--seed 4242] [--images 500]

Outputs in --out: curve.csv, summary.json, summary.md, map_vs_offload.png, map_vs_gflops.png, map_vs_kb.png,
pareto.png, and cache.npz/cache.json (a re-run with the same model, data and size only re-sweeps).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

PRESET_SEED = 4242  # never used to generate training data (tools/train_zoo.py trains on seed 0, holds out 12345)
PRESET_IMAGES = 500


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line options."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    src = p.add_argument_group("model (one of)")
    src.add_argument("--model", help="trained ECC checkpoint (.pt) or zoo name")
    src.add_argument("--cfg", help="ECC cfg; with --edge/--cloud to use official Ultralytics weights")
    src.add_argument("--edge", help="edge detector weights or YAML (e.g. yolo11n.pt), replacing the cfg's")
    src.add_argument("--cloud", help="cloud detector weights or YAML (e.g. yolo11l.pt), replacing the cfg's")
    data = p.add_argument_group("data (one of)")
    data.add_argument("--data", help="Ultralytics data YAML (its val split)")
    data.add_argument("--coco", help="COCO layout folder: val2017/ + annotations/instances_val2017.json")
    data.add_argument("--preset", choices=["synthetic"], help="generate a fresh synthetic evaluation split")
    p.add_argument("--seed", type=int, default=PRESET_SEED, help="synthetic preset: generator seed")
    p.add_argument("--images", type=int, default=PRESET_IMAGES, help="synthetic preset: number of images")
    p.add_argument("--max-images", type=int, default=None, help="evaluate the first N images only")
    p.add_argument("--imgsz", type=int, default=None,
                   help="network input size (default 640; preset: the model's training size)")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--device", default="", help="cpu, or a GPU index such as 0")
    p.add_argument("--target", type=float, default=0.99, help="share of the cloud's mAP to reach")
    p.add_argument("--out", default=None, help="run folder (default runs/bench/<model>-<data>)")
    p.add_argument("--no-plots", action="store_true")
    p.add_argument("--bootstrap", type=int, default=1000,
                   help="image resamples for the 95%% intervals (0: none; 1000 take a few minutes on 300 images)")
    p.add_argument("--no-rate", action="store_true", help="skip the image codec's rate curve (cloud on JPEG/WebP)")
    p.add_argument("--generator", default=None,
                   help="synthetic preset: generator version (default: the zoo model's own, from its manifest)")
    opt = p.parse_args(argv)
    if sum(x is not None for x in (opt.data, opt.coco, opt.preset)) != 1:
        p.error("give exactly one of --data, --coco, --preset")
    if opt.model and opt.cfg:
        p.error("give --model or --cfg, not both")
    if not (opt.model or opt.cfg or opt.preset):
        p.error("give --model or --cfg")
    return opt


def main(argv: list[str] | None = None) -> dict:
    """Run the benchmark; returns the summary."""
    opt = parse(argv)
    os.environ.setdefault("YOLO_OFFLINE", "1")
    from ecc_yolo import zoo
    from ecc_yolo.deploy import model_settings
    from ecc_yolo.engine.model import ECC
    from ecc_yolo.eval.benchmark import evaluate
    from ecc_yolo.eval.dataset import DatasetError

    try:
        if opt.cfg:
            ecc = ECC(opt.cfg, edge_model=opt.edge, cloud_model=opt.cloud)
        else:
            ecc = ECC(opt.model or zoo.DEFAULT_MODEL)
        imgsz = opt.imgsz or (model_settings(ecc.model).imgsz if opt.preset else 640)
        if opt.preset:
            from ecc_yolo.data.synthetic import generate_dataset

            version = opt.generator or zoo.generator_version(opt.model or zoo.DEFAULT_MODEL)
            data = generate_dataset(Path.cwd() / "datasets" / f"synth{version}-eval-{opt.seed}-{opt.images}-{imgsz}",
                                    train=0, val=opt.images, imgsz=imgsz, seed=opt.seed, version=version)
        else:
            data = opt.data or opt.coco
        stem = Path(str(data)).parent.name if str(data).endswith((".yaml", ".yml")) else Path(str(data)).name
        out = Path(opt.out or Path.cwd() / "runs" / "bench" / f"{ecc.model.spec.name}-{stem}")
        summary = evaluate(ecc.model, data, out, imgsz=imgsz, batch=opt.batch, device=opt.device,
                           max_images=opt.max_images, target=opt.target, plots=not opt.no_plots,
                           bootstrap=opt.bootstrap, rate=not opt.no_rate)
    except (DatasetError, FileNotFoundError) as e:  # includes a zoo model this build does not ship
        sys.exit(f"benchmark_coco: error: {e}")
    print((out / "summary.md").read_text())
    print(json.dumps({k: v for k, v in summary.items() if not isinstance(v, dict)}, indent=1))
    return summary


if __name__ == "__main__":
    main()
