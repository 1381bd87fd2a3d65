"""Many streams in one edge process against one process per stream (issue 27): frames/s on this machine.

    python tools/bench_streams.py --out /tmp/bench-streams --record docs/benchmarks/streams.json
    python tools/bench_streams.py --streams 1 4 --frames 30 --routes edge      # quick

For each number of streams N and each route: N held-out synthetic videos (generator 2.0, seeds 900+), then
- one process: `ecc-yolo detect source=<list>.streams` (the edge runs on one frame of every stream per tick, one
  link and one budget for all);
- N processes: `ecc-yolo detect source=<video i>` started together.
Reported: the frames of all streams over the wall time from launch to the last exit (what a user waits, imports and
model loading included), and over the streaming time the clients report (their summary's seconds; for N processes
the longest). route=auto streams against one local `ecc-yolo serve` of the same model (its default operating point).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path


def _detect_argv(model: str, source: str, route: str, imgsz: int, out: Path, name: str, cloud: str | None
                 ) -> list[str]:
    argv = [sys.executable, "-m", "ecc_yolo", "detect", f"model={model}", f"source={source}", f"route={route}",
            f"imgsz={imgsz}", "save=True", "verbose=False", f"project={out}", f"name={name}", "exist_ok=True",
            "timeout=30"]
    return argv + ([f"cloud={cloud}"] if cloud else [])


def _run_together(argvs: list[list[str]], out: Path) -> float:
    """Start the commands at once; the wall seconds until the last exits (raises if one fails)."""
    env = {**os.environ, "YOLO_OFFLINE": "1"}
    t0 = time.perf_counter()
    procs = [subprocess.Popen(a, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for a in argvs]
    outputs = [p.communicate()[0] for p in procs]
    seconds = time.perf_counter() - t0
    for p, text in zip(procs, outputs):
        if p.returncode != 0:
            raise RuntimeError(f"detect failed ({p.returncode}):\n{text[-3000:]}")
    return seconds


def measure(model: str, videos: list[Path], route: str, imgsz: int, out: Path, cloud: str | None) -> dict:
    """One row: N streams in one process and in N processes."""
    n = len(videos)
    listing = out / f"n{n}.streams"
    listing.write_text("".join(f"{v}\n" for v in videos))
    one_name = f"{route}-n{n}-one"
    one_wall = _run_together([_detect_argv(model, str(listing), route, imgsz, out, one_name, cloud)], out)
    one = json.loads((out / one_name / "summary.json").read_text())
    names = [f"{route}-n{n}-sep{i}" for i in range(n)]
    sep_wall = _run_together([_detect_argv(model, str(v), route, imgsz, out, nm, cloud)
                              for v, nm in zip(videos, names)], out)
    sep = [json.loads((out / nm / "summary.json").read_text()) for nm in names]
    frames = one["frames"]
    sep_frames, sep_stream_s = sum(s["frames"] for s in sep), max(s["seconds"] for s in sep)
    return {
        "streams": n, "route": route, "frames": frames,
        "one_process": {"wall_s": round(one_wall, 2), "stream_s": one["seconds"],
                        "fps_wall": round(frames / one_wall, 2), "fps_streaming": round(frames / one["seconds"], 2),
                        "offload_ratio": one["offload_ratio"]},
        "separate_processes": {"wall_s": round(sep_wall, 2), "stream_s": sep_stream_s,
                               "fps_wall": round(sep_frames / sep_wall, 2),
                               "fps_streaming": round(sep_frames / sep_stream_s, 2),
                               "offload_ratio": round(sum(s["offload_ratio"] * s["frames"] for s in sep) / sep_frames,
                                                      4)},
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="ecc-synth2-q-n-160")
    p.add_argument("--imgsz", type=int, default=160)
    p.add_argument("--streams", type=int, nargs="+", default=[1, 4, 8])
    p.add_argument("--frames", type=int, default=60, help="frames per stream")
    p.add_argument("--routes", nargs="+", default=["edge", "auto"])
    p.add_argument("--out", default="runs/bench-streams")
    p.add_argument("--record", default=None, help="also write the JSON here")
    opt = p.parse_args()

    from ecc_yolo.data.synthetic import generate_video
    from ecc_yolo.serve.local import LocalServer

    out = Path(opt.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    videos = [generate_video(out / f"cam{i}.mp4", frames=opt.frames, fps=15, imgsz=opt.imgsz, seed=900 + i,
                             progress=False) for i in range(max(opt.streams))]
    rows = []
    for route in opt.routes:
        server = LocalServer(opt.model, imgsz=opt.imgsz, log=out / "server.log") if route != "edge" else None
        try:
            cloud = server.start().url if server else None
            for n in opt.streams:
                rows.append(measure(opt.model, videos[:n], route, opt.imgsz, out, cloud))
                print(json.dumps(rows[-1]), flush=True)
        finally:
            if server:
                server.stop()
    result = {"command": "python " + " ".join(sys.argv), "date": time.strftime("%Y-%m-%d %H:%M"),
              "machine": f"{platform.machine()}, {os.cpu_count()} CPU cores", "frames_per_stream": opt.frames,
              "imgsz": opt.imgsz, "model": opt.model, "rows": rows}
    text = json.dumps(result, indent=2) + "\n"
    (out / "streams.json").write_text(text)
    if opt.record:
        Path(opt.record).write_text(text)
    print("| route | streams | frames | one process: fps (wall) | fps (streaming) | N processes: fps (wall) | "
          "fps (streaming) |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        o, s = r["one_process"], r["separate_processes"]
        print(f"| {r['route']} | {r['streams']} | {r['frames']} | {o['fps_wall']} | {o['fps_streaming']} | "
              f"{s['fps_wall']} | {s['fps_streaming']} |")


if __name__ == "__main__":
    main()
