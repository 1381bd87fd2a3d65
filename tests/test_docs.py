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


def test_readme_headline_figures_equal_the_committed_test_summary():
    """README's figure caption quotes the shipped zoo's test-split summary (docs/benchmarks/), rounded to 3 places:
    a re-measured summary that is not copied into the README fails here."""
    import json

    summary = json.loads((REPO / "docs" / "benchmarks" / "zoo2-test-summary.json").read_text())
    text = " ".join((REPO / "README.md").read_text().split())

    def fig(key: str) -> str:
        lo, hi = summary[f"{key}_ci"]
        return f"{summary[key]:.3f} [{lo:.3f}, {hi:.3f}]"

    quoted = {"edge": fig("edge_map"), "cloud": fig("cloud_map"), "adapted": fig("adapted_map"),
              "extension": fig("extension_map"), "cloud on its JPEG": fig("cloud_jpeg_map")}
    missing = {k: v for k, v in quoted.items() if v not in text}
    assert not missing, f"README does not quote these test-split figures: {missing}"
    assert f"{summary['images']} test images" in text
