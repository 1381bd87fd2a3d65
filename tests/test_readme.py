"""Every code block of README.md runs (slow: it trains, serves and streams).

The blocks run in one scratch folder standing for the clone's root (cfg/ and tools/ linked in), in README order,
as a new user would type them. Four blocks are run elsewhere or with care:
- the first one (install, then `ecc-yolo demo`): tests/test_demo.py runs the demo command exactly as written
  (the package is installed already);
- the test command block: CI runs it (.ci/run reads it from README; tests/test_docs.py checks that);
- the model zoo block (an hour of training): each command runs with `--dry-run`, which parses its arguments and
  prints the plan (the pipeline itself is tested by tests/test_zoo.py and tests/test_training.py);
- the real-COCO block needs a GPU, internet and COCO. It runs with stand-ins: locally built `yolo11n.pt` and
  `yolo11l.pt` (official architectures and class names, untrained), a COCO-named data YAML and a COCO layout made
  of synthetic frames, and CPU settings (device=cpu, imgsz 64, one epoch, batch 8) in place of the GPU ones.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import REPO, run_as_user, user_env

from ecc_yolo.serve.local import wait_healthy

README = REPO / "README.md"
COCO_CPU = {"device=0": "device=cpu", "imgsz=640": "imgsz=64", "epochs=10": "epochs=1", "epochs=3": "epochs=1",
            "batch=32": "batch=8", "--imgsz 640": "--imgsz 64", "--device 0": "--device cpu"}


def blocks() -> list[tuple[str, str]]:
    return re.findall(r"```(\w+)\n(.*?)```", README.read_text(), flags=re.S)


def command_lines(code: str) -> list[str]:
    return [line for line in code.strip().splitlines() if line.strip() and not line.startswith("#")]


def run(command: str, cwd: Path) -> subprocess.CompletedProcess:
    r = run_as_user(command, cwd)
    assert r.returncode == 0, f"{command}\n{r.stdout[-2500:]}\n{r.stderr[-2500:]}"
    return r


def coco_stand_ins(cwd: Path) -> None:
    """Official-architecture checkpoints with COCO names, a COCO-named data YAML and a COCO layout, all local."""
    from copy import deepcopy

    from ultralytics.data.converter import coco80_to_coco91_class
    from ultralytics.nn.tasks import DetectionModel
    from ultralytics.utils import YAML

    from ecc_yolo.data.synthetic import generate_dataset

    coco_names = YAML.load(Path(__import__("ultralytics").__file__).parent / "cfg" / "datasets" / "coco.yaml")["names"]
    for name in ("yolo11n", "yolo11l"):
        model = DetectionModel(f"{name}.yaml", verbose=False)
        model.names = dict(coco_names)
        torch.save({"model": deepcopy(model).half(), "train_args": {}}, cwd / f"{name}.pt")
    data = generate_dataset(cwd / "coco-standin", train=16, val=8, imgsz=64, seed=5, progress=False)
    spec = YAML.load(data)
    spec["names"], spec["nc"] = dict(coco_names), len(coco_names)
    spec.pop("synthetic", None)
    (cwd / "coco-standin" / "annotations").rename(cwd / "coco-standin" / "annotations-synthetic")
    YAML.save(cwd / "coco.yaml", spec)
    layout = cwd / "datasets" / "coco"
    (layout / "annotations").mkdir(parents=True)
    shutil.copytree(cwd / "coco-standin" / "images" / "val", layout / "val2017")
    coco = json.loads((cwd / "coco-standin" / "annotations-synthetic" / "instances_val.json").read_text())
    ids = coco80_to_coco91_class()
    coco["categories"] = [{"id": ids[k], "name": v} for k, v in coco_names.items()]
    for a in coco["annotations"]:
        a["category_id"] = ids[a["category_id"] - 1]
    (layout / "annotations" / "instances_val2017.json").write_text(json.dumps(coco))


@pytest.mark.slow
def test_every_readme_block_runs(tmp_path):
    for folder in ("cfg", "tools"):  # the scratch folder stands for the clone's root, where README's commands run
        (tmp_path / folder).symlink_to(REPO / folder)
    found = blocks()
    kinds = [kind for kind, _ in found]
    assert kinds[:2] == ["bash", "bash"] and "yaml" in kinds and "python" in kinds
    servers: list[subprocess.Popen] = []
    try:
        for kind, code in found:
            lines = command_lines(code)
            if kind == "yaml":
                from ecc_yolo.nn.ecc_model import ECCModel

                (tmp_path / "readme.yaml").write_text(code)
                assert ECCModel(tmp_path / "readme.yaml", verbose=False).cut == [4, 6, 10]
            elif kind == "python":
                run(f"{sys.executable} - <<'EOF'\n{code}\nEOF", tmp_path)
                assert "ECC(" not in code or (tmp_path / "ecc.pt").is_file()  # the other one: a Triton client
            elif lines[0].startswith('pip install -e ".[dev]" && ') or lines[0].startswith("python -m pytest"):
                continue  # the two first commands: tests/test_demo.py runs the demo, CI runs the tests
            elif "tools/train_zoo.py" in code:  # an hour of training: each line is planned (--dry-run), not run
                for line in lines:
                    command = line.split("#")[0].strip()
                    r = run(command if "--dry-run" in command else f"{command} --dry-run", tmp_path)
                    assert "dry run: nothing was run" in r.stdout and r.stdout.count(" runs ") == 8, r.stdout
            elif "coco.yaml" in code:
                coco_stand_ins(tmp_path)
                for line in lines:
                    for gpu, cpu in COCO_CPU.items():
                        line = line.replace(gpu, cpu)
                    run(line, tmp_path)
            else:
                for line in lines:
                    if line.endswith("&"):
                        proc = subprocess.Popen(["bash", "-c", f"exec {line[:-1]}"], cwd=tmp_path, env=user_env(),
                                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
                        servers.append(proc)
                        port = re.search(r"port=(\d+)", line).group(1)
                        assert wait_healthy(f"http://127.0.0.1:{port}", 90, alive=lambda p=proc: p.poll() is None), \
                            f"no server on port {port}"
                    else:
                        run(line, tmp_path)
    finally:
        for proc in servers:
            proc.terminate()
            proc.wait(30)
    assert (tmp_path / "ecc-synth2-q-n-160-edge.onnx").is_file()  # a zoo model exports into the current folder
