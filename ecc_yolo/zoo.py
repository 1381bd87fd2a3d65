"""The model zoo: trained ECC checkpoints shipped with the package, loadable by name, fully offline.

A zoo entry is `<name>.pt` beside `<name>.json` (the manifest `tools/train_zoo.py` writes: sha256 of the file,
generator version and seeds, commands, hardware, wall times, mAP). Loading by name checks the sha256 first.
Entries live in `ecc_yolo/assets/`; the environment variable ECC_YOLO_ZOO names another folder (tests use it for
the tiny CPU zoo).
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

ASSETS = Path(__file__).resolve().parent / "assets"
ZOO_ENV = "ECC_YOLO_ZOO"
KNOWN = {  # names the project documents, whether or not this build ships them; the first is the default model
    "ecc-synth2-q-n-160": "quarter-width YOLO11 edge ('q': scale 0.33/0.125), YOLO11n cloud, adapters, extension "
                          "exit and gate, trained on synthetic data v2 (difficulty only in the scene) at 160 px on 2 "
                          "CPU cores (tools/train_zoo.py)",
    "ecc-synth-q-n-160": "the first CPU zoo: the same models trained on synthetic data v1 (tools/train_zoo.py --preset "
                         "cpu-v1)",
    "ecc-synth-n-s": "YOLO11n edge, YOLO11s cloud, adapters and gate trained on the synthetic data at 256 px on a GPU "
                     "(tools/train_zoo.py --preset gpu)",
}
DEFAULT_MODEL = next(iter(KNOWN))
TRAIN_COMMAND = {"ecc-synth2-q-n-160": "python tools/train_zoo.py --install",
                 "ecc-synth-q-n-160": "python tools/train_zoo.py --preset cpu-v1 --install",
                 "ecc-synth-n-s": "python tools/train_zoo.py --preset gpu --install  # on a GPU machine"}


class ZooError(FileNotFoundError):
    """A zoo name that cannot be loaded: not shipped, manifest missing, or checksum mismatch."""


def zoo_dir() -> Path:
    """Where zoo entries are looked up."""
    return Path(os.environ.get(ZOO_ENV) or ASSETS)


def available() -> list[str]:
    """Names of the entries present in the zoo folder: the documented ones first, in KNOWN's order (the default
    model first), then any others by name."""
    folder = zoo_dir()
    names = {p.stem for p in folder.glob("*.json") if (folder / f"{p.stem}.pt").is_file()}
    order = list(KNOWN)
    return sorted(names, key=lambda n: (order.index(n) if n in order else len(order), n))


def is_zoo_name(name: str) -> bool:
    """Whether `name` looks like a zoo name rather than a path (no suffix, no folder)."""
    return Path(name).suffix == "" and Path(name).name == name and (name in KNOWN or name in available())


def sha256(path: Path) -> str:
    """Hex SHA-256 of a file."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def resolve(name: str) -> Path:
    """The verified checkpoint of zoo entry `name`.

    Raises:
        ZooError: the entry is not shipped, its manifest is missing or malformed, or the file's sha256 differs from
            the manifest's.
    """
    folder = zoo_dir()
    checkpoint, manifest = folder / f"{name}.pt", folder / f"{name}.json"
    if not checkpoint.is_file():
        hint = (
            f"'{name}' is not shipped in this build ({folder} has {available() or 'no entries'}). Train it with "
            f"`{TRAIN_COMMAND[name]}`."
            if name in KNOWN
            else f"unknown zoo name '{name}'; available: {available() or 'none'}"
        )
        raise ZooError(hint)
    if not manifest.is_file():
        raise ZooError(f"zoo entry '{name}' has no manifest {manifest}; cannot verify the checkpoint")
    try:
        expected = json.loads(manifest.read_text())["files"][checkpoint.name]["sha256"]
    except (KeyError, ValueError) as e:
        raise ZooError(f"manifest {manifest} does not list {checkpoint.name}'s sha256") from e
    actual = sha256(checkpoint)
    if actual != expected:
        raise ZooError(
            f"{checkpoint} does not match its manifest (sha256 {actual[:12]}... != {expected[:12]}...): the file is "
            f"corrupted or was replaced; reinstall the package or retrain with tools/train_zoo.py"
        )
    return checkpoint


def generator_version(name: str) -> str:
    """The synthetic generator version zoo entry `name` was trained on (its manifest), or the generator's default
    for a checkpoint path or an entry without one."""
    from ecc_yolo.data.synthetic import GENERATOR_VERSION

    manifest = zoo_dir() / f"{name}.json"
    if not is_zoo_name(name) or not manifest.is_file():
        return GENERATOR_VERSION
    return str(json.loads(manifest.read_text()).get("generator", {}).get("version", GENERATOR_VERSION))
