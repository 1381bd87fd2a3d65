"""ECCModel: an edge detector, a cloud detector, the adapters between them and the offload gate, as one module.

Routes (what can answer a frame):
    edge      the edge detector alone (on the device)
    cloud     the full cloud detector on the image (ECC_I: the device sends the JPEG)
    adapted   edge features -> adapters -> cloud tail (ECC_A/ECC_D: the device sends quantised features)
`cloud_tail(cuts)` runs the cloud from its entry layer on given cut tensors; `adapted_tail(cuts)` is what the
adapted route runs: the same tail, or with `tail: copy` in the cfg a trainable copy of it (the cloud itself stays
untouched for ECC_I and as the teacher).

`ECCModel` is a `DetectionModel` so that Ultralytics' trainer, validator, predictor, EMA and checkpoint code can
hold it. The attribute those expect to be "the detector" (`.model`, whose last layer is the Detect head) is the
detector of the active route: the edge's layers when `route == "edge"`, the cloud's otherwise (both the cloud and
the adapted route end in the cloud's head).
"""

from __future__ import annotations

from copy import deepcopy
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from ultralytics.nn.tasks import DetectionModel, load_checkpoint
from ultralytics.utils import LOGGER
from ultralytics.utils.torch_utils import intersect_dicts

from ecc_yolo import payload
from ecc_yolo.nn.adapters import Adapter
from ecc_yolo.nn.extension import ExtensionBlock
from ecc_yolo.nn.gate import ExitRouter, OffloadGate
from ecc_yolo.nn.graph import IMAGE, cut_set, execute, layer_geometry
from ecc_yolo.payload.codec import FeaturePayload
from ecc_yolo.policy import GAIN_THRESHOLD
from ecc_yolo.routes import ADAPTED, ALL_ROUTES, CLOUD, EDGE, EXTENSION, MULTI_EXIT_ROUTES, ROUTES
from ecc_yolo.spec import ECCConfigError, ECCSpec, PartSpec, check_geometry, load_spec

PARTS = ("edge", "cloud", "adapters", "gate", "adapted_cloud", "extension", "router")
# adapted_cloud exists only with `tail: copy`; extension and router only with an `extension:` block
GEOMETRY_IMGSZ = 256  # probe size for strides/channels; any multiple of the max stride gives the same answer


def build_part(part: PartSpec, ch: int, nc: int | None, verbose: bool) -> DetectionModel:
    """Build one detector from its spec: from YAML, or from a .pt checkpoint (re-headed if `nc` differs)."""
    if part.weights:
        model, _ = load_checkpoint(part.weights)
        if not isinstance(model, DetectionModel) or type(model).__name__ != "DetectionModel":
            raise ECCConfigError(f"{part.source}: expected a YOLO detection checkpoint, got {type(model).__name__}")
        if nc is None or nc == model.yaml.get("nc"):
            return model.float().train()
        weights = model
        model = DetectionModel(_with_nc(weights.yaml, nc), ch=ch, verbose=verbose)
        model.load(weights, verbose=verbose)
        return model
    return DetectionModel(_with_nc(part.yaml, nc), ch=ch, verbose=verbose)


def tail_copy(cloud: DetectionModel, entry: int) -> DetectionModel:
    """A copy of the cloud whose layers before `entry` are dropped (never run): the adapted route's own tail."""
    copy = deepcopy(cloud)
    for i in range(entry):
        copy.model[i] = nn.Identity()
    return copy


def _with_nc(yaml: dict, nc: int | None) -> dict:
    """Copy of a model YAML dict for `nc` classes (set up front, so Ultralytics does not log an override)."""
    yaml = deepcopy(yaml)
    if nc:
        yaml["nc"] = nc
    return yaml


def find_ecc(model: Any) -> ECCModel:
    """The ECCModel inside a training model, a distillation wrapper or an AutoBackend.

    Raises:
        TypeError: there is none.
    """
    for candidate in (model, getattr(model, "student_model", None)):
        if isinstance(candidate, ECCModel):
            return candidate
    backend = getattr(model, "backend", None)  # AutoBackend -> backend -> module
    inner = getattr(backend, "model", None)
    inner = getattr(inner, "student_model", inner)
    if isinstance(inner, ECCModel):
        return inner
    raise TypeError(f"expected an ECC model, got {type(model).__name__}")


class ECCModel(DetectionModel):
    """Edge + cloud + adapters + gate; see the module docstring for the routes."""

    def __init__(self, cfg: str | Path | dict | ECCSpec = "ecc-yolo11n-l.yaml", ch: int = 3, nc: int | None = None,
                 verbose: bool = True):
        """Build an ECC model from an ECC cfg (shipped name, path, dict or spec).

        Args:
            cfg: the ECC cfg.
            ch: input channels.
            nc: number of classes; overrides the cfg's `nc` and the detectors' own.
            verbose: print a summary.
        """
        nn.Module.__init__(self)
        spec = load_spec(cfg)
        nc = nc or spec.nc
        self.edge = build_part(spec.edge, ch, nc, verbose=False)
        self.cloud = build_part(spec.cloud, ch, nc, verbose=False)
        edge_nc, cloud_nc = self.edge.yaml["nc"], self.cloud.yaml["nc"]
        if edge_nc != cloud_nc:
            raise ECCConfigError(
                f"{spec.name}: nc: the edge predicts {edge_nc} classes and the cloud {cloud_nc}; set nc: in the cfg"
            )
        self.spec = spec.with_nc(edge_nc)
        edge_geometry = layer_geometry(self.edge, GEOMETRY_IMGSZ)
        cloud_geometry = layer_geometry(self.cloud, GEOMETRY_IMGSZ)
        self.cut = cut_set(self.cloud, spec.entry) if spec.entry < len(self.cloud.model) else []
        check_geometry(spec, edge_geometry, cloud_geometry, self.cut)
        if int(self.edge.stride.max()) != int(self.cloud.stride.max()):
            raise ECCConfigError(f"{spec.name}: edge and cloud must share the max stride (both read one letterbox)")

        self.adapters = nn.ModuleDict(
            {
                str(a.cloud): Adapter(a, edge_geometry[a.edge].channels, cloud_geometry[a.cloud].channels)
                for a in sorted(spec.adapters, key=lambda a: a.cloud)
            }
        )
        self.cut_strides = {j: cloud_geometry[j].stride for j in self.cut}
        self.gate_layers = list(spec.gate.layers or self.edge.model[-1].f)
        self.adapted_cloud = tail_copy(self.cloud, spec.entry) if spec.tail == "copy" else None
        gate_channels = [edge_geometry[j].channels for j in self.gate_layers]
        self.gate = OffloadGate(gate_channels, spec.gate.hidden)
        self.extension_layers: list[int] = []
        self.extension = self.router = None
        if spec.extension is not None:
            self.extension_layers = list(spec.extension.layers or self.edge.model[-1].f)
            head = self.edge.model[-1]
            strides = torch.tensor([float(edge_geometry[j].stride) for j in self.extension_layers])
            self.extension = ExtensionBlock([edge_geometry[j].channels for j in self.extension_layers], strides,
                                            edge_nc, spec.extension.depth, spec.extension.channels, head.reg_max)
            self.router = ExitRouter(gate_channels, spec.gate.hidden)

        self.yaml = {**self.spec.to_dict(), "channels": ch, "nc": edge_nc}
        self.names = self._part_names()
        self.edge.names = self.cloud.names = self.names
        self.nc = edge_nc
        self.stride = self.cloud.stride
        self.inplace = True
        self.task = "detect"
        self.route = ADAPTED
        self.frozen: tuple[str, ...] = ()  # parts kept in eval mode (set per stage: ecc_yolo.engine.trainer.freeze_parts)
        self.gate_threshold = GAIN_THRESHOLD  # route=auto offloads when the predicted gain exceeds this
        self.deploy: dict = {}  # deployment settings written by the stage that fits them (ecc_yolo.deploy)
        self.criterion = None
        if verbose:
            self.info()

    def __setstate__(self, state: dict) -> None:
        """Unpickle, giving checkpoints saved before a part existed the defaults of a cfg without it."""
        super().__setstate__(state)
        for name, default in (("adapted_cloud", None), ("extension", None), ("router", None),
                              ("extension_layers", []), ("frozen", ()), ("gate_threshold", GAIN_THRESHOLD),
                              ("deploy", {})):
            if name not in self.__dict__ and name not in self._modules:
                setattr(self, name, default)

    # -- what Ultralytics sees as "the detector" -------------------------------------------------------------------
    @property
    def model(self) -> nn.Sequential:
        """Layers of the active route's detector (its last layer is the Detect head whose output we return)."""
        return self._active_detector().model

    @property
    def save(self) -> list[int]:
        """Saved-output indices of the active detector."""
        return self._active_detector().save

    def _active_detector(self) -> nn.Module:
        if self.route == EDGE:
            return self.edge
        if self.route == EXTENSION:
            return self.extension
        if self.route == ADAPTED and self.adapted_cloud is not None:
            return self.adapted_cloud
        return self.cloud

    @property
    def parts(self) -> dict[str, DetectionModel]:
        """The detectors by name (edge, cloud, and the adapted route's tail copy when there is one)."""
        detectors = {"edge": self.edge, "cloud": self.cloud}
        if self.adapted_cloud is not None:
            detectors["adapted_cloud"] = self.adapted_cloud
        return detectors

    @property
    def routes(self) -> tuple[str, ...]:
        """The routes this model has: edge, cloud, adapted, and extension for a multi-exit edge."""
        return MULTI_EXIT_ROUTES if self.extension is not None else ROUTES

    def set_route(self, route: str) -> ECCModel:
        """Choose what `forward(img)` runs (a route, or ALL_ROUTES for a dict of every route and the gate)."""
        if route not in (*self.routes, ALL_ROUTES):
            raise ValueError(f"route must be one of {self.routes}, got '{route}'")
        self.route = route
        return self

    @property
    def end2end(self) -> bool:
        """Whether the active detector's head is end-to-end (NMS-free)."""
        return getattr(self.model[-1], "end2end", False)

    @end2end.setter
    def end2end(self, value: bool) -> None:
        for part in self.parts.values():
            part.end2end = value

    def set_head_attr(self, **kwargs: Any) -> None:
        """Set attributes (max_det, agnostic_nms, ...) on every Detect head."""
        for part in self.parts.values():
            part.set_head_attr(**kwargs)
        if self.extension is not None:
            for k, v in kwargs.items():
                setattr(self.extension.model[-1], k, v)

    def train(self, mode: bool = True) -> ECCModel:
        """Set train/eval mode; frozen parts stay in eval mode (their BatchNorm statistics must not move)."""
        super().train(mode)
        for name in getattr(self, "frozen", ()):
            if getattr(self, name, None) is not None:
                getattr(self, name).eval()
        return self

    def _apply(self, fn, *args, **kwargs):
        """Move/cast tensors; each detector's own `_apply` handles its head's anchors and strides."""
        return nn.Module._apply(self, fn, *args, **kwargs)

    # -- routes --------------------------------------------------------------------------------------------------
    @property
    def adapter_sources(self) -> list[int]:
        """Edge layers the adapters read."""
        return sorted({a.edge_layer for a in self.adapters.values()})

    def edge_forward(self, img: torch.Tensor, keep: tuple[int, ...] = ()) -> tuple[Any, dict[int, torch.Tensor]]:
        """Full edge detector; also returns the edge outputs listed in `keep`."""
        return execute(self.edge, {IMAGE: img}, keep=keep)

    @property
    def device_layers(self) -> tuple[int, ...]:
        """Edge outputs the device keeps from the edge pass: adapter sources, gate inputs, extension inputs."""
        return tuple({*self.adapter_sources, *self.gate_layers, *self.extension_layers})

    def extension_forward(self, feats: dict[int, torch.Tensor]) -> Any:
        """The extension exit's head output from the edge feature maps (requires an extension block)."""
        return self.extension([feats[j] for j in self.extension_layers])

    def exit_logits(self, feats: dict[int, torch.Tensor], edge_output: Any) -> torch.Tensor:
        """The router's (B, 3) logits over the exits main / extension / cloud (requires an extension block)."""
        return self.router([feats[j] for j in self.gate_layers], edge_output)

    def edge_features(self, img: torch.Tensor) -> dict[int, torch.Tensor]:
        """Edge outputs the adapters need, running the edge only as far as necessary."""
        sources = self.adapter_sources
        return execute(self.edge, {IMAGE: img}, stop=max(sources) + 1, keep=sources)[1]

    def cloud_cuts(self, img: torch.Tensor) -> dict[int, torch.Tensor]:
        """The cloud's own cut tensors: its layers before the entry, run on the image."""
        return execute(self.cloud, {IMAGE: img}, stop=self.spec.entry, keep=self.cut)[1]

    def cloud_tail(self, cuts: dict[int, torch.Tensor]) -> Any:
        """Cloud layers from the entry on, fed with cut tensors (keyed by cloud layer index)."""
        return execute(self.cloud, cuts, start=self.spec.entry)[0]

    def adapted_tail(self, cuts: dict[int, torch.Tensor]) -> Any:
        """The tail the adapted route runs on adapted cut tensors: the cloud's own, or its copy (`tail: copy`)."""
        tail = self.adapted_cloud if self.adapted_cloud is not None else self.cloud
        return execute(tail, cuts, start=self.spec.entry)[0]

    def cloud_forward(self, img: torch.Tensor) -> Any:
        """The full cloud detector on the image."""
        return execute(self.cloud, {IMAGE: img})[0]

    def encode(self, feats: dict[int, torch.Tensor]) -> dict[int, torch.Tensor]:
        """Device side: float latents to transmit, keyed by the cloud layer they stand for."""
        return {int(k): a.encode(feats[a.edge_layer]) for k, a in self.adapters.items()}

    def decode(self, received: dict[int, torch.Tensor]) -> dict[int, torch.Tensor]:
        """Cloud side: received (dequantised) latents -> cloud cut tensors."""
        return {int(k): a.decode(received[int(k)]) for k, a in self.adapters.items()}

    def adapt(self, feats: dict[int, torch.Tensor]) -> dict[int, torch.Tensor]:
        """Edge features -> cloud cut tensors, with transmission quantisation simulated exactly."""
        return {int(k): a(feats[a.edge_layer]) for k, a in self.adapters.items()}

    def adapted_forward(self, img: torch.Tensor) -> Any:
        """The adapted route on an image."""
        return self.adapted_tail(self.adapt(self.edge_features(img)))

    def gate_scores(self, feats: dict[int, torch.Tensor], edge_output: Any) -> torch.Tensor:
        """Predicted per-image gain of each offload route (B, 2), from edge features and the edge's output."""
        return self.gate([feats[j] for j in self.gate_layers], edge_output)

    def feature_distance(self, adapted_cuts: dict[int, torch.Tensor], cloud_cuts: dict[int, torch.Tensor]) -> torch.Tensor:
        """Feature-matching loss: mean over cut tensors of the MSE between adapted and cloud tensors, both whitened
        with the adapter's per-channel statistics (the `feat` term of knowledge adaptation)."""
        terms = [
            F.mse_loss(a.whiten(adapted_cuts[int(k)]).float(), a.whiten(cloud_cuts[int(k)]).float())
            for k, a in self.adapters.items()
        ]
        return torch.stack(terms).mean()

    def run_routes(self, img: torch.Tensor, routes: tuple[str, ...] | None = None, gate: bool = True) -> dict[str, Any]:
        """Run several routes on one batch, sharing the edge pass (and the cloud head, for the feature distance).

        Args:
            img: (B, 3, H, W) network input.
            routes: routes to run (default: all of this model's).
            gate: also return the gate's (and, with an extension block, the router's) outputs.

        Returns:
            dict with an entry per requested route (the Detect head output), "gate": (B, 2) predicted gains and,
            with an extension block, "router": (B, 3) exit logits if `gate`, and "feat": the feature-matching loss
            of the batch when both "adapted" and "cloud" ran.
        """
        routes = self.routes if routes is None else routes
        unknown = set(routes) - set(self.routes)
        if unknown:
            raise ValueError(f"unknown routes {sorted(unknown)}; valid: {self.routes}")
        out: dict[str, Any] = {}
        if EDGE in routes or EXTENSION in routes or gate:
            edge_out, feats = self.edge_forward(img, keep=self.device_layers)
            if EDGE in routes:
                out[EDGE] = edge_out
            if EXTENSION in routes:
                out[EXTENSION] = self.extension_forward(feats)
            if gate:
                out["gate"] = self.gate_scores(feats, edge_out)
                if self.router is not None:
                    out["router"] = self.exit_logits(feats, edge_out)
        elif ADAPTED in routes:
            feats = self.edge_features(img)
        if ADAPTED in routes:
            adapted_cuts = self.adapt(feats)
            out[ADAPTED] = self.adapted_tail(adapted_cuts)
        if CLOUD in routes:
            cloud_cuts = self.cloud_cuts(img)
            out[CLOUD] = self.cloud_tail(cloud_cuts)  # identical to cloud_forward (tested), and gives the cuts
            if ADAPTED in routes:
                out["feat"] = self.feature_distance(adapted_cuts, cloud_cuts)
        return out

    def predict(self, x: torch.Tensor, profile: bool = False, augment: bool = False, embed=None, **kwargs) -> Any:
        """Run the active route (Ultralytics' predict/validate entry point)."""
        if self.route == ALL_ROUTES:
            return self.run_routes(x)
        if self.route == EXTENSION:
            return self.extension_forward(self.edge_forward(x, keep=tuple(self.extension_layers))[1])
        if self.route == EDGE:
            return self.edge_forward(x)[0]
        if self.route == CLOUD:
            return self.cloud_forward(x)
        return self.adapted_forward(x)

    # -- the device/cloud boundary: the payload's home is ecc_yolo.payload; these are its calls for this model ----
    def fingerprint(self) -> bytes:
        """16-byte identity of this model's weights and cfg (`ecc_yolo.payload.fingerprint`)."""
        return payload.fingerprint(self)

    def payload_shapes(self, input_shape: tuple[int, int]) -> dict[int, tuple[int, int, int, int]]:
        """Cloud layer -> (C, H, W, bits) of the latents a payload carries (`ecc_yolo.payload.payload_shapes`)."""
        return payload.payload_shapes(self, input_shape)

    def make_payload(self, img: torch.Tensor, image_shape: tuple[int, int]) -> list[FeaturePayload]:
        """Device side: one feature payload per image of a letterboxed (B, 3, H, W) batch whose original frames
        were `image_shape` (h, w) pixels."""
        return self.payloads_from_features(self.edge_features(img), image_shape, tuple(img.shape[2:]))

    def payloads_from_features(
        self,
        feats: dict[int, torch.Tensor],
        image_shape: tuple[int, int],
        input_shape: tuple[int, int],
        fingerprint: bytes | None = None,
    ) -> list[FeaturePayload]:
        """Device side: payloads of already computed edge features (`ecc_yolo.payload.make_payloads`).

        `fingerprint` (this model's) can be passed by callers that make many payloads: computing it hashes every
        weight.
        """
        return payload.make_payloads(self.encode(feats), payload.latent_bits(self), fingerprint or self.fingerprint(),
                                     image_shape, input_shape)

    def received_latents(self, payloads: list[FeaturePayload]) -> dict[int, torch.Tensor]:
        """Cloud side: dequantised latents of a batch of payloads, on this model's device and dtype."""
        p = next(self.parameters())
        return payload.received_latents(payloads, p.device, p.dtype)

    # -- Ultralytics plumbing ------------------------------------------------------------------------------------
    def _part_names(self) -> dict[int, str]:
        placeholder = {i: str(i) for i in range(self.edge.yaml["nc"])}
        for part in (self.cloud, self.edge):
            names = getattr(part, "names", None)
            if names and names != placeholder:
                return dict(names)
        return placeholder

    def init_criterion(self):
        """A fresh criterion of the kind the trainer set (`ECCTrainer` builds `ecc_yolo.losses.ECCLoss`; the model
        does not import training code). Ultralytics calls this to rebuild the criterion when it resumes.

        Raises:
            RuntimeError: no criterion was ever set (train with `ECCTrainer`, or set `model.criterion`).
        """
        if getattr(self, "criterion", None) is None:
            raise RuntimeError("ECCModel has no criterion: the trainer sets it (ecc_yolo.engine.trainer.ECCTrainer), "
                               "or set model.criterion = ecc_yolo.losses.ECCLoss(model)")
        return type(self.criterion)(self)

    def loss(self, batch: dict, preds: Any = None):
        """Loss of the current training stage (the criterion the trainer set); `preds` (the active route's output)
        is reused where it applies."""
        if getattr(self, "criterion", None) is None:
            self.criterion = self.init_criterion()
        return self.criterion(batch, preds)

    def is_fused(self) -> bool:
        """True once every part has been fused."""
        return all(p.is_fused() for p in self.parts.values())

    def fuse(self, verbose: bool = True, imgsz: int = 640) -> ECCModel:
        """Fuse Conv+BN in both detectors and in the adapter decoders (inference only)."""
        if not self.is_fused():
            for part in self.parts.values():
                part.fuse(verbose=False)
            from ultralytics.nn.modules import Conv
            from ultralytics.utils.torch_utils import fuse_conv_and_bn

            blocks = [self.adapters] + ([self.extension] if self.extension is not None else [])
            for m in (m for block in blocks for m in block.modules()):
                if isinstance(m, Conv) and hasattr(m, "bn"):
                    m.conv = fuse_conv_and_bn(m.conv, m.bn)
                    delattr(m, "bn")
                    m.forward = m.forward_fuse
            if verbose:
                self.info(imgsz=imgsz)
        return self

    def load(self, weights: Any, verbose: bool = True) -> None:
        """Copy every tensor of matching name and shape from an ECC checkpoint/model into this one."""
        model = (weights.get("ema") or weights["model"]) if isinstance(weights, dict) else weights
        model = getattr(model, "student_model", model)  # a distillation wrapper saved mid-training
        if not isinstance(model, ECCModel):
            raise TypeError(f"expected ECC weights, got {type(model).__name__}")
        csd = intersect_dicts(model.float().state_dict(), self.state_dict())
        self.load_state_dict(csd, strict=False)
        self._fill_tail_copy(set(csd))
        if self.names == {i: str(i) for i in range(self.nc)} and len(model.names) == self.nc:
            self.names = dict(model.names)  # a YAML-built model takes the names its weights came with
        if verbose:
            LOGGER.info(f"Transferred {len(csd)}/{len(self.state_dict())} items from pretrained ECC weights")

    def _fill_tail_copy(self, loaded: set[str]) -> None:
        """Tail-copy tensors the loaded weights did not provide start as the cloud's: weights without a tail copy, or
        one entering the cloud later (a design with an earlier `entry` copies more cloud layers)."""
        if self.adapted_cloud is None:
            return
        cloud = self.cloud.state_dict()
        fill = {k: cloud[k] for k in self.adapted_cloud.state_dict() if f"adapted_cloud.{k}" not in loaded}
        self.adapted_cloud.load_state_dict(fill, strict=False)

    def sync_tail_copy(self) -> None:
        """Set the adapted route's tail copy (`tail: copy`) to the cloud's current tail; no-op without a copy.

        The copy is made when the model is built, before stage=cloud trains the cloud: stage=cloud keeps it equal
        to the trained cloud through this call, so that stage=adapt starts from the trained tail, not the cloud's
        initial weights."""
        if self.adapted_cloud is not None:
            self.adapted_cloud.load_state_dict(self.cloud.state_dict(), strict=False)  # its layers < entry are Identity

    def info(self, detailed: bool = False, verbose: bool = True, imgsz: int = 640):
        """Print a one-line summary per part (parameters), like Ultralytics' model summary."""
        if not verbose:
            return None
        n_params = {k: sum(p.numel() for p in m.parameters()) for k, m in self.named_children()}
        LOGGER.info(
            f"ECC {self.spec.name}: entry {self.spec.entry}, cuts {self.cut}, "
            + ", ".join(f"{k} {v:,} params" for k, v in n_params.items())
        )
        return n_params
