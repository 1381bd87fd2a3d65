"""Run arguments: Ultralytics' own arguments plus ecc-yolo's, parsed and validated once.

Config flows one way: CLI `key=value` pairs or Python keyword arguments -> `get_args()` (defaults from
Ultralytics' `default.yaml` and ours in `ecc_yolo/cfg/default.yaml`, unknown keys refused with suggestions, types
and ranges checked) -> an `IterableSimpleNamespace` handed to trainers, validators, predictors and the server.
"""

from __future__ import annotations

from difflib import get_close_matches
from pathlib import Path
from typing import Any

from ultralytics.cfg import get_cfg
from ultralytics.utils import DEFAULT_CFG_DICT, YAML, IterableSimpleNamespace

from ecc_yolo.deploy import ROUTERS
from ecc_yolo.routes import INFER_ROUTES
from ecc_yolo.stages import STAGES

ECC_DEFAULTS_FILE = Path(__file__).resolve().parent / "cfg" / "default.yaml"
JOINT_OBJECTIVES = ("edge", "adapted", "gate")
SERVE_BACKENDS = ("fastapi", "ray")

# (kind, allowed) -> the keys of that kind. kind is "stage" (a name in ecc_yolo.stages.STAGES, read when checked),
# "choice" (allowed: tuple), "bool", "float>=" (allowed: lower
# bound), "float>" (exclusive lower bound), "int>=" (lower bound), "int in" ((low, high), inclusive), "fraction"
# (0 < x <= 1), "model" (a .pt/.yaml path), "prefs", "text" (a non-empty string), "secret" (None or a non-empty string
# or number), "url" (None or an http(s):// URL), "budget" (None, a ratio or a bit rate: ecc_yolo.policy.Budget.parse),
# "optional int>=" (None or an integer >= the bound) or "optional number" (None or a number).
_KEYS_BY_KIND: dict[tuple[str, Any], tuple[str, ...]] = {
    ("stage", None): ("stage",),
    ("choice", INFER_ROUTES): ("route",),
    ("choice", SERVE_BACKENDS): ("backend",),
    ("optional choice", ROUTERS): ("router",),
    ("bool", None): ("distill", "pareto", "label_free", "router_balance", "rate_curve", "track_cue"),
    ("float>=", 1.0): ("rrb",),
    ("float>=", 0.0): ("feat", "det", "kd", "rate", "max_wait_ms"),
    ("float>", 0.0): ("timeout",),
    ("int>=", 1): ("calib", "max_batch", "max_queue", "max_concurrency", "max_pixels", "replicas", "max_inflight"),
    ("int>=", 1024): ("max_body",),
    ("optional int>=", 1): ("max_images",),
    ("int>=", 0): ("bootstrap",),
    ("int in", (1, 65535)): ("port",),
    ("fraction", None): ("offload",),
    ("optional number", None): ("gate_threshold", "margin"),
    ("model", None): ("edge_model", "cloud_model"),
    ("prefs", None): ("prefs",),
    ("text", None): ("host",),
    ("secret", None): ("token",),
    ("url", None): ("cloud",),
    ("budget", None): ("budget", "stream_budget"),
}
ECC_ARG_TYPES: dict[str, tuple[str, Any]] = {key: kind for kind, keys in _KEYS_BY_KIND.items() for key in keys}


def default_project() -> str:
    """Where runs go when no project is given: ./runs/ecc under the current directory (absolute, so that the
    paths `ecc-yolo` prints and the docs use are the same; a relative project= follows Ultralytics' runs_dir)."""
    return str(Path.cwd() / "runs" / "ecc")


def command_line(*args: str) -> list[str]:
    """The argv that runs `ecc-yolo <args>` with this interpreter (whatever is on PATH), for subprocesses: the
    demo's and the zoo pipeline's steps, the local server."""
    import sys

    return [sys.executable, "-m", "ecc_yolo", *args]


def ecc_defaults() -> dict[str, Any]:
    """ecc-yolo's own argument defaults (without Ultralytics')."""
    return YAML.load(ECC_DEFAULTS_FILE)


def all_defaults() -> dict[str, Any]:
    """Every argument ecc-yolo accepts with its default: Ultralytics' plus ecc-yolo's."""
    return {**DEFAULT_CFG_DICT, **ecc_defaults()}


class ArgumentError(ValueError):
    """An unknown argument or a bad value; the message names it and what is allowed."""


def check_keys(overrides: dict[str, Any], extra: set[str] = frozenset()) -> None:
    """Refuse keys that are neither Ultralytics' nor ecc-yolo's, suggesting close matches."""
    valid = set(all_defaults()) | set(extra) | {"save_dir", "augmentations"}
    bad = [k for k in overrides if k not in valid]
    if bad:
        lines = []
        for k in bad:
            close = get_close_matches(k, valid, n=3)
            lines.append(f"'{k}' is not a valid ecc-yolo argument." + (f" Did you mean {close}?" if close else ""))
        raise ArgumentError("\n".join(lines) + "\nRun 'ecc-yolo help' for the arguments.")


def check_ecc_values(args: dict[str, Any]) -> None:
    """Type- and range-check ecc-yolo's own arguments (Ultralytics checks its own in `get_cfg`)."""
    for key, (kind, allowed) in ECC_ARG_TYPES.items():
        if key not in args:
            continue
        v = args[key]
        if kind == "stage":  # read when checked: a stage registered at run time is a valid choice too
            ok, want = v in STAGES, f"one of {', '.join(STAGES)}"
        elif kind in ("choice", "optional choice"):
            ok = v in allowed or (v is None and kind.startswith("optional"))
            want = f"one of {', '.join(allowed)}" + (" or empty" if kind.startswith("optional") else "")
        elif kind == "bool":
            ok, want = isinstance(v, bool), "True or False"
        elif kind == "float>=":
            ok, want = _is_number(v) and v >= allowed, f"a number >= {allowed}"
        elif kind in ("int>=", "optional int>="):
            ok = (v is None and kind.startswith("optional")) or (
                isinstance(v, int) and not isinstance(v, bool) and v >= allowed)
            want = f"an integer >= {allowed}" + (" or empty" if kind.startswith("optional") else "")
        elif kind == "float>":
            ok, want = _is_number(v) and v > allowed, f"a number > {allowed}"
        elif kind == "int in":
            ok = isinstance(v, int) and not isinstance(v, bool) and allowed[0] <= v <= allowed[1]
            want = f"an integer in {allowed[0]}..{allowed[1]}"
        elif kind == "text":
            ok, want = isinstance(v, str) and bool(v.strip()), "a non-empty string"
        elif kind == "secret":
            ok = v is None or (isinstance(v, (str, int, float)) and not isinstance(v, bool) and str(v) != "")
            want = "empty or a non-empty string"
        elif kind == "url":
            ok, want = v is None or (isinstance(v, str) and v.startswith(("http://", "https://"))), \
                "empty or an http:// or https:// URL, e.g. http://127.0.0.1:8000"
        elif kind == "budget":
            ok, want = _is_budget(v), "empty, an offload ratio in (0, 1] (e.g. 0.3) or a bit rate (e.g. 200kbps)"
        elif kind == "optional number":
            ok, want = v is None or _is_number(v), "empty or a number"
        elif kind == "fraction":
            ok, want = _is_number(v) and 0 < v <= 1, "a number in (0, 1]"
        elif kind == "model":
            ok, want = v is None or str(v).endswith((".pt", ".yaml", ".yml")), "an Ultralytics .pt or .yaml"
        else:  # prefs
            ok = v is None or (
                isinstance(v, (list, tuple))
                and len(v) == len(JOINT_OBJECTIVES)
                and all(_is_number(x) and x >= 0 for x in v)
                and sum(v) > 0
            )
            want = f"None or {len(JOINT_OBJECTIVES)} non-negative weights for {JOINT_OBJECTIVES}"
        if not ok:
            raise ArgumentError(f"'{key}={v!r}' is invalid: {key} must be {want}")


def get_args(overrides: dict[str, Any] | None = None) -> IterableSimpleNamespace:
    """Validated arguments: defaults overridden by `overrides`.

    Raises:
        ArgumentError: unknown key or bad ecc-yolo value.
        TypeError/ValueError: bad Ultralytics value (Ultralytics' own checks, which name the key).
    """
    overrides = dict(overrides or {})
    check_keys(overrides)
    check_ecc_values(overrides)
    return get_cfg(all_defaults(), overrides)


def user_overrides(args: Any) -> dict[str, Any]:
    """The deployment keys (`ecc_yolo.deploy.USER_KEYS`) of an argument namespace or dict that differ from their
    defaults: what a user set, for `ecc_yolo.deploy.resolve` when only the merged arguments are at hand."""
    from ecc_yolo.deploy import USER_KEYS

    values = vars(args) if hasattr(args, "__dict__") else dict(args)
    defaults = all_defaults()
    return {k: values[k] for k in USER_KEYS if values.get(k) is not None and values[k] != defaults.get(k)}


def split_args(args: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """(Ultralytics arguments, ecc-yolo arguments) of a merged argument dict."""
    ours = set(ecc_defaults())
    return {k: v for k, v in args.items() if k not in ours}, {k: v for k, v in args.items() if k in ours}


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _is_budget(v: Any) -> bool:
    from ecc_yolo.policy import Budget

    try:
        Budget.parse(v)
    except ValueError:
        return False
    return True
