#!/usr/bin/env python
"""Train the synthetic model zoo end to end with ecc-yolo's own commands, and write its manifest.

    python tools/train_zoo.py --install               # the shipped CPU zoo: 2 CPU cores, under 150 minutes
    python tools/train_zoo.py --preset gpu --install  # the GPU zoo: one H100, ~30 min
    python tools/train_zoo.py --tiny                  # the same pipeline, tiny models on CPU, a few minutes
    python tools/train_zoo.py --dry-run               # what a (re-)run would do: skip, resume or run each step

Re-running the same command continues: finished steps are skipped and an interrupted stage resumes from its last
epoch. The steps and outputs are described in ecc_yolo/zoo_pipeline.py.
"""

from __future__ import annotations

import argparse
from pathlib import Path


def main(argv: list[str] | None = None) -> Path | None:
    """Train the zoo; returns the manifest path (None for a dry run)."""
    from ecc_yolo.zoo_pipeline import DEFAULT_PRESET, PRESETS, train_zoo

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default=DEFAULT_PRESET, choices=sorted(PRESETS),
                        help=f"what to train (default {DEFAULT_PRESET}: the shipped zoo, on CPU)")
    parser.add_argument("--tiny", action="store_true", help="same as --preset tiny (tests, CI)")
    parser.add_argument("--out", default=None, help="output folder (default runs/zoo/<name>); reused to resume")
    parser.add_argument("--device", default=None, help="cpu, or a GPU index such as 0 (default: the preset's)")
    parser.add_argument("--no-distill", action="store_true", help="train the edge without distillation")
    parser.add_argument("--epochs-scale", type=float, default=1.0, help="multiply every stage's epochs")
    parser.add_argument("--install", action="store_true",
                        help="copy the checkpoint and manifest into ecc_yolo/assets/ (ships it with the package)")
    parser.add_argument("--dry-run", action="store_true",
                        help="print what each step would do now (skip, resume or run) and its command; run nothing")
    opt = parser.parse_args(argv)
    return train_zoo(opt.preset, opt.out, opt.device, opt.no_distill, opt.epochs_scale, opt.install, tiny=opt.tiny,
                     dry_run=opt.dry_run)


if __name__ == "__main__":
    main()
