#!/usr/bin/env python
"""Does the synthetic generator give a frame's difficulty away through global image statistics?

    python tools/leak_check.py                      # generators 1.0 and 2.0, 1500 train / 500 test at 160 px
    python tools/leak_check.py --versions 2.0 --out docs/benchmarks/leak_check.json

Fits a logistic regression and a small MLP on per-channel mean, std, Laplacian variance and a noise estimate of
each training frame (ecc_yolo/data/difficulty_leak.py), scores them on a test split of another seed, and writes the
accuracies beside the majority-class share (what predicting the most common difficulty scores) as JSON.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path


def main(argv: list[str] | None = None) -> dict:
    """Run the check for each version; prints a table and writes the JSON report."""
    os.environ.setdefault("YOLO_OFFLINE", "1")
    from ecc_yolo.data.difficulty_leak import leak_check

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--versions", default="1.0,2.0")
    p.add_argument("--train", type=int, default=1500)
    p.add_argument("--test", type=int, default=500)
    p.add_argument("--imgsz", type=int, default=160)
    p.add_argument("--out", default="docs/benchmarks/leak_check.json")
    opt = p.parse_args(argv)
    reports = {v: leak_check(v, opt.train, opt.test, opt.imgsz) for v in opt.versions.split(",")}
    print("| generator | logistic acc | MLP acc | MLP balanced acc | majority share | leak (MLP) |")
    print("|---|---|---|---|---|---|")
    for v, r in reports.items():
        print(f"| {v} | {r['logistic']['accuracy']:.3f} | {r['mlp']['accuracy']:.3f} | "
              f"{r['mlp']['balanced_accuracy']:.3f} | {r['mlp']['majority_share']:.3f} | {r['mlp']['leak']:.3f} |")
    Path(opt.out).parent.mkdir(parents=True, exist_ok=True)
    Path(opt.out).write_text(json.dumps(reports, indent=2))
    return reports


if __name__ == "__main__":
    main()
