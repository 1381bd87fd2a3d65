"""Edge deployment: the device's graph exported to ONNX and OpenVINO matches PyTorch, and its payloads decode on the
server."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from conftest import CFG_DIR, REPO

from ecc_yolo.edge import OnnxEdge, OpenVinoEdge, TorchEdge, export_edge_onnx, export_edge_openvino, load_edge
from ecc_yolo.engine.model import ECC
from ecc_yolo.payload.codec import decode_features, encode_features

# format -> (export function, runtime, output name under the test's folder)
EXPORTS = {"onnx": (export_edge_onnx, OnnxEdge, "edge.onnx"),
           "openvino": (export_edge_openvino, OpenVinoEdge, "edge_openvino_model")}


@pytest.mark.parametrize("fmt", list(EXPORTS))
@pytest.mark.parametrize("cfg", ["ecc-tiny-11.yaml", "ecc-tiny-meanet.yaml", "ecc-tiny-26.yaml"])
def test_exported_edge_matches_pytorch_and_its_payloads_decode_on_the_server(cfg, fmt, tmp_path):
    ecc = ECC(str(CFG_DIR / cfg))
    model = ecc.model.eval()
    torch.manual_seed(0)
    for head in (model.gate, model.router):  # their last layers start at zero: random weights make the check bite
        for p in head.parameters() if head is not None else ():
            p.data.normal_(0, 0.1)
    export, runtime, name = EXPORTS[fmt]
    path = export(model, tmp_path / name, imgsz=128)
    exported, torch_edge = runtime(path), TorchEdge(model)
    assert exported.fingerprint == model.fingerprint() and exported.names == model.names

    x = torch.rand(1, 3, 128, 128, generator=torch.Generator().manual_seed(0))
    a, b = exported.run(x), torch_edge.run(x)
    assert (a.edge - b.edge).abs().max().item() <= 1e-4
    assert np.abs(b.gate).max() > 1e-3 and np.abs(a.gate - b.gate).max() <= 1e-4
    for k in b.latents:
        assert (a.latents[k] - b.latents[k]).abs().max().item() <= 1e-4
    if b.router is not None:
        assert np.abs(a.router - b.router).max() <= 1e-4
        extension = torch_edge.extension(b, torch.tensor([0]))
        assert (exported.extension(a, torch.tensor([0])) - extension).abs().max().item() <= 1e-4

    # the server decodes the exported edge's payload exactly as the PyTorch edge's
    shapes = model.payload_shapes((128, 128))
    received = [decode_features(encode_features(edge.payloads(out, (128, 128), (128, 128))[0]),
                                expected_fingerprint=model.fingerprint(), expected_shapes=shapes)
                for edge, out in ((exported, a), (torch_edge, b))]
    for ta, tb in zip(received[0].tensors, received[1].tensors):
        assert (ta.layer, ta.bits, ta.shape) == (tb.layer, tb.bits, tb.shape)
        same = (ta.codes == tb.codes).mean()
        assert same >= 0.999  # float noise can move a value across a rounding boundary, by one code at most
        assert np.abs(ta.codes.astype(int) - tb.codes.astype(int)).max() <= 1
        step = np.maximum(ta.scale, tb.scale)[:, None, None]
        assert (np.abs(ta.dequantize() - tb.dequantize()) <= step + 1e-4).all()
    with torch.no_grad():
        cuts = [model.decode(model.received_latents([r])) for r in received]
    for k in cuts[0]:
        assert (cuts[0][k] - cuts[1][k]).abs().max().item() <= 0.05 * cuts[1][k].abs().max().item() + 1e-3


def test_export_cli_and_refusal_of_foreign_onnx(tmp_path):
    ECC(str(CFG_DIR / "ecc-tiny-11.yaml")).save(tmp_path / "ecc.pt")
    env = {**os.environ, "YOLO_OFFLINE": "1"}
    r = subprocess.run([sys.executable, "-m", "ecc_yolo", "export", f"model={tmp_path / 'ecc.pt'}", "format=onnx",
                        "imgsz=96"], cwd=REPO, env=env, capture_output=True, text=True, check=False)
    assert r.returncode == 0, r.stderr[-2000:]
    assert OnnxEdge(tmp_path / "ecc-edge.onnx").imgsz == 96
    r = subprocess.run([sys.executable, "-m", "ecc_yolo", "export", f"model={tmp_path / 'ecc.pt'}", "format=tflite"],
                       cwd=REPO, env=env, capture_output=True, text=True, check=False)
    assert r.returncode == 2 and "format=onnx or format=openvino" in r.stderr
    import onnx

    plain = onnx.load(str(tmp_path / "ecc-edge.onnx"))
    del plain.metadata_props[:]
    onnx.save(plain, str(tmp_path / "plain.onnx"))
    with pytest.raises(ValueError, match="not an ecc-yolo edge export"):
        OnnxEdge(tmp_path / "plain.onnx")


def test_openvino_export_cli_and_detect_with_the_folder(synth_video, tmp_path, capsys):
    """`ecc-yolo export format=openvino` writes an IR folder that `ecc-yolo detect model=<folder>` runs; the CLI
    refuses a folder that holds no ecc-yolo export."""
    from ecc_yolo import cli

    ECC(str(CFG_DIR / "ecc-tiny-11.yaml")).save(tmp_path / "ecc.pt")
    assert cli.entrypoint(["export", f"model={tmp_path / 'ecc.pt'}", "format=openvino", "imgsz=96"]) == 0
    folder = tmp_path / "ecc-edge_openvino_model"
    assert sorted(f.name for f in folder.iterdir()) == ["ecc-edge.bin", "ecc-edge.xml"]
    assert load_edge(folder).imgsz == 96 and isinstance(load_edge(folder / "ecc-edge.xml"), OpenVinoEdge)

    def detect(model) -> int:
        return cli.entrypoint(["detect", f"model={model}", f"source={synth_video}", "route=edge",
                               f"project={tmp_path}", "name=d", "exist_ok=True", "verbose=False"])

    assert detect(folder) == 0
    assert len((tmp_path / "d" / "detections.jsonl").read_text().splitlines()) == 30
    (tmp_path / "empty").mkdir()
    capsys.readouterr()
    assert detect(tmp_path / "empty") == 2 and "not an ecc-yolo edge export" in capsys.readouterr().err


def test_refusal_of_a_foreign_openvino_ir(tmp_path):
    """An IR that ecc-yolo did not export (no edge description in its rt_info), or a folder without one .xml."""
    import openvino as ov

    x = ov.opset13.parameter([1, 3, 64, 64], ov.Type.f32, name="images")
    foreign = tmp_path / "foreign_openvino_model"
    ov.save_model(ov.Model([ov.opset13.relu(x)], [x], "foreign"), str(foreign / "foreign.xml"))
    (tmp_path / "empty").mkdir()
    for path in (foreign, foreign / "foreign.xml", tmp_path / "empty"):
        with pytest.raises(ValueError, match="not an ecc-yolo edge export"):
            load_edge(path)
    with pytest.raises(ValueError, match="not an ecc-yolo edge export"):
        OpenVinoEdge(foreign)


@pytest.mark.parametrize("fmt", list(EXPORTS))
def test_detect_with_an_exported_edge_offloads_to_the_server(fmt, serving_ckpt, synth_video, tmp_path):
    """`ecc-yolo detect model=<edge export>`: the device runs the export, the server accepts its payloads."""
    from conftest import ServerProcess

    from ecc_yolo.checkpoint import load_ecc
    from ecc_yolo.serve.client import detect

    model, _ = load_ecc(serving_ckpt)
    export, _, name = EXPORTS[fmt]
    path = export(model, tmp_path / name, imgsz=128)
    with ServerProcess(serving_ckpt, tmp_path / "server.log") as server:
        summary = detect({"model": str(path), "source": str(synth_video), "cloud": server.url,
                          "route": "adapted", "save": True, "project": str(tmp_path), "name": "d", "verbose": False})
    assert summary["frames"] == 30 and summary["routes"]["adapted"] == 30 and summary["fallbacks"] == 0
    lines = (tmp_path / "d" / "detections.jsonl").read_text().splitlines()
    assert len(lines) == 30
