"""Images without labels, for label-free knowledge adaptation (`ecc-yolo train stage=adapt label_free=True`).

Ultralytics' YOLODataset refuses a training split without label files; adaptation to a new camera or domain has
images only. `ImageOnlyDataset` is that YOLODataset with every image's label empty: the label files on disk, if any,
are never opened, so nothing from them can reach training. Augmentation, caching and batching are Ultralytics'.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from PIL import Image
from ultralytics.data.dataset import YOLODataset
from ultralytics.data.utils import exif_size, get_split_fraction
from ultralytics.utils import colorstr


class ImageOnlyDataset(YOLODataset):
    """A YOLODataset whose images all carry an empty label (see the module docstring)."""

    def get_labels(self) -> list[dict[str, Any]]:
        """One empty label per readable image (shape from the image header, EXIF orientation applied)."""
        labels = []
        for im_file in self.im_files:
            with Image.open(im_file) as im:
                w, h = exif_size(im)
            labels.append({"im_file": im_file, "shape": (h, w), "cls": np.zeros((0, 1), np.float32),
                           "bboxes": np.zeros((0, 4), np.float32), "segments": [], "keypoints": None,
                           "normalized": True, "bbox_format": "xywh"})
        if not labels:
            raise FileNotFoundError(f"no images found for label-free training in {self.img_path}")
        return labels


def build_image_only_dataset(cfg: Any, img_path: str, batch: int | None, data: dict, stride: int,
                             augment: bool = True) -> ImageOnlyDataset:
    """The training split as Ultralytics' `build_yolo_dataset` builds it for detection (augmented, or as for
    validation with `augment=False`), without labels."""
    return ImageOnlyDataset(
        img_path=img_path, imgsz=cfg.imgsz, batch_size=batch, augment=augment, hyp=cfg, rect=cfg.rect,
        cache=cfg.cache or None, single_cls=cfg.single_cls or False, stride=stride, pad=0.0 if augment else 0.5,
        prefix=colorstr("train (no labels): "), task=cfg.task, classes=cfg.classes, data=data,
        fraction=get_split_fraction(cfg.fraction, "train"),
    )
