"""Serving under overload and hostile input: the figures of docs/BENCHMARKS.md section 9.

Three measurements against `ecc-yolo serve` of an (untrained) ECC cfg on loopback:

1. hostile corpus (tests/hostile_corpus.py), sent `--corpus-rounds` times to a server subprocess: status codes,
   slowest refusal, and the growth of the server's peak RSS (VmHWM) over the corpus;
2. overload: 64 closed-loop clients for `--seconds`, each sending its next request as soon as the previous is
   answered: against a small server (max_concurrency=12, max_queue=4) with clients that retry a 503 at once (the
   worst case) and with clients that first wait uniform(0, Retry-After) (as `ecc-yolo detect` does), and against
   one with the default limits: statuses, 503 share, answered req/s, p50/p99 latency of 200s and 503s, RSS growth;
3. slow clients and shutdown: an in-process server with timeout=1 s, uploads trickling one byte per 100 ms:
   when they are cut off (408), and how long a graceful shutdown takes with slow uploads, an idle and a half-sent
   connection open.

Prints one JSON object. Linux only (reads /proc/<pid>/status).

    python tools/bench_overload.py --cfg cfg/ecc-tiny-11.yaml --imgsz 128 --seconds 15
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import socket
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def proc_mb(pid: int, field: str) -> float:
    """VmRSS or VmHWM of a process, MiB."""
    with open(f"/proc/{pid}/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith(field)) / 1024


def percentile(values: list[float], q: float) -> float | None:
    import numpy as np

    return round(float(np.percentile(values, q)), 1) if values else None


def hostile(url: str, pid: int, good: bytes, rounds: int) -> dict:
    import httpx
    from hostile_corpus import hostile_images, hostile_payloads, jpeg

    cases = hostile_images() + hostile_payloads(good)
    with httpx.Client(base_url=url, timeout=60) as c:
        c.post("/v1/detect/features", content=good).raise_for_status()  # warm both routes: first batches allocate
        c.post("/v1/detect/image", content=jpeg(120, 160)).raise_for_status()
        rss0, hwm0 = proc_mb(pid, "VmRSS"), proc_mb(pid, "VmHWM")
        statuses: dict[str, int] = {}
        slowest = (0.0, "")
        for _ in range(rounds):
            for case in cases:
                t0 = time.perf_counter()
                r = c.post(case.path, content=case.body)
                dt = time.perf_counter() - t0
                statuses[str(r.status_code)] = statuses.get(str(r.status_code), 0) + 1
                slowest = max(slowest, (dt, case.name))
        alive = c.post("/v1/detect/features", content=good).status_code == 200
    return {"cases": len(cases), "rounds": rounds, "largest_body_bytes": max(len(c.body) for c in cases),
            "statuses": statuses, "slowest_ms": round(slowest[0] * 1000, 1), "slowest_case": slowest[1],
            "rss_idle_mb": round(rss0, 1), "peak_rss_before_mb": round(hwm0, 1),
            "peak_rss_after_mb": round(proc_mb(pid, "VmHWM"), 1),
            "peak_rss_growth_mb": round(proc_mb(pid, "VmHWM") - hwm0, 1), "served_after": alive}


def overload(url: str, pid: int, bodies: list[bytes], clients: int, seconds: float, back_off: bool = False) -> dict:
    """Closed-loop load; with `back_off`, a client refused with 503 waits uniform(0, Retry-After) seconds first."""
    import random

    import httpx

    ok_ms, busy_ms, statuses, retry_after = [], [], {}, set()
    lock, stop = threading.Lock(), time.perf_counter() + seconds
    rss0, peak = proc_mb(pid, "VmRSS"), [0.0]
    done = threading.Event()

    def sample() -> None:
        while not done.is_set():
            peak[0] = max(peak[0], proc_mb(pid, "VmRSS"))
            time.sleep(0.02)

    def worker(i: int) -> None:
        with httpx.Client(base_url=url, timeout=60) as c:
            while time.perf_counter() < stop:
                t0 = time.perf_counter()
                try:
                    r = c.post("/v1/detect/features", content=bodies[i % len(bodies)])
                    status = str(r.status_code)
                except httpx.HTTPError as e:
                    status, r = type(e).__name__, None
                dt = (time.perf_counter() - t0) * 1000
                with lock:
                    statuses[status] = statuses.get(status, 0) + 1
                    if status == "200":
                        ok_ms.append(dt)
                    elif status == "503":
                        busy_ms.append(dt)
                        retry_after.add(r.headers.get("retry-after"))
                if status == "503" and back_off:
                    time.sleep(random.uniform(0, float(r.headers.get("retry-after", 1))))

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    t_start = time.perf_counter()
    threads = [threading.Thread(target=worker, args=(i,)) for i in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    elapsed = time.perf_counter() - t_start
    done.set()
    sampler.join()
    total = sum(statuses.values())
    return {"clients": clients, "back_off": back_off, "seconds": round(elapsed, 2), "requests": total,
            "statuses": statuses,
            "share_503": round(statuses.get("503", 0) / total, 4) if total else None,
            "answered_per_s": round(len(ok_ms) / elapsed, 1), "p50_ms_200": percentile(ok_ms, 50),
            "p99_ms_200": percentile(ok_ms, 99), "p50_ms_503": percentile(busy_ms, 50),
            "p99_ms_503": percentile(busy_ms, 99), "retry_after_values": sorted(v for v in retry_after if v),
            "rss_before_mb": round(rss0, 1), "rss_peak_mb": round(peak[0], 1),
            "rss_growth_mb": round(peak[0] - rss0, 1)}


def slow_clients(engine, body: bytes, timeout: float) -> dict:
    import httpx

    from ecc_yolo.serve.server import BackgroundServer, ServerSettings, build_app

    srv = BackgroundServer(build_app(engine, ServerSettings(timeout=timeout))).__enter__()
    host, port = srv.url.rsplit("//", 1)[1].split(":")
    stop = threading.Event()

    def slow_upload() -> socket.socket:
        sock = socket.create_connection((host, int(port)))
        sock.sendall(f"POST /v1/detect/features HTTP/1.1\r\nHost: x\r\nContent-Length: {len(body)}\r\n\r\n".encode()
                     + body[:10])

        def trickle() -> None:
            try:
                while not stop.is_set():
                    sock.sendall(b"x")
                    time.sleep(0.1)
            except OSError:
                pass

        threading.Thread(target=trickle, daemon=True).start()
        return sock

    try:
        t0 = time.monotonic()
        slow = [slow_upload() for _ in range(8)]
        with httpx.Client(base_url=srv.url, timeout=10) as c:
            served = [c.post("/v1/detect/features", content=body).status_code for _ in range(10)]
            served_ms = (time.monotonic() - t0) * 1000
        cut = []
        for sock in slow:
            answer = b""
            while chunk := sock.recv(65536):
                answer += chunk
            cut.append((time.monotonic() - t0, answer.split(b"\r\n", 1)[0].decode()))
        slow = [slow_upload() for _ in range(8)]
        idle = socket.create_connection((host, int(port)))
        half = socket.create_connection((host, int(port)))
        half.sendall(b"POST /v1/detect/features HTTP/1.1\r\nHost: x\r\n")
        time.sleep(0.2)
        shutdown_s = srv.stop()
        idle.close()
        half.close()
    finally:
        stop.set()
        srv.server.should_exit = True
    return {"timeout_s": timeout, "slow_uploads": 8, "served_meanwhile": served, "served_within_ms": round(served_ms),
            "cut_after_s": [round(t, 2) for t, _ in cut], "cut_status": sorted({s for _, s in cut}),
            "shutdown_with_8_slow_1_idle_1_half_open_s": round(shutdown_s, 2)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--cfg", default="cfg/ecc-tiny-11.yaml", help="ECC cfg (untrained weights are fine here)")
    p.add_argument("--imgsz", type=int, default=128)
    p.add_argument("--clients", type=int, default=64)
    p.add_argument("--seconds", type=float, default=15.0, help="overload duration per point")
    p.add_argument("--corpus-rounds", type=int, default=3)
    p.add_argument("--out", default=None, help="also write the JSON here")
    a = p.parse_args()
    os.environ.setdefault("YOLO_OFFLINE", "1")
    sys.path.insert(0, str(REPO / "tests"))  # hostile_corpus

    import cv2
    import numpy as np
    import torch
    from ultralytics.data.augment import LetterBox

    from ecc_yolo.engine.model import ECC
    from ecc_yolo.infer import input_tensor
    from ecc_yolo.payload.codec import encode_features
    from ecc_yolo.serve.engine import CloudEngine
    from ecc_yolo.serve.local import LocalServer

    tmp = Path(tempfile.mkdtemp(prefix="bench_overload_"))
    ckpt = ECC(a.cfg).save(tmp / "ecc.pt")
    model = ECC(str(ckpt)).model.eval()
    lb = LetterBox((a.imgsz, a.imgsz), auto=False, stride=32)
    bodies = []
    with torch.inference_mode():
        for i in range(a.clients):
            shape = (a.imgsz // 2 + i, a.imgsz)
            image = cv2.GaussianBlur((np.random.default_rng(i).random((*shape, 3)) * 255).astype(np.uint8), (0, 0), 3)
            x = input_tensor([lb(image=image)])
            (pl,) = model.payloads_from_features(model.edge_features(x), shape, tuple(x.shape[2:]))
            bodies.append(encode_features(pl))

    result = {"benchmark": "serving under overload and hostile input", "cfg": a.cfg, "imgsz": a.imgsz,
              "date": time.strftime("%Y-%m-%d"),
              "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPU cores, torch "
                         f"{torch.__version__}; server, clients and any other load share the machine"}
    server = LocalServer(ckpt, a.imgsz, tmp / "serve.log").start()
    try:
        result["hostile"] = hostile(server.url, server.proc.pid, bodies[0], a.corpus_rounds)
    finally:
        server.stop()
    print(json.dumps(result["hostile"]), flush=True)
    result["overload"] = []
    small = {"max_concurrency": 12, "max_queue": 4}
    for name, limits, back_off in (("small: max_concurrency=12 max_queue=4", small, False),
                                   ("small: max_concurrency=12 max_queue=4", small, True),
                                   ("defaults: max_concurrency=64 max_queue=256", {}, False)):
        server = LocalServer(ckpt, a.imgsz, tmp / "serve.log", max_batch=8, max_wait_ms=10, **limits).start()
        try:
            overload(server.url, server.proc.pid, bodies, 4, 2.0)  # warm-up
            point = {"server": name, **overload(server.url, server.proc.pid, bodies, a.clients, a.seconds,
                                                back_off)}
        finally:
            server.stop()
        result["overload"].append(point)
        print(json.dumps(point), flush=True)
    result["slow_clients"] = slow_clients(CloudEngine(model, imgsz=a.imgsz), bodies[0], timeout=1.0)
    print(json.dumps(result["slow_clients"]), flush=True)
    print(json.dumps(result, indent=2))
    if a.out:
        Path(a.out).write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
