"""ECCValidator: Ultralytics' detection validator, run on every route at once.

Per batch the model answers through the edge, the adapted route and the full cloud in one pass (shared edge and
cloud-head computation) plus the gate's predicted gains. The stage's own route (edge for stage=edge, cloud for
stage=cloud, adapted otherwise) goes through Ultralytics' usual machinery (its metrics table, confusion matrix,
plots, JSON). Every route, and the ECC systems built from them, are scored by ecc-yolo's one mAP
(`ecc_yolo.eval.coco_eval.RouteMixEvaluator`, pycocotools) on detections made as the benchmark makes them
(`ecc_yolo.infer`), so `ecc-yolo val` reports the same numbers on the same images. ECC_D is scored at the operating
offload ratio (`offload=`): the `offload` share of images with the highest predicted gain answered by the adapted
route, the rest by the edge (`ecc_yolo.policy.decide`).

Extra metrics (results.csv, console): metrics/{edge,adapted,cloud}_mAP50(B), ..._mAP50-95(B),
metrics/eccd_mAP50-95(B), metrics/offload_recall (share of the images that needed offloading, gain from the adapted
route above NEEDED_GAIN, whose predicted gain exceeds the fixed gate threshold, `policy.GAIN_THRESHOLD` or
`gate_threshold=`: the gate's own scale, which recall-rate boosting moves),
metrics/offload_ratio (share that rule offloads) and metrics/feat (feature-matching loss). `operating_point` fits the
model's default operating point on the frames of the last validation (stage=gate/joint save it with the model).
Fitness, which picks best.pt, is the stage's own metric by this one mAP: its route's (0.1 mAP50 + 0.9 mAP50-95,
Ultralytics' weighting), or ECC_D's for stage=gate/joint; Ultralytics' own mAP of the primary route only fills its
table.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from ultralytics.cfg import get_cfg
from ultralytics.models.yolo.detect import DetectionValidator
from ultralytics.utils import LOGGER, ops

from ecc_yolo.args import all_defaults, check_ecc_values, default_project, split_args
from ecc_yolo.deploy import MARGIN_RESAMPLES, MARGIN_SEED, DeploySettings, calibrate, model_settings
from ecc_yolo.eval.coco_eval import RouteMixEvaluator
from ecc_yolo.eval.dataset import from_boxes
from ecc_yolo.infer import VALIDATION_NMS, detections, route_end2end
from ecc_yolo.nn.ecc_model import ECCModel, find_ecc
from ecc_yolo.policy import decide
from ecc_yolo.routes import ADAPTED, ALL_ROUTES, EDGE, EXIT_ROUTES, EXITS, ROUTE_CODES
from ecc_yolo.stages import ECC_D_METRIC, get_stage

NEEDED_GAIN = 0.05  # an image "needs" offloading when its gain from the adapted route exceeds this (mAP50-95)
GAIN_CHUNK = 64  # images per group when measuring those gains (RouteMixEvaluator.marginal_gains): cheap per epoch


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
        self.stage = get_stage(self.args.stage)
        self.primary = self.stage.route
        self.ecc: ECCModel | None = None

    # -- per batch ---------------------------------------------------------------------------------------------
    def init_metrics(self, model: torch.nn.Module) -> None:
        """Ultralytics' metrics for the primary route, plus every route's detections and the ground truth."""
        super().init_metrics(model)
        self.ecc = find_ecc(model)
        self._route_before = self.ecc.route
        self.ecc.set_route(ALL_ROUTES)
        self.routes = self.ecc.routes
        self.route_end2end = route_end2end(self.ecc)
        self.route_detections: dict[str, list[np.ndarray]] = {r: [] for r in self.routes}
        self.truth: dict[str, list] = {"files": [], "shapes": [], "boxes": [], "classes": []}
        self.gate_scores: list[torch.Tensor] = []
        self.router_logits: list[torch.Tensor] = []
        self.feat_losses: list[float] = []
        self.evaluator: RouteMixEvaluator | None = None

    def postprocess(self, preds: Any) -> Any:
        """Ultralytics' NMS for the primary route; the other outputs are kept raw for `update_metrics`."""
        if not isinstance(preds, dict):
            return super().postprocess(preds)
        self.end2end = self.route_end2end[self.primary]
        return {"primary": super().postprocess(preds[self.primary]), "raw": preds}

    def update_metrics(self, preds: dict, batch: dict) -> None:
        """Primary route through Ultralytics; every route's detections (in original image pixels, as the benchmark
        makes them) and the ground truth kept for the evaluator."""
        super().update_metrics(preds["primary"], batch)
        raw = preds["raw"]
        input_shape = tuple(batch["img"].shape[2:])
        shapes = [tuple(int(v) for v in s) for s in batch["ori_shape"]]
        pads = list(batch["ratio_pad"])
        for route in self.routes:
            found = detections(raw[route], self.route_end2end[route], VALIDATION_NMS, input_shape, shapes, pads)
            self.route_detections[route] += [d.cpu().numpy() for d in found]
        for si in range(len(shapes)):
            pbatch = self._prepare_batch(si, batch)
            boxes = ops.scale_boxes(pbatch["imgsz"], pbatch["bboxes"].clone(), pbatch["ori_shape"],
                                    ratio_pad=pbatch["ratio_pad"]) if len(pbatch["cls"]) else pbatch["bboxes"]
            self.truth["files"].append(pbatch["im_file"])
            self.truth["shapes"].append(shapes[si])
            self.truth["boxes"].append(boxes.reshape(-1, 4).cpu().numpy())
            self.truth["classes"].append(pbatch["cls"].cpu().numpy())
        self.gate_scores.append(raw["gate"].detach().float().cpu())
        if raw.get("router") is not None:
            self.router_logits.append(raw["router"].detach().float().cpu())
        self.feat_losses.append(float(raw["feat"]))

    def plot_predictions(self, batch: dict, preds: Any, ni: int, max_det: int | None = None) -> None:
        """Plot the primary route's predictions."""
        super().plot_predictions(batch, preds["primary"] if isinstance(preds, dict) else preds, ni, max_det)

    # -- per run -----------------------------------------------------------------------------------------------
    def get_stats(self) -> dict[str, Any]:
        """Ultralytics' stats of the primary route plus every route, ECC_D and the gate's offload recall."""
        stats = super().get_stats()
        if self.ecc is None:
            return stats
        self.ecc.set_route(self._route_before)
        if not self.gate_scores:
            return stats
        t = self.truth
        dataset = from_boxes(t["files"], t["shapes"], t["boxes"], t["classes"], dict(self.names))
        self.evaluator = evaluator = RouteMixEvaluator(dataset, self.route_detections)
        routes = {}
        for route in self.routes:
            ap, ap50 = evaluator.route_map(route)
            routes[route] = (ap50, ap)
            stats[f"metrics/{route}_mAP50(B)"], stats[f"metrics/{route}_mAP50-95(B)"] = ap50, ap
        gains = torch.cat(self.gate_scores).numpy()
        self.gate_scores_all = gains[:, 0]
        eccd, eccd50 = self.routed_map(decide(gains, ratio=self.args.offload).routes)
        stats["metrics/eccd_mAP50(B)"], stats["metrics/eccd_mAP50-95(B)"] = eccd50, eccd
        needed = evaluator.marginal_gains(ADAPTED, chunk=GAIN_CHUNK) > NEEDED_GAIN
        # the gate's own scale: its predicted gain against the fixed threshold (not the calibrated one, which moves
        # with the predictions and would hide what recall-rate boosting does to them)
        threshold = self.ecc.gate_threshold if self.args.gate_threshold is None else self.args.gate_threshold
        decided = decide(gains, threshold=threshold).offloaded
        stats["metrics/offload_recall"] = float(decided[needed].mean()) if needed.any() else 1.0
        stats["metrics/offload_ratio"] = float(decided.mean())
        stats["metrics/feat"] = float(np.mean(self.feat_losses))
        if self.router_logits:  # multi-exit edge: the router's own decision, and where frames stopped
            chosen = decide(exit_logits=torch.cat(self.router_logits).numpy()).routes
            stats["metrics/meanet_mAP50-95(B)"], _ = self.routed_map(chosen)
            for name in EXITS:
                stats[f"metrics/exit_{name}_share"] = float((chosen == ROUTE_CODES[EXIT_ROUTES[name]]).mean())
        # one metric picks best.pt: the stage's own, by ecc-yolo's mAP (not Ultralytics' own on the primary route)
        stats["fitness"] = fitness(eccd50, eccd) if self.stage.metric == ECC_D_METRIC else \
            fitness(*routes[self.primary])
        self.route_summary = {**routes, f"ECC_D @ {self.args.offload:.0%} offload": (eccd50, eccd)}
        self.metrics.ecc = {k: v for k, v in stats.items() if k.startswith("metrics/") or k == "fitness"}
        return stats

    def operating_point(self, share: float) -> DeploySettings:
        """The model's deployment settings calibrated on this validation's frames (`ecc_yolo.deploy`): thresholds
        that offload `share` of them under each router, ECC_D+'s margins fitted on their mAP, and the router with the
        best mAP there as the default (the cloud answers here on the frames' own pixels, not their JPEG)."""
        gains = torch.cat(self.gate_scores).numpy().astype(np.float64)
        logits = torch.cat(self.router_logits).numpy() if self.router_logits else None
        maps_of = self.evaluator.bootstrap_maps(MARGIN_RESAMPLES, MARGIN_SEED)
        return calibrate(model_settings(self.ecc), gains, logits, share, "validation", maps_of)

    def routed_map(self, answered_by: np.ndarray) -> tuple[float, float]:
        """(mAP50-95, mAP50), in `RouteMixEvaluator.map`'s order, of the system that answers image i by route code
        `answered_by[i]` (ROUTE_CODES) or,
        for a boolean mask, by the adapted route where True and the edge elsewhere; from the detections of the
        last validation (no model runs)."""
        answered_by = np.asarray(answered_by)
        if answered_by.dtype == bool:
            answered_by = np.where(answered_by, ROUTE_CODES[ADAPTED], ROUTE_CODES[EDGE])
        return self.evaluator.map(self.evaluator.assignment(answered_by))

    def print_results(self) -> None:
        """Ultralytics' table for the primary route, then mAP of every route side by side."""
        super().print_results()
        summary = getattr(self, "route_summary", None)
        if not summary:
            return
        lines = [f"{'ECC route':>28}{'mAP50':>11}{'mAP50-95':>11}"]
        lines += [f"{name:>28}{m50:>11.3g}{m:>11.3g}" for name, (m50, m) in summary.items()]
        LOGGER.info("\n".join(lines))

