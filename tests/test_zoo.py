"""The model zoo: loading by name, checksum verification, clear errors."""

from __future__ import annotations

import json
import shutil

import pytest
import torch

from ecc_yolo import zoo
from ecc_yolo.engine.model import ECC


def _install(tiny_zoo, folder):
    manifest = json.loads((tiny_zoo / "manifest.json").read_text())
    name = manifest["name"]
    shutil.copyfile(tiny_zoo / f"{name}.pt", folder / f"{name}.pt")
    shutil.copyfile(tiny_zoo / "manifest.json", folder / f"{name}.json")
    return name


@pytest.mark.slow
def test_zoo_model_loads_by_name_runs_every_route_and_is_checked(tiny_zoo, tmp_path, monkeypatch):
    monkeypatch.setenv(zoo.ZOO_ENV, str(tmp_path))
    name = _install(tiny_zoo, tmp_path)
    assert zoo.available() == [name]
    ecc = ECC(name)  # by name, like `yolo11n.pt`, fully offline
    model = ecc.model.eval()
    with torch.no_grad():
        out = model.run_routes(torch.rand(2, 3, 128, 128))
    assert {"edge", "adapted", "cloud", "gate"} <= set(out)
    expected = json.loads((tmp_path / f"{name}.json").read_text())["files"][f"{name}.pt"]["sha256"]
    assert zoo.sha256(tmp_path / f"{name}.pt") == expected

    with open(tmp_path / f"{name}.pt", "ab") as f:
        f.write(b"tampered")
    with pytest.raises(zoo.ZooError, match="does not match its manifest"):
        ECC(name)
    (tmp_path / f"{name}.json").unlink()
    with pytest.raises(zoo.ZooError, match="no manifest"):
        zoo.resolve(name)


def test_zoo_errors_say_what_is_wrong(tmp_path, monkeypatch):
    monkeypatch.setenv(zoo.ZOO_ENV, str(tmp_path))
    with pytest.raises(zoo.ZooError, match="not shipped in this build.*train_zoo.py"):
        ECC("ecc-synth-n-s")
    with pytest.raises(zoo.ZooError, match="unknown zoo name"):
        zoo.resolve("ecc-nonsense")


def test_every_shipped_zoo_entry_matches_its_manifest_within_the_size_limit():
    files = list(zoo.ASSETS.glob("*")) if zoo.ASSETS.is_dir() else []
    assert sum(f.stat().st_size for f in files) <= 40e6  # the package ships at most 40 MB of models
    for manifest in sorted(zoo.ASSETS.glob("*.json")):
        name = manifest.stem
        assert (zoo.ASSETS / f"{name}.pt").is_file(), f"{name}: manifest without checkpoint"
        assert zoo.resolve(name) == zoo.ASSETS / f"{name}.pt"
