"""ECC checkpoints: one Ultralytics-style `.pt` that holds the whole model (edge, cloud, adapters, gate, cfg).

The file has the layout of an Ultralytics checkpoint (`{"model": ..., "train_args": ..., "date": ...}`), so
`ultralytics.nn.tasks.load_checkpoint` reads it; the pickled classes live at stable import paths
(`ecc_yolo.nn.ecc_model.ECCModel`, `ecc_yolo.nn.adapters.Adapter`, `ecc_yolo.nn.gate.OffloadGate`,
`ecc_yolo.spec.*`). Checkpoints are trusted files, like Ultralytics'; data from the network never goes through here.
"""

from __future__ import annotations

from copy import deepcopy
from datetime import datetime
from pathlib import Path
from typing import Any

import torch
from ultralytics import __version__ as ULTRALYTICS_VERSION
from ultralytics.nn.tasks import load_checkpoint

from ecc_yolo.nn.ecc_model import ECCModel
from ecc_yolo.version import __version__


def save_ecc(model: ECCModel, path: str | Path, **extra: Any) -> Path:
    """Write `model` as an fp16 ECC checkpoint, with its training args and any `extra` entries."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    snapshot = deepcopy(model).half()
    snapshot.criterion = None
    args = getattr(model, "args", None)
    ckpt = {
        "date": datetime.now().astimezone().isoformat(),
        "version": ULTRALYTICS_VERSION,
        "ecc_yolo_version": __version__,
        "model": snapshot,
        "train_args": dict(vars(args) if hasattr(args, "__dict__") else (args or {})),
        "license": "AGPL-3.0 (ecc-yolo extends Ultralytics YOLO)",
        **extra,
    }
    torch.save(ckpt, path)
    return path


def load_ecc(path: str | Path, device: torch.device | str | None = None) -> tuple[ECCModel, dict]:
    """Load an ECC checkpoint, given as a path or a zoo name (fp32, eval mode).

    Raises:
        TypeError: the file is a checkpoint of something else (e.g. a plain YOLO detector).
        FileNotFoundError: no such file (or a zoo name this build cannot load: `ecc_yolo.zoo.ZooError`).
    """
    from ecc_yolo import zoo

    if zoo.is_zoo_name(str(path)):
        path = zoo.resolve(str(path))
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"ECC checkpoint '{path}' not found")
    model, ckpt = load_checkpoint(path, device=device)
    wrapper, model = model, getattr(model, "student_model", model)  # a distillation wrapper saved mid-training
    model.pt_path = getattr(wrapper, "pt_path", str(path))  # Ultralytics attaches the file's path to what it loaded
    if not isinstance(model, ECCModel):
        raise TypeError(
            f"'{path}' holds a {type(model).__name__}, not an ECC model. A plain YOLO checkpoint can be the edge or "
            f"cloud of an ECC cfg: put it under `edge:` or `cloud:` in the cfg, or pass edge_model=/cloud_model=."
        )
    return model, ckpt

