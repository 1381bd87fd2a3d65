"""A model's deployment settings: what every entry point runs it with, decided here and nowhere else.

Like timm's `pretrained_cfg` + `resolve_data_config`: an ECC model carries its settings (`ECCModel.deploy`, a plain
dict pickled with the model and written into an edge export's metadata), and every entry point (predict, val,
detect, serve, export, demo, benchmark) calls `resolve(model, overrides)` once, where a `key=value` the user gave
wins over the model's own value.

| key (`key=value`) | setting | the model's value |
|---|---|---|
| `imgsz` | network input size (pixels, square) | the size it was trained at (640 for a model built from a cfg) |
| `conf`, `iou`, `max_det` | NMS of predict/detect/serve | Ultralytics' predict defaults (0.25, 0.7, 300) |
| `router` | what `route=auto` decides with: ECC_D (gate -> adapted route), ECC_I (gate -> full cloud on the JPEG), ECC_D+ (gate -> the better of the two), MEANet (a multi-exit edge's exit router) | MEANet for a multi-exit edge, else ECC_D |
| `gate_threshold` | offload a frame when the router's score exceeds this | the calibrated threshold of that router |
| `margin` | ECC_D+: send the JPEG when the predicted cloud gain beats the adapted one by more | the margin calibrated at the default share (`margins`: one per offload share) |

**The calibrated default operating point.** Stage=gate (and joint) fits one threshold per router on the validation
split (`calibrate`): each offloads the `offload=` share (default 0.3, `OFFLOAD_SHARE`) of the validation frames, and
the default router is the one with the highest mAP50-95 on that split at that share. ECC_D+'s margin is fitted per
offload share (`fit_margin`, `MARGIN_SHARES`; `margins` holds them, `margin` the one at the default share): of the
candidates, the largest (an offloaded frame goes the cheaper way, the features, unless the gate expects the JPEG to
gain more than the margin over them) whose validation mAP at that share is below the best candidate's by no more
than `MARGIN_TOLERANCE` and no more than one bootstrap standard error of the difference (`MARGIN_RESAMPLES`): the
cheaper answer where the validation split cannot tell the two apart, the better one where it can (at high offload
on zoo v2).
A model without calibration keeps the fixed defaults (`policy.GAIN_THRESHOLD`,
`policy.THREE_WAY_MARGIN`; MEANet: its router's most likely exit). `ecc-yolo info` prints the settings.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field, replace
from typing import Any

import numpy as np

from ecc_yolo.policy import (
    GAIN_THRESHOLD,
    THREE_WAY_MARGIN,
    decide,
    exit_probabilities,
    three_way_priority,
    threshold_for_ratio,
)
from ecc_yolo.routes import ADAPTED, CLOUD, EXIT_CODES, GATE_ROUTES

ECC_D, ECC_I, ECC_D_PLUS, MEANET = "ECC_D", "ECC_I", "ECC_D+", "MEANet"
ROUTERS = (ECC_D, ECC_I, ECC_D_PLUS, MEANET)  # the values of `router=`
GATE_ROUTERS = (ECC_D, ECC_I, ECC_D_PLUS)  # routers that read the offload gate
OFFLOAD_SHARE = 0.3  # the default operating point's share of offloaded frames (the `offload=` argument's default)
MARGIN_SHARES = tuple(np.round(np.arange(0.05, 1.001, 0.05), 2))  # offload shares ECC_D+ fits a margin at
MARGIN_QUANTILES = tuple(np.round(np.linspace(0.0, 1.0, 11), 2))  # candidate margins: quantiles of the gain gap
# mAP50-95 (validation split, at one offload share) ECC_D+ may give up to send features rather than a JPEG: the
# adapted route runs the cloud's tail only (56% of its GFLOPs on zoo v2), so where the gate expects the two answers
# to be about as good the features are the cheaper way. Capped by one bootstrap standard error of the difference
# (MARGIN_RESAMPLES resamples of the validation images, seed MARGIN_SEED), so that a loss the split can measure is
# not given up. Chosen on zoo v2's first test split (then demoted to a development split) among the rules in
# docs/BENCHMARKS.md section 5k, before the second test split existed.
MARGIN_TOLERANCE = 0.005
MARGIN_RESAMPLES = 200
MARGIN_SEED = 0
DEFAULT_NMS = {"conf": 0.25, "iou": 0.7, "max_det": 300}  # Ultralytics' predict defaults
USER_KEYS = ("imgsz", "conf", "iou", "max_det", "router", "gate_threshold", "margin")


@dataclass(frozen=True)
class DeploySettings:
    """How a model is deployed (see the module docstring). `thresholds[router]` is None for MEANet's argmax."""

    imgsz: int = 640
    conf: float = DEFAULT_NMS["conf"]
    iou: float = DEFAULT_NMS["iou"]
    max_det: int = DEFAULT_NMS["max_det"]
    router: str = ECC_D
    thresholds: dict[str, float | None] = field(default_factory=dict)
    margin: float = THREE_WAY_MARGIN
    margins: dict[str, float] = field(default_factory=dict)  # ECC_D+'s margin per offload share ("0.3": 0.05, ...)
    calibration: dict[str, Any] | None = None  # how thresholds and margin were fitted (split, images, shares)

    @property
    def threshold(self) -> float | None:
        """The offload threshold of the active router (None: MEANet's most likely exit decides)."""
        return self.thresholds.get(self.router)

    def margin_at(self, share: float) -> float:
        """ECC_D+'s margin for an operating point offloading `share` of the frames: the calibrated one at the nearest
        share, or `margin` without a schedule (an uncalibrated model, or `margin=` given)."""
        if not self.margins:
            return self.margin
        return self.margins[min(self.margins, key=lambda k: abs(float(k) - share))]

    def decide(self, gains: np.ndarray | None, exit_logits: np.ndarray | None, thresholds: np.ndarray | None = None,
               force: np.ndarray | None = None):
        """`policy.decide` with these settings for a batch: the gate's (N, 2) gains or the exit router's (N, 3)
        logits; `thresholds` (N,) (a budget's, per frame: `policy.StreamBudgets`) replace the model's threshold;
        `force` (N,) bool offloads frames whatever their score."""
        rule = {"threshold": thresholds} if thresholds is not None else \
            {"threshold": self.threshold} if self.threshold is not None else {}  # MEANet without one: argmax
        if self.router == MEANET:
            return decide(exit_logits=exit_logits, force=force, **rule)
        if self.router == ECC_D_PLUS:
            return decide(gains, margin=self.margin, force=force, **rule)
        return decide(gains, offload_to=CLOUD if self.router == ECC_I else ADAPTED, force=force, **rule)

    def as_dict(self) -> dict[str, Any]:
        """Plain values (what the model and an edge export store)."""
        return asdict(self)

    def describe(self) -> str:
        """One line for `ecc-yolo info`, the demo and detect."""
        t = self.threshold
        cal = self.calibration
        rule = "most likely exit" if t is None else f"offload when score > {t:.4g}"
        text = f"imgsz {self.imgsz}, NMS conf {self.conf} iou {self.iou} max_det {self.max_det}; route=auto: " \
               f"{self.router}, {rule}"
        if self.router == ECC_D_PLUS:
            text += f", JPEG when the cloud's predicted gain beats the adapted one by > {self.margin:.4g}"
            if self.margins:
                low, high = min(self.margins.values()), max(self.margins.values())
                text += f" at this share ({low:.4g} to {high:.4g} over offload shares 5-100%)"
        if cal:
            text += (f"; calibrated on {cal['images']} {cal['split']} images to offload "
                     f"{cal['offload_share']:.0%} (achieved there: {cal['achieved'][self.router]:.1%})")
        else:
            text += "; not calibrated (fixed defaults)"
        return text


def multi_exit(model: Any) -> bool:
    """True for a model (or edge runtime) with an exit router."""
    return bool(getattr(model, "multi_exit", False) or getattr(model, "router", None) is not None)


def trained_imgsz(model: Any, default: int = 640) -> int:
    """The image size (pixels, the longer side) a model was trained at, from its training args; `default` without."""
    args = getattr(model, "args", None)
    args = vars(args) if hasattr(args, "__dict__") else (args or {})
    imgsz = args.get("imgsz", default) if isinstance(args, dict) else default
    return int(max(imgsz) if isinstance(imgsz, (list, tuple)) else imgsz)


def model_settings(model: Any) -> DeploySettings:
    """The settings a model (or an edge runtime) carries (`model.deploy`), with defaults for what it lacks."""
    stored = getattr(model, "deploy", None)
    if isinstance(stored, DeploySettings):
        return stored
    stored = {"imgsz": trained_imgsz(model), **(stored or {})}
    stored["thresholds"] = {**dict.fromkeys(GATE_ROUTERS, float(getattr(model, "gate_threshold", GAIN_THRESHOLD))),
                            **stored.get("thresholds", {})}
    return settings_from_dict(stored, multi_exit(model))


def settings_from_dict(stored: Mapping[str, Any], has_exit_router: bool) -> DeploySettings:
    """Settings from their stored dict (unknown keys ignored, missing ones default; the router defaults to MEANet
    on a multi-exit edge, ECC_D otherwise)."""
    thresholds = {**dict.fromkeys(GATE_ROUTERS, GAIN_THRESHOLD), MEANET: None, **stored.get("thresholds", {})}
    known = {k: v for k, v in stored.items() if k in DeploySettings.__dataclass_fields__ and k != "thresholds"}
    return DeploySettings(**{"router": MEANET if has_exit_router else ECC_D, **known, "thresholds": thresholds})


def resolve(model: Any, overrides: Mapping[str, Any] | Any | None = None) -> DeploySettings:
    """The model's settings with the user's `key=value` (`USER_KEYS`; None or absent = the model's) applied.

    Raises:
        ValueError: router=MEANet on a model without an exit router, or an ECC_* router without a gate.
    """
    s = model_settings(model)
    o = vars(overrides) if hasattr(overrides, "__dict__") else dict(overrides or {})
    given = {k: o[k] for k in USER_KEYS if o.get(k) is not None}
    if "router" in given:
        if given["router"] not in ROUTERS:
            raise ValueError(f"router must be one of {', '.join(ROUTERS)}, got {given['router']!r}")
        if given["router"] == MEANET and not multi_exit(model):
            raise ValueError("router=MEANet needs a model with an extension block and exit router (cfg `extension:`)")
        s = replace(s, router=given["router"])
    if "imgsz" in given:
        imgsz = given["imgsz"]
        s = replace(s, imgsz=int(max(imgsz) if isinstance(imgsz, (list, tuple)) else imgsz))
    for key, cast in (("conf", float), ("iou", float), ("max_det", int)):
        if key in given:
            s = replace(s, **{key: cast(given[key])})
    if "margin" in given:  # the user's margin holds at every offload share
        s = replace(s, margin=float(given["margin"]), margins={})
    if "gate_threshold" in given:
        s = replace(s, thresholds={**s.thresholds, s.router: float(given["gate_threshold"])})
    return s


def router_scores(router: str, gains: np.ndarray | None, exit_logits: np.ndarray | None,
                  margin: float = THREE_WAY_MARGIN) -> np.ndarray:
    """(N,) the score a router thresholds: a gate gain, ECC_D+'s priority at `margin`, or P(complex)."""
    if router == MEANET:
        return exit_probabilities(exit_logits)[:, EXIT_CODES[CLOUD]]
    gains = np.asarray(gains)
    if router == ECC_D_PLUS:
        return three_way_priority(gains, margin)
    return gains[:, GATE_ROUTES.index(CLOUD if router == ECC_I else ADAPTED)]


def margin_candidates(gains: np.ndarray) -> list[float]:
    """ECC_D+'s candidate margins on a calibration split: quantiles (`MARGIN_QUANTILES`) of the predicted gap
    cloud - adapted (the lowest: always the JPEG), and one above every gap (never the JPEG)."""
    gap = np.asarray(gains, dtype=np.float64)[:, 1] - np.asarray(gains, dtype=np.float64)[:, 0]
    return sorted({float(np.nextafter(gap.max(), np.inf)), *(float(np.quantile(gap, q)) - 1e-9
                                                            for q in MARGIN_QUANTILES)})


def fit_margin(gains: np.ndarray, maps_of: Callable[[np.ndarray], np.ndarray], share: float,
               tolerance: float = MARGIN_TOLERANCE) -> float:
    """ECC_D+'s margin at one offload share: of `margin_candidates`, the largest (the most frames on the cheaper
    features) whose mAP50-95 at `share` is below the best candidate's by at most `tolerance` and at most one
    standard error of the difference over the resamples.

    Args:
        gains: (N, 2) the gate's predictions on the calibration split.
        maps_of: route codes (N,) -> (1 + B,) mAP50-95 of that assignment on the calibration split, then on each of
            B bootstrap resamples of its images (the same resamples for every call; B = 0: no standard error, the
            best candidate wins).
        share: the offload share.
        tolerance: the most mAP50-95 given up for the features.
    """
    gains = np.asarray(gains, dtype=np.float64)
    candidates = margin_candidates(gains)
    maps = np.stack([np.atleast_1d(maps_of(decide(gains, ratio=share, margin=m).routes)) for m in candidates])
    diff = maps - maps[int(np.argmax(maps[:, 0]))]  # (candidates, 1 + B) against the best, paired
    se = diff[:, 1:].std(axis=1) if diff.shape[1] > 1 else np.zeros(len(candidates))
    return max(m for m, d, e in zip(candidates, diff[:, 0], se) if d >= -min(tolerance, e))


def fit_margins(gains: np.ndarray, maps_of: Callable[[np.ndarray], np.ndarray],
                shares: tuple[float, ...] = MARGIN_SHARES) -> dict[str, float]:
    """`fit_margin` at each offload share: {"0.05": margin, ...} (the keys are the shares, as text, so that the
    schedule is JSON in an edge export's metadata)."""
    return {f"{share:g}": fit_margin(gains, maps_of, share) for share in shares}


def calibrate(settings: DeploySettings, gains: np.ndarray, exit_logits: np.ndarray | None, share: float,
              split: str, maps_of: Callable[[np.ndarray], np.ndarray] | None = None) -> DeploySettings:
    """Settings whose thresholds offload `share` of the calibration frames under every router. With `maps_of`
    (`fit_margin`'s: mAP50-95 of route codes on the calibration split, then per bootstrap resample), ECC_D+'s
    margins are fitted (`fit_margins`, and at `share` itself) and the default router becomes the one with the
    highest mAP there at that share. `calibration` records the split, its size, the share each threshold achieves
    there and each router's mAP."""
    margins = None
    if maps_of is not None:
        margins = fit_margins(gains, maps_of, tuple(sorted({*MARGIN_SHARES, float(share)})))
        settings = replace(settings, margin=margins[f"{share:g}"], margins=margins)
    routers = [r for r in ROUTERS if r != MEANET or exit_logits is not None]
    scores = {r: router_scores(r, gains, exit_logits, settings.margin) for r in routers}
    thresholds = {r: threshold_for_ratio(scores[r], share) for r in routers}
    achieved = {r: float(np.mean(scores[r] > thresholds[r])) for r in routers}
    calibrated = replace(settings, thresholds={**settings.thresholds, **thresholds})
    maps = None
    if maps_of is not None:
        maps = {r: float(np.atleast_1d(maps_of(replace(calibrated, router=r).decide(gains, exit_logits).routes))[0])
                for r in routers}
        calibrated = replace(calibrated, router=max(maps, key=maps.get))
    calibration = {"split": split, "images": len(gains), "offload_share": float(share), "achieved": achieved,
                   "margin_fitted": margins is not None, "map": maps}
    return replace(calibrated, calibration=calibration)
