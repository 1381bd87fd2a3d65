#!/usr/bin/env python
"""Give a trained ECC checkpoint its calibrated default operating point (`ecc_yolo.deploy`) without retraining: the
calibration stage=gate runs at each save, applied to a checkpoint trained before it existed or re-fitted (the
shipped zoo), with the cloud answering each frame sent to it on its JPEG, as deployed
(`ecc_yolo.eval.benchmark.calibrate_as_sent`).

    python tools/calibrate_zoo.py --model ecc-synth2-q-n-160 --data runs/zoo/ecc-synth2-q-n-160/data/data.yaml \\
        --cache runs/calibrate --out ecc_yolo/assets/ecc-synth2-q-n-160.pt \\
        --manifest ecc_yolo/assets/ecc-synth2-q-n-160.json

Fits on the data YAML's validation split (the zoo's own, never its test split) at `--share` (default: the
`offload=` default, 0.3), stores the settings in the checkpoint's model and EMA, writes it to --out, and with
--manifest updates the zoo manifest's sha256/bytes and appends a `calibrate` record (command, seconds, code). The
route outputs on the split are cached in --cache (reused for the same model, data and size).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path


def main(argv: list[str] | None = None) -> None:
    """Calibrate and write the checkpoint."""
    import torch

    from ecc_yolo import zoo
    from ecc_yolo.checkpoint import load_ecc
    from ecc_yolo.deploy import OFFLOAD_SHARE
    from ecc_yolo.eval.benchmark import calibrate_as_sent
    from ecc_yolo.zoo_pipeline import code_version

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True, help="checkpoint or zoo name")
    p.add_argument("--data", required=True, help="data YAML whose validation split calibrates")
    p.add_argument("--out", required=True, help="where the calibrated checkpoint is written (may be the input)")
    p.add_argument("--cache", default="runs/calibrate", help="folder for the route outputs on the validation split")
    p.add_argument("--share", type=float, default=OFFLOAD_SHARE)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--manifest", default=None, help="zoo manifest to update (sha256, bytes, a calibrate record)")
    opt = p.parse_args(argv)
    os.environ.setdefault("YOLO_OFFLINE", "1")
    start = time.time()
    path = zoo.resolve(opt.model) if zoo.is_zoo_name(opt.model) else Path(opt.model)
    model, _ = load_ecc(path)
    settings = calibrate_as_sent(model, opt.data, opt.share, opt.cache, opt.batch)
    ckpt = torch.load(path, map_location="cpu", weights_only=False)  # our own checkpoint file, not untrusted input
    for key in ("model", "ema"):
        if ckpt.get(key) is not None:
            ckpt[key].deploy = settings.as_dict()
    out = Path(opt.out)
    torch.save(ckpt, out)
    print(f"calibrated: {settings.describe()}\nwritten: {out}")
    if opt.manifest:
        manifest_path = Path(opt.manifest)
        manifest = json.loads(manifest_path.read_text())
        manifest["files"][out.name] = {"sha256": zoo.sha256(out), "bytes": out.stat().st_size}
        manifest.setdefault("commands", []).append({
            "stage": "calibrate", "command": "python " + " ".join([Path(sys.argv[0]).as_posix(), *(argv or sys.argv[1:])]),
            "seconds": round(time.time() - start, 1), "code": code_version(), "deploy": settings.as_dict()})
        manifest_path.write_text(json.dumps(manifest, indent=2) + "\n")
        print(f"manifest updated: {manifest_path}")


if __name__ == "__main__":
    main()
