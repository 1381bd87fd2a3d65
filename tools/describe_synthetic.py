#!/usr/bin/env python
"""Show what each difficulty of the synthetic generator looks like and what it contains.

    python tools/describe_synthetic.py                 # generator 2.0 at 160 px (the zoo's data)
    python tools/describe_synthetic.py --version 1.0 --images docs/images/synthetic_v1_samples.png

Writes a grid of sample frames (one row per difficulty, ground-truth boxes drawn on the right half of each pair)
and per-difficulty statistics of a generated split as JSON: frames, objects per frame, share of all objects, box
sizes in pixels (longer side), and the global noise/sharpness estimates of ecc_yolo/data/difficulty_leak.py (in v2
they should not differ by difficulty).
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
from pathlib import Path


def main(argv: list[str] | None = None) -> dict:
    """Write the figure and the statistics; returns the statistics."""
    os.environ.setdefault("YOLO_OFFLINE", "1")
    import cv2
    import numpy as np

    from ecc_yolo.data.difficulty_leak import image_statistics
    from ecc_yolo.data.synthetic import DIFFICULTIES, check_version, generate_dataset, render_frame

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--version", default="2.0")
    p.add_argument("--imgsz", type=int, default=160)
    p.add_argument("--frames", type=int, default=1500, help="frames of the described split")
    p.add_argument("--per-row", type=int, default=4, help="sample frames per difficulty in the figure")
    p.add_argument("--images", default="docs/images/synthetic_v2_samples.png")
    p.add_argument("--stats", default="docs/benchmarks/synthetic_v2_stats.json")
    opt = p.parse_args(argv)
    version, s = check_version(opt.version), opt.imgsz

    rows = []
    for d in DIFFICULTIES:
        tiles = []
        for i in range(opt.per_row):
            fr = render_frame(2026, i, d, s, version=version)
            boxed = fr.image.copy()
            for x1, y1, x2, y2 in fr.boxes.astype(int):
                cv2.rectangle(boxed, (x1, y1), (x2 - 1, y2 - 1), (0, 0, 255), 1)
            tiles += [fr.image, boxed, np.full((s, 4, 3), 255, np.uint8)]
        row = np.hstack(tiles)
        label = np.full((22, row.shape[1], 3), 255, np.uint8)
        cv2.putText(label, f"{d} (generator {version}): frame | ground truth", (4, 16), cv2.FONT_HERSHEY_SIMPLEX,
                    0.5, (0, 0, 0), 1, cv2.LINE_AA)
        rows += [label, row]
    Path(opt.images).parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(opt.images, np.vstack(rows))

    with tempfile.TemporaryDirectory() as tmp:
        root = generate_dataset(Path(tmp) / "d", train=0, val=opt.frames, imgsz=s, seed=0, version=version,
                                progress=False).parent
        coco = json.loads((root / "annotations" / "instances_val.json").read_text())
        image_stats = {im["id"]: image_statistics(cv2.imread(str(root / "images" / "val" / im["file_name"])))
                       for im in coco["images"]}
    difficulty = {im["id"]: im["difficulty"] for im in coco["images"]}
    total = len(coco["annotations"])
    stats: dict = {"version": version, "imgsz": s, "frames": opt.frames, "objects": total, "per_difficulty": {}}
    for d in DIFFICULTIES:
        ids = [i for i, v in difficulty.items() if v == d]
        sides = np.array([max(a["bbox"][2], a["bbox"][3]) for a in coco["annotations"] if difficulty[a["image_id"]] == d])
        g = np.stack([image_stats[i] for i in ids])
        stats["per_difficulty"][d] = {
            "frames": len(ids), "objects": int(len(sides)), "objects_per_frame": round(len(sides) / len(ids), 2),
            "share_of_objects": round(len(sides) / total, 3),
            "box_side_px": {"mean": round(float(sides.mean()), 1), "p10": round(float(np.percentile(sides, 10)), 1),
                            "p90": round(float(np.percentile(sides, 90)), 1), "min": round(float(sides.min()), 1)},
            "image_std_mean": round(float(g[:, 3:6].mean()), 2),
            "noise_sigma_mean": round(float(g[:, 9:12].mean()), 2),
            "laplacian_var_mean": round(float(g[:, 6:9].mean()), 1),
        }
    Path(opt.stats).parent.mkdir(parents=True, exist_ok=True)
    Path(opt.stats).write_text(json.dumps(stats, indent=2))
    print(json.dumps(stats["per_difficulty"], indent=1))
    return stats


if __name__ == "__main__":
    main()
