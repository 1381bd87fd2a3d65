"""ECCValidator: Ultralytics' detection validator, run on every route at once.

Per batch the model answers through the edge, the adapted route and the full cloud in one pass (shared edge and
cloud-head computation) plus the gate's predicted gains. The stage's own route (edge for stage=edge, cloud for
stage=cloud, adapted otherwise) goes through Ultralytics' usual machinery (metrics, confusion matrix, plots, JSON);
the others are scored on the same matching. On top it reports the ECC_D system at the operating offload ratio
(`offload=`): the `offload` share of images with the highest predicted gain answered by the adapted route, the rest
by the edge.

Extra metrics (results.csv, console): metrics/{edge,adapted,cloud}_mAP50(B), ..._mAP50-95(B),
metrics/eccd_mAP50-95(B), metrics/offload_recall (share of the images that needed offloading, gain from the adapted
route above NEEDED_GAIN (`ecc_yolo.quality`), that the deployed rule offloads: predicted gain > the model's
gate_threshold), metrics/offload_ratio (share that rule offloads) and metrics/feat (feature-matching loss).
Fitness, which picks best.pt, is the stage's own metric: its route's, or ECC_D's for stage=gate/joint.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from ultralytics.cfg import get_cfg
from ultralytics.models.yolo.detect import DetectionValidator
from ultralytics.utils import LOGGER
from ultralytics.utils.metrics import DetMetrics

from ecc_yolo.args import all_defaults, check_ecc_values, default_project, split_args
from ecc_yolo.losses import STAGE_ROUTE
from ecc_yolo.nn.ecc_model import ALL_ROUTES, DEFAULT_GAIN_THRESHOLD, EXTENSION, ECCModel
from ecc_yolo.policy import offload_mask, three_exit_choice, top_share_mask
from ecc_yolo.quality import marginal_gains

NEEDED_GAIN = DEFAULT_GAIN_THRESHOLD  # an image "needs" offloading when its gain from the adapted route exceeds this
GAIN_CHUNK = 64  # images per group when measuring gains (ecc_yolo.quality.marginal_gains): cheap enough per epoch


def find_ecc(model: Any) -> ECCModel:
    """The ECCModel inside a training model, a distillation wrapper or an AutoBackend."""
    for candidate in (model, getattr(model, "student_model", None)):
        if isinstance(candidate, ECCModel):
            return candidate
    backend = getattr(model, "backend", None)  # AutoBackend -> backend -> module
    inner = getattr(backend, "model", None)
    inner = getattr(inner, "student_model", inner)
    if isinstance(inner, ECCModel):
        return inner
    raise TypeError(f"expected an ECC model, got {type(model).__name__}")


def route_results(metrics: DetMetrics) -> tuple[float, float]:
    """(mAP50, mAP50-95) of processed metrics."""
    _, _, map50, map5095 = metrics.mean_results()
    return float(map50), float(map5095)


def fitness(map50: float, map5095: float) -> float:
    """Ultralytics' detection fitness."""
    return 0.1 * map50 + 0.9 * map5095


class ECCValidator(DetectionValidator):
    """Validates every route of an ECC model in one pass; see the module docstring."""

    def __init__(self, dataloader=None, save_dir: Path | None = None, args: Any = None, _callbacks=None) -> None:
        """Ultralytics' validator construction, with ecc-yolo's arguments accepted and checked."""
        args = dict(vars(args) if hasattr(args, "__dict__") else (args or {}))
        if save_dir is None and not args.get("project"):
            args["project"] = default_project()
        ultralytics_args, ecc_args = split_args(args)
        check_ecc_values(ecc_args)
        super().__init__(dataloader, save_dir, ultralytics_args, _callbacks)
        self.args = get_cfg(all_defaults(), {**vars(self.args), **ecc_args})
        self.primary = STAGE_ROUTE[self.args.stage]
        self.ecc: ECCModel | None = None

    # -- per batch ---------------------------------------------------------------------------------------------
    def init_metrics(self, model: torch.nn.Module) -> None:
        """Ultralytics' metrics for the primary route, plus per-route metrics and per-image records."""
        super().init_metrics(model)
        self.ecc = find_ecc(model)
        self._route_before = self.ecc.route
        self.ecc.set_route(ALL_ROUTES)
        self.routes = self.ecc.routes
        self.route_end2end = {"edge": self.ecc.edge.end2end, "adapted": self.ecc.cloud.end2end,
                              "cloud": self.ecc.cloud.end2end, EXTENSION: False}
        self.route_metrics = {r: DetMetrics(names=model.names) for r in self.routes}
        self.route_images: dict[str, list[dict]] = {r: [] for r in self.routes}
        self.gate_scores: list[torch.Tensor] = []
        self.router_logits: list[torch.Tensor] = []
        self.feat_losses: list[float] = []

    def postprocess(self, preds: Any) -> Any:
        """NMS per route (each with its own head's end-to-end setting)."""
        if not isinstance(preds, dict):
            return super().postprocess(preds)
        out = {}
        for route in self.routes:
            self.end2end = self.route_end2end[route]
            out[route] = super().postprocess(preds[route])
        self.end2end = self.route_end2end[self.primary]
        out["gate"], out["feat"], out["router"] = preds["gate"], preds["feat"], preds.get("router")
        return out

    def update_metrics(self, preds: dict, batch: dict) -> None:
        """Primary route through Ultralytics; every route into its own metrics and per-image records."""
        super().update_metrics(preds[self.primary], batch)
        for route in self.routes:
            for si, pred in enumerate(preds[route]):
                stat = self._image_stat(pred, si, batch)
                self.route_metrics[route].update_stats(stat)
                self.route_images[route].append(stat)
        self.gate_scores.append(preds["gate"].detach().float().cpu())
        if preds["router"] is not None:
            self.router_logits.append(preds["router"].detach().float().cpu())
        self.feat_losses.append(float(preds["feat"]))

    def _image_stat(self, pred: dict, si: int, batch: dict) -> dict:
        """One image's matching record, as DetectionValidator.update_metrics builds it."""
        pbatch = self._prepare_batch(si, batch)
        predn = self._prepare_pred(pred)
        cls = pbatch["cls"].cpu().numpy()
        no_pred = predn["cls"].shape[0] == 0
        return {
            **self._process_batch(predn, pbatch),
            "target_cls": cls,
            "target_img": np.unique(cls),
            "conf": np.zeros(0) if no_pred else predn["conf"].cpu().numpy(),
            "pred_cls": np.zeros(0) if no_pred else predn["cls"].cpu().numpy(),
            "im_name": Path(pbatch["im_file"]).name,
        }

    def plot_predictions(self, batch: dict, preds: Any, ni: int, max_det: int | None = None) -> None:
        """Plot the primary route's predictions."""
        super().plot_predictions(batch, preds[self.primary] if isinstance(preds, dict) else preds, ni, max_det)

    # -- per run -----------------------------------------------------------------------------------------------
    def get_stats(self) -> dict[str, Any]:
        """Ultralytics' stats of the primary route plus every route, ECC_D and the gate's offload recall."""
        stats = super().get_stats()
        if self.ecc is None:
            return stats
        self.ecc.set_route(self._route_before)
        if not self.gate_scores:
            return stats
        routes = {}
        for route in self.routes:
            self.route_metrics[route].process()
            routes[route] = route_results(self.route_metrics[route])
            stats[f"metrics/{route}_mAP50(B)"], stats[f"metrics/{route}_mAP50-95(B)"] = routes[route]
        scores = torch.cat(self.gate_scores)[:, 0].numpy()
        self.gate_scores_all = scores
        eccd50, eccd = self.routed_map(top_share_mask(scores, self.args.offload))
        stats["metrics/eccd_mAP50(B)"], stats["metrics/eccd_mAP50-95(B)"] = eccd50, eccd
        gains = marginal_gains(self.route_images["edge"], self.route_images["adapted"], chunk=GAIN_CHUNK)
        needed = gains > NEEDED_GAIN
        decided = offload_mask(scores, self.ecc.gate_threshold)  # the deployed rule: predicted gain > threshold
        stats["metrics/offload_recall"] = float(decided[needed].mean()) if needed.any() else 1.0
        stats["metrics/offload_ratio"] = float(decided.mean())
        stats["metrics/feat"] = float(np.mean(self.feat_losses))
        if self.router_logits:  # multi-exit edge: the router's own decision, and where frames stopped
            choice = three_exit_choice(torch.cat(self.router_logits).numpy())
            exits = [("edge", EXTENSION, "adapted")[c] for c in choice]
            _, stats["metrics/meanet_mAP50-95(B)"] = self.routed_map(np.array(exits))
            for code, name in enumerate(("main", "extension", "cloud")):
                stats[f"metrics/exit_{name}_share"] = float((choice == code).mean())
        if self.args.stage in ("gate", "joint"):
            stats["fitness"] = fitness(eccd50, eccd)
        self.route_summary = {**routes, f"ECC_D @ {self.args.offload:.0%} offload": (eccd50, eccd)}
        self.metrics.ecc = {k: v for k, v in stats.items() if k.startswith("metrics/") or k == "fitness"}
        return stats

    def routed_map(self, answered_by: np.ndarray) -> tuple[float, float]:
        """(mAP50, mAP50-95) of the system that answers image i by route `answered_by[i]` (a route name), or, for a
        boolean mask, by the adapted route where True and the edge elsewhere; from the per-image records of the
        last validation (no model runs)."""
        answered_by = np.asarray(answered_by)
        if answered_by.dtype == bool:
            answered_by = np.where(answered_by, "adapted", "edge")
        metrics = DetMetrics(names=self.names)
        for i, route in enumerate(answered_by):
            metrics.update_stats(self.route_images[str(route)][i])
        metrics.process()
        return route_results(metrics)

    def print_results(self) -> None:
        """Ultralytics' table for the primary route, then mAP of every route side by side."""
        super().print_results()
        summary = getattr(self, "route_summary", None)
        if not summary:
            return
        lines = [f"{'ECC route':>28}{'mAP50':>11}{'mAP50-95':>11}"]
        lines += [f"{name:>28}{m50:>11.3g}{m:>11.3g}" for name, (m50, m) in summary.items()]
        LOGGER.info("\n".join(lines))
