"""Benchmark (a): throughput of the edge stream client with route=edge versus plain Ultralytics predict.

Both run the same edge detector on the same video in one process, alternately, `--repeats` times each:
- `yolo`: the ECC's edge exported as a plain Ultralytics checkpoint, `YOLO(edge.pt).predict(video, stream=True)`;
- `ecc-yolo detect route=edge`: `EdgeStreamClient.stream(video)` (letterbox, edge, NMS, Results, per-frame record).
Goal: the client costs at most 10% of predict's frames/s. Prints one JSON object; the docs table is made from it.

    python tools/bench_edge_client.py --cfg cfg/ecc-yolo11n-l.yaml --imgsz 320 --frames 300 --repeats 3
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import tempfile
import time
from copy import deepcopy
from pathlib import Path


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--cfg", default="cfg/ecc-yolo11n-l.yaml", help="ECC cfg (untrained weights are fine for speed)")
    p.add_argument("--imgsz", type=int, default=320, help="network input and video size, pixels")
    p.add_argument("--frames", type=int, default=300, help="video length")
    p.add_argument("--repeats", type=int, default=3, help="alternating runs of each")
    p.add_argument("--out", default=None, help="also write the JSON here")
    a = p.parse_args()
    os.environ.setdefault("YOLO_OFFLINE", "1")

    import torch
    from ultralytics import YOLO

    from ecc_yolo.data.synthetic import generate_video
    from ecc_yolo.engine.model import ECC
    from ecc_yolo.serve.client import EdgeStreamClient, StreamSettings

    tmp = Path(tempfile.mkdtemp(prefix="bench_edge_"))
    video = generate_video(tmp / "video.mp4", frames=a.frames, fps=30, imgsz=a.imgsz, seed=0, progress=False)
    ecc = ECC(a.cfg)
    model = ecc.model.eval()
    edge_pt = tmp / "edge.pt"
    torch.save({"model": deepcopy(model.edge).half(), "train_args": {}}, edge_pt)  # a plain Ultralytics detector
    yolo = YOLO(str(edge_pt))
    client = EdgeStreamClient(model, StreamSettings(route="edge", imgsz=(a.imgsz, a.imgsz)))

    def run_yolo() -> int:
        return sum(1 for _ in yolo.predict(str(video), stream=True, imgsz=a.imgsz, verbose=False, device="cpu"))

    def run_client() -> int:
        return sum(1 for _ in client.stream(str(video)))

    run_yolo(), run_client()  # warm-up: first-call allocations, thread pools, codec start-up
    fps: dict[str, list[float]] = {"yolo_predict": [], "detect_route_edge": []}
    for _ in range(a.repeats):
        for name, fn in (("yolo_predict", run_yolo), ("detect_route_edge", run_client)):
            t0 = time.perf_counter()
            n = fn()
            fps[name].append(n / (time.perf_counter() - t0))
            assert n == a.frames, (name, n)
    med = {k: statistics.median(v) for k, v in fps.items()}
    result = {
        "benchmark": "edge client route=edge vs Ultralytics predict",
        "cfg": a.cfg, "imgsz": a.imgsz, "frames": a.frames, "repeats": a.repeats,
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPU cores, torch "
                   f"{torch.__version__}, {torch.get_num_threads()} threads",
        "fps_runs": {k: [round(x, 2) for x in v] for k, v in fps.items()},
        "fps_median": {k: round(v, 2) for k, v in med.items()},
        "client_cost": round(1 - med["detect_route_edge"] / med["yolo_predict"], 4),
        "goal_cost_at_most": 0.10,
    }
    result["goal_met"] = result["client_cost"] <= 0.10
    print(json.dumps(result, indent=2))
    if a.out:
        Path(a.out).write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
