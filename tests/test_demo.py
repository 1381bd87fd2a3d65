"""`ecc-yolo demo`: README's first command, end to end, re-runnable, and its server never outlives it."""

from __future__ import annotations

import json

import pytest
from conftest import REPO, bash_blocks, run_as_user


@pytest.mark.slow
def test_the_readme_demo_command_runs_on_the_shipped_zoo_then_reruns_with_a_fine_tune(tmp_path):
    """README's first command, minus the install (done): on the shipped zoo, training nothing."""
    from ecc_yolo import zoo

    install, command = bash_blocks(REPO / "README.md")[0].split(" && ")
    assert install == 'pip install -e ".[dev]"' and command == "ecc-yolo demo"
    r = run_as_user(command, tmp_path)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    out = tmp_path / "runs" / "ecc" / "demo"
    for name in ("benchmark/map_vs_offload.png", "benchmark/pareto.png", "benchmark/summary.md",
                 "detect/detections.jsonl", "detect/summary.json", "detect/video.avi"):
        assert (out / name).stat().st_size > 0, name
    assert len((out / "detect" / "detections.jsonl").read_text().splitlines()) == 180  # one record per video frame
    log = r.stdout + r.stderr
    assert "ECC_D mAP50-95" in log and "stream: offload ratio" in log and "annotated video" in log
    assert f"ecc-yolo demo: {zoo.DEFAULT_MODEL} at 160 px" in log and "ecc-yolo train" not in log  # trains nothing
    bench = json.loads((out / "benchmark" / "summary.json").read_text())
    assert bench["cloud_map"] > bench["edge_map"] + 0.05  # a trained zoo: the cloud is clearly the better detector
    stream = json.loads((out / "detect" / "summary.json").read_text())
    from ecc_yolo.checkpoint import load_ecc
    from ecc_yolo.deploy import model_settings

    calibration = model_settings(load_ecc(zoo.DEFAULT_MODEL)[0]).calibration  # the shipped zoo is calibrated
    assert "operating point: calibrated share" in log and f"{calibration['offload_share']:.1%}" in log
    assert abs(stream["offload_ratio"] - calibration["offload_share"]) < 0.15  # its default share, on a new video

    r = run_as_user(f"{command} train=True", tmp_path)  # again, in the same place, with the short fine-tune
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    for name in ("finetune/adapt/weights/best.pt", "finetune/gate/weights/best.pt"):
        assert (out / name).stat().st_size > 0, name
    assert "finetune/gate/weights/best.pt at" in (r.stdout + r.stderr).replace(str(out) + "/", "")
    assert len((out / "detect" / "detections.jsonl").read_text().splitlines()) == 180  # overwritten, not appended


def test_the_demo_server_stops_on_ctrl_c(serving_ckpt, tmp_path):
    from ecc_yolo.serve.local import LocalServer

    server = LocalServer(str(serving_ckpt), 128, tmp_path / "server.log")
    with pytest.raises(KeyboardInterrupt):
        with server:
            assert server.proc.poll() is None
            raise KeyboardInterrupt
    assert server.proc.poll() is not None


def test_the_demo_picks_the_first_shipped_zoo_entry_or_says_how_to_get_one(tmp_path, monkeypatch):
    from ecc_yolo import zoo
    from ecc_yolo.demo import choose_model

    assert choose_model(None) == (zoo.DEFAULT_MODEL, "zoo")  # the package's own assets
    monkeypatch.setenv(zoo.ZOO_ENV, str(tmp_path))
    assert choose_model("given.pt") == ("given.pt", "given")
    with pytest.raises(zoo.ZooError, match="no zoo model is shipped.*tools/train_zoo.py --install"):
        choose_model(None)
    for name in ("ecc-synth-n-s", zoo.DEFAULT_MODEL):  # what `tools/train_zoo.py --install` writes (not read here)
        for suffix in (".pt", ".json"):
            (tmp_path / f"{name}{suffix}").write_bytes(b"")
    assert choose_model(None) == (zoo.DEFAULT_MODEL, "zoo")  # the CPU zoo first
