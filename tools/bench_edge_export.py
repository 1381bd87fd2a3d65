"""Speed of the edge runtimes: PyTorch, ONNX Runtime and OpenVINO on the same exported edge graph (issue 27).

For a model (default: the shipped zoo `ecc-synth2-q-n-160`) at a fixed input size, frames/s of
`load_edge(...).run(x)` (edge detector, gate, adapter encoders and their latents; no NMS, no payload coding) at batch
1, on the CPU: `TorchEdge` (torch threads = --threads, and 1 thread as a control: on a shared CPU, torch's worker
threads can spin against other processes), `OnnxEdge` (the `format=onnx` export) and `OpenVinoEdge` (the
`format=openvino` export), each warmed up, then timed alternately `--repeats` times for about `--seconds` each; the
median is reported. Writes a JSON and prints a markdown table.

    python tools/bench_edge_export.py --model ecc-synth2-q-n-160 --imgsz 160 --out docs/benchmarks/edge_export_speed.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import tempfile
import time
from importlib.metadata import version
from pathlib import Path

os.environ.setdefault("YOLO_OFFLINE", "1")  # before Ultralytics is imported: no downloads, no update checks


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="ecc-synth2-q-n-160", help="ECC checkpoint or zoo name")
    p.add_argument("--imgsz", type=int, default=160, help="network input size, pixels (the exports are fixed to it)")
    p.add_argument("--seconds", type=float, default=2.0, help="timed seconds per repeat and runtime (>= 5 calls)")
    p.add_argument("--warmup", type=int, default=10, help="untimed calls per runtime first")
    p.add_argument("--repeats", type=int, default=5, help="alternating timed repeats of each runtime")
    p.add_argument("--threads", type=int, default=2, help="torch threads")
    p.add_argument("--out", default=None, help="also write the JSON here")
    a = p.parse_args()

    import numpy as np
    import torch

    from ecc_yolo.checkpoint import load_ecc
    from ecc_yolo.edge import OnnxEdge, OpenVinoEdge, TorchEdge, export_edge_onnx, export_edge_openvino

    torch.set_num_threads(a.threads)
    model, _ = load_ecc(a.model)
    model.eval()
    with tempfile.TemporaryDirectory(prefix="bench_edge_export_") as tmp:  # the runtimes hold what they loaded
        t0 = time.perf_counter()
        onnx_path = export_edge_onnx(model, Path(tmp) / "edge.onnx", imgsz=a.imgsz)
        onnx_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        ov_path = export_edge_openvino(model, Path(tmp) / "edge_openvino_model", imgsz=a.imgsz)
        openvino_s = time.perf_counter() - t0
        torch_edge = TorchEdge(model)
        runtimes = {"pytorch": torch_edge, "pytorch_1thread": torch_edge, "onnxruntime": OnnxEdge(onnx_path),
                    "openvino": OpenVinoEdge(ov_path)}
    torch_threads = {"pytorch": a.threads, "pytorch_1thread": 1}
    x = torch.rand(1, 3, a.imgsz, a.imgsz, generator=torch.Generator().manual_seed(0))

    reference = runtimes["pytorch"].run(x)
    parity = {}  # largest difference from PyTorch on this frame: boxes (pixels), gate gains, latents
    for name, edge in runtimes.items():
        out = edge.run(x)
        parity[name] = {"edge": (out.edge - reference.edge).abs().max().item(),
                        "gate": float(np.abs(out.gate - reference.gate).max()),
                        "latents": max((out.latents[k] - v).abs().max().item() for k, v in reference.latents.items())}

    def timed(name: str, seconds: float, least: int) -> float:
        """Frames/s of `name` over at least `least` calls and `seconds` seconds."""
        torch.set_num_threads(torch_threads.get(name, a.threads))
        n, t0 = 0, time.perf_counter()
        while n < least or time.perf_counter() - t0 < seconds:
            runtimes[name].run(x)
            n += 1
        return n / (time.perf_counter() - t0)

    for name in runtimes:  # warm-up: first-call allocations, thread pools, kernel selection
        timed(name, 0, a.warmup)
    fps: dict[str, list[float]] = {name: [] for name in runtimes}
    for _ in range(a.repeats):
        for name in runtimes:
            fps[name].append(timed(name, a.seconds, 5))
    torch.set_num_threads(a.threads)
    med = {k: statistics.median(v) for k, v in fps.items()}
    result = {
        "benchmark": "edge runtime frames/s, batch 1: load_edge(...).run(x) with latents",
        "model": a.model, "imgsz": a.imgsz, "seconds_per_repeat": a.seconds, "warmup": a.warmup,
        "repeats": a.repeats,
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPU cores",
        "versions": {pkg: version(pkg) for pkg in ("torch", "onnxruntime", "openvino")},
        "threads": {**torch_threads, "onnxruntime": "default (one per physical core)",
                    "openvino": runtimes["openvino"].compiled.get_property("INFERENCE_NUM_THREADS")},
        "export_seconds": {"onnx": round(onnx_s, 2), "openvino": round(openvino_s, 2)},
        "fps_runs": {k: [round(v, 1) for v in vs] for k, vs in fps.items()},
        "fps_median": {k: round(v, 1) for k, v in med.items()},
        "speedup_vs_pytorch": {k: round(v / med["pytorch"], 2) for k, v in med.items()},
        "max_abs_diff_vs_pytorch": {k: {part: float(f"{d:.2e}") for part, d in v.items()} for k, v in parity.items()},
    }
    print(json.dumps(result, indent=2))
    print(f"\n| runtime | frames/s (median of {a.repeats} x {a.seconds:g} s) | ms/frame | vs PyTorch | "
          "max abs diff: boxes (px) |")
    print("|---|---|---|---|---|")
    for k, v in med.items():
        print(f"| {k} | {v:.1f} | {1000 / v:.2f} | {v / med['pytorch']:.2f}x | {parity[k]['edge']:.1e} |")
    if a.out:
        Path(a.out).parent.mkdir(parents=True, exist_ok=True)
        Path(a.out).write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
