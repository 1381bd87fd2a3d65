#!/usr/bin/env python
"""Rebuild a shipped zoo's run folder up to its edge stage from the shipped checkpoint, so that the later stages
(adapt, extension, gate, val) can be trained again, or ablated, without re-training the cloud and the edge.

    python tools/rebuild_zoo_run.py --model ecc-synth2-q-n-160 --out /work/zoo2-run
    python tools/train_zoo.py --out /work/zoo2-run          # continues at stage=adapt

What it writes, in the layout `tools/train_zoo.py` resumes from (the `--out` must be the run's recorded folder,
since the recorded commands name it):
    data/, test/        the manifest's own synth commands, re-run (the generator is deterministic)
    runs/cloud|edge/weights/best.pt   one checkpoint: the shipped edge and cloud exactly, every part trained after
                        the edge stage (adapters, gate, extension, router) back at freshly built initial weights and
                        the adapted route's tail copy equal to the cloud's tail (what stage=cloud now saves)
    records/*.json      the manifest's records of those steps (their real commands, commits and wall times), each
                        with `rebuilt_from` naming the asset and its sha256, so the new manifest says what happened
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
from pathlib import Path

STAGES_KEPT = ("data", "test", "cloud", "edge")
PARTS_RESET = ("adapters", "gate", "extension", "router")  # trained after the edge stage


def main(argv: list[str] | None = None) -> Path:
    """Write the folder; returns the rebuilt edge-stage checkpoint."""
    import torch

    from ecc_yolo import zoo
    from ecc_yolo.args import command_line
    from ecc_yolo.nn.ecc_model import ECCModel

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default=zoo.DEFAULT_MODEL, help="shipped zoo name")
    p.add_argument("--out", required=True, help="the run folder its manifest records (e.g. /work/zoo2-run)")
    opt = p.parse_args(argv)
    os.environ.setdefault("YOLO_OFFLINE", "1")
    weights = zoo.resolve(opt.model)  # sha256-checked against its manifest
    manifest = json.loads((zoo.ASSETS / f"{opt.model}.json").read_text())
    out = Path(opt.out).resolve()
    records = {e["stage"]: e for e in manifest["commands"]}
    synth = records["data"]["command"].split()
    recorded_out = Path(next(a for a in synth if a.startswith("out=")).split("=", 1)[1]).parent
    if recorded_out != out:
        raise SystemExit(f"--out must be {recorded_out}: the recorded commands name it")

    for stage in ("data", "test"):
        subprocess.run(command_line(*records[stage]["command"].split()[1:]), check=True)

    ckpt = torch.load(weights, map_location="cpu", weights_only=False)
    shipped = (ckpt.get("ema") or ckpt["model"]).float()
    torch.manual_seed(0)
    fresh = ECCModel(shipped.yaml, nc=shipped.nc, verbose=False)
    for part in PARTS_RESET:
        if getattr(shipped, part, None) is not None:
            getattr(shipped, part).load_state_dict(getattr(fresh, part).state_dict())
    shipped.gate_threshold = fresh.gate_threshold
    shipped.sync_tail_copy()
    ckpt.update(model=shipped.half(), ema=None, optimizer=None, updates=None, epoch=-1)
    note = {"asset": f"{opt.model}.pt", "sha256": manifest["files"][f"{opt.model}.pt"]["sha256"],
            "how": f"edge and cloud from the asset; {', '.join(PARTS_RESET)} re-initialised; tail copy = cloud tail"}
    for stage in ("cloud", "edge"):
        best = out / "runs" / stage / "weights" / "best.pt"
        best.parent.mkdir(parents=True, exist_ok=True)
        torch.save(ckpt, best)
    (out / "records").mkdir(parents=True, exist_ok=True)
    for stage in STAGES_KEPT:
        entry = dict(records[stage])
        if stage in ("cloud", "edge"):
            entry["rebuilt_from"] = note
        (out / "records" / f"{stage}.json").write_text(json.dumps(entry, indent=2))
    print(f"rebuilt {out} up to stage=edge from {weights}; continue with: python tools/train_zoo.py --out {out}")
    return out / "runs" / "edge" / "weights" / "best.pt"


if __name__ == "__main__":
    main()
