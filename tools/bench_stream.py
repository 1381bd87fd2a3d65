"""Benchmark (c): end-to-end frames/s and offload ratio of `ecc-yolo detect` against a local `ecc-yolo serve`.

Starts the server in a subprocess on loopback, then streams the synthetic difficulty-scheduled video through the edge
client once per route (edge, auto with an offload budget, adapted, cloud). Client and server share this machine, so
on a small CPU every offloaded frame also costs the client's frames/s: the figures bound, not predict, a real
deployment. Prints one JSON object.

    python tools/bench_stream.py --cfg cfg/ecc-yolo11n-l.yaml --imgsz 320 --frames 150 --budget 0.3
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
from pathlib import Path


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--cfg", default="cfg/ecc-yolo11n-l.yaml", help="ECC cfg (untrained weights are fine for speed)")
    p.add_argument("--imgsz", type=int, default=320)
    p.add_argument("--frames", type=int, default=150)
    p.add_argument("--budget", default="0.3", help="route=auto offload budget: a ratio or e.g. 200kbps")
    p.add_argument("--routes", nargs="+", default=["edge", "auto", "adapted", "cloud"])
    p.add_argument("--max-inflight", type=int, default=4)
    p.add_argument("--out", default=None, help="also write the JSON here")
    a = p.parse_args()
    os.environ.setdefault("YOLO_OFFLINE", "1")

    import torch

    from ecc_yolo.args import get_args
    from ecc_yolo.data.synthetic import generate_video
    from ecc_yolo.engine.model import ECC
    from ecc_yolo.serve.client import detect
    from ecc_yolo.serve.local import LocalServer

    tmp = Path(tempfile.mkdtemp(prefix="bench_stream_"))
    ckpt = ECC(a.cfg).save(tmp / "ecc.pt")
    video = generate_video(tmp / "video.mp4", frames=a.frames, fps=30, imgsz=a.imgsz, seed=0, progress=False)
    server = LocalServer(ckpt, a.imgsz, tmp / "serve.log")
    url = server.start().url
    runs = []
    try:
        model = ECC(str(ckpt)).model
        for route in a.routes:
            budget = None
            if route == "auto":
                budget = float(a.budget) if a.budget.replace(".", "", 1).isdigit() else a.budget
            args = get_args({"model": str(ckpt), "source": str(video), "imgsz": a.imgsz, "route": route,
                             "cloud": url, "budget": budget, "max_inflight": a.max_inflight, "save": False,
                             "verbose": False, "timeout": 30.0})
            summary = detect(args, model=model)
            summary["budget"] = budget
            runs.append(summary)
            print(json.dumps(summary), flush=True)
    finally:
        server.stop()
    result = {
        "benchmark": "end-to-end detect against a local server",
        "cfg": a.cfg, "imgsz": a.imgsz, "frames": a.frames, "max_inflight": a.max_inflight,
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPU cores, torch "
                   f"{torch.__version__} (client and server on the same machine)",
        "runs": runs,
    }
    print(json.dumps(result, indent=2))
    if a.out:
        Path(a.out).write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
