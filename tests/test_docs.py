"""Documentation that shows commands must run as written."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import REPO


def bash_blocks(markdown: Path) -> list[str]:
    """Every command line of the ```bash blocks of a markdown file, in order."""
    blocks = re.findall(r"```bash\n(.*?)```", markdown.read_text(), flags=re.S)
    return [line for block in blocks for line in block.strip().splitlines() if line.strip()]


def run_as_user(command: str, cwd: Path) -> subprocess.CompletedProcess:
    bin_dir = str(Path(sys.executable).parent)  # where `ecc-yolo` was installed with this interpreter
    env = {**os.environ, "YOLO_OFFLINE": "1", "PATH": f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}"}
    return subprocess.run(["bash", "-c", command], cwd=cwd, env=env, capture_output=True, text=True)


@pytest.mark.slow
def test_training_guide_runs_as_written(tmp_path):
    commands = bash_blocks(REPO / "docs" / "TRAINING.md")
    assert len(commands) >= 8 and commands[0].startswith("ecc-yolo synth")
    for command in commands:
        r = run_as_user(command, tmp_path)
        assert r.returncode == 0, f"{command}\n{r.stdout[-2000:]}\n{r.stderr[-2000:]}"
    for stage in ("cloud", "edge", "adapt", "gate", "joint"):
        assert (tmp_path / "runs" / "ecc" / stage / "weights" / "best.pt").exists()
    assert any((tmp_path / "runs" / "ecc" / "predict").glob("*.jpg"))


def test_readme_starts_with_the_two_commands():
    text = (REPO / "README.md").read_text()
    commands = bash_blocks(REPO / "README.md")
    assert commands[0].startswith('pip install -e ".[dev]"') and "train_zoo.py --tiny" in commands[0]
    assert commands[1].startswith("python -m pytest")
    assert "<!-- test-command -->" in text and shutil.which("bash")
    ci = (REPO / ".ci" / "run").read_text()
    assert "test-command" in ci  # CI takes its test command from README.md
