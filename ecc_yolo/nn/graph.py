"""Split execution of Ultralytics detection graphs.

An Ultralytics `DetectionModel` is a flat `nn.Sequential` whose layers carry `m.i` (their index) and `m.f` (where
their input comes from: -1 for the previous layer, an absolute index, or a list of both). Skip connections mean that
resuming a network at layer `entry` needs more than the output of layer `entry - 1`: it needs every earlier output
that any layer >= `entry` reads. That set is the *cut set*, and it is what the edge must reproduce (through the
adapters) for the cloud tail to run.

Everything here is derived from the graph itself, so it works for every family (v5u, v8, 11, 26) and any scale.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import torch
from torch import nn

IMAGE = -1  # key of the network input in an execution cache (the "output" of the layer before layer 0)


def layer_sources(m: nn.Module) -> list[int]:
    """Absolute indices of the outputs layer `m` reads (-1 stands for the network input when `m.i == 0`)."""
    froms = [m.f] if isinstance(m.f, int) else list(m.f)
    return [m.i + f if f < 0 else f for f in froms]


def cut_set(model: nn.Module, entry: int) -> list[int]:
    """Indices of the earlier outputs that layers `entry..end` of `model` consume, sorted.

    Args:
        model: an Ultralytics detection model (anything with a `.model` list of layers carrying `.i`/`.f`).
        entry: index of the first layer the tail runs.
    """
    layers = model.model
    if not 0 < entry < len(layers):
        raise ValueError(f"entry must be in 1..{len(layers) - 1} for a {len(layers)}-layer model, got {entry}")
    return sorted({j for m in layers[entry:] for j in layer_sources(m) if j < entry})


def execute(
    model: nn.Module,
    inputs: dict[int, torch.Tensor],
    start: int = 0,
    stop: int | None = None,
    keep: Iterable[int] = (),
) -> tuple[object, dict[int, torch.Tensor]]:
    """Run layers `start..stop-1` of an Ultralytics model, reading earlier outputs from `inputs`.

    This is Ultralytics' `BaseModel._predict_once` generalised to start anywhere: with `start=0` and
    `inputs={IMAGE: img}` it computes exactly what `model(img)` computes.

    Args:
        model: Ultralytics detection model.
        inputs: outputs of layers before `start` keyed by layer index (`IMAGE` for the network input); must hold
            every index in `cut_set(model, start)`, or the image when `start == 0`.
        start: first layer to run.
        stop: one past the last layer to run (default: run to the end).
        keep: layer indices (run here or given in `inputs`) whose outputs are returned.

    Returns:
        The output of the last layer run, and a dict of the kept outputs.
    """
    layers = model.model
    stop = len(layers) if stop is None else stop
    keep = set(keep)
    needed_later = set(model.save) | keep
    cache = dict(inputs)
    x = cache.get(start - 1)
    for m in layers[start:stop]:
        sources = layer_sources(m)
        if m.f != -1:
            x = cache[sources[0]] if isinstance(m.f, int) else [x if f == -1 else cache[j] for f, j in zip(m.f, sources)]
        elif x is None:
            raise KeyError(f"layer {m.i} needs the output of layer {m.i - 1}, which was not given")
        x = m(x)
        if m.i in needed_later:
            cache[m.i] = x
    return x, {k: cache[k] for k in keep if k in cache}


@dataclass(frozen=True)
class LayerGeometry:
    """Shape facts of one layer output: channels and stride relative to the input image (pixels per cell)."""

    channels: int
    stride: int


def layer_geometry(model: nn.Module, imgsz: int = 256) -> list[LayerGeometry | None]:
    """Channels and stride of every layer output (None for outputs that are not a single feature map)."""
    p = next(model.parameters())
    was_training = model.training
    model.eval()
    keep = range(len(model.model))
    with torch.no_grad():
        img = torch.zeros(1, p.shape[1] if p.ndim == 4 else 3, imgsz, imgsz, device=p.device, dtype=p.dtype)
        _, outs = execute(model, {IMAGE: img}, keep=keep)
    model.train(was_training)
    geometry: list[LayerGeometry | None] = []
    for i in keep:
        t = outs.get(i)
        ok = isinstance(t, torch.Tensor) and t.ndim == 4
        geometry.append(LayerGeometry(channels=t.shape[1], stride=imgsz // t.shape[-1]) if ok else None)
    return geometry
