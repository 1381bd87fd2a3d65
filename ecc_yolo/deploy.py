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
| `margin` | ECC_D+: send the JPEG when the predicted cloud gain beats the adapted one by more | the calibrated margin |

**The calibrated default operating point.** Stage=gate (and joint) fits one threshold per router on the validation
split (`calibrate`): each offloads the `offload=` share (default 0.3, `OFFLOAD_SHARE`) of the validation frames;
ECC_D+'s margin is the largest whose curve, averaged over offload ratios 10-90% on that split, is within
`MARGIN_TOLERANCE` of the best margin's (`fit_margin`: an offloaded frame goes the cheaper way, the features, unless
the gate expects the JPEG to gain more than the margin over them), and the default router is the one with the
highest mAP50-95 on that split at that share.
A model without calibration keeps the fixed defaults (`policy.GAIN_THRESHOLD`,
`policy.THREE_WAY_MARGIN`; MEANet: its router's most likely exit). `ecc-yolo info` prints the settings.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field, replace
from typing import Any

import numpy as np

from ecc_yolo.policy import GAIN_THRESHOLD, THREE_WAY_MARGIN, decide, exit_probabilities, threshold_for_ratio
from ecc_yolo.routes import ADAPTED, CLOUD, EXIT_CODES, GATE_ROUTES

ECC_D, ECC_I, ECC_D_PLUS, MEANET = "ECC_D", "ECC_I", "ECC_D+", "MEANet"
ROUTERS = (ECC_D, ECC_I, ECC_D_PLUS, MEANET)  # the values of `router=`
GATE_ROUTERS = (ECC_D, ECC_I, ECC_D_PLUS)  # routers that read the offload gate
OFFLOAD_SHARE = 0.3  # the default operating point's share of offloaded frames (the `offload=` argument's default)
MARGIN_RATIOS = tuple(np.round(np.arange(0.1, 0.91, 0.1), 2))  # offload ratios ECC_D+'s margin is fitted over
MARGIN_QUANTILES = tuple(np.round(np.linspace(0.0, 1.0, 11), 2))  # candidate margins: quantiles of the gain gap
# mAP50-95 (mean over MARGIN_RATIOS, validation split) ECC_D+ may give up to send features rather than a JPEG: the
# adapted route runs the cloud's tail only (56% of its GFLOPs on zoo v2), so where the gate expects the two answers
# to be about as good the features are the cheaper way. Fixed before any test-split figure was seen (issue 24).
MARGIN_TOLERANCE = 0.005
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
    calibration: dict[str, Any] | None = None  # how thresholds and margin were fitted (split, images, shares)

    @property
    def threshold(self) -> float | None:
        """The offload threshold of the active router (None: MEANet's most likely exit decides)."""
        return self.thresholds.get(self.router)

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
    for key, cast in (("conf", float), ("iou", float), ("max_det", int), ("margin", float)):
        if key in given:
            s = replace(s, **{key: cast(given[key])})
    if "gate_threshold" in given:
        s = replace(s, thresholds={**s.thresholds, s.router: float(given["gate_threshold"])})
    return s


def router_scores(router: str, gains: np.ndarray | None, exit_logits: np.ndarray | None) -> np.ndarray:
    """(N,) the score a router thresholds: a gate gain, the larger of the two, or P(complex)."""
    if router == MEANET:
        return exit_probabilities(exit_logits)[:, EXIT_CODES[CLOUD]]
    gains = np.asarray(gains)
    if router == ECC_D_PLUS:
        return gains.max(axis=1)
    return gains[:, GATE_ROUTES.index(CLOUD if router == ECC_I else ADAPTED)]


def fit_margin(gains: np.ndarray, map_of: Callable[[np.ndarray], float],
               ratios: tuple[float, ...] = MARGIN_RATIOS, tolerance: float = MARGIN_TOLERANCE) -> float:
    """ECC_D+'s margin: of candidate margins (quantiles of the predicted gap cloud - adapted, and one above every
    gap: never the JPEG), the largest (the most frames on the cheaper features) whose routes score, on average over
    `ratios`, within `tolerance` of the best candidate's; `map_of(route codes)` is the mAP50-95 of an assignment on
    the calibration split."""
    gains = np.asarray(gains, dtype=np.float64)
    gap = gains[:, 1] - gains[:, 0]
    candidates = sorted({float(np.nextafter(gap.max(), np.inf)), *(float(np.quantile(gap, q)) - 1e-9
                                                                 for q in MARGIN_QUANTILES)})
    mean_map = [np.mean([map_of(decide(gains, ratio=r, margin=m).routes) for r in ratios]) for m in candidates]
    return max(m for m, v in zip(candidates, mean_map) if v >= max(mean_map) - tolerance)


def calibrate(settings: DeploySettings, gains: np.ndarray, exit_logits: np.ndarray | None, share: float,
              split: str, margin: float | None = None,
              map_of: Callable[[np.ndarray], float] | None = None) -> DeploySettings:
    """Settings whose thresholds offload `share` of the calibration frames under every router (and ECC_D+ at
    `margin`, when given). With `map_of` (mAP50-95 of route codes on the calibration split) the default router
    becomes the one with the highest mAP there at that share. `calibration` records the split, its size, the share
    each threshold achieves there and each router's mAP."""
    routers = [r for r in ROUTERS if r != MEANET or exit_logits is not None]
    thresholds = {r: threshold_for_ratio(router_scores(r, gains, exit_logits), share) for r in routers}
    achieved = {r: float(np.mean(router_scores(r, gains, exit_logits) > thresholds[r])) for r in routers}
    calibrated = replace(settings, thresholds={**settings.thresholds, **thresholds},
                         margin=settings.margin if margin is None else float(margin))
    maps = None
    if map_of is not None:
        maps = {r: float(map_of(replace(calibrated, router=r).decide(gains, exit_logits).routes)) for r in routers}
        calibrated = replace(calibrated, router=max(maps, key=maps.get))
    calibration = {"split": split, "images": len(gains), "offload_share": float(share), "achieved": achieved,
                   "margin_fitted": margin is not None, "map": maps}
    return replace(calibrated, calibration=calibration)
