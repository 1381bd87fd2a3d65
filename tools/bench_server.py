"""Benchmark (b): cloud server throughput and latency with 1, 4 and 16 concurrent clients, batching on and off.

Starts `ecc-yolo serve` in a subprocess on loopback (batching: max_batch=8; off: max_batch=1), and for each route
(features: adapter decoders + cloud tail; image: the full cloud on a letterboxed JPEG) and client count runs closed-loop
clients (each sends its next request when the previous is answered) for `--seconds`. Reports requests/s, p50/p95
latency seen by the clients, mean batch size, and the speed-up of batching at the largest client count
(goal: >= 1.5x at 16 clients). Prints one JSON object.

    python tools/bench_server.py --cfg cfg/ecc-yolo11n-l.yaml --imgsz 320 --seconds 15
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import tempfile
import threading
import time
from pathlib import Path


def load(url: str, path: str, bodies: list[bytes], clients: int, seconds: float) -> dict:
    """Closed-loop load: `clients` threads for `seconds`; latency percentiles in ms."""
    import httpx
    import numpy as np

    latencies: list[float] = []
    statuses: dict[int, int] = {}
    lock = threading.Lock()
    start = time.perf_counter()
    stop = start + seconds

    def worker(i: int) -> None:
        with httpx.Client(base_url=url, timeout=120) as c:
            k = i
            while time.perf_counter() < stop:
                t0 = time.perf_counter()
                r = c.post(path, content=bodies[k % len(bodies)])
                dt = (time.perf_counter() - t0) * 1000
                k += 1
                with lock:
                    statuses[r.status_code] = statuses.get(r.status_code, 0) + 1
                    if r.status_code == 200:
                        latencies.append(dt)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    elapsed = time.perf_counter() - start  # includes the requests in flight when the window closed
    lat = np.array(latencies)
    return {"clients": clients, "requests": len(lat), "seconds": round(elapsed, 2),
            "req_per_s": round(len(lat) / elapsed, 3), "p50_ms": round(float(np.percentile(lat, 50)), 1),
            "p95_ms": round(float(np.percentile(lat, 95)), 1), "statuses": statuses}


def batch_stats(url: str, route: str) -> tuple[float, int]:
    """(sum, count) of the server's batch-size histogram for a route."""
    import httpx

    text = httpx.get(f"{url}/metrics").text
    s = re.search(rf'ecc_batch_size_sum{{route="{route}"}} ([0-9.e+]+)', text)
    n = re.search(rf'ecc_batch_size_count{{route="{route}"}} (\d+)', text)
    return (float(s.group(1)), int(n.group(1))) if s and n else (0.0, 0)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--cfg", default="cfg/ecc-yolo11n-l.yaml", help="ECC cfg (untrained weights are fine for speed)")
    p.add_argument("--imgsz", type=int, default=320)
    p.add_argument("--clients", type=int, nargs="+", default=[1, 4, 16])
    p.add_argument("--seconds", type=float, default=15.0, help="load duration per point")
    p.add_argument("--routes", nargs="+", default=["features", "image"], choices=["features", "image"])
    p.add_argument("--max-batch", type=int, default=8)
    p.add_argument("--max-wait-ms", type=float, default=10.0)
    p.add_argument("--out", default=None, help="also write the JSON here")
    a = p.parse_args()
    os.environ.setdefault("YOLO_OFFLINE", "1")

    import torch
    from ultralytics.data.augment import LetterBox

    from ecc_yolo.data.synthetic import generate_video
    from ecc_yolo.engine.model import ECC
    from ecc_yolo.infer import input_tensor
    from ecc_yolo.payload.codec import encode_features, encode_jpeg
    from ecc_yolo.serve.local import LocalServer

    tmp = Path(tempfile.mkdtemp(prefix="bench_server_"))
    ckpt = ECC(a.cfg).save(tmp / "ecc.pt")
    model = ECC(str(ckpt)).model.eval()
    import cv2

    video = generate_video(tmp / "v.mp4", frames=8, fps=30, imgsz=a.imgsz, seed=0, progress=False)
    cap, frames = cv2.VideoCapture(str(video)), []
    while (ok := cap.read())[0]:
        frames.append(ok[1])
    lb = LetterBox((a.imgsz, a.imgsz), auto=False, stride=32)
    fp = model.fingerprint()
    bodies = {"image": [encode_jpeg(lb(image=f), 90) for f in frames], "features": []}
    with torch.inference_mode():
        for f in frames:
            x = input_tensor([lb(image=f)])
            (pl,) = model.payloads_from_features(model.edge_features(x), f.shape[:2], tuple(x.shape[2:]), fp)
            bodies["features"].append(encode_features(pl))
    paths = {"image": "/v1/detect/image", "features": "/v1/detect/features"}
    metric_route = {"image": "cloud", "features": "adapted"}

    results = []
    for mode, max_batch in (("batching", a.max_batch), ("max_batch=1", 1)):
        server = LocalServer(ckpt, a.imgsz, tmp / "serve.log", max_batch=max_batch, max_wait_ms=a.max_wait_ms)
        url = server.start().url
        try:
            for route in a.routes:
                load(url, paths[route], bodies[route], 2, 3.0)  # warm-up
                for clients in a.clients:
                    s0, n0 = batch_stats(url, metric_route[route])
                    point = load(url, paths[route], bodies[route], clients, a.seconds)
                    s1, n1 = batch_stats(url, metric_route[route])
                    point.update(mode=mode, route=route, mean_batch=round((s1 - s0) / max(n1 - n0, 1), 2))
                    results.append(point)
                    print(json.dumps(point), flush=True)
        finally:
            server.stop()
    speedups = {}
    for route in a.routes:
        top = max(a.clients)
        on = next(r for r in results if r["mode"] == "batching" and r["route"] == route and r["clients"] == top)
        off = next(r for r in results if r["mode"] == "max_batch=1" and r["route"] == route and r["clients"] == top)
        speedups[route] = round(on["req_per_s"] / off["req_per_s"], 3)
    summary = {
        "benchmark": "server throughput/latency, batching on vs max_batch=1",
        "cfg": a.cfg, "imgsz": a.imgsz, "seconds_per_point": a.seconds, "max_batch": a.max_batch,
        "max_wait_ms": a.max_wait_ms,
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPU cores, "
                   f"torch {torch.__version__} (server and load generator share the machine)",
        "points": results, "batching_speedup_at_max_clients": speedups, "goal_speedup": 1.5,
        "goal_met": {k: v >= 1.5 for k, v in speedups.items()},
    }
    print(json.dumps(summary, indent=2))
    if a.out:
        Path(a.out).write_text(json.dumps(summary, indent=2) + "\n")


if __name__ == "__main__":
    main()
