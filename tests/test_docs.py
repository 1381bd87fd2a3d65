"""Documentation that shows commands must run as written."""

from __future__ import annotations

import shutil

import pytest
from conftest import REPO, bash_blocks, run_as_user


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
    assert commands[0] == 'pip install -e ".[dev]" && ecc-yolo demo'
    assert commands[1].startswith("python -m pytest")
    assert "<!-- test-command -->" in text and shutil.which("bash")
    ci = (REPO / ".ci" / "run").read_text()
    assert "test-command" in ci  # CI takes its test command from README.md
