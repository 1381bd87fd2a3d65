#!/usr/bin/env python
"""The calibrated default operating point on held-out videos (docs/BENCHMARKS.md, section 5k): `ecc-yolo detect
route=auto` without a budget, against a loopback server, under each router the model's settings hold a threshold
for (ECC_D, ECC_I, ECC_D+ and, on a multi-exit edge, MEANet), on synthetic videos none of its splits saw.

    python tools/operating_point.py --model ecc-synth2-q-n-160 --out runs/operating_point \\
        --record docs/benchmarks/operating_point.json

Two videos of 180 frames: the validation split's difficulty mix (easy/hard/complex 50/30/20, in 6-frame scenes) and
the generator's default video (a third of each, in 6 long scenes). Per router: the share of frames offloaded, the
share each route answered, bytes per frame, against the share the thresholds were calibrated to.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import numpy as np

VIDEO_FRAMES = 180
VIDEO_SEED = 20261207  # drawn for this benchmark; no split of the zoo uses it


def main(argv: list[str] | None = None) -> None:
    """Run every router on both videos and write the record."""
    from ecc_yolo.args import get_args
    from ecc_yolo.checkpoint import load_ecc
    from ecc_yolo.data.synthetic import generate_video
    from ecc_yolo.deploy import model_settings
    from ecc_yolo.serve.client import detect
    from ecc_yolo.serve.engine import CloudEngine
    from ecc_yolo.serve.server import BackgroundServer, ServerSettings, build_app

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--record", default=None)
    p.add_argument("--seed", type=int, default=VIDEO_SEED, help="seed of the first video (the second: seed + 1)")
    opt = p.parse_args(argv)
    os.environ.setdefault("YOLO_OFFLINE", "1")
    out = Path(opt.out)
    out.mkdir(parents=True, exist_ok=True)
    model, _ = load_ecc(opt.model)
    settings = model_settings(model)
    mix = ["easy"] * 5 + ["hard"] * 3 + ["complex"] * 2
    schedules = {"validation mix (50/30/20)": [(6, d) for d in np.random.default_rng(0).permutation(mix * 3)],
                 "default video (a third each)": None}
    videos = {name: generate_video(out / f"video{i}.mp4", frames=VIDEO_FRAMES, fps=15, imgsz=settings.imgsz,
                                   seed=opt.seed + i, schedule=schedule, progress=False)
              for i, (name, schedule) in enumerate(schedules.items())}
    rows = []
    with BackgroundServer(build_app(CloudEngine(model, imgsz=settings.imgsz), ServerSettings())) as server:
        for video_name, video in videos.items():
            for router in [r for r, t in settings.thresholds.items() if t is not None or r == "MEANet"]:
                if router == "MEANet" and model.router is None:
                    continue
                overrides = {"router": router}
                args = get_args({"model": str(opt.model), "source": str(video), "route": "auto", "cloud": server.url,
                                 "save": False, "verbose": False, **overrides})
                start = time.time()
                s = detect(args, model=model, overrides=overrides)
                rows.append({"video": video_name, "router": router, "threshold": settings.thresholds[router],
                             "offload_share": s["offload_ratio"], "routes": s["routes"], "frames": s["frames"],
                             "bytes_per_frame": s["mean_bytes_per_frame"], "fallbacks": s["fallbacks"],
                             "seconds": round(time.time() - start, 1)})
                print(f"[operating point] {video_name}, {router}: offloaded {s['offload_ratio']:.1%}")
    result = {"model": str(opt.model), "default_router": settings.router, "calibration": settings.calibration,
              "margin": settings.margin, "frames": VIDEO_FRAMES, "seed": opt.seed, "rows": rows}
    (out / "operating_point.json").write_text(json.dumps(result, indent=1))
    if opt.record:
        Path(opt.record).write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
