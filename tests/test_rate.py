"""Rate-accuracy curve of the image route (ecc_yolo/eval/rate.py): settings, real payload sizes, decoded-image
detections, the default-quality rule, CSV and plot."""

from __future__ import annotations

import csv
import itertools

import cv2
import numpy as np
import pytest
import torch

from ecc_yolo.eval import rate
from ecc_yolo.eval.cache import run_routes
from ecc_yolo.eval.coco_eval import RouteMixEvaluator
from ecc_yolo.eval.dataset import load_dataset
from ecc_yolo.eval.rate import (
    JPEG_QUALITIES,
    RatePoint,
    available_codecs,
    choose_quality,
    plot_rate_curve,
    rate_curve,
    transmit,
    write_rate_csv,
)
from ecc_yolo.payload.codec import encode_image, image_codec_available
from ecc_yolo.routes import CLOUD

ZOO_MODEL = "ecc-synth-q-n-160"


@pytest.fixture(scope="module")
def tiny_curve(_tiny_ecc_session, tmp_path_factory):
    """The full default curve of the untrained tiny model on 8 synthetic validation images (96 px)."""
    from ecc_yolo.data.synthetic import generate_dataset

    data = generate_dataset(tmp_path_factory.mktemp("synth8"), train=1, val=8, imgsz=96, seed=0, progress=False)
    dataset = load_dataset(data, _tiny_ecc_session.names)
    return dataset, rate_curve(_tiny_ecc_session, dataset, imgsz=96, device="cpu", batch=8, progress=False)


@pytest.fixture(scope="module")
def easy_frames(tmp_path_factory):
    """20 easy frames of the first zoo's synthetic data (generator v1.0, 160 px) and the zoo model made on it."""
    from ecc_yolo import ECC
    from ecc_yolo.data.synthetic import generate_dataset

    model = ECC(ZOO_MODEL).model.eval()
    data = generate_dataset(tmp_path_factory.mktemp("easy"), train=1, val=20, imgsz=160, mix=(1, 0, 0), seed=1,
                            version="1.0", progress=False)
    return model, load_dataset(data, model.names)


def test_webp_is_available_in_the_installed_opencv():
    assert "jpeg" in available_codecs()
    assert image_codec_available("webp") == ("webp" in available_codecs())
    assert "webp" in available_codecs()  # opencv-python wheels are built with libwebp; the benchmark reports both


def test_one_point_per_setting_with_every_image(tiny_curve):
    dataset, points = tiny_curve
    settings = {(p.codec, p.quality, p.scale) for p in points}
    assert len(points) == len(settings) == len(available_codecs()) * len(JPEG_QUALITIES) * 2
    assert settings == set(itertools.product(available_codecs(), JPEG_QUALITIES, (1.0, 0.75)))
    for p in points:
        assert len(p.detections) == len(p.bytes_per_image) == len(dataset)
        assert (p.bytes_per_image > 0).all()
        assert p.mean_bytes == pytest.approx(p.bytes_per_image.mean())
        assert p.median_bytes == pytest.approx(np.median(p.bytes_per_image))
        assert 0.0 <= p.map <= p.map50 <= 1.0
        assert all(d.dtype == np.float32 and d.ndim == 2 and d.shape[1] == 6 for d in p.detections)
        assert set(p.row()) == {"codec", "quality", "scale", "mean_bytes", "median_bytes", "map", "map50", "images"}


def test_bytes_fall_as_quality_falls_and_with_the_scale(tiny_curve):
    _, points = tiny_curve
    by_setting = {(p.codec, p.quality, p.scale): p for p in points}
    for codec, scale in itertools.product(available_codecs(), (1.0, 0.75)):
        sizes = [by_setting[codec, q, scale].mean_bytes for q in sorted(JPEG_QUALITIES)]
        assert all(a < b for a, b in zip(sizes, sizes[1:])), (codec, scale, sizes)
        if codec == "jpeg":  # libjpeg's sizes fall with quality on every single frame too
            per_image = np.stack([by_setting[codec, q, scale].bytes_per_image for q in sorted(JPEG_QUALITIES)])
            assert (np.diff(per_image, axis=0) > 0).all()
    for codec, q in itertools.product(available_codecs(), JPEG_QUALITIES):
        assert by_setting[codec, q, 0.75].mean_bytes < by_setting[codec, q, 1.0].mean_bytes


def test_transmit_returns_the_real_payload_size_and_a_frame_of_the_network_size():
    rng = np.random.default_rng(0)
    frame = cv2.GaussianBlur(rng.integers(0, 256, (96, 96, 3), dtype=np.uint8), (5, 5), 0)
    decoded, n_bytes = transmit(frame, "jpeg", 50, 1.0)
    assert n_bytes == len(encode_image(frame, "jpeg", 50))
    assert decoded.shape == frame.shape and decoded.dtype == np.uint8
    assert np.abs(decoded.astype(int) - frame).mean() < 20  # a decoded frame, not noise or a flipped one
    small, small_bytes = transmit(frame, "jpeg", 50, 0.75)
    assert small.shape == frame.shape
    shrunk = cv2.resize(frame, (72, 72), interpolation=cv2.INTER_AREA)
    assert small_bytes == len(encode_image(shrunk, "jpeg", 50))
    with pytest.raises(ValueError, match="unknown image codec"):
        transmit(frame, "gif", 50, 1.0)


def _matched_fraction(reference: list[np.ndarray], other: list[np.ndarray], conf: float = 0.5,
                      min_iou: float = 0.8) -> float:
    """Share of the confident reference detections that `other` repeats: a confident detection of the same class
    whose box overlaps by IoU >= min_iou, on the same image."""
    from ultralytics.utils.metrics import box_iou

    found = total = 0
    for ref, oth in zip(reference, other):
        ref, oth = ref[ref[:, 4] >= conf], oth[oth[:, 4] >= conf]
        total += len(ref)
        if len(ref) and len(oth):
            iou = box_iou(torch.from_numpy(ref[:, :4]), torch.from_numpy(oth[:, :4])).numpy()
            same_class = ref[:, 5, None] == oth[None, :, 5]
            found += int(((iou >= min_iou) & same_class).any(axis=1).sum())
    return found / max(total, 1)


def test_quality_90_decoded_frames_give_the_cloud_on_pixels_answers(easy_frames, monkeypatch):
    """On easy frames the trained zoo cloud finds the objects; a quality-90 JPEG must leave its answers almost
    unchanged (the same confident boxes, mAP50-95 within 0.02: quality 10 already costs about 0.03 here), and a
    decode that breaks the frame must not pass the same checks."""
    model, dataset = easy_frames
    pixels = run_routes(model, dataset, 160, 8, torch.device("cpu"), progress=False).detections[CLOUD]

    def q90(**kw) -> RatePoint:
        (point,) = rate_curve(model, dataset, 160, "cpu", codecs=("jpeg",), qualities=(90,), scales=(1.0,),
                              progress=False, **kw)
        return point

    point = q90()
    evaluator = RouteMixEvaluator(dataset, {"pixels": pixels, "q90": point.detections})
    pixel_map, q90_map = evaluator.route_map("pixels")[0], evaluator.route_map("q90")[0]
    assert pixel_map > 0.6  # the model works on these frames: the comparison means something
    assert q90_map == pytest.approx(point.map)
    assert abs(q90_map - pixel_map) < 0.02
    assert _matched_fraction(pixels, point.detections) >= 0.9

    # the same checks fail for a decode that mirrors the frame
    from ecc_yolo.payload import codec

    real_decode = codec.decode_image
    monkeypatch.setattr(codec, "decode_image", lambda data: np.ascontiguousarray(real_decode(data)[::-1]))
    broken = q90()
    assert abs(broken.map - pixel_map) >= 0.02
    assert _matched_fraction(pixels, broken.detections) < 0.9


def _point(codec: str, quality: int, scale: float, n_bytes: float, ap: float) -> RatePoint:
    return RatePoint(codec, quality, scale, mean_bytes=n_bytes, median_bytes=n_bytes, map=ap, map50=ap + 0.2)


HAND_MADE = [
    _point("jpeg", 90, 1.0, 2700, 0.404),
    _point("jpeg", 70, 1.0, 2400, 0.403),
    _point("jpeg", 50, 1.0, 2213, 0.400),
    _point("jpeg", 30, 1.0, 1900, 0.393),  # 0.011 below the cloud: outside a 0.01 tolerance
    _point("jpeg", 10, 1.0, 1200, 0.300),
    _point("jpeg", 50, 0.75, 1500, 0.399),  # qualifies and is cheaper, but not at scale 1.0
    _point("webp", 50, 1.0, 900, 0.401),  # qualifies and is cheaper, but not JPEG
]


def test_choose_quality_picks_the_cheapest_full_size_jpeg_within_the_tolerance():
    assert choose_quality(HAND_MADE, cloud_map=0.404).quality == 50
    assert choose_quality(HAND_MADE, cloud_map=0.404, tolerance=0.02).quality == 30
    assert choose_quality(HAND_MADE, cloud_map=0.404, tolerance=0.0).quality == 90
    assert choose_quality(HAND_MADE, cloud_map=0.2).quality == 10
    assert choose_quality(list(reversed(HAND_MADE)), cloud_map=0.404).quality == 50  # order does not matter


def test_choose_quality_without_a_qualifying_point_takes_the_most_accurate_and_needs_jpeg():
    assert choose_quality(HAND_MADE, cloud_map=0.5).quality == 90
    with pytest.raises(ValueError, match="no JPEG point"):
        choose_quality([p for p in HAND_MADE if p.codec != "jpeg" or p.scale != 1.0], cloud_map=0.4)


def test_csv_and_plot_are_written(tmp_path):
    path = write_rate_csv(HAND_MADE, tmp_path / "rate.csv")
    with path.open() as f:
        rows = list(csv.DictReader(f))
    assert [(r["codec"], int(r["quality"]), float(r["scale"])) for r in rows] == \
        [(p.codec, p.quality, p.scale) for p in HAND_MADE]
    assert [float(r["map"]) for r in rows] == [p.map for p in HAND_MADE]
    png = plot_rate_curve(HAND_MADE, tmp_path / "rate.png", extra_points=[("adapted route (features)", 2696, 0.39)])
    image = cv2.imread(str(png))
    assert image is not None and image.shape[0] > 100
