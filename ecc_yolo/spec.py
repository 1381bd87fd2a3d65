"""The ECC model cfg: what a `cfg/ecc-*.yaml` file may say, parsed into a validated, immutable `ECCSpec`.

Schema (every key is documented in `cfg/README.md`; `cfg/ecc-yolo11n-l.yaml` is a commented example)::

    nc: 80                     # optional: number of classes for both detectors
    edge: yolo11n.yaml         # Ultralytics model YAML (name or path) or .pt checkpoint; or a mapping
                               #   {model: yolo11.yaml, scale: n | [depth, width, max_channels]}
    cloud: yolo11l.yaml        # same forms as edge
    entry: 11                  # first cloud layer the cloud tail runs
    adapter: {depth: 3, bottleneck: 16, bits: 4}   # optional defaults for every adapter
    adapters:                  # exactly one per tensor in the cloud's cut set at `entry`
      - {cloud: 4, edge: 4}    # cloud tensor reproduced, edge layer feeding it (+ any adapter field)
    gate: {hidden: 64}         # optional offload-gate settings
    tail: shared               # optional: "copy" gives the adapted route its own trainable copy of the cloud tail
    #                            (saved equal to the trained cloud tail by stage=cloud; stage=adapt trains it)
    extension: {depth: 2, channels: 64}   # optional: MEANet's extension block, a second exit on the device

Geometry (strides, channels, the cut set) can only be checked against built networks; `check_geometry` does that
and is called by `ECCModel` as soon as both detectors exist.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from ultralytics.utils import YAML

CFG_DIR = Path(__file__).resolve().parent / "cfg"  # shipped ECC cfgs (the repo's top-level cfg/ links here)
PART_KEYS = ("edge", "cloud")
TOP_KEYS = {"nc", "edge", "cloud", "entry", "adapter", "adapters", "gate", "name", "channels", "tail", "extension"}
TAIL_MODES = ("shared", "copy")
ADAPTER_KEYS = {"cloud", "edge", "depth", "channels", "bottleneck", "bits"}
ADAPTER_DEFAULT_KEYS = ADAPTER_KEYS - {"cloud", "edge"}
GATE_KEYS = {"hidden", "layers"}
EXTENSION_KEYS = {"depth", "channels", "layers"}
MAX_BITS = 8


class ECCConfigError(ValueError):
    """A cfg that cannot describe a valid ECC model; the message names the offending field."""


@dataclass(frozen=True)
class PartSpec:
    """One detector of the pair: a self-contained Ultralytics model YAML dict, plus where its weights come from."""

    yaml: dict[str, Any] = field(hash=False, compare=False)
    weights: str | None = None  # .pt checkpoint whose weights initialise this part (None: built from YAML)
    source: str = ""  # what the user wrote, for messages


@dataclass(frozen=True)
class AdapterSpec:
    """How one cloud cut tensor is produced from an edge feature map.

    The encoder (device side) projects the edge feature to `bottleneck` channels (or sends it as is when
    `bottleneck` is None); the latent is quantised to `bits` per value for transmission; the decoder (cloud side) is
    `depth` conv layers of width `channels` that predict the cloud tensor.
    """

    cloud: int
    edge: int
    depth: int = 3
    channels: int | None = None  # hidden width of the decoder; None = the cloud tensor's channels
    bottleneck: int | None = None
    bits: int = 8


@dataclass(frozen=True)
class GateSpec:
    """The offload gate: a small MLP on pooled edge features (`layers`, default: the edge Detect inputs)."""

    hidden: int = 64
    layers: tuple[int, ...] | None = None


@dataclass(frozen=True)
class ExtensionSpec:
    """MEANet's extension block: `depth` 3x3 conv layers of width `channels` on each edge feature map in `layers`
    (default: the edge Detect inputs), ending in a detection head of its own: a second, stronger exit on the device."""

    depth: int = 2
    channels: int = 64
    layers: tuple[int, ...] | None = None


@dataclass(frozen=True)
class ECCSpec:
    """A validated ECC composition."""

    name: str
    edge: PartSpec
    cloud: PartSpec
    entry: int
    adapters: tuple[AdapterSpec, ...]
    gate: GateSpec = GateSpec()
    nc: int | None = None
    tail: str = "shared"  # "copy": the adapted route runs its own, trainable copy of the cloud tail
    extension: ExtensionSpec | None = None  # MEANet multi-exit edge (None: two exits, edge and cloud)

    def to_dict(self) -> dict[str, Any]:
        """Self-contained cfg dict (detector YAMLs inlined, no file references): what checkpoints record."""
        return {
            "name": self.name,
            "nc": self.nc,
            "edge": copy.deepcopy(self.edge.yaml),
            "cloud": copy.deepcopy(self.cloud.yaml),
            "entry": self.entry,
            "adapters": [{f.name: getattr(a, f.name) for f in fields(a)} for a in self.adapters],
            "gate": {"hidden": self.gate.hidden, "layers": list(self.gate.layers) if self.gate.layers else None},
            "tail": self.tail,
            "extension": None if self.extension is None else {
                "depth": self.extension.depth,
                "channels": self.extension.channels,
                "layers": list(self.extension.layers) if self.extension.layers else None,
            },
        }

    def with_nc(self, nc: int) -> ECCSpec:
        """Copy of the spec for `nc` classes."""
        return replace(self, nc=nc)


def resolve_cfg_path(cfg: str | Path) -> Path:
    """Find an ECC cfg file: an existing path, else a name shipped in `ecc_yolo/cfg/` (with or without .yaml)."""
    p = Path(cfg)
    if p.is_file():
        return p
    for candidate in (CFG_DIR / p.name, CFG_DIR / f"{p.name}.yaml"):
        if candidate.is_file():
            return candidate
    shipped = ", ".join(sorted(x.name for x in CFG_DIR.glob("ecc-*.yaml")))
    raise FileNotFoundError(f"ECC cfg '{cfg}' not found. Shipped cfgs: {shipped}")


def load_spec(cfg: str | Path | dict[str, Any] | ECCSpec) -> ECCSpec:
    """Parse and validate an ECC cfg given as a path, a shipped name, a dict or an existing spec."""
    if isinstance(cfg, ECCSpec):
        return cfg
    if isinstance(cfg, dict):
        return parse_spec(cfg, source=str(cfg.get("name", "<dict>")))
    path = resolve_cfg_path(cfg)
    data = YAML.load(path)
    if not isinstance(data, dict):
        raise ECCConfigError(f"{path}: expected a mapping at top level, got {type(data).__name__}")
    data.setdefault("name", path.stem)
    return parse_spec(data, source=str(path))


def parse_spec(data: dict[str, Any], source: str = "<dict>") -> ECCSpec:
    """Validate the fields of a cfg dict (types, ranges, unknown keys); geometry is checked later."""

    def fail(fieldname: str, msg: str):
        raise ECCConfigError(f"{source}: {fieldname}: {msg}")

    unknown = set(data) - TOP_KEYS
    if unknown:
        fail(sorted(unknown)[0], f"unknown key (valid keys: {', '.join(sorted(TOP_KEYS))})")
    for key in ("edge", "cloud", "entry", "adapters"):
        if data.get(key) is None:
            fail(key, "is required")
    nc = data.get("nc")
    if nc is not None and (not _is_int(nc) or nc < 1):
        fail("nc", f"must be a positive integer, got {nc!r}")
    parts = {key: _parse_part(data[key], key, fail) for key in PART_KEYS}
    entry = data["entry"]
    if not _is_int(entry) or entry < 1:
        fail("entry", f"must be a positive layer index, got {entry!r}")

    defaults = _mapping(data.get("adapter"), "adapter", ADAPTER_DEFAULT_KEYS, fail)
    raw_adapters = data["adapters"]
    if not isinstance(raw_adapters, list) or not raw_adapters:
        fail("adapters", "must be a non-empty list with one entry per cloud cut tensor")
    adapters = tuple(
        _parse_adapter({**defaults, **a} if isinstance(a, dict) else a, f"adapters[{i}]", fail)
        for i, a in enumerate(raw_adapters)
    )
    seen: dict[int, int] = {}
    for i, a in enumerate(adapters):
        if a.cloud in seen:
            fail(f"adapters[{i}].cloud", f"cloud layer {a.cloud} already has an adapter (adapters[{seen[a.cloud]}])")
        seen[a.cloud] = i

    gate_raw = _mapping(data.get("gate"), "gate", GATE_KEYS, fail)
    hidden = gate_raw.get("hidden", GateSpec.hidden)
    if not _is_int(hidden) or hidden < 1:
        fail("gate.hidden", f"must be a positive integer, got {hidden!r}")
    layers = gate_raw.get("layers")
    if layers is not None and (not isinstance(layers, list) or not layers or not all(_is_int(x) for x in layers)):
        fail("gate.layers", f"must be a non-empty list of edge layer indices, got {layers!r}")
    gate = GateSpec(hidden=hidden, layers=tuple(layers) if layers else None)
    tail = data.get("tail", "shared")
    if tail not in TAIL_MODES:
        fail("tail", f"must be one of {', '.join(TAIL_MODES)}, got {tail!r}")
    extension = _parse_extension(data.get("extension"), fail)

    return ECCSpec(
        name=str(data.get("name") or Path(source).stem),
        edge=parts["edge"],
        cloud=parts["cloud"],
        entry=entry,
        adapters=adapters,
        gate=gate,
        nc=nc,
        tail=tail,
        extension=extension,
    )


def check_geometry(spec: ECCSpec, edge_geometry: list, cloud_geometry: list, cloud_cut_set: list[int]) -> None:
    """Check the adapters against the built detectors.

    Args:
        spec: the parsed spec.
        edge_geometry: `layer_geometry(edge)`, one entry per edge layer (None for non-feature outputs).
        cloud_geometry: `layer_geometry(cloud)`.
        cloud_cut_set: `cut_set(cloud, spec.entry)`.
    """
    src = spec.name

    def fail(fieldname: str, msg: str):
        raise ECCConfigError(f"{src}: {fieldname}: {msg}")

    if spec.entry >= len(cloud_geometry):
        fail("entry", f"cloud has {len(cloud_geometry)} layers (0..{len(cloud_geometry) - 1}), got {spec.entry}")
    have = {a.cloud for a in spec.adapters}
    for i, a in enumerate(spec.adapters):
        if a.cloud not in cloud_cut_set:
            fail(
                f"adapters[{i}].cloud",
                f"cloud layer {a.cloud} is not needed to enter at layer {spec.entry}; the cut set is {cloud_cut_set}",
            )
        if not 0 <= a.edge < len(edge_geometry) or edge_geometry[a.edge] is None:
            fail(f"adapters[{i}].edge", f"edge layer {a.edge} is not a feature-map layer of the edge detector")
        e, c = edge_geometry[a.edge], cloud_geometry[a.cloud]
        if e.stride != c.stride:
            fail(
                f"adapters[{i}].edge",
                f"edge layer {a.edge} has stride {e.stride} but cloud layer {a.cloud} (the tensor it feeds) "
                f"has stride {c.stride}",
            )
        if a.bottleneck is not None and a.bottleneck > e.channels:
            fail(f"adapters[{i}].bottleneck", f"{a.bottleneck} exceeds the edge layer's {e.channels} channels")
    missing = [j for j in cloud_cut_set if j not in have]
    if missing:
        fail(
            "adapters",
            f"entering the cloud at layer {spec.entry} needs cloud tensors {cloud_cut_set}; "
            f"no adapter produces {missing}",
        )
    for j in spec.gate.layers or ():
        if not 0 <= j < len(edge_geometry) or edge_geometry[j] is None:
            fail("gate.layers", f"edge layer {j} is not a feature-map layer of the edge detector")
    if spec.extension is not None and spec.extension.layers:
        for j in spec.extension.layers:
            if not 0 <= j < len(edge_geometry) or edge_geometry[j] is None:
                fail("extension.layers", f"edge layer {j} is not a feature-map layer of the edge detector")
        strides = [edge_geometry[j].stride for j in spec.extension.layers]
        if strides != sorted(set(strides)):
            fail("extension.layers", f"layers must have distinct, increasing strides (like a Detect head's), got {strides}")


def _mapping(value: Any, where: str, keys: set[str], fail) -> dict:
    """A cfg section that must be a mapping with only `keys` (None reads as empty)."""
    value = {} if value is None else value
    if not isinstance(value, dict):
        fail(where, f"must be a mapping ({', '.join(sorted(keys))}), got {type(value).__name__}")
    bad = set(value) - keys
    if bad:
        fail(f"{where}.{sorted(bad)[0]}", f"unknown key (valid: {', '.join(sorted(keys))})")
    return value


def _is_int(x: Any) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def _parse_part(value: Any, key: str, fail) -> PartSpec:
    """An edge/cloud entry: a YAML or .pt name/path, a {model, scale} mapping, or an inline model YAML dict."""
    from ultralytics.nn.tasks import yaml_model_load

    if isinstance(value, dict) and "backbone" in value:  # inline (self-contained) Ultralytics model YAML
        return PartSpec(yaml=copy.deepcopy(value), source=f"<inline {key}>")
    scale = None
    if isinstance(value, dict):
        bad = set(value) - {"model", "scale"}
        if bad or "model" not in value:
            fail(key, f"a mapping needs 'model' and optionally 'scale', got keys {sorted(value)}")
        value, scale = value["model"], value.get("scale")
    if not isinstance(value, (str, Path)):
        fail(key, f"must be a model YAML, a .pt checkpoint or a mapping, got {type(value).__name__}")
    name = str(value)
    if name.endswith(".pt"):
        if scale is not None:
            fail(f"{key}.scale", "cannot rescale a .pt checkpoint")
        if not Path(name).is_file():
            name = _official_weights(name) or fail(
                key, f"checkpoint '{name}' not found (only official Ultralytics names such as yolo11n.pt are "
                     f"downloaded, and only when online)")
        from ultralytics.nn.tasks import load_checkpoint

        model, _ = load_checkpoint(name)
        if not hasattr(model, "yaml") or not isinstance(model.yaml, dict):
            fail(key, f"'{name}' is not an Ultralytics detection checkpoint")
        return PartSpec(yaml=copy.deepcopy(model.yaml), weights=name, source=name)
    if not name.endswith((".yaml", ".yml")):
        fail(key, f"'{name}' is neither a model YAML (.yaml) nor a checkpoint (.pt)")
    try:
        d = yaml_model_load(name)
    except Exception as e:  # Ultralytics raises FileNotFoundError or YAML errors here
        fail(key, f"cannot load model YAML '{name}': {e}")
    if not isinstance(d, dict) or "backbone" not in d or "head" not in d:
        fail(key, f"'{name}' is not an Ultralytics model YAML (needs backbone and head)")
    if scale is not None:
        if isinstance(scale, str):
            if scale not in (d.get("scales") or {}):
                fail(f"{key}.scale", f"'{scale}' is not one of the YAML's scales {sorted(d.get('scales') or {})}")
            d["scale"] = scale
        elif isinstance(scale, list) and len(scale) == 3 and all(isinstance(x, (int, float)) for x in scale):
            d["scales"] = {**(d.get("scales") or {}), "custom": scale}
            d["scale"] = "custom"
        else:
            fail(f"{key}.scale", f"must be a scale letter or [depth, width, max_channels], got {scale!r}")
    elif d.get("scales") and not d.get("scale"):
        fail(key, f"'{name}' has several scales; name one (e.g. yolo11n.yaml) or give scale:")
    return PartSpec(yaml=d, source=name)


def _parse_extension(raw: Any, fail) -> ExtensionSpec | None:
    """The optional `extension:` block."""
    if raw is None:
        return None
    raw = _mapping(raw, "extension", EXTENSION_KEYS, fail)
    depth = raw.get("depth", ExtensionSpec.depth)
    channels = raw.get("channels", ExtensionSpec.channels)
    layers = raw.get("layers")
    for key, v in (("depth", depth), ("channels", channels)):
        if not _is_int(v) or v < 1:
            fail(f"extension.{key}", f"must be a positive integer, got {v!r}")
    if layers is not None and (not isinstance(layers, list) or not layers or not all(_is_int(x) for x in layers)):
        fail("extension.layers", f"must be a non-empty list of edge layer indices, got {layers!r}")
    return ExtensionSpec(depth=depth, channels=channels, layers=tuple(layers) if layers else None)


def _official_weights(name: str) -> str | None:
    """Download an official Ultralytics checkpoint named without a folder (e.g. yolo11n.pt), as `yolo` does; None
    if it is not one, or the download fails (offline)."""
    from ultralytics.utils.downloads import GITHUB_ASSETS_NAMES, attempt_download_asset

    if Path(name).name != name or name not in GITHUB_ASSETS_NAMES:
        return None
    try:
        path = attempt_download_asset(name)
    except Exception:  # any network failure means: not available here
        return None
    return str(path) if Path(path).is_file() else None


def _parse_adapter(a: Any, where: str, fail) -> AdapterSpec:
    a = _mapping(a, where, ADAPTER_KEYS, fail)
    for key in ("cloud", "edge"):
        if key not in a:
            fail(f"{where}.{key}", "is required")
        if not _is_int(a[key]) or a[key] < 0:
            fail(f"{where}.{key}", f"must be a layer index >= 0, got {a[key]!r}")
    depth = a.get("depth", AdapterSpec.depth)
    if not _is_int(depth) or depth < 1:
        fail(f"{where}.depth", f"must be an integer >= 1, got {depth!r}")
    for key in ("channels", "bottleneck"):
        v = a.get(key)
        if v is not None and (not _is_int(v) or v < 1):
            fail(f"{where}.{key}", f"must be a positive integer or null, got {v!r}")
    bits = a.get("bits", AdapterSpec.bits)
    if not _is_int(bits) or not 1 <= bits <= MAX_BITS:
        fail(f"{where}.bits", f"must be an integer in 1..{MAX_BITS}, got {bits!r}")
    return AdapterSpec(
        cloud=a["cloud"],
        edge=a["edge"],
        depth=depth,
        channels=a.get("channels"),
        bottleneck=a.get("bottleneck"),
        bits=bits,
    )
