"""Evaluation datasets as COCO-format ground truth: a COCO layout, or any Ultralytics data YAML.

Whatever the source, evaluation works on a `EvalDataset`: image files with COCO image ids and sizes, a COCO
ground-truth dict (the 91-id category map of real COCO, `iscrowd`, images without objects are all honoured), the
mapping from the model's class indices to category ids (by name), and each image's difficulty when the data has
one (the synthetic generator records it).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np

COCO_VAL_JSON = Path("annotations") / "instances_val2017.json"
COCO_VAL_IMAGES = "val2017"
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".webp"}


class DatasetError(ValueError):
    """An evaluation dataset that cannot be used: missing files, no images, names that do not match the model."""


@dataclass
class EvalDataset:
    """Images plus COCO ground truth, aligned with a model's classes.

    Attributes:
        files: image paths, in evaluation order.
        image_ids: COCO image id of each file.
        coco: COCO ground-truth dict (images, annotations, categories).
        class_to_cat: model class index -> COCO category id (classes the data does not have are absent).
        difficulty: per image, e.g. "easy" / "hard" / "complex", or None when the data has none.
        source: what was loaded, for reports.
    """

    files: list[Path]
    image_ids: list[int]
    coco: dict[str, Any]
    class_to_cat: dict[int, int]
    difficulty: list[str | None] = field(default_factory=list)
    source: str = ""

    def __len__(self) -> int:
        return len(self.files)

    def fingerprint(self) -> str:
        """Identity of the evaluated images and labels (for cache validity)."""
        import hashlib

        h = hashlib.sha256(json.dumps([str(f) for f in self.files]).encode())
        h.update(json.dumps(self.coco["annotations"], sort_keys=True).encode())
        return h.hexdigest()[:16]


def _norm(name: str) -> str:
    return str(name).strip().lower()


def map_categories(names: dict[int, str], categories: list[dict]) -> dict[int, int]:
    """Model class index -> COCO category id, matching names (case- and space-insensitive); a model with
    Ultralytics' placeholder names ("0", "1", ...) and as many classes as the data takes them in category-id order.

    Raises:
        DatasetError: when some category of the data has no class of the same name in the model.
    """
    if names == {i: str(i) for i in range(len(names))} and len(names) == len(categories):
        # placeholder names (a model built from YAML, never trained): classes are the categories in id order
        return {i: int(c["id"]) for i, c in enumerate(sorted(categories, key=lambda c: c["id"]))}
    by_name = {_norm(v): int(k) for k, v in names.items()}
    unmatched = [c["name"] for c in categories if _norm(c["name"]) not in by_name]
    if unmatched:
        raise DatasetError(
            f"category names of the data do not match the model: {unmatched[:10]}"
            f"{' ...' if len(unmatched) > 10 else ''} have no model class of that name "
            f"(model classes: {list(names.values())[:10]}{' ...' if len(names) > 10 else ''})"
        )
    return {by_name[_norm(c["name"])]: int(c["id"]) for c in categories}


def from_coco_json(images_dir: Path, annotations: Path, names: dict[int, str], max_images: int | None = None,
                   source: str = "") -> EvalDataset:
    """A dataset from a folder of images and a COCO instances JSON."""
    if not annotations.is_file():
        raise DatasetError(f"annotation file '{annotations}' not found")
    if not images_dir.is_dir():
        raise DatasetError(f"image folder '{images_dir}' not found")
    coco = json.loads(annotations.read_text())
    for key in ("images", "annotations", "categories"):
        if key not in coco:
            raise DatasetError(f"'{annotations}' is not a COCO instances file (no '{key}')")
    images = sorted(coco["images"], key=lambda im: im["id"])
    if max_images:
        images = images[:max_images]
    files = [images_dir / im["file_name"] for im in images]
    missing = [str(f) for f in files if not f.is_file()]
    if not files:
        raise DatasetError(f"no images listed in '{annotations}'")
    if missing:
        raise DatasetError(f"{len(missing)} images listed in '{annotations}' are missing, e.g. {missing[0]}")
    keep = {im["id"] for im in images}
    coco = {
        "images": images,
        "annotations": [a for a in coco["annotations"] if a["image_id"] in keep],
        "categories": coco["categories"],
        "info": coco.get("info", {}),
    }
    return EvalDataset(
        files=files,
        image_ids=[int(im["id"]) for im in images],
        coco=coco,
        class_to_cat=map_categories(names, coco["categories"]),
        difficulty=[im.get("difficulty") for im in images],
        source=source or str(annotations),
    )


def from_coco_layout(root: str | Path, names: dict[int, str], max_images: int | None = None) -> EvalDataset:
    """COCO's own layout: `root/val2017/*.jpg` and `root/annotations/instances_val2017.json`."""
    root = Path(root)
    return from_coco_json(root / COCO_VAL_IMAGES, root / COCO_VAL_JSON, names, max_images, source=str(root))


def from_data_yaml(data: str | Path, names: dict[int, str], split: str = "val",
                   max_images: int | None = None) -> EvalDataset:
    """Any Ultralytics data YAML: images of `split` and their YOLO labels, as COCO ground truth.

    A synthetic dataset written by `ecc-yolo synth` carries its own COCO JSON (with per-image difficulty); it is
    used directly.
    """
    from ultralytics.data.utils import check_det_dataset, img2label_paths

    try:
        info = check_det_dataset(str(data))
    except Exception as e:  # Ultralytics raises several types for missing/invalid datasets
        raise DatasetError(f"dataset '{data}' could not be read: {e}") from e
    split_path = info.get(split)
    if not split_path:
        raise DatasetError(f"dataset '{data}' has no '{split}' split")
    coco_json = Path(info["path"]) / "annotations" / f"instances_{split}.json"
    if coco_json.is_file() and Path(split_path).is_dir():
        return from_coco_json(Path(split_path), coco_json, names, max_images, source=str(data))

    files = _list_images(split_path)
    if max_images:
        files = files[:max_images]
    if not files:
        raise DatasetError(f"no images found for split '{split}' of '{data}' ({split_path})")
    data_names = info["names"]
    categories = [{"id": int(k) + 1, "name": v} for k, v in sorted(data_names.items())]
    images, annotations = [], []
    for image_id, (file, label) in enumerate(zip(files, img2label_paths([str(f) for f in files])), start=1):
        h, w = _image_size(file)
        images.append({"id": image_id, "file_name": file.name, "width": w, "height": h})
        rows = np.loadtxt(label, ndmin=2) if Path(label).is_file() and Path(label).stat().st_size else np.zeros((0, 5))
        for cls, cx, cy, bw, bh in rows[:, :5]:
            box = [(cx - bw / 2) * w, (cy - bh / 2) * h, bw * w, bh * h]
            annotations.append({"id": len(annotations) + 1, "image_id": image_id, "category_id": int(cls) + 1,
                                "bbox": [float(x) for x in box], "area": float(box[2] * box[3]), "iscrowd": 0})
    coco = {"images": images, "annotations": annotations, "categories": categories}
    return EvalDataset(files, [im["id"] for im in images], coco, map_categories(names, categories),
                       [None] * len(files), str(data))


def from_boxes(files: list[Path], shapes: list[tuple[int, int]], boxes: list[np.ndarray], classes: list[np.ndarray],
               names: dict[int, str]) -> EvalDataset:
    """A dataset from ground truth already in memory (what a validator's batches carry), in the given order.

    Args:
        files: image paths.
        shapes: (h, w) of each image, pixels.
        boxes: per image, (M, 4) xyxy boxes in its pixels.
        classes: per image, (M,) class indices of the model.
        names: the model's class names (category i + 1 stands for class i).
    """
    categories = [{"id": int(k) + 1, "name": v} for k, v in sorted(names.items())]
    images, annotations = [], []
    for image_id, (file, (h, w), xyxy, cls) in enumerate(zip(files, shapes, boxes, classes), start=1):
        images.append({"id": image_id, "file_name": Path(file).name, "width": int(w), "height": int(h)})
        for (x1, y1, x2, y2), c in zip(np.asarray(xyxy, dtype=np.float64), np.asarray(cls).reshape(-1)):
            box = [float(x1), float(y1), float(x2 - x1), float(y2 - y1)]
            annotations.append({"id": len(annotations) + 1, "image_id": image_id, "category_id": int(c) + 1,
                                "bbox": box, "area": box[2] * box[3], "iscrowd": 0})
    coco = {"images": images, "annotations": annotations, "categories": categories}
    return EvalDataset([Path(f) for f in files], [im["id"] for im in images], coco,
                       {int(k): int(k) + 1 for k in names}, [None] * len(files), "validation batches")


def load_dataset(data: str | Path, names: dict[int, str], max_images: int | None = None) -> EvalDataset:
    """A COCO layout folder or an Ultralytics data YAML."""
    path = Path(data)
    if path.is_dir():
        if (path / COCO_VAL_IMAGES).is_dir() or (path / "annotations").is_dir():
            return from_coco_layout(path, names, max_images)
        raise DatasetError(f"'{data}' is a folder but not a COCO layout ({COCO_VAL_IMAGES}/ + {COCO_VAL_JSON})")
    if path.suffix in (".yaml", ".yml"):
        return from_data_yaml(path, names, max_images=max_images)
    raise DatasetError(f"'{data}' is neither a data YAML nor a COCO layout folder")


def _list_images(split_path: str | list) -> list[Path]:
    paths = split_path if isinstance(split_path, list) else [split_path]
    files: list[Path] = []
    for p in map(Path, paths):
        if p.is_dir():
            files += sorted(f for f in p.rglob("*") if f.suffix.lower() in IMAGE_SUFFIXES)
        elif p.suffix == ".txt" and p.is_file():
            files += [Path(line.strip()) for line in p.read_text().splitlines() if line.strip()]
        elif p.is_file():
            files.append(p)
    return files


def _image_size(file: Path) -> tuple[int, int]:
    image = cv2.imread(str(file))
    if image is None:
        raise DatasetError(f"image '{file}' could not be read")
    return image.shape[:2]
