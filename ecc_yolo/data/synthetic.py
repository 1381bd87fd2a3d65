"""Synthetic "shapes on clutter" detection data with image-level difficulty (easy / hard / complex).

Eight classes of coloured geometric shapes are drawn on backgrounds whose clutter, object size, contrast, noise,
blur and occlusion are set by the frame's difficulty, so that a small detector does well on easy frames while hard
and complex frames (small, low-contrast objects in clutter) need a larger one. Everything is a pure function of
integer seeds: no global random state is read or written.

Layout written by `generate_dataset`::

    out_dir/images/{train,val}/{id:06d}.jpg        JPEG quality 95, ids start at 1
    out_dir/labels/{train,val}/{id:06d}.txt        YOLO "cls cx cy w h" (normalised)
    out_dir/annotations/instances_{split}.json     COCO (category_id = class index + 1)
    out_dir/data.yaml                              Ultralytics dataset YAML with a `synthetic:` settings mapping
"""

from __future__ import annotations

import json
import math
import os
import shutil
import zlib
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import cv2
import numpy as np

GENERATOR_VERSIONS: tuple[str, ...] = ("1.0", "2.0")  # 1.0: the first zoo's data (difficulty also in noise/blur)
GENERATOR_VERSION: str = "2.0"  # the default: difficulty only in the scene (see _SCENES_V2)
# No hexagon: at 10-20 px a hexagon differs from a circle by about one pixel, which no detector can resolve
CLASS_NAMES: tuple[str, ...] = ("circle", "ring", "triangle", "square", "star", "cross", "crescent", "arrow")
DIFFICULTIES: tuple[str, ...] = ("easy", "hard", "complex")
DEFAULT_MIX: tuple[float, float, float] = (0.5, 0.3, 0.2)
DOMAINS: tuple[str, ...] = ("source", "dusk")  # "source": what the zoo trains on; others: shifted target domains

_MIN_IMGSZ = 64  # pixels; below this the smallest complex objects cannot keep 4 px boxes
_MIN_SIDE = 10.0  # pixels, floor on an object's longer side so its shorter side stays >= 4 px
_AA_GROWTH = 1.1  # pixels: cv2's anti-aliased fill is ~0.55 px fatter per side than the polygon at 50% coverage
_LUMA = np.array([0.114, 0.587, 0.299], np.float32)  # BGR weights of Y (BT.601)


@dataclass(frozen=True)
class _Level:
    count: tuple[int, int]  # objects per frame, inclusive
    size: tuple[float, float]  # longer box side as a fraction of imgsz
    contrast: tuple[float, float]  # |delta luminance| to the local background, 0-255 scale
    chroma: tuple[float, float]  # extra colour distance at equal luminance, 0-255 scale
    occlusion: float  # largest hidden fraction of an object's area
    noise: float  # Gaussian noise sigma, 0-255 scale
    blur: float  # Gaussian blur sigma, pixels
    cluster: float  # probability an object is placed next to an earlier one (creates occlusion)


_LEVELS = {
    "easy": _Level((1, 3), (0.18, 0.35), (90, 150), (40, 100), 0.0, 0.0, 0.0, 0.0),
    "hard": _Level((3, 6), (0.08, 0.16), (35, 60), (20, 50), 0.3, 6.0, 0.7, 0.3),
    "complex": _Level((5, 12), (0.04, 0.08), (24, 40), (10, 30), 0.5, 12.0, 1.0, 0.35),
}


@dataclass(frozen=True, eq=False)  # eq=False: element-wise array comparison has no single truth value
class Frame:
    """One rendered frame: BGR uint8 image, xyxy float32 boxes in pixels, int64 class ids, difficulty name."""

    image: np.ndarray
    boxes: np.ndarray
    classes: np.ndarray
    difficulty: str


# ----------------------------------------------------------------------------------------------------------- shapes
def _circle_pts(r: float, n: int = 64, cx: float = 0.0, a0: float = 0.0, a1: float = 2 * math.pi) -> np.ndarray:
    t = np.linspace(a0, a1, n, endpoint=(a1 - a0) < 2 * math.pi - 1e-9)
    return np.stack([cx + r * np.cos(t), r * np.sin(t)], 1)


def _crescent() -> list[np.ndarray]:
    d, r = 0.5, 0.85  # bite circle centre offset and radius (unit outer circle); leaves a 0.65-thick crescent
    x = (d * d + 1 - r * r) / (2 * d)
    a, b = math.atan2(math.sqrt(1 - x * x), x), math.atan2(math.sqrt(1 - x * x), x - d)
    outer, bite = _circle_pts(1, 48, 0, a, 2 * math.pi - a), _circle_pts(r, 40, d, b, 2 * math.pi - b)
    return [np.concatenate([outer, bite[::-1]])]


def _unit_shape(cls: int) -> list[np.ndarray]:
    """Contours of class `cls` in unit coordinates (y down); a second contour is a hole."""
    name = CLASS_NAMES[cls]
    if name == "circle":
        return [_circle_pts(1)]
    if name == "ring":
        return [_circle_pts(1), _circle_pts(0.55)[::-1]]
    if name == "triangle":
        return [_circle_pts(1, 3, a0=-math.pi / 2, a1=1.5 * math.pi)]
    if name == "square":
        return [np.array([[-1, -1], [1, -1], [1, 1], [-1, 1]], float)]
    if name == "star":
        t = -math.pi / 2 + np.arange(10) * math.pi / 5
        rad = np.where(np.arange(10) % 2 == 0, 1.0, 0.45)
        return [np.stack([rad * np.cos(t), rad * np.sin(t)], 1)]
    if name == "cross":
        w = 0.3
        q = [(-w, -1), (w, -1), (w, -w), (1, -w), (1, w), (w, w), (w, 1), (-w, 1), (-w, w), (-1, w), (-1, -w), (-w, -w)]
        return [np.array(q, float)]
    if name == "crescent":
        return _crescent()
    # arrow pointing up: wide head, narrow shaft
    return [np.array([[0, -1], [0.75, -0.1], [0.28, -0.1], [0.28, 1], [-0.28, 1], [-0.28, -0.1], [-0.75, -0.1]], float)]


_FREE_ROTATION = {"star", "crescent", "arrow", "circle", "ring"}  # others stay within +-20 deg (square != diamond)


def _shape_contours(rng: np.random.Generator, cls: int, size: float, cx: float, cy: float) -> list[np.ndarray]:
    """Pixel contours of a randomly rotated shape whose box has longer side `size` and centre (cx, cy)."""
    lim = math.pi if CLASS_NAMES[cls] in _FREE_ROTATION else math.radians(20)
    a = rng.uniform(-lim, lim)
    rot = np.array([[math.cos(a), -math.sin(a)], [math.sin(a), math.cos(a)]])
    cs = [c @ rot.T for c in _unit_shape(cls)]
    lo, hi = cs[0].min(0), cs[0].max(0)
    k = (size - _AA_GROWTH) / float((hi - lo).max())
    mid = (lo + hi) / 2
    return [(c - mid) * k + (cx, cy) for c in cs]


def _raster(contours: list[np.ndarray], imgsz: int) -> np.ndarray:
    """Anti-aliased uint8 coverage mask (0-255) of filled contours, 1/16 px vertex precision.

    Contours use pixel-edge coordinates (pixel i spans [i, i + 1]); cv2 puts pixel centres on integers, hence -0.5.
    """
    m = np.zeros((imgsz, imgsz), np.uint8)
    cv2.fillPoly(m, [np.round((c - 0.5) * 16).astype(np.int32) for c in contours], 255, cv2.LINE_AA, 4)
    return m


def _mask_box(mask: np.ndarray) -> tuple[int, int, int, int] | None:
    """Tight xyxy box (pixel edges) of pixels at least half covered, or None if empty."""
    ys, xs = np.nonzero(mask.max(1) >= 128)[0], np.nonzero(mask.max(0) >= 128)[0]
    if not len(ys):
        return None
    return int(xs[0]), int(ys[0]), int(xs[-1]) + 1, int(ys[-1]) + 1


# ------------------------------------------------------------------------------------------------------- background
def _colour_near(rng: np.random.Generator, ref: np.ndarray, dy: tuple[float, float], dc: tuple[float, float]) -> tuple:
    """BGR colour at luminance distance ~dy and extra equal-luminance distance ~dc from `ref` (0-255 scale)."""
    ref = np.asarray(ref, np.float32)
    d = rng.uniform(*dy)
    v = rng.normal(size=3).astype(np.float32)
    v -= (v @ _LUMA) / float(_LUMA @ _LUMA) * _LUMA  # keep the chroma offset luminance-neutral
    v *= rng.uniform(*dc) / (math.sqrt(float(v @ v)) + 1e-9)
    first = -1.0 if rng.random() < 0.5 else 1.0
    # near black or white one direction clips; take the sign that keeps more of the luminance step
    c1, c2 = (np.minimum(np.maximum(ref + sgn * d + v, 0), 255) for sgn in (first, -first))  # np.clip is slow
    gain = [abs(float((c - ref) @ _LUMA)) for c in (c1, c2)]
    return tuple(float(x) for x in (c1 if gain[0] >= min(gain[1], 0.8 * d) else c2))


def _blob_pts(rng: np.random.Generator, cx: float, cy: float, size: float) -> np.ndarray:
    """Irregular, elongated, smooth-edged blob: never round (circle), cornered (square/star) or bitten (crescent)."""
    t = np.linspace(0, 2 * math.pi, 40, endpoint=False)
    r = 1 + sum(rng.uniform(0.08, 0.18) * np.cos(k * t + rng.uniform(0, 2 * math.pi)) for k in (2, 3, 5))
    p = np.stack([r * np.cos(t) * rng.uniform(1.7, 2.6), r * np.sin(t)], 1)
    a = rng.uniform(0, math.pi)
    p = p @ np.array([[math.cos(a), math.sin(a)], [-math.sin(a), math.cos(a)]])
    return p * (size / (p.max(0) - p.min(0)).max()) + (cx, cy)


def _scribble(rng: np.random.Generator, s: int) -> np.ndarray:
    """Thin open random walk; its turns are too irregular to read as a cross or star."""
    n = int(rng.integers(6, 14))
    steps = rng.uniform(0.03, 0.07, n) * s
    ang = rng.uniform(0, 2 * math.pi) + np.cumsum(rng.uniform(-1.2, 1.2, n))
    p = np.cumsum(np.stack([steps * np.cos(ang), steps * np.sin(ang)], 1), 0) + rng.uniform(0, s, 2)
    return np.round(p * 16).astype(np.int32)


def _draw_clutter(rng: np.random.Generator, img: np.ndarray, base: np.ndarray, kind: str, contrast: tuple) -> None:
    """Draw one opaque distractor of `kind` on uint8 `img` in place; never one of the 8 class shapes."""
    s = img.shape[0]
    col = _colour_near(rng, base, contrast, (10, 60))
    if kind == "line":
        p = np.round(rng.uniform(-0.2, 1.2, 4) * s * 16).astype(int)
        cv2.line(img, (p[0], p[1]), (p[2], p[3]), col, int(rng.integers(1, 3)), cv2.LINE_AA, 4)
    elif kind == "scribble":
        cv2.polylines(img, [_scribble(rng, s)], False, col, int(rng.integers(1, 3)), cv2.LINE_AA, 4)
    elif kind == "arc":  # radius >= 12% of imgsz, well above object sizes, and open: not a ring or crescent
        c = (int(rng.uniform(0, s) * 16), int(rng.uniform(0, s) * 16))
        r = int(rng.uniform(0.12, 0.35) * s * 16)
        a0 = rng.uniform(0, 360)
        cv2.ellipse(img, c, (r, r), 0, a0, a0 + rng.uniform(40, 180), col, int(rng.integers(1, 3)), cv2.LINE_AA, 4)
    else:  # big (hard) or object-sized (complex) irregular blob
        size = rng.uniform(0.15, 0.4) * s if kind == "bigblob" else rng.uniform(0.06, 0.2) * s
        pts = _blob_pts(rng, rng.uniform(0, s), rng.uniform(0, s), size)
        cv2.fillPoly(img, [np.round(pts * 16).astype(np.int32)], col, cv2.LINE_AA, 4)


_CLUTTER = {  # (kind, count range) drawn under the objects
    "easy": (),
    "hard": (("bigblob", (3, 6)), ("line", (4, 9)), ("scribble", (1, 3))),
    "complex": (("bigblob", (3, 6)), ("blob", (6, 12)), ("line", (5, 10)), ("scribble", (8, 16)), ("arc", (3, 7))),
}
_OVERLAY = {"easy": (0, 0), "hard": (0, 2), "complex": (2, 5)}  # thin scribbles drawn over the objects


def _background(rng: np.random.Generator, difficulty: str, s: int) -> np.ndarray:
    """uint8 BGR background: gentle gradient (easy) or low-frequency texture plus distractor clutter."""
    easy = difficulty == "easy"
    # mid-range base with headroom: clipped channels would flatten contrast and noise
    base = np.clip(rng.uniform(50, 200) + rng.normal(0, 12 if easy else 25, 3), 35, 220).astype(np.float32)
    # gradient and texture are built on a coarse grid and upsampled once (one full-size pass instead of several)
    g = {"easy": 2, "hard": 4, "complex": 8}[difficulty]
    a = rng.uniform(0, 2 * math.pi)
    ramp = np.linspace(-0.5, 0.5, g, dtype=np.float32)
    ramp = math.cos(a) * ramp[None, :] + math.sin(a) * ramp[:, None]
    amp = rng.uniform(0, 30 if easy else 60) * (rng.random() < 0.6)  # 40% of easy backgrounds are plain
    grid = base + ramp[..., None] * amp * rng.uniform(0.6, 1.0, 3).astype(np.float32)
    if not easy:  # random field, mostly luminance with a little colour, upsampled into soft cloud-like texture
        grid += (rng.normal(0, 14, (g, g, 1)) + rng.normal(0, 6, (g, g, 3))).astype(np.float32)
    if not easy:  # cubic to an intermediate size, then linear: smooth like full cubic at a tenth of the cost
        grid = cv2.resize(grid, (32, 32), interpolation=cv2.INTER_CUBIC)
    img = cv2.resize(grid, (s, s), interpolation=cv2.INTER_LINEAR)
    img = np.clip(img, 0, 255, out=img).astype(np.uint8)
    for kind, (lo, hi) in _CLUTTER[difficulty]:
        for _ in range(int(rng.integers(lo, hi + 1))):
            _draw_clutter(rng, img, base, kind, (15, 60) if kind == "bigblob" else (10, 45))
    return img


# ----------------------------------------------------------------------------------------------------------- scenes
@dataclass
class _Obj:
    cls: int
    contours: list[np.ndarray]
    mask: np.ndarray  # uint8 coverage, full image
    box: tuple[int, int, int, int]
    colour: tuple = ()


def _touch(a: tuple, b: tuple, gap: int) -> bool:
    return a[0] < b[2] + gap and b[0] < a[2] + gap and a[1] < b[3] + gap and b[1] < a[3] + gap


def _layout_ok(objs: list[_Obj], changed: int, overlay: np.ndarray, limit: float) -> bool:
    """Whether object `changed` (just placed or moved) keeps the level's occlusion rule for every object.

    Objects are drawn in list order under the overlay marks. Easy (limit 0) keeps boxes 3 px apart; otherwise each
    object's hidden fraction, counted on masks, stays <= limit. Only objects touching `changed` can be affected.
    """
    c = objs[changed]
    if limit == 0:
        return not any(_touch(o.box, c.box, 3) for o in objs if o is not c)
    for k in (k for k, o in enumerate(objs) if o is c or _touch(o.box, c.box, 0)):
        x1, y1, x2, y2 = objs[k].box
        m = objs[k].mask[y1:y2, x1:x2] >= 128
        cover = overlay[y1:y2, x1:x2].copy()
        for o in objs[k + 1 :]:
            if _touch(o.box, objs[k].box, 0):
                cover |= o.mask[y1:y2, x1:x2] >= 128
        if (m & cover).sum() > limit * m.sum():
            return False
    return True


def _make_obj(cls: int, contours: list[np.ndarray], s: int) -> _Obj | None:
    """Rasterised object, or None if it leaves the image or its box is under 4 px on a side."""
    lo, hi = contours[0].min(0), contours[0].max(0)
    if lo.min() < 2 or hi.max() > s - 2:  # 2 px: the drawn rim reaches ~1.3 px past the polygon
        return None
    mask = _raster(contours, s)
    box = _mask_box(mask)
    if box is None or box[2] - box[0] < 4 or box[3] - box[1] < 4:
        return None
    return _Obj(cls, contours, mask, box)


def _place_objects(rng: np.random.Generator, lv: _Level, s: int, n: int, overlay: np.ndarray,
                   classes: Sequence[int] | None = None) -> list[_Obj]:
    """Sample up to `n` objects (drawing order) fully inside the image and within the level's occlusion limit;
    classes uniformly from `classes` (default: all)."""
    lo_px = max(lv.size[0] * s, _MIN_SIDE)
    hi_px = max(lv.size[1] * s, lo_px)
    objs: list[_Obj] = []
    for _ in range(n):
        for _try in range(200):  # resample rather than label an over-occluded or clipped object
            cls = int(rng.integers(len(CLASS_NAMES))) if classes is None else classes[int(rng.integers(len(classes)))]
            size = rng.uniform(lo_px, hi_px)
            if objs and rng.random() < lv.cluster:  # near an earlier object, to create real occlusion
                ref = objs[int(rng.integers(len(objs)))].box
                cx, cy = np.array([ref[0] + ref[2], ref[1] + ref[3]]) / 2 + rng.normal(0, size * 0.8, 2)
            else:
                cx, cy = rng.uniform(0, s, 2)
            o = _make_obj(cls, _shape_contours(rng, cls, size, cx, cy), s)
            if o is None:
                continue
            objs.append(o)
            if _layout_ok(objs, len(objs) - 1, overlay, lv.occlusion):
                break
            objs.pop()
    return objs


def _overlay(rng: np.random.Generator, difficulty: str, bg: np.ndarray) -> list[tuple[np.ndarray, int, tuple]]:
    """Thin scribbles (points, thickness, colour) to draw over the objects; they count as occluders."""
    lo, hi = _OVERLAY[difficulty]
    base = bg.reshape(-1, 3).mean(0)
    return [(_scribble(rng, bg.shape[0]), int(rng.integers(1, 3)), _colour_near(rng, base, (10, 45), (10, 60)))
            for _ in range(int(rng.integers(lo, hi + 1)))]


def _overlay_mask(items: list[tuple[np.ndarray, int, tuple]], s: int) -> np.ndarray:
    m = np.zeros((s, s), np.uint8)
    for pts, t, _ in items:
        cv2.polylines(m, [pts], False, 255, t, cv2.LINE_AA, 4)
    return m >= 128


def _paint(img: np.ndarray, o: _Obj) -> None:
    """Alpha-composite object `o` onto uint8 `img` in place, anti-aliased rim included."""
    x1, y1, x2, y2 = max(o.box[0] - 1, 0), max(o.box[1] - 1, 0), o.box[2] + 1, o.box[3] + 1
    a = o.mask[y1:y2, x1:x2, None].astype(np.float32) / 255
    patch = img[y1:y2, x1:x2].astype(np.float32)
    img[y1:y2, x1:x2] = (patch + (np.array(o.colour, np.float32) - patch) * a + 0.5).astype(np.uint8)


def _pick_colours(rng: np.random.Generator, lv: _Level, bg: np.ndarray, objs: list[_Obj]) -> None:
    """Colour each object at the level's contrast to what lies under it (background and earlier objects)."""
    canvas = bg.copy()
    for o in objs:
        x1, y1, x2, y2 = o.box
        under = canvas[y1:y2, x1:x2][o.mask[y1:y2, x1:x2] >= 128]
        o.colour = _colour_near(rng, under.mean(0), lv.contrast, lv.chroma)
        _paint(canvas, o)


def _compose(rng: np.random.Generator, difficulty: str, bg: np.ndarray, objs: list[_Obj], overlay: list,
             lv: _Level | None = None) -> Frame:
    """Draw objects in order on a copy of `bg`, then overlay marks, the level's blur and sensor noise (v1; v2 levels
    have none: its camera comes after, see _apply_camera)."""
    lv, img = lv or _LEVELS[difficulty], bg.copy()
    for o in objs:
        _paint(img, o)
    for pts, t, colour in overlay:
        cv2.polylines(img, [pts], False, colour, t, cv2.LINE_AA, 4)
    if lv.blur:  # optics first, then sensor noise
        img = cv2.GaussianBlur(img, (0, 0), lv.blur)
    if lv.noise:  # per-channel Gaussian, in place to spare full-size temporaries
        f = rng.standard_normal(img.shape, dtype=np.float32)
        f *= lv.noise
        f += img
        f += 0.5
        img = np.clip(f, 0, 255, out=f).astype(np.uint8)
    boxes = np.array([o.box for o in objs], np.float32).reshape(-1, 4)
    return Frame(img, boxes, np.array([o.cls for o in objs], np.int64), difficulty)


@dataclass(frozen=True)
class _Domain:
    """A photometric shift applied to a finished frame (labels unchanged): a camera at another time of day."""

    gain: tuple[float, float, float]  # mean BGR channel gains (colour cast)
    gain_jitter: float  # per-frame relative spread of each gain
    gamma: tuple[float, float]  # output = 255 * (input / 255) ** gamma, drawn per frame (> 1 darkens)
    noise: float  # extra Gaussian sensor noise sigma, 0-255 scale (low light is noisy)


_DOMAINS = {"dusk": _Domain((1.15, 0.85, 0.6), 0.08, (1.5, 2.2), 6.0)}


def _apply_domain(rng: np.random.Generator, img: np.ndarray, domain: str) -> np.ndarray:
    """`img` as the camera of target domain `domain` (a key of _DOMAINS) would see it, as a new uint8 array."""
    dm = _DOMAINS[domain]
    gain = np.asarray(dm.gain, np.float32) * rng.uniform(1 - dm.gain_jitter, 1 + dm.gain_jitter, 3).astype(np.float32)
    x = np.power(img.astype(np.float32) / 255, rng.uniform(*dm.gamma)) * (255 * gain)
    x += rng.standard_normal(img.shape, dtype=np.float32) * dm.noise + 0.5
    return np.clip(x, 0, 255, out=x).astype(np.uint8)


# ------------------------------------------------------------------------------------------------ generator v2 scenes
# Version 2.0 puts difficulty only in what is in the scene: object size, count, occlusion, object-sized decoys and
# class confusability. Everything a global image statistic sees first (camera noise, blur, colour cast, exposure,
# background texture and the amount of background clutter) is drawn from one distribution for every difficulty, from
# a random stream that does not know the frame's difficulty. v1's levels (_LEVELS) set noise and blur per difficulty,
# which a classifier on image statistics reads off (docs/BENCHMARKS.md, the leak check).
@dataclass(frozen=True)
class _SceneLevel:
    level: _Level  # count, size, contrast, chroma, occlusion, cluster (its noise and blur are 0: see _Camera)
    decoys: tuple[int, int]  # unlabelled object-sized blobs in the background, inclusive range
    overlay: tuple[int, int]  # thin scribbles drawn over the objects (occluders), inclusive range
    confusable: float  # probability that a frame's classes all come from one group of look-alikes


_SCENES_V2 = {
    "easy": _SceneLevel(_Level((1, 3), (0.18, 0.32), (60, 110), (30, 80), 0.0, 0.0, 0.0, 0.0), (0, 1), (0, 0), 0.0),
    "hard": _SceneLevel(_Level((2, 5), (0.10, 0.17), (35, 65), (15, 45), 0.25, 0.0, 0.0, 0.3), (2, 4), (0, 2), 0.5),
    "complex": _SceneLevel(_Level((3, 6), (0.07, 0.12), (28, 50), (10, 30), 0.4, 0.0, 0.0, 0.5), (4, 7), (1, 3), 1.0),
}
# Shapes that differ by a detail which small sizes, occlusion and blur erase
_LOOKALIKES: tuple[tuple[int, ...], ...] = (
    tuple(CLASS_NAMES.index(n) for n in ("circle", "ring", "crescent")),
    tuple(CLASS_NAMES.index(n) for n in ("square", "cross", "star")),
    tuple(CLASS_NAMES.index(n) for n in ("triangle", "arrow")),
)
# Background clutter per frame, the same for every difficulty: (kind, count range); the count is scaled by a
# per-frame clutter density in [0, 1]
_CLUTTER_V2 = (("bigblob", (0, 5)), ("line", (0, 9)), ("scribble", (0, 8)), ("arc", (0, 5)))


@dataclass(frozen=True)
class _Camera:
    """Image-level conditions of one frame (v2), drawn independently of its difficulty."""

    gain: tuple[float, float, float]  # BGR channel gains (colour cast, white balance)
    gamma: float  # exposure curve, output = 255 * (input / 255) ** gamma
    offset: float  # brightness offset, 0-255 scale
    blur: float  # Gaussian blur sigma, pixels (0: none)
    noise: float  # Gaussian sensor noise sigma, 0-255 scale
    clutter: float  # background clutter density in [0, 1]
    texture: int  # background texture grid (2: gentle gradient ... 8: busy)


def _draw_camera(rng: np.random.Generator) -> _Camera:
    gain = tuple(float(g) for g in np.clip(1 + rng.normal(0, 0.08, 3), 0.75, 1.25))
    blur = 0.0 if rng.random() < 0.4 else float(rng.uniform(0.3, 1.0))
    return _Camera(gain, float(rng.uniform(0.75, 1.3)), float(rng.normal(0, 10)), blur, float(rng.uniform(0, 9)),
                   float(rng.random()), int(rng.choice((2, 4, 8))))


def _background_v2(rng: np.random.Generator, cam: _Camera, s: int) -> tuple[np.ndarray, np.ndarray]:
    """uint8 BGR background (texture and clutter set by the camera draw, not the difficulty) and its base colour."""
    base = np.clip(rng.uniform(50, 200) + rng.normal(0, 20, 3), 35, 220).astype(np.float32)
    g = cam.texture
    a = rng.uniform(0, 2 * math.pi)
    ramp = np.linspace(-0.5, 0.5, g, dtype=np.float32)
    ramp = math.cos(a) * ramp[None, :] + math.sin(a) * ramp[:, None]
    grid = base + ramp[..., None] * rng.uniform(0, 50) * rng.uniform(0.6, 1.0, 3).astype(np.float32)
    grid += (rng.normal(0, 3 * g, (g, g, 1)) + rng.normal(0, 1.5 * g, (g, g, 3))).astype(np.float32)
    grid = cv2.resize(grid, (32, 32), interpolation=cv2.INTER_CUBIC)
    img = cv2.resize(grid, (s, s), interpolation=cv2.INTER_LINEAR)
    img = np.clip(img, 0, 255, out=img).astype(np.uint8)
    for kind, (lo, hi) in _CLUTTER_V2:
        for _ in range(int(round(lo + (hi - lo) * cam.clutter * rng.random()))):
            _draw_clutter(rng, img, base, kind, (15, 60) if kind == "bigblob" else (10, 45))
    return img, base


def _draw_decoys(rng: np.random.Generator, img: np.ndarray, base: np.ndarray, sc: _SceneLevel) -> None:
    """Unlabelled blobs of the level's object size and contrast: in a crowded scene, not everything is an object."""
    s = img.shape[0]
    for _ in range(int(rng.integers(sc.decoys[0], sc.decoys[1] + 1))):
        size = rng.uniform(*sc.level.size) * s * 1.3  # a blob's box is as long as an object's at 1.3x its size
        pts = _blob_pts(rng, rng.uniform(0, s), rng.uniform(0, s), size)
        col = _colour_near(rng, base, sc.level.contrast, sc.level.chroma)
        cv2.fillPoly(img, [np.round(pts * 16).astype(np.int32)], col, cv2.LINE_AA, 4)


def _class_picker(rng: np.random.Generator, sc: _SceneLevel):
    """Per frame: every class (or, with probability `confusable`, one group of look-alikes) for rng.choice."""
    if rng.random() < sc.confusable:
        return _LOOKALIKES[int(rng.integers(len(_LOOKALIKES)))]
    return tuple(range(len(CLASS_NAMES)))


def _apply_camera(rng: np.random.Generator, img: np.ndarray, cam: _Camera) -> np.ndarray:
    """Optics, exposure and sensor noise of the v2 camera on a finished scene (labels unchanged)."""
    if cam.blur:
        img = cv2.GaussianBlur(img, (0, 0), cam.blur)
    x = np.power(img.astype(np.float32) / 255, cam.gamma) * (255 * np.asarray(cam.gain, np.float32)) + cam.offset
    x += rng.standard_normal(img.shape, dtype=np.float32) * cam.noise + 0.5
    return np.clip(x, 0, 255, out=x).astype(np.uint8)


@dataclass
class _Scene:
    """A v2 scene before the camera: background, overlay marks and objects (what a video moves)."""

    bg: np.ndarray
    overlay: list
    overlay_mask: np.ndarray
    objs: list[_Obj]
    cam: _Camera


def _scene_v2(rng: np.random.Generator, cam_rng: np.random.Generator, difficulty: str, s: int, n: int | None
              ) -> _Scene:
    """Lay out a v2 scene: `cam_rng` (blind to the difficulty) draws the camera and the background, `rng` the
    difficulty's content. `n=None` draws the level's object count; 0 gives an empty frame."""
    sc = _SCENES_V2[difficulty]
    cam = _draw_camera(cam_rng)
    bg, base = _background_v2(cam_rng, cam, s)
    _draw_decoys(rng, bg, base, sc)
    lo, hi = sc.overlay
    overlay = [(_scribble(rng, s), int(rng.integers(1, 3)), _colour_near(rng, base, (10, 45), (10, 60)))
               for _ in range(int(rng.integers(lo, hi + 1)))]
    omask = _overlay_mask(overlay, s)
    count = int(rng.integers(sc.level.count[0], sc.level.count[1] + 1)) if n is None else n
    objs = _place_objects(rng, sc.level, s, count, omask, classes=_class_picker(rng, sc))
    _pick_colours(rng, sc.level, bg, objs)
    return _Scene(bg, overlay, omask, objs, cam)


def _check_domain(domain: str) -> int:
    if domain not in DOMAINS:
        raise ValueError(f"unknown domain {domain!r}, expected one of {DOMAINS}")
    return DOMAINS.index(domain)


def _check_difficulty(difficulty: str) -> int:
    if difficulty not in DIFFICULTIES:
        raise ValueError(f"unknown difficulty {difficulty!r}, expected one of {DIFFICULTIES}")
    return DIFFICULTIES.index(difficulty)


def check_version(version: str | float | int) -> str:
    """A generator version as its canonical string ("2", 2.0 and "2.0" are "2.0"); unknown ones are refused."""
    try:
        v = f"{float(version):.1f}"
    except (TypeError, ValueError):
        v = str(version)
    if v not in GENERATOR_VERSIONS:
        raise ValueError(f"unknown generator version {version!r}, expected one of {GENERATOR_VERSIONS}")
    return v


def _check_imgsz(imgsz: int) -> int:
    if int(imgsz) != imgsz or imgsz < _MIN_IMGSZ:
        raise ValueError(f"imgsz must be an integer >= {_MIN_IMGSZ} pixels, got {imgsz}")
    return int(imgsz)


def render_frame(seed: int, index: int, difficulty: str, imgsz: int = 256, *, empty: bool = False,
                 domain: str = "source", version: str = GENERATOR_VERSION) -> Frame:
    """Render one square `imgsz`-pixel frame, a pure function of (seed, index, difficulty, imgsz, empty, domain,
    version).

    `empty=True` draws the same kind of background and clutter but no labelled object. A `domain` other than
    "source" shifts the finished frame's colours, brightness and noise (same scene, same labels). `version` picks the
    generator (GENERATOR_VERSIONS); in 2.0 the camera and background of frame `index` are the same whatever its
    difficulty.
    """
    s, d, dom = _check_imgsz(imgsz), _check_difficulty(difficulty), _check_domain(domain)
    if check_version(version) == "1.0":
        rng = np.random.default_rng([seed, index, d, s])
        lv = _LEVELS[difficulty]
        bg = _background(rng, difficulty, s)
        overlay = _overlay(rng, difficulty, bg)
        n = 0 if empty else int(rng.integers(lv.count[0], lv.count[1] + 1))
        objs = _place_objects(rng, lv, s, n, _overlay_mask(overlay, s))
        _pick_colours(rng, lv, bg, objs)
        frame = _compose(rng, difficulty, bg, objs, overlay)
    else:
        rng = np.random.default_rng([seed, index, d, s, 2])
        scene = _scene_v2(rng, np.random.default_rng([seed, index, s, 0xCA3]), difficulty, s, 0 if empty else None)
        frame = _compose(rng, difficulty, scene.bg, scene.objs, scene.overlay, _SCENES_V2[difficulty].level)
        frame = Frame(_apply_camera(rng, frame.image, scene.cam), frame.boxes, frame.classes, difficulty)
    if dom == 0:
        return frame
    shifted = _apply_domain(np.random.default_rng([seed, index, d, s, dom]), frame.image, domain)
    return Frame(shifted, frame.boxes, frame.classes, difficulty)


# ---------------------------------------------------------------------------------------------------------- dataset
def _normalise_mix(mix: Sequence[float]) -> np.ndarray:
    p = np.asarray(mix, np.float64)
    if p.shape != (len(DIFFICULTIES),) or (p < 0).any() or not np.isfinite(p).all() or p.sum() <= 0:
        raise ValueError(f"mix must be {len(DIFFICULTIES)} non-negative weights for {DIFFICULTIES}, got {mix}")
    return p / p.sum()


def sample_difficulties(n: int, mix: Sequence[float] = DEFAULT_MIX, seed: int = 0) -> list[str]:
    """Deterministic difficulty per index; every prefix is balanced, so item i never depends on n.

    Counts are within one of n * mix at every multiple of 10 (exactly round(n * p) for the default mix) and within
    three for any other n.
    """
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    p, m = _normalise_mix(mix), -(-n // 10) * 10
    counts, seq = np.zeros(len(p)), np.empty(m, np.int64)
    for i in range(m):  # largest-deficit apportionment: each prefix stays within one item of its quota
        seq[i] = k = int(np.argmax((i + 1) * p - counts))
        counts[k] += 1
    for b in range(0, m, 10):  # shuffle whole 10-blocks (before truncation) to hide the periodic pattern
        np.random.default_rng([seed, b // 10, 0xD1FF]).shuffle(seq[b : b + 10])
    return [DIFFICULTIES[k] for k in seq[:n]]


def _split_seed(seed: int, split: str) -> int:
    """Independent stream per split; crc32 because Python's str hash is salted per process."""
    return int(np.random.SeedSequence([seed, zlib.crc32(split.encode())]).generate_state(1)[0])


def _empty_flags(n: int, fraction: float, seed: int) -> list[bool]:
    if not 0 <= fraction <= 1:
        raise ValueError(f"empty_fraction must be in [0, 1], got {fraction}")
    phase = float(np.random.default_rng([seed, 0xE3]).random())
    # Bresenham spacing: any prefix of length k has floor(k * fraction + phase) empties
    return [math.floor((i + 1) * fraction + phase) > math.floor(i * fraction + phase) for i in range(n)]


def _progress(iterable, total: int, desc: str, progress: bool):
    from ultralytics.utils import TQDM

    return TQDM(iterable, total=total, desc=desc, disable=not progress)


def generate_split(out_dir: str | Path, split: str, n: int, imgsz: int = 256, mix: Sequence[float] = DEFAULT_MIX,
                   seed: int = 0, empty_fraction: float = 0.02, progress: bool = True, domain: str = "source",
                   version: str = GENERATOR_VERSION) -> Path:
    """Write `n` images, YOLO labels and a COCO json for one split; returns the json path.

    Image i depends only on (seed, split, i, imgsz, its difficulty, domain), so a shorter split is a prefix of a
    longer one, and the same seed in another domain gives the same scenes seen by another camera.
    """
    out, s, version = Path(out_dir), _check_imgsz(imgsz), check_version(version)
    _check_domain(domain)
    sseed = _split_seed(seed, split)
    diffs = sample_difficulties(n, mix, sseed)
    empties = _empty_flags(n, empty_fraction, sseed)
    img_dir, lbl_dir, ann_dir = out / "images" / split, out / "labels" / split, out / "annotations"
    for d in (img_dir, lbl_dir):  # stale files from a longer earlier run would leak into training
        _remove(d)
    _remove(out / "labels" / f"{split}.cache")
    for d in (img_dir, lbl_dir, ann_dir):
        d.mkdir(parents=True, exist_ok=True)

    def write(i: int) -> tuple[list, list, str]:
        fr = render_frame(sseed, i, diffs[i], s, empty=empties[i], domain=domain, version=version)
        name = f"{i + 1:06d}"
        if not cv2.imwrite(str(img_dir / f"{name}.jpg"), fr.image, [cv2.IMWRITE_JPEG_QUALITY, 95]):
            raise OSError(f"could not write {img_dir / name}.jpg")
        lines = [f"{c} {(x1 + x2) / 2 / s:.6f} {(y1 + y2) / 2 / s:.6f} {(x2 - x1) / s:.6f} {(y2 - y1) / s:.6f}\n"
                 for (x1, y1, x2, y2), c in zip(fr.boxes.tolist(), fr.classes.tolist())]
        (lbl_dir / f"{name}.txt").write_text("".join(lines))
        return fr.boxes.tolist(), fr.classes.tolist(), fr.difficulty

    images, anns = [], []
    # Threads: cv2 and numpy release the GIL for most of the work (~1.4x on 2 cores); map() keeps index order
    with ThreadPoolExecutor(max(1, min(4, os.cpu_count() or 1))) as pool:
        results = _progress(pool.map(write, range(n)), n, f"synthetic {split}", progress)
        for i, (boxes, classes, diff) in enumerate(results):
            iid = i + 1  # COCO tools treat id 0 as "no match", so ids (and file stems) start at 1
            for (x1, y1, x2, y2), c in zip(boxes, classes):
                w, h = x2 - x1, y2 - y1
                anns.append({"id": len(anns) + 1, "image_id": iid, "category_id": c + 1, "bbox": [x1, y1, w, h],
                             "area": w * h, "iscrowd": 0})
            images.append({"id": iid, "file_name": f"{iid:06d}.jpg", "width": s, "height": s, "difficulty": diff})
    coco = {
        "info": {"description": "ecc-yolo synthetic shapes on clutter", "generator_version": version,
                 "seed": seed, "split": split, "mix": [float(x) for x in mix], "imgsz": s,
                 "empty_fraction": empty_fraction, "domain": domain},
        "images": images,
        "annotations": anns,
        "categories": [{"id": i + 1, "name": nm, "supercategory": "shape"} for i, nm in enumerate(CLASS_NAMES)],
    }
    path = ann_dir / f"instances_{split}.json"
    path.write_text(json.dumps(coco))
    return path


def _remove(p: Path) -> None:
    if p.is_symlink() or p.is_file():
        p.unlink()  # a link is removed itself, never followed out of out_dir
    elif p.is_dir():
        shutil.rmtree(p)


def _remove_outputs(out: Path) -> None:
    """Delete only what this generator (or an Ultralytics label cache) put inside `out`."""
    for p in [out / "images", out / "labels", out / "annotations", out / "data.yaml", *out.glob("*.cache")]:
        _remove(p)


def generate_dataset(out_dir: str | Path, train: int = 3000, val: int = 600, imgsz: int = 256,
                     mix: Sequence[float] = DEFAULT_MIX, seed: int = 0, empty_fraction: float = 0.02,
                     overwrite: bool = False, progress: bool = True, domain: str = "source",
                     version: str = GENERATOR_VERSION) -> Path:
    """Generate train/val splits under `out_dir` and return the path of its Ultralytics data.yaml.

    An existing dataset with identical settings is reused unless `overwrite`; otherwise it is deleted and rebuilt.
    `domain` (one of DOMAINS) renders the frames as a shifted target domain would (see `render_frame`); `version`
    picks the generator (GENERATOR_VERSIONS; "1.0" reproduces the first zoo's data).
    """
    from ultralytics.utils import LOGGER, YAML

    out = Path(out_dir).resolve()
    s, version = _check_imgsz(imgsz), check_version(version)
    _normalise_mix(mix)
    _check_domain(domain)
    settings = {"generator_version": version, "seed": int(seed), "imgsz": s, "mix": [float(x) for x in mix],
                "counts": {"train": int(train), "val": int(val)}, "empty_fraction": float(empty_fraction)}
    if domain != "source":  # source datasets written before domains existed keep matching (and being reused)
        settings["domain"] = domain
    yaml_path = out / "data.yaml"
    if yaml_path.is_file() and not overwrite:
        old = YAML.load(yaml_path) or {}
        done = all((out / "annotations" / f"instances_{k}.json").is_file() for k in ("train", "val"))
        if old.get("synthetic") == settings and done and old.get("path") == str(out):
            LOGGER.info(f"synthetic dataset at {out} matches the requested settings, reusing it")
            return yaml_path
    if out.exists():
        _remove_outputs(out)
    out.mkdir(parents=True, exist_ok=True)
    for split, n in (("train", train), ("val", val)):
        generate_split(out, split, n, s, mix, seed, empty_fraction, progress, domain, version)
    data = {"path": str(out), "train": "images/train", "val": "images/val", "nc": len(CLASS_NAMES),
            "names": dict(enumerate(CLASS_NAMES)), "synthetic": settings}
    tmp = out / "data.yaml.tmp"  # written last and atomically: a half-built dataset never looks reusable
    YAML.save(tmp, data)
    tmp.replace(yaml_path)
    LOGGER.info(f"synthetic dataset v{version} written to {out} ({train} train, {val} val images, {s} px, "
                f"{domain} domain)")
    return yaml_path


# ------------------------------------------------------------------------------------------------------------ video
def _default_schedule(frames: int) -> list[tuple[int, str]]:
    k = min(6, frames)
    return [(frames // k + (i < frames % k), DIFFICULTIES[i % 3]) for i in range(k)]


def _check_schedule(schedule: Sequence, frames: int) -> list[tuple[int, str]]:
    out = []
    for seg in schedule:
        ok = isinstance(seg, (tuple, list)) and len(seg) == 2 and isinstance(seg[0], (int, np.integer))
        if not ok or isinstance(seg[0], bool) or seg[0] <= 0:
            raise ValueError(f"schedule segment {seg!r} must be (positive number of frames, difficulty)")
        _check_difficulty(seg[1])
        out.append((int(seg[0]), seg[1]))
    if sum(n for n, _ in out) != frames:
        raise ValueError(f"schedule covers {sum(n for n, _ in out)} frames but frames={frames}")
    return out


def generate_video(path: str | Path, frames: int = 300, fps: int = 15, imgsz: int = 256,
                   schedule: list[tuple[int, str]] | None = None, seed: int = 0, progress: bool = True,
                   version: str = GENERATOR_VERSION) -> Path:
    """Write an mp4 of moving shapes whose difficulty follows `schedule` [(n_frames, difficulty), ...].

    Each segment is one scene (and, in generator 2.0, one camera: its noise, blur and colour cast hold for the
    segment and are drawn blind to its difficulty).
    Labels go to `<stem>.jsonl`, one {"frame", "difficulty", "boxes" (xyxy pixels), "classes", "track_ids"} per
    frame: an object keeps its track id (from 1) while it moves within a segment, and each segment's objects get new
    ones (a new scene). Returns the mp4 path.
    """
    if frames <= 0:
        raise ValueError(f"frames must be positive, got {frames}")
    s, version = _check_imgsz(imgsz), check_version(version)
    schedule = _check_schedule(_default_schedule(frames) if schedule is None else schedule, frames)
    path = Path(path).with_suffix(".mp4")
    path.parent.mkdir(parents=True, exist_ok=True)
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), fps, (s, s))
    if not writer.isOpened():
        raise RuntimeError(f"cv2.VideoWriter could not open {path} with fourcc mp4v")
    labels, f, first_id = [], 0, 1
    bar = _progress(None, frames, "synthetic video", progress)
    try:
        for si, (n, diff) in enumerate(schedule):
            rng = np.random.default_rng([seed, si, DIFFICULTIES.index(diff), s, 0x71D])
            cam = None
            if version == "1.0":
                lv = _LEVELS[diff]
                bg = _background(rng, diff, s)
                overlay = _overlay(rng, diff, bg)
                omask = _overlay_mask(overlay, s)
                objs = _place_objects(rng, lv, s, int(rng.integers(lv.count[0], lv.count[1] + 1)), omask)
                _pick_colours(rng, lv, bg, objs)
            else:
                lv = _SCENES_V2[diff].level
                scene = _scene_v2(rng, np.random.default_rng([seed, si, s, 0xCA3]), diff, s, None)
                bg, overlay, omask, objs, cam = scene.bg, scene.overlay, scene.overlay_mask, scene.objs, scene.cam
            ang = rng.uniform(0, 2 * math.pi, len(objs))
            vel = np.stack([np.cos(ang), np.sin(ang)], 1) * rng.uniform(0.5, 2.5, (len(objs), 1)) * s / 256
            track_ids = list(range(first_id, first_id + len(objs)))  # _compose labels every object, in list order
            first_id += len(objs)
            for _ in range(n):
                fr = _compose(rng, diff, bg, objs, overlay, lv)
                writer.write(fr.image if cam is None else _apply_camera(rng, fr.image, cam))
                boxes, classes = fr.boxes.tolist(), fr.classes.tolist()
                labels.append({"frame": f, "difficulty": diff, "boxes": boxes, "classes": classes,
                               "track_ids": track_ids})
                f += 1
                bar.update(1)
                _step(objs, vel, lv, s, omask)
    finally:
        writer.release()
        bar.close()
    path.with_suffix(".jsonl").write_text("".join(json.dumps(x) + "\n" for x in labels))
    return path


def _step(objs: list[_Obj], vel: np.ndarray, lv: _Level, s: int, overlay: np.ndarray) -> None:
    """Advance objects one frame: constant velocity, bouncing off the border and off contacts that would break
    the level's occlusion rule (the object then reverses and waits a frame)."""
    for i, o in enumerate(objs):
        lo, hi = o.contours[0].min(0), o.contours[0].max(0)
        for ax in (0, 1):  # reflect at the border so the whole shape stays inside
            if lo[ax] + vel[i, ax] < 2 or hi[ax] + vel[i, ax] > s - 2:
                vel[i, ax] = -vel[i, ax]
        moved = _make_obj(o.cls, [c + vel[i] for c in o.contours], s)
        if moved is None:
            vel[i] = -vel[i]
            continue
        moved.colour = o.colour
        objs[i] = moved
        if not _layout_ok(objs, i, overlay, lv.occlusion):
            objs[i] = o
            vel[i] = -vel[i]


def load_video_labels(path: str | Path) -> list[dict]:
    """Per-frame labels written by `generate_video`, from the .jsonl next to the video (or the .jsonl itself)."""
    with open(Path(path).with_suffix(".jsonl")) as fh:
        return [json.loads(line) for line in fh if line.strip()]
