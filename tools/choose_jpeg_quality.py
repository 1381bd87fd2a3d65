#!/usr/bin/env python
"""Choose the JPEG quality the device sends (`ecc_yolo.payload.codec.JPEG_QUALITY`) on a VALIDATION split, never the test
split: the codec's rate curve of the model's cloud (`ecc_yolo.eval.rate`), then `choose_quality`'s rule (the cheapest
full-size JPEG within 0.01 mAP50-95 of the cloud on the frame's own pixels).

    python tools/choose_jpeg_quality.py --model runs/zoo/ecc-synth2-q-n-160/runs/cloud/weights/best.pt \\
        --data runs/zoo/ecc-synth2-q-n-160/data/data.yaml --imgsz 160 --out docs/benchmarks/jpeg_quality_choice.json
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path


def main(argv: list[str] | None = None) -> dict:
    """Measure the curve on the data YAML's val split and write the choice with every point."""
    os.environ.setdefault("YOLO_OFFLINE", "1")
    from ecc_yolo.engine.model import ECC
    from ecc_yolo.eval.cache import EVAL_NMS
    from ecc_yolo.eval.coco_eval import RouteMixEvaluator
    from ecc_yolo.eval.dataset import load_dataset
    from ecc_yolo.eval.rate import choose_quality, rate_curve
    from ecc_yolo.infer import detections, input_tensor, route_end2end
    from ecc_yolo.routes import CLOUD

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True)
    p.add_argument("--data", required=True, help="data YAML whose val split is the validation split")
    p.add_argument("--imgsz", type=int, default=160)
    p.add_argument("--out", required=True)
    opt = p.parse_args(argv)
    import cv2
    import torch
    from ultralytics.data.augment import LetterBox

    model = ECC(opt.model).model.eval()
    dataset = load_dataset(opt.data, model.names, None)
    points = rate_curve(model, dataset, opt.imgsz, "cpu", 16)
    letterbox, found = LetterBox(new_shape=(opt.imgsz, opt.imgsz), auto=False), []
    with torch.no_grad():  # the cloud on the frames' own pixels: the reference of the rule
        for f in dataset.files:
            im = cv2.imread(str(f))
            out = model.cloud_forward(input_tensor([letterbox(image=im)], "cpu"))
            found += [d.numpy() for d in detections(out, route_end2end(model)[CLOUD], EVAL_NMS,
                                                    (opt.imgsz, opt.imgsz), [im.shape[:2]])]
    pixels = RouteMixEvaluator(dataset, {CLOUD: found}).route_map(CLOUD)[0]
    chosen = choose_quality(points, pixels)
    result = {"model": opt.model, "data": opt.data, "split": "val", "images": len(dataset), "cloud_on_pixels": pixels,
              "rule": "the cheapest full-size JPEG within 0.01 mAP50-95 of the cloud on the frame's own pixels",
              "chosen": chosen.row(), "points": [q.row() for q in points]}
    Path(opt.out).parent.mkdir(parents=True, exist_ok=True)
    Path(opt.out).write_text(json.dumps(result, indent=2))
    print(f"cloud on pixels {pixels:.3f}; chosen: {chosen.row()}")
    return result


if __name__ == "__main__":
    main()
