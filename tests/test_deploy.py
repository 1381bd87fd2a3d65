"""A model's deployment settings (`ecc_yolo.deploy`): one home, resolved once per entry point, the user's key=value
wins; the calibrated default operating point written by stage=gate; what `route=auto` does with it."""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pytest
import torch
from conftest import make_serving_checkpoint, train_args

from ecc_yolo import cli
from ecc_yolo.checkpoint import load_ecc
from ecc_yolo.deploy import (
    ECC_D,
    ECC_D_PLUS,
    ECC_I,
    MARGIN_SHARES,
    MEANET,
    DeploySettings,
    calibrate,
    fit_margin,
    fit_margins,
    model_settings,
    resolve,
)
from ecc_yolo.routes import ADAPTED, CLOUD, ROUTE_CODES

# what the model carries, and what the command line sets instead: every key differs between the two
MODEL_DEPLOY = {"imgsz": 64, "conf": 0.3, "iou": 0.6, "max_det": 50, "router": ECC_I, "margin": 0.01,
                "thresholds": {ECC_D: 0.2, ECC_I: 0.25, ECC_D_PLUS: 0.3}}
CLI_KEYS = {"imgsz": 96, "conf": 0.41, "iou": 0.52, "max_det": 7, "router": ECC_D_PLUS, "gate_threshold": 0.123,
            "margin": 0.07}


class Seen(Exception):
    """Raised by a stand-in component once it has recorded what it was given."""


@pytest.fixture(scope="module")
def deployed_ckpt(tmp_path_factory):
    """A tiny serving checkpoint carrying MODEL_DEPLOY."""
    path = make_serving_checkpoint(tmp_path_factory.mktemp("deploy") / "ecc.pt")
    ckpt = torch.load(path, weights_only=False)
    ckpt["model"].deploy = dict(MODEL_DEPLOY)
    torch.save(ckpt, path)
    return path


def cli_pairs(keys: dict) -> list[str]:
    return [f"{k}={v}" for k, v in keys.items()]


def settings_given(keys: dict) -> DeploySettings:
    """What the stand-in components must have seen: the model's settings, or CLI_KEYS where given."""
    if not keys:
        return DeploySettings(**{**MODEL_DEPLOY, "thresholds": {**MODEL_DEPLOY["thresholds"], MEANET: None}})
    return DeploySettings(imgsz=96, conf=0.41, iou=0.52, max_det=7, router=ECC_D_PLUS, margin=0.07,
                          thresholds={**MODEL_DEPLOY["thresholds"], ECC_D_PLUS: 0.123, MEANET: None})


@pytest.mark.parametrize("keys", [{}, CLI_KEYS], ids=["model's own", "given on the CLI"])
def test_detect_sees_every_deployment_key(deployed_ckpt, synth_video, monkeypatch, keys):
    from ecc_yolo.serve import client

    seen = {}

    def capture(self, model, settings, device="cpu", link=None):
        seen["settings"] = settings
        raise Seen

    monkeypatch.setattr(client.EdgeStreamClient, "__init__", capture)
    with pytest.raises(Seen):
        cli.entrypoint(["detect", f"model={deployed_ckpt}", f"source={synth_video}", "route=auto",
                        "cloud=http://127.0.0.1:9", *cli_pairs(keys)])
    want, s = settings_given(keys), seen["settings"]
    assert s.imgsz == (want.imgsz, want.imgsz) and (s.conf, s.iou, s.max_det) == (want.conf, want.iou, want.max_det)
    assert (s.deploy.router, s.deploy.threshold, s.deploy.margin) == (want.router, want.threshold, want.margin)


@pytest.mark.parametrize("keys", [{}, CLI_KEYS], ids=["model's own", "given on the CLI"])
def test_serve_sees_every_deployment_key_it_uses(deployed_ckpt, monkeypatch, keys):
    from ecc_yolo.serve import run

    seen = {}

    class Engine:
        def __init__(self, model, device="cpu", **kwargs):
            seen.update(kwargs)
            raise Seen

    monkeypatch.setattr(run, "CloudEngine", Engine)
    server_keys = {k: v for k, v in keys.items() if k in ("imgsz", "conf", "iou", "max_det")}
    with pytest.raises(Seen):
        cli.entrypoint(["serve", f"model={deployed_ckpt}", *cli_pairs(server_keys)])
    want = settings_given(keys)
    assert (seen["imgsz"], seen["conf"], seen["iou"], seen["max_det"]) == (want.imgsz, want.conf, want.iou,
                                                                          want.max_det)


@pytest.mark.parametrize("keys", [{}, CLI_KEYS], ids=["model's own", "given on the CLI"])
def test_predict_sees_every_deployment_key(deployed_ckpt, tmp_path, monkeypatch, keys):
    from ecc_yolo.engine.predictor import ECCPredictor

    seen = {}
    original = ECCPredictor.inference

    def capture(self, im, *args, **kwargs):
        seen["args"], seen["shape"] = self.args, tuple(im.shape[2:])
        seen["settings"] = resolve(self.model, self.args)
        return original(self, im, *args, **kwargs)

    monkeypatch.setattr(ECCPredictor, "inference", capture)
    image = tmp_path / "frame.jpg"
    import cv2

    cv2.imwrite(str(image), np.full((80, 80, 3), 127, np.uint8))
    assert cli.entrypoint(["predict", f"model={deployed_ckpt}", f"source={image}", "route=auto",
                           f"project={tmp_path}", "save=False", *cli_pairs(keys)]) == 0
    want, a, s = settings_given(keys), seen["args"], seen["settings"]
    assert max(seen["shape"]) == want.imgsz and (a.conf, a.iou, a.max_det) == (want.conf, want.iou, want.max_det)
    assert (s.router, s.threshold, s.margin) == (want.router, want.threshold, want.margin)


def test_export_and_info_use_the_models_image_size_unless_given(deployed_ckpt, tmp_path, monkeypatch, capsys):
    pytest.importorskip("onnx")
    from ecc_yolo.edge import OnnxEdge

    monkeypatch.chdir(tmp_path)
    for keys, imgsz in (({}, 64), ({"imgsz": 96}, 96)):
        assert cli.entrypoint(["export", f"model={deployed_ckpt}", *cli_pairs(keys)]) == 0
        edge = OnnxEdge(deployed_ckpt.with_name("ecc-edge.onnx"))
        assert edge.imgsz == imgsz == edge.deploy.imgsz and edge.deploy.router == ECC_I  # the settings travel
        capsys.readouterr()
        assert cli.entrypoint(["info", f"model={deployed_ckpt}", "format=json", *cli_pairs(keys)]) == 0
        info = json.loads(capsys.readouterr().out)
        assert info["imgsz"] == imgsz and info["deploy"]["thresholds"][ECC_I] == 0.25


def test_a_model_without_settings_gets_the_fixed_defaults(tiny_ecc):
    s = model_settings(tiny_ecc)
    assert (s.imgsz, s.conf, s.iou, s.max_det, s.router, s.calibration) == (640, 0.25, 0.7, 300, ECC_D, None)
    assert s.threshold == tiny_ecc.gate_threshold
    with pytest.raises(ValueError, match="router=MEANet needs"):
        resolve(tiny_ecc, {"router": MEANET})


def test_calibration_offloads_the_share_under_every_router_and_keeps_the_best_one():
    rng = np.random.default_rng(0)
    gains = rng.normal(size=(200, 2))
    logits = rng.normal(size=(200, 3))
    best = {ECC_I: 0.5}  # map_of below scores ECC_I's decision highest

    def map_of(codes):
        return 0.5 if (codes == ROUTE_CODES[CLOUD]).sum() == 60 and not (codes == ROUTE_CODES[ADAPTED]).any() else 0.1

    s = calibrate(DeploySettings(), gains, logits, 0.3, "validation", maps_of=map_of)
    assert s.calibration["achieved"] == {r: pytest.approx(0.3) for r in (ECC_D, ECC_I, ECC_D_PLUS, MEANET)}
    for router in (ECC_D, ECC_I, ECC_D_PLUS, MEANET):
        assert replace(s, router=router).decide(gains, logits).offloaded.sum() == 60, router
    assert s.router == max(best, key=best.get) and s.calibration["map"][ECC_I] == 0.5
    # ECC_D+: a margin per offload share, the default share's is the one it decides with
    assert len(s.margins) == len(MARGIN_SHARES) and s.margin == s.margins["0.3"] == s.margin_at(0.31)
    assert s.calibration["margin_fitted"] and json.loads(json.dumps(s.as_dict()))["margins"] == s.margins


def test_a_margin_per_offload_share_and_the_users_margin_holds_at_every_share(deployed_ckpt):
    s = DeploySettings(margin=0.03, margins={"0.1": 0.2, "0.5": 0.1, "1": -1.0})
    assert [s.margin_at(r) for r in (0.0, 0.12, 0.45, 0.8, 1.0)] == [0.2, 0.2, 0.1, -1.0, -1.0]
    assert DeploySettings(margin=0.03).margin_at(0.5) == 0.03  # no schedule (uncalibrated): the one margin
    model, _ = load_ecc(deployed_ckpt)
    model.deploy = {**MODEL_DEPLOY, "margins": {"0.1": 0.2, "0.5": 0.1}}
    assert model_settings(model).margin_at(0.5) == 0.1
    assert resolve(model, {"margin": 0.07}).margin_at(0.5) == 0.07


def _gap_seeking_map(noise: float):
    """maps_of for fit_margin: best when about half of the offloaded frames go to the cloud; the 50 resamples move
    each assignment by `noise` x (its feature frames) x a fixed draw, so the standard error of the difference
    between two margins grows with `noise` and with how many frames they send differently."""
    z = np.random.default_rng(2).normal(size=50)

    def maps_of(codes):
        cloud, adapted = (codes == ROUTE_CODES[CLOUD]).sum(), (codes == ROUTE_CODES[ADAPTED]).sum()
        value = -abs(cloud - adapted) / max(cloud + adapted, 1)
        return np.concatenate([[value], value + noise * adapted * z])
    return maps_of


def test_the_fitted_margin_gives_up_mAP_for_features_only_within_tolerance_and_noise():
    rng = np.random.default_rng(1)
    gains = rng.normal(size=(100, 2))
    gap = gains[:, 1] - gains[:, 0]
    best = fit_margin(gains, _gap_seeking_map(0.0), 0.5, tolerance=0.0)
    assert np.quantile(gap, 0.2) < best < np.quantile(gap, 0.8)
    # the split measures every difference exactly (no spread over resamples): the best candidate, whatever the
    # tolerance
    assert fit_margin(gains, _gap_seeking_map(0.0), 0.5, tolerance=10.0) == best
    # differences lost in the resamples' spread: the tolerance decides, the cheaper features win within it
    noisy = _gap_seeking_map(1.0)
    assert fit_margin(gains, noisy, 0.5, tolerance=0.0) == best
    assert fit_margin(gains, noisy, 0.5, tolerance=0.2) > best
    assert fit_margin(gains, noisy, 0.5, tolerance=10.0) > gap.max()  # any score is near enough: never the JPEG
    assert fit_margin(gains, lambda codes: -(codes == ROUTE_CODES[CLOUD]).sum(), 0.5) > gap.max()  # never the JPEG
    assert fit_margin(gains, lambda codes: -(codes == ROUTE_CODES[ADAPTED]).sum(), 0.5) < gap.min()  # always
    margins = fit_margins(gains, noisy, (0.2, 1.0))
    assert set(margins) == {"0.2", "1"} and margins["1"] == fit_margin(gains, noisy, 1.0)


def test_the_gate_stage_saves_an_operating_point_calibrated_on_the_validation_split(synth_data, tmp_path):
    from ecc_yolo.engine.model import ECC

    # a gate whose scores differ between frames (an untrained one predicts 0 for all: no threshold splits ties)
    ecc = ECC(str(make_serving_checkpoint(tmp_path / "start.pt")))
    ecc.train(**train_args(synth_data, tmp_path, stage="gate", name="gate", offload=0.25))
    model, _ = load_ecc(tmp_path / "gate" / "weights" / "best.pt")
    s = model_settings(model)
    assert s.calibration["split"] == "validation" and s.calibration["images"] == 24  # synth_data's val split
    assert s.calibration["offload_share"] == 0.25
    assert all(abs(v - 0.25) <= 1 / 24 + 1e-9 for v in s.calibration["achieved"].values())
    assert s.imgsz == 96 and s.router in (ECC_D, ECC_I, ECC_D_PLUS)


def test_stream_records_say_why_an_offloaded_frame_fell_back(serving_ckpt, synth_video, tmp_path):
    from ecc_yolo.args import get_args
    from ecc_yolo.serve.client import detect

    args = get_args({"model": str(serving_ckpt), "source": str(synth_video), "route": "adapted", "imgsz": 128,
                     "cloud": "http://127.0.0.1:9", "project": str(tmp_path), "name": "run", "save": True,
                     "verbose": False, "timeout": 0.5})
    detect(args)
    records = [json.loads(line) for line in (tmp_path / "run" / "detections.jsonl").read_text().splitlines()]
    assert len(records) == 30 and {r["route"] for r in records} == {"fallback"}
    assert {r["fallback_cause"] for r in records} == {"cloud_unavailable"}
    assert all(set(r) >= {"frame", "route", "bytes_sent", "latency_ms", "fallback_cause"} for r in records)


def test_route_auto_on_the_shipped_zoo_offloads_its_calibrated_share_of_a_new_video(tmp_path):
    """No budget: the share `ecc-yolo info` prints (within 10 points) on a video it was not calibrated on, drawn
    with the validation split's difficulty mix (easy/hard/complex 50/30/20; a threshold follows the content: the
    default video, a third of each, is harder and gets 52% offloaded); a lower gate_threshold= offloads more, a
    budget= holds its own share."""
    from ecc_yolo import zoo
    from ecc_yolo.args import get_args
    from ecc_yolo.data.synthetic import generate_video
    from ecc_yolo.serve.client import detect
    from ecc_yolo.serve.engine import CloudEngine
    from ecc_yolo.serve.server import BackgroundServer, ServerSettings, build_app

    model, _ = load_ecc(zoo.DEFAULT_MODEL)
    s = model_settings(model)
    assert s.calibration is not None and s.calibration["split"] == "validation"
    mix = ["easy"] * 5 + ["hard"] * 3 + ["complex"] * 2  # the validation split's mix, one 6-frame scene each
    schedule = [(6, d) for d in np.random.default_rng(0).permutation(mix * 2)]
    video = generate_video(tmp_path / "held_out.mp4", frames=120, fps=15, imgsz=s.imgsz, seed=20261207,
                           schedule=schedule, progress=False)
    shares = {}
    with BackgroundServer(build_app(CloudEngine(model, imgsz=s.imgsz), ServerSettings())) as server:
        for name, extra in (("default", {}), ("lower threshold", {"gate_threshold": s.threshold - 0.02}),
                            ("budget", {"budget": 0.6})):
            args = get_args({"model": zoo.DEFAULT_MODEL, "source": str(video), "route": "auto", "cloud": server.url,
                             "save": False, "verbose": False, **extra})
            summary = detect(args, model=model, overrides=extra)
            assert summary["fallbacks"] == 0
            shares[name] = summary["offload_ratio"]
    assert abs(shares["default"] - s.calibration["offload_share"]) <= 0.10, shares
    assert shares["lower threshold"] > shares["default"] + 0.05, shares
    assert abs(shares["budget"] - 0.6) <= 0.1, shares


def test_a_trained_model_is_calibrated_from_the_benchmarks_route_outputs(serving_ckpt, synth_data, tmp_path,
                                                                           monkeypatch):
    """tools/calibrate_zoo.py's path: the cloud answers on the JPEG as sent, the route outputs cached and reused."""
    from ecc_yolo.eval import benchmark, cache

    model, _ = load_ecc(serving_ckpt)
    s = benchmark.calibrate_as_sent(model, str(synth_data), 0.33, tmp_path / "cal", batch=8, progress=False)
    assert s.calibration["split"] == "validation" and s.calibration["images"] == 24
    assert s.calibration["offload_share"] == 0.33 and s.calibration["margin_fitted"]
    assert len(s.margins) == len(MARGIN_SHARES) + 1 and s.margin == s.margins["0.33"]  # 0.33 is not on the grid
    assert s.calibration["map"][ECC_I] > 0  # the routers were scored (a JPEG-answered mix, not an empty one)
    assert (tmp_path / "cal" / "cache.npz").is_file()
    monkeypatch.setattr(cache, "run_routes",
                        lambda *a, **k: pytest.fail("the cached route outputs were not reused"))
    again = benchmark.calibrate_as_sent(model, str(synth_data), 0.33, tmp_path / "cal", batch=8, progress=False)
    assert again == s
