#!/usr/bin/env python
"""Markdown table of the costs of every shipped ECC cfg (what `ecc-yolo info format=json` reports), for BENCHMARKS.

    python tools/cost_table.py --imgsz 640
"""

from __future__ import annotations

import argparse
import os

os.environ.setdefault("YOLO_OFFLINE", "1")


def main(argv: list[str] | None = None) -> str:
    """Print and return the table."""
    from ecc_yolo.costs import ecc_costs
    from ecc_yolo.nn.ecc_model import ECCModel
    from ecc_yolo.spec import CFG_DIR

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--imgsz", type=int, default=640)
    parser.add_argument("--include-tiny", action="store_true")
    opt = parser.parse_args(argv)
    rows = [
        "| cfg | cut | edge GFLOPs | cloud GFLOPs | cloud tail | adapters (device + cloud) | adapted / cloud "
        "| feature bytes | JPEG bytes | ratio |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for cfg in sorted(CFG_DIR.glob("ecc-*.yaml")):
        if cfg.name.startswith("ecc-tiny") and not opt.include_tiny:
            continue
        c = ecc_costs(ECCModel(cfg, verbose=False), opt.imgsz)
        rows.append(
            f"| {cfg.stem} | {c['cut']} | {c['edge_gflops']:.2f} | {c['cloud_gflops']:.2f} | "
            f"{c['cloud_tail_gflops']:.2f} | {c['adapter_encoder_gflops']:.3f} + {c['adapter_decoder_gflops']:.2f} | "
            f"{c['adapted_gflops_ratio']:.3f} | {c['payload_bytes_features']:,} | {c['payload_bytes_jpeg']:,} | "
            f"{c['payload_bytes_ratio']:.3f} |"
        )
    table = "\n".join(rows)
    print(table)
    return table


if __name__ == "__main__":
    main()
