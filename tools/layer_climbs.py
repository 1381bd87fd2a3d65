#!/usr/bin/env python
"""Follow `ecc-yolo detect`'s arguments from the command line to the server's answer and count the calls that climb
back up the layers (docs/ARCHITECTURE.md): a function of a lower layer calling one of a higher layer directly.

    python tools/layer_climbs.py

A profiler (`sys.setprofile`, and `threading.setprofile` before the loopback server's threads start) records every
call from one ecc_yolo module into another while `ecc-yolo detect route=auto` streams 12 frames of a synthetic video
of the shipped zoo: once with every frame sent as features, once as JPEGs. Layers are those of tests/test_layers.py.
Calls through objects Ultralytics holds (its loaders, its trainer) are not ecc_yolo-to-ecc_yolo calls and are not
seen. Prints the upward call sites and how many cross-module caller -> callee pairs were seen.
"""

from __future__ import annotations

import os
import sys
import threading
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PACKAGE = str(REPO / "ecc_yolo") + os.sep


def module_of(filename: str) -> str | None:
    """ecc_yolo module name of a source file, None outside the package."""
    if not filename.startswith(PACKAGE):
        return None
    parts = Path(filename[len(PACKAGE):]).with_suffix("").parts
    parts = parts[:-1] if parts[-1] == "__init__" else parts
    return ".".join(parts) or None


def main() -> None:
    """Run the streams under the profiler and print what it saw."""
    os.environ.setdefault("YOLO_OFFLINE", "1")
    sys.path.insert(0, str(REPO / "tests"))
    from test_layers import _layer

    from ecc_yolo import cli
    from ecc_yolo.checkpoint import load_ecc
    from ecc_yolo.data.synthetic import generate_video
    from ecc_yolo.serve.engine import CloudEngine
    from ecc_yolo.serve.server import BackgroundServer, ServerSettings, build_app

    upward: dict[tuple[str, str], int] = {}
    pairs: set[tuple[str, str]] = set()

    def profile(frame, event, arg):
        if event != "call" or frame.f_back is None:
            return
        callee, caller = module_of(frame.f_code.co_filename), module_of(frame.f_back.f_code.co_filename)
        if callee is None or caller is None or callee == caller:
            return
        pairs.add((caller, callee))
        if _layer(caller) < _layer(callee):
            key = (f"{caller}.{frame.f_back.f_code.co_name}", f"{callee}.{frame.f_code.co_name}")
            upward[key] = upward.get(key, 0) + 1

    out = Path("runs/layer_climbs")
    video = generate_video(out / "video.mp4", frames=12, fps=15, imgsz=160, seed=1, progress=False)
    model, _ = load_ecc("ecc-synth2-q-n-160")
    threading.setprofile(profile)
    sys.setprofile(profile)
    try:
        with BackgroundServer(build_app(CloudEngine(model, imgsz=160), ServerSettings())) as server:
            for sent in (["router=ECC_D+", "gate_threshold=-1", "margin=1"],  # every frame as features
                         ["router=ECC_I", "gate_threshold=-1"]):  # every frame as its JPEG
                cli.entrypoint(["detect", "model=ecc-synth2-q-n-160", f"source={video}", "route=auto",
                                f"cloud={server.url}", f"project={out}", "name=run", "exist_ok=True", *sent])
    finally:
        sys.setprofile(None)
        threading.setprofile(None)
    for (caller, callee), n in sorted(upward.items()):
        print(f"upward: {caller} -> {callee} (x{n})")
    print(f"upward call sites: {len(upward)}; cross-module caller -> callee pairs seen: {len(pairs)}")


if __name__ == "__main__":
    main()
