"""Tests for the synthetic shapes-on-clutter generator (ecc_yolo.data.synthetic)."""

import json
import os

os.environ["YOLO_OFFLINE"] = "1"  # before anything imports ultralytics: never touch the network

import cv2
import numpy as np
import pytest

from ecc_yolo.data import synthetic as syn
from ecc_yolo.data.synthetic import (
    CLASS_NAMES,
    DEFAULT_MIX,
    DIFFICULTIES,
    generate_dataset,
    generate_split,
    generate_video,
    load_video_labels,
    render_frame,
    sample_difficulties,
)

SMALL = 96  # pixels; keeps file tests fast while complex objects stay >= 10 px


def _read_split(root, split):
    coco = json.loads((root / "annotations" / f"instances_{split}.json").read_text())
    return coco, sorted((root / "images" / split).iterdir()), sorted((root / "labels" / split).iterdir())


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    root = tmp_path_factory.mktemp("synth") / "ds"
    yaml_path = generate_dataset(root, train=30, val=20, imgsz=SMALL, seed=3, empty_fraction=0.1, progress=False)
    return root, yaml_path


def test_constants():
    assert len(CLASS_NAMES) == 8 and len(set(CLASS_NAMES)) == 8
    assert DIFFICULTIES == ("easy", "hard", "complex")
    assert DEFAULT_MIX == (0.5, 0.3, 0.2)


def test_render_deterministic():
    for d in DIFFICULTIES:
        a, b = render_frame(7, 3, d), render_frame(7, 3, d)
        assert a.image.dtype == np.uint8 and a.image.shape == (256, 256, 3)
        assert a.boxes.dtype == np.float32 and a.classes.dtype == np.int64 and a.difficulty == d
        assert np.array_equal(a.image, b.image) and np.array_equal(a.boxes, b.boxes)
        assert np.array_equal(a.classes, b.classes)
        assert not np.array_equal(a.image, render_frame(8, 3, d).image)  # other seed
        assert not np.array_equal(a.image, render_frame(7, 4, d).image)  # other index


def test_render_rejects_bad_arguments():
    with pytest.raises(ValueError, match="difficulty"):
        render_frame(0, 0, "medium")
    with pytest.raises(ValueError, match="imgsz"):
        render_frame(0, 0, "easy", imgsz=32)


def _level(version: str, difficulty: str):
    return syn._LEVELS[difficulty] if version == "1.0" else syn._SCENES_V2[difficulty].level


@pytest.mark.parametrize("version", syn.GENERATOR_VERSIONS)
@pytest.mark.parametrize("difficulty", DIFFICULTIES)
def test_levels_counts_sizes_and_bounds(difficulty, version):
    lv, s = _level(version, difficulty), 256
    counts, sides = [], []
    for i in range(40):
        fr = render_frame(11, i, difficulty, s, version=version)
        b = fr.boxes
        assert b.shape == (len(fr.classes), 4)
        assert ((fr.classes >= 0) & (fr.classes < len(CLASS_NAMES))).all()
        assert (b[:, :2] >= 0).all() and (b[:, 2:] <= s).all()
        wh = b[:, 2:] - b[:, :2]
        assert (wh >= 4).all()
        counts.append(len(b))
        sides += wh.max(1).tolist()
        if difficulty == "easy":  # no occlusion, not even box contact
            for j in range(len(b)):
                for k in range(j + 1, len(b)):
                    assert not syn._touch(tuple(b[j]), tuple(b[k]), 0)
    assert lv.count[0] <= min(counts) and max(counts) <= lv.count[1]
    # longer box side within the level's range; the anti-aliased rim adds at most ~1.3 px either way
    assert lv.size[0] * s - 1.5 <= min(sides) and max(sides) <= lv.size[1] * s + 1.5
    assert len(set(counts)) > 1  # counts actually vary


@pytest.mark.parametrize("difficulty", ["hard", "complex"])
def test_occlusion_is_limited_on_masks(difficulty):
    lv, s, worst = syn._LEVELS[difficulty], 256, 0.0
    for i in range(25):
        rng = np.random.default_rng([5, i])
        overlay = syn._overlay_mask(syn._overlay(rng, difficulty, np.full((s, s, 3), 128, np.uint8)), s)
        objs = syn._place_objects(rng, lv, s, lv.count[1], overlay)
        for k, o in enumerate(objs):
            m = o.mask >= 128
            cover = overlay.copy()
            for later in objs[k + 1 :]:
                cover |= later.mask >= 128
            frac = (m & cover).sum() / m.sum()
            assert frac <= lv.occlusion + 1e-9
            worst = max(worst, frac)
    assert worst > 0.05  # occlusion really happens, so the bound above is tested


def test_contrast_control():
    rng = np.random.default_rng(0)
    for lo, hi in ((90, 150), (24, 40)):
        d = []
        for _ in range(200):
            ref = rng.uniform(60, 190, 3).astype(np.float32)
            c = np.array(syn._colour_near(rng, ref, (lo, hi), (10, 30)), np.float32)
            d.append(abs(float((c - ref) @ syn._LUMA)))
        assert np.median(d) > lo and np.percentile(d, 90) <= hi + 1


def test_empty_frame():
    fr = render_frame(0, 0, "complex", empty=True)
    assert fr.boxes.shape == (0, 4) and fr.classes.shape == (0,)
    assert fr.image.std() > 5  # still a cluttered background


def test_sample_difficulties():
    d = sample_difficulties(1000, seed=2)
    assert d == sample_difficulties(1000, seed=2)
    assert [d.count(k) for k in DIFFICULTIES] == [500, 300, 200]
    assert sample_difficulties(37, seed=2) == d[:37]  # prefix-stable
    assert d != sample_difficulties(1000, seed=3)
    assert len({tuple(d[i : i + 10]) for i in range(0, 1000, 10)}) > 10  # blocks shuffled, not one periodic pattern
    for n in range(1, 200):
        c = sample_difficulties(n, mix=(1, 1, 2), seed=0)
        assert abs(c.count("complex") - n / 2) <= 3
    assert set(sample_difficulties(50, mix=(0, 1, 0))) == {"hard"}
    with pytest.raises(ValueError, match="mix"):
        sample_difficulties(10, mix=(0.5, 0.5))
    with pytest.raises(ValueError, match="mix"):
        sample_difficulties(10, mix=(1, -1, 1))


def test_dataset_layout_and_yaml(dataset):
    from ultralytics.utils import YAML

    root, yaml_path = dataset
    assert yaml_path == root.resolve() / "data.yaml"
    data = YAML.load(yaml_path)
    assert data["path"] == str(root.resolve()) and data["train"] == "images/train" and data["val"] == "images/val"
    assert data["nc"] == 8 and data["names"] == dict(enumerate(CLASS_NAMES))
    syn_cfg = data["synthetic"]
    assert syn_cfg["seed"] == 3 and syn_cfg["imgsz"] == SMALL and syn_cfg["counts"] == {"train": 30, "val": 20}
    assert syn_cfg["mix"] == list(DEFAULT_MIX) and syn_cfg["empty_fraction"] == 0.1
    assert syn_cfg["generator_version"] == syn.GENERATOR_VERSION
    for split, n in (("train", 30), ("val", 20)):
        coco, imgs, lbls = _read_split(root, split)
        assert [p.name for p in imgs] == [f"{i:06d}.jpg" for i in range(1, n + 1)]
        assert [p.stem for p in lbls] == [p.stem for p in imgs]
        assert cv2.imread(str(imgs[0])).shape == (SMALL, SMALL, 3)
        assert coco["info"]["split"] == split and coco["info"]["seed"] == 3 and coco["info"]["imgsz"] == SMALL
        # the split's difficulty mix: exact quotas at multiples of 10
        diffs = [im["difficulty"] for im in coco["images"]]
        assert [diffs.count(k) for k in DIFFICULTIES] == [round(n * p) for p in DEFAULT_MIX]


def test_yolo_labels_match_coco(dataset):
    root, _ = dataset
    for split in ("train", "val"):
        coco, imgs, lbls = _read_split(root, split)
        by_img = {}
        for a in coco["annotations"]:
            by_img.setdefault(a["image_id"], []).append(a)
        for im, lbl in zip(coco["images"], lbls):
            assert im["id"] == int(lbl.stem) and im["file_name"] == f"{lbl.stem}.jpg"
            assert im["width"] == im["height"] == SMALL
            rows = [list(map(float, line.split())) for line in lbl.read_text().splitlines()]
            anns = by_img.get(im["id"], [])
            assert len(rows) == len(anns)
            for r, a in zip(rows, anns):
                x, y, w, h = a["bbox"]
                assert int(r[0]) + 1 == a["category_id"]
                yolo = np.array([r[1] - r[3] / 2, r[2] - r[4] / 2, r[3], r[4]]) * SMALL
                assert np.allclose(yolo, [x, y, w, h], atol=1e-3)
                assert x >= 0 and y >= 0 and x + w <= SMALL and y + h <= SMALL and w >= 4 and h >= 4
                assert a["area"] == pytest.approx(w * h) and a["iscrowd"] == 0


def test_pycocotools_loads(dataset):
    from pycocotools.coco import COCO

    root, _ = dataset
    coco = COCO(str(root / "annotations" / "instances_val.json"))
    raw = json.loads((root / "annotations" / "instances_val.json").read_text())
    ids = [a["id"] for a in raw["annotations"]]
    assert len(set(ids)) == len(ids) and min(ids) >= 1
    assert [c["name"] for c in coco.loadCats(coco.getCatIds())] == list(CLASS_NAMES)
    assert all(c["supercategory"] == "shape" for c in raw["categories"])
    for img_id in coco.getImgIds():
        lbl = root / "labels" / "val" / f"{img_id:06d}.txt"
        assert len(coco.getAnnIds(imgIds=[img_id])) == len(lbl.read_text().splitlines())


def test_empty_images(dataset):
    root, _ = dataset
    coco, _, lbls = _read_split(root, "train")
    with_anns = {a["image_id"] for a in coco["annotations"]}
    empty = [im["id"] for im in coco["images"] if im["id"] not in with_anns]
    assert len(empty) == 3  # 10% of 30, Bresenham-spaced
    for i in empty:
        assert (root / "labels" / "train" / f"{i:06d}.txt").read_text() == ""
        assert (root / "images" / "train" / f"{i:06d}.jpg").is_file()
    assert len(with_anns) == 27


def test_check_det_dataset_accepts(dataset):
    from ultralytics.data.utils import check_det_dataset

    root, yaml_path = dataset
    data = check_det_dataset(str(yaml_path))
    assert data["nc"] == 8 and data["names"][7] == CLASS_NAMES[7]
    assert data["train"] == str(root.resolve() / "images" / "train")


def test_split_prefix_determinism_and_independence(tmp_path):
    a = generate_split(tmp_path / "a", "val", 10, imgsz=SMALL, seed=4, progress=False)
    b = generate_split(tmp_path / "b", "val", 30, imgsz=SMALL, seed=4, progress=False)
    a2 = generate_split(tmp_path / "a2", "val", 10, imgsz=SMALL, seed=4, progress=False)
    other = generate_split(tmp_path / "c", "val", 10, imgsz=SMALL, seed=5, progress=False)
    train = generate_split(tmp_path / "a", "train", 10, imgsz=SMALL, seed=4, progress=False)
    ca, cb = json.loads(a.read_text()), json.loads(b.read_text())
    assert ca["images"] == cb["images"][:10]
    assert ca["annotations"] == [x for x in cb["annotations"] if x["image_id"] <= 10]
    for i in range(1, 11):
        name = f"{i:06d}"
        pa, pb = tmp_path / "a" / "images" / "val" / f"{name}.jpg", tmp_path / "b" / "images" / "val" / f"{name}.jpg"
        assert pa.read_bytes() == pb.read_bytes()
        assert pa.read_bytes() == (tmp_path / "a2" / "images" / "val" / f"{name}.jpg").read_bytes()
        lbl = f"labels/val/{name}.txt"
        assert (tmp_path / "a" / lbl).read_text() == (tmp_path / "b" / lbl).read_text()
    assert a.read_text() == a2.read_text()
    assert json.loads(other.read_text())["annotations"] != ca["annotations"]  # other seed
    tr = tmp_path / "a" / "images" / "train"
    assert all((tr / p.name).read_bytes() != p.read_bytes() for p in (tmp_path / "a" / "images" / "val").iterdir())
    assert json.loads(train.read_text())["info"]["split"] == "train"
    generate_split(tmp_path / "b", "val", 5, imgsz=SMALL, seed=4, progress=False)  # shorter rerun: no stale files
    assert len(list((tmp_path / "b" / "images" / "val").iterdir())) == 5
    assert len(list((tmp_path / "b" / "labels" / "val").iterdir())) == 5


def test_reuse_and_regenerate(tmp_path, monkeypatch):
    root = tmp_path / "ds"
    kw = dict(train=6, val=4, imgsz=64, seed=1, progress=False)
    y = generate_dataset(root, **kw)
    outside = tmp_path / "keep.cache"  # next to out_dir: must survive every regeneration
    outside.write_text("x")
    sentinel = root / "images" / "train" / "sentinel.txt"
    sentinel.write_text("x")
    img = root / "images" / "train" / "000001.jpg"
    mtime = img.stat().st_mtime_ns

    calls = []
    real = syn.generate_split
    monkeypatch.setattr(syn, "generate_split", lambda *a, **k: calls.append(a) or real(*a, **k))
    assert generate_dataset(root, **kw) == y  # fast path: nothing regenerated
    assert calls == [] and sentinel.exists() and img.stat().st_mtime_ns == mtime

    (root / "labels" / "train.cache").write_text("stale")
    (root / "extra.cache").write_text("stale")
    generate_dataset(root, **{**kw, "seed": 2})  # different settings: wiped and rebuilt
    assert len(calls) == 2 and not sentinel.exists()
    assert not (root / "labels" / "train.cache").exists() and not (root / "extra.cache").exists()
    assert outside.read_text() == "x"
    assert json.loads((root / "annotations" / "instances_train.json").read_text())["info"]["seed"] == 2

    sentinel.write_text("x")
    generate_dataset(root, **{**kw, "seed": 2}, overwrite=True)  # forced
    assert len(calls) == 4 and not sentinel.exists()


@pytest.mark.parametrize("schedule", [[(8, "easy"), (8, "hard"), (8, "complex")], None])
def test_video(tmp_path, schedule):
    p = generate_video(tmp_path / "clip.mp4", frames=24, fps=10, imgsz=SMALL, schedule=schedule, seed=1, progress=False)
    assert p == tmp_path / "clip.mp4" and (tmp_path / "clip.jsonl").is_file()
    cap = cv2.VideoCapture(str(p))
    n = 0
    while True:
        ok, frame = cap.read()
        if not ok:
            break
        assert frame.shape == (SMALL, SMALL, 3)
        n += 1
    cap.release()
    labels = load_video_labels(p)
    assert n == len(labels) == 24 and [x["frame"] for x in labels] == list(range(24))
    expect = ["easy"] * 8 + ["hard"] * 8 + ["complex"] * 8
    if schedule is None:  # default: easy -> hard -> complex -> easy ... in frames/6 segments
        expect = [DIFFICULTIES[(i // 4) % 3] for i in range(24)]
    assert [x["difficulty"] for x in labels] == expect
    for x in labels:
        b = np.array(x["boxes"], np.float32).reshape(-1, 4)
        lv = _level(syn.GENERATOR_VERSION, x["difficulty"])
        assert lv.count[0] <= len(b) <= lv.count[1] and len(x["classes"]) == len(b)
        assert (b[:, :2] >= 0).all() and (b[:, 2:] <= SMALL).all() and (b[:, 2:] - b[:, :2] >= 4).all()
    for prev, cur in zip(labels, labels[1:]):  # smooth motion within a segment: a few pixels per frame
        if prev["difficulty"] == cur["difficulty"]:
            assert prev["classes"] == cur["classes"]
            assert np.abs(np.array(prev["boxes"]) - np.array(cur["boxes"])).max() <= 4
    assert any(prev["boxes"] != cur["boxes"] for prev, cur in zip(labels, labels[1:]))  # things move
    q = generate_video(tmp_path / "again", frames=24, fps=10, imgsz=SMALL, schedule=schedule, seed=1, progress=False)
    assert q.suffix == ".mp4"
    assert load_video_labels(q) == labels
    assert load_video_labels(tmp_path / "clip.jsonl") == labels


def test_video_schedule_validation(tmp_path):
    bad = [
        ([(10, "easy"), (5, "medium")], "difficulty"),
        ([(10, "easy"), (0, "hard")], "positive"),
        ([(10, "easy"), (-2, "hard"), (4, "hard")], "positive"),
        ([(10, "easy"), (5, "hard")], "covers 15 frames"),
        ([12], "segment"),
    ]
    for schedule, match in bad:
        with pytest.raises(ValueError, match=match):
            generate_video(tmp_path / "v.mp4", frames=12, imgsz=64, schedule=schedule, progress=False)
    with pytest.raises(ValueError, match="frames"):
        generate_video(tmp_path / "v.mp4", frames=0, imgsz=64, progress=False)
    assert not (tmp_path / "v.mp4").exists() and not (tmp_path / "v.jsonl").exists()


# ------------------------------------------------------------------------------------------------ generator versions
def test_version_one_frames_are_unchanged():
    """Generator 1.0 reproduces the first zoo's data bit for bit: frames hashed with the code before 2.0 existed."""
    import hashlib

    h = hashlib.sha256()
    for d in DIFFICULTIES:
        for i in range(3):
            h.update(render_frame(11, i, d, 160, version="1.0").image.tobytes())
    assert h.hexdigest() == "2d05193202f1031a5508168e8cc8fda6892f5e9c8ce6ffec715c26a6b7d27d40"


def test_versions_are_checked_and_recorded(tmp_path):
    assert syn.GENERATOR_VERSION == "2.0" and syn.check_version(1) == "1.0" and syn.check_version("2") == "2.0"
    with pytest.raises(ValueError, match="generator version"):
        syn.check_version("3.0")
    v1 = generate_dataset(tmp_path / "v1", train=4, val=2, imgsz=SMALL, version="1.0", progress=False)
    v2 = generate_dataset(tmp_path / "v2", train=4, val=2, imgsz=SMALL, progress=False)
    from ultralytics.utils import YAML

    assert YAML.load(v1)["synthetic"]["generator_version"] == "1.0"
    assert YAML.load(v2)["synthetic"]["generator_version"] == "2.0"
    a = cv2.imread(str(tmp_path / "v1" / "images" / "train" / "000001.jpg"))
    b = cv2.imread(str(tmp_path / "v2" / "images" / "train" / "000001.jpg"))
    assert not np.array_equal(a, b)


def test_v2_objects_are_spread_over_difficulties_and_stay_resolvable():
    """No difficulty holds more than 40% of the objects (v1: complex frames held 41%), and complex objects keep a
    longer side of at least 10 px at the zoo's 160 px."""
    diffs = sample_difficulties(300, DEFAULT_MIX, seed=4)
    objects, sides = {d: 0 for d in DIFFICULTIES}, {d: [] for d in DIFFICULTIES}
    for i, d in enumerate(diffs):
        fr = render_frame(4, i, d, 160)
        objects[d] += len(fr.boxes)
        sides[d] += (fr.boxes[:, 2:] - fr.boxes[:, :2]).max(1).tolist()
    total = sum(objects.values())
    shares = {d: n / total for d, n in objects.items()}
    assert all(0.2 < v <= 0.40 for v in shares.values()), shares
    assert min(sides["complex"]) >= 10 and np.mean(sides["easy"]) > 2 * np.mean(sides["complex"])


def test_v2_camera_does_not_depend_on_difficulty():
    """Noise and sharpness estimates of v2 frames have the same distribution for every difficulty (v1: noise
    sigma 0 / 6 / 12 by difficulty)."""
    from ecc_yolo.data.difficulty_leak import image_statistics

    for version, same in (("2.0", True), ("1.0", False)):
        noise = {d: np.mean([image_statistics(render_frame(9, i, d, 128, version=version).image)[9:12].mean()
                             for i in range(60)]) for d in DIFFICULTIES}
        spread = (max(noise.values()) - min(noise.values())) / np.mean(list(noise.values()))
        assert (spread < 0.2) == same, (version, noise)


@pytest.mark.slow
def test_leak_check_finds_v1_leak_and_not_v2(tmp_path):
    from ecc_yolo.data.difficulty_leak import leak_check

    v1 = leak_check("1.0", train=240, test=120, imgsz=96, workdir=tmp_path)
    v2 = leak_check("2.0", train=240, test=120, imgsz=96, workdir=tmp_path)
    assert v1["mlp"]["accuracy"] >= 0.95 and v1["logistic"]["accuracy"] >= 0.95
    assert v2["mlp"]["accuracy"] <= v2["mlp"]["majority_share"] + 0.15, v2["mlp"]
