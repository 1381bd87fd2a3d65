"""Training objectives of each ECC stage (Eccentric's knowledge distillation, knowledge adaptation and recall-rate
boosting), as one criterion object that Ultralytics' trainer calls like any YOLO loss.

Every objective returns (loss vector multiplied by batch size, detached items), the Ultralytics convention.

Stages:
    edge   detection loss of the edge (Ultralytics' own); `rrb > 1` weights positives in its classification BCE
           (`pos_weight = rrb`) to raise recall at the operating confidence. Distillation from the cloud is
           Ultralytics' `DistillationModel` wrapped around this model by the trainer, not done here.
    cloud  detection loss of the cloud.
    adapt  knowledge adaptation, edge and cloud frozen:
             feat: mean over adapters of the MSE between the adapter's whitened prediction and the cloud's own cut
                   tensor whitened with the same per-channel statistics (so tensors of any scale count alike);
                   needs no labels;
             det:  detection loss of the cloud tail run on the adapted cut tensors;
             kd:   distillation of the cloud's head outputs into the adapted route (class scores: BCE to the
                   cloud's probabilities; boxes: KL of the DFL bins, or L1 without DFL), weighted per anchor by the
                   cloud's confidence; needs no labels;
             rate: bits per transmitted value, a differentiable proxy: mean log2(1 + |z - mean_c(z)| / step), the
                   size of a latent's deviation in quantisation steps.
    gate   recall-rate boosting of the offload decision (see `gate_loss`); with a multi-exit edge also MEANet's
           router, a three-way classification of frames as easy / hard / complex (see `exit_labels`), classes
           balanced per batch (`router_balance`) and the complex class weighted by `rrb` in the cross-entropy.
    extension  MEANet's extension block, everything else frozen: the detection loss on every frame, plus the same
           loss again on the frames the main exit handles poorly (the cloud's gain over it exceeds POOR_FRAME_GAIN),
           plus distillation of the cloud's head outputs.
    joint  adapters, gate and (unless freeze=edge) the edge together on the objectives (edge, adapted, gate): a
           preference-weighted sum, or with `pareto=True` the min-norm Pareto descent direction of their gradients.
"""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from ultralytics.utils import nms
from ultralytics.utils.loss import v8DetectionLoss

from ecc_yolo.infer import VALIDATION_NMS
from ecc_yolo.pareto import min_norm_weights
from ecc_yolo.quality import batch_stats, marginal_gains
from ecc_yolo.routes import EDGE
from ecc_yolo.stages import get_stage

GATE_NMS = VALIDATION_NMS  # gain targets are measured on detections made as validation makes them
EXIT_LABEL_MARGIN = 0.05  # mAP50-95 gain: below it the cloud does not beat the main exit (easy), and the extension
#                           closes the gap when it comes within it of the cloud (hard)
POOR_FRAME_GAIN = 0.05  # stage=extension: a frame the main exit handles poorly, the cloud gains more than this


def raw_head_output(output: Any) -> dict:
    """The raw prediction dict of a Detect head output in any mode, one-to-many branch for end-to-end heads."""
    raw = output[1] if isinstance(output, tuple) else output
    return raw["one2many"] if "one2many" in raw else raw


def detections(head: nn.Module, output: Any) -> list[torch.Tensor]:
    """NMS'ed detections (per image (N, 6) xyxy, conf, cls) decoded from a Detect head output in any mode."""
    with torch.no_grad():
        decoded = head._inference(raw_head_output(output))
        return nms.non_max_suppression(decoded, **GATE_NMS)


def gate_loss(predicted: torch.Tensor, target: torch.Tensor, rrb: float) -> torch.Tensor:
    """Asymmetric squared error of predicted per-image gains (recall-rate boosting).

    Target: gain[i, r], image i's marginal contribution to the batch's mAP50-95 when answered by route r instead of
    the edge (`ecc_yolo.quality.marginal_gains`).
    Loss: mean over images and routes of w * (predicted - target)^2, with w = rrb where the gate under-predicts the
    gain (it would keep on the device an image that needed the cloud: a missed offload) and w = 1 where it
    over-predicts (an unneeded offload). rrb > 1 pushes predictions towards an upper expectile of the gain, so
    images on which the edge misses objects are rarely kept on the edge.
    """
    residual = predicted - target
    weight = torch.where(residual < 0, torch.full_like(residual, rrb), torch.ones_like(residual))
    return (weight * residual.square()).mean()


def exit_labels(extension_gain: np.ndarray, cloud_gain: np.ndarray, threshold: float = EXIT_LABEL_MARGIN
                ) -> np.ndarray:
    """MEANet's difficulty labels (0 easy, 1 hard, 2 complex) from each frame's gains over the main exit.

    easy: the cloud would not gain more than `threshold` (the main exit is as good as the cloud);
    hard: it would, and the extension exit gains all but `threshold` of it (the extension closes the gap);
    complex: only the cloud does.
    """
    labels = np.full(len(cloud_gain), 2, dtype=np.int64)
    labels[extension_gain >= cloud_gain - threshold] = 1
    labels[cloud_gain <= threshold] = 0
    return labels


def router_class_weights(labels: np.ndarray, rrb: float, balance: bool = True) -> torch.Tensor:
    """Cross-entropy weights of the exit router's three classes (easy, hard, complex) for one batch.

    balance: each class weighted by the inverse of its share of the batch (add-one smoothed), so that a rare exit
    (often "hard": frames the extension rescues) is not drowned by the majority, which a plain cross-entropy
    collapses to; `rrb` then weights the complex class (a missed offload) on top, as in the gate loss.
    """
    counts = np.bincount(labels, minlength=3).astype(np.float64)
    weight = (counts.sum() + 3) / (3 * (counts + 1)) if balance else np.ones(3)
    weight[2] *= rrb
    return torch.from_numpy(weight).float()


def select_images(output: Any, mask: torch.Tensor) -> dict:
    """The raw head output of the images in `mask` (a Detect head's training output)."""
    raw = raw_head_output(output)
    return {k: [x[mask] for x in v] if isinstance(v, list) else v[mask] for k, v in raw.items()}


def select_labels(batch: dict, mask: torch.Tensor) -> dict:
    """A batch's labels for the images in `mask`, re-indexed (what a detection loss reads)."""
    index = torch.full((len(mask),), -1, dtype=torch.long, device=mask.device)
    index[mask] = torch.arange(int(mask.sum()), device=mask.device)
    keep = mask[batch["batch_idx"].long()]
    return {
        "img": batch["img"][mask],
        "batch_idx": index[batch["batch_idx"].long()][keep].to(batch["batch_idx"].dtype),
        "cls": batch["cls"][keep],
        "bboxes": batch["bboxes"][keep],
    }


def rate_bits(latent: torch.Tensor, bits: int) -> torch.Tensor:
    """Differentiable proxy of bits per value: log2(1 + deviation from the channel mean in quantisation steps)."""
    levels = (1 << bits) - 1
    zmin, zmax = latent.amin((2, 3), keepdim=True), latent.amax((2, 3), keepdim=True)
    step = ((zmax - zmin) / levels).clamp_min(1e-8).detach()
    return torch.log2(1 + (latent - latent.mean((2, 3), keepdim=True)).abs() / step).mean()


def head_distillation(student: Any, teacher: Any, reg_max: int) -> torch.Tensor:
    """Distil a teacher head's raw outputs into a student's, weighted per anchor by the teacher's confidence."""
    s, t = raw_head_output(student), raw_head_output(teacher)
    t_scores = t["scores"].detach().float()
    weight = t_scores.sigmoid().amax(1, keepdim=True)  # (B, 1, A)
    norm = weight.sum().clamp_min(1e-6)
    cls = F.binary_cross_entropy_with_logits(s["scores"].float(), t_scores.sigmoid(), reduction="none")
    cls = (cls * weight).sum() / (norm * t_scores.shape[1])
    sb, tb = s["boxes"].float(), t["boxes"].detach().float()
    if reg_max > 1:
        b, _, a = sb.shape
        sb, tb = sb.view(b, 4, reg_max, a), tb.view(b, 4, reg_max, a)
        box = F.kl_div(sb.log_softmax(2), tb.log_softmax(2), log_target=True, reduction="none").sum(2)
    else:
        box = (sb - tb).abs()
    box = (box * weight).sum() / (norm * 4)
    return cls + box


class ECCLoss:
    """Criterion of the current stage (`model.args.stage`); see the module docstring."""

    def __init__(self, model: nn.Module):
        """Build the per-part detection criteria the stage needs.

        Args:
            model: the ECCModel being trained (its `args` carry the stage and the loss weights).
        """
        self.model = model
        args = model.args
        self.hyp = args if hasattr(args, "stage") else SimpleNamespace(**args)
        self.stage = get_stage(self.hyp.stage)
        for part in (model.edge, model.cloud):
            part.args = self.hyp
        self.edge_det = model.edge.init_criterion()
        self.cloud_det = model.cloud.init_criterion()
        if self.stage.boosts_positives and self.hyp.rrb > 1:
            self._boost_positives(self.edge_det, self.hyp.rrb)
        self.prefs = torch.tensor(self.hyp.prefs or [1.0, 1.0, 1.0], dtype=torch.float32)
        self.last_weights: torch.Tensor | None = None  # joint stage: the weights of the last step

    @staticmethod
    def _boost_positives(criterion: Any, rrb: float) -> None:
        """Weight positives by `rrb` in the classification BCE of a (possibly end-to-end) detection criterion."""
        parts = (criterion.one2many, criterion.one2one) if hasattr(criterion, "one2one") else (criterion,)
        for c in parts:
            c.bce = nn.BCEWithLogitsLoss(reduction="none", pos_weight=torch.full((c.nc,), float(rrb), device=c.device))

    def update(self) -> None:
        """Epoch-end hook (end-to-end heads decay their one-to-many weight)."""
        for c in (self.edge_det, self.cloud_det):
            if hasattr(c, "update"):
                c.update()

    # -- objectives ------------------------------------------------------------------------------------------
    def __call__(self, batch: dict, preds: Any = None) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Loss of the stage for one batch (its objective, `OBJECTIVES[stage.objective]`); `preds` is the model's
        output for the batch when the caller has it."""
        return OBJECTIVES[self.stage.objective](self, batch, preds)

    def detector_objective(self, batch: dict, preds: Any = None) -> tuple[torch.Tensor, torch.Tensor]:
        """stage=edge/cloud: the detection loss of the stage's own detector (Ultralytics' criterion)."""
        route = self.stage.route
        out = preds.get(route) if isinstance(preds, dict) and route in preds else preds
        if out is None:
            m = self.model
            out = m.edge_forward(batch["img"])[0] if route == EDGE else m.cloud_forward(batch["img"])
        return (self.edge_det if route == EDGE else self.cloud_det)(out, batch)

    def adapt_objective(self, batch: dict, preds: Any = None) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """stage=adapt: the weighted feat, det, kd and rate terms (`adaptation_terms`)."""
        with torch.no_grad():
            feats = self.model.edge_features(batch["img"])
        terms = self.adaptation_terms(batch, feats)
        names = ("feat", "det", "kd", "rate")
        weights = [getattr(self.hyp, n) for n in names]
        bs = batch["img"].shape[0]
        loss = torch.stack([w * terms[n] for w, n in zip(weights, names)]) * bs
        return loss, {n: terms[n].detach() for n in names}

    def gate_step_objective(self, batch: dict, preds: Any = None) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """stage=gate: the gate's recall-rate-boosted regression, plus the exit router's loss on a multi-exit edge."""
        with torch.no_grad():
            edge_out, feats = self.model.edge_forward(batch["img"], keep=self._edge_keep())
        loss, target, router = self.gate_objective(batch, feats, edge_out, with_router=True)
        items = {"gate": loss.detach(), "gain": target[:, 0].mean(), "router": router.detach()}
        return (loss + router)[None] * batch["img"].shape[0], items

    def _edge_keep(self) -> tuple[int, ...]:
        return self.model.device_layers

    def adaptation_terms(self, batch: dict, feats: dict[int, torch.Tensor]) -> dict[str, torch.Tensor]:
        """feat, det, kd and rate terms (unweighted, per image) of the adapted route on edge features `feats`."""
        m = self.model
        img = batch["img"]
        with torch.no_grad():
            cloud_cuts = m.cloud_cuts(img)
            cloud_out = m.cloud_tail(cloud_cuts) if self.hyp.kd > 0 else None
        feat_terms, rate_terms, cuts = [], [], {}
        for key, adapter in m.adapters.items():
            latent = adapter.encode(feats[adapter.edge_layer])
            whitened = adapter.predict_whitened(adapter.transmit(latent))
            cuts[int(key)] = adapter.unwhiten(whitened)
            feat_terms.append(F.mse_loss(whitened.float(), adapter.whiten(cloud_cuts[int(key)]).float()))
            rate_terms.append(rate_bits(latent.float(), adapter.bits))
        out = m.adapted_tail(cuts)
        zero = torch.zeros((), device=img.device)
        det = self.cloud_det(out, batch)[0].sum() / img.shape[0] if self.hyp.det > 0 else zero
        kd = head_distillation(out, cloud_out, m.cloud.model[-1].reg_max) if cloud_out is not None else zero
        return {
            "feat": torch.stack(feat_terms).mean(),
            "det": det,
            "kd": kd,
            "rate": torch.stack(rate_terms).mean(),
            "adapted_out": out,
        }

    def gate_objective(
        self, batch: dict, feats: dict[int, torch.Tensor], edge_out: Any, adapted_out: Any = None,
        with_router: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(gate loss, (B, 2) gain targets, router loss) for one batch; the targets come from the current models
        without gradient. The router loss is zero unless `with_router` and the model has a multi-exit edge."""
        m = self.model
        img = batch["img"]
        imgsz = tuple(img.shape[2:])
        router_used = with_router and m.router is not None
        with torch.no_grad():
            if adapted_out is None:
                adapted_out = m.adapted_tail(m.adapt(feats))
            cloud_out = m.cloud_forward(img)
            edge_head, cloud_head = m.edge.model[-1], m.cloud.model[-1]
            edge, adapted, cloud = (
                batch_stats(detections(head, out), batch, imgsz)
                for head, out in ((edge_head, edge_out), (cloud_head, adapted_out), (cloud_head, cloud_out))
            )
            gains = np.stack([marginal_gains(edge, adapted), marginal_gains(edge, cloud)], 1)
            target = torch.from_numpy(gains).float().to(img.device)
            if router_used:
                ext_out = m.extension_forward(feats)
                extension = batch_stats(detections(m.extension.model[-1], ext_out), batch, imgsz)
                labels = exit_labels(marginal_gains(edge, extension), gains[:, 0])
        predicted = m.gate_scores(feats, edge_out)
        loss = gate_loss(predicted.float(), target, self.hyp.rrb)
        router = torch.zeros((), device=img.device)
        if router_used:
            weight = router_class_weights(labels, self.hyp.rrb, balance=getattr(self.hyp, "router_balance", True))
            router = F.cross_entropy(m.exit_logits(feats, edge_out).float(),
                                     torch.from_numpy(labels).to(img.device), weight=weight.to(img.device))
        return loss, target, router

    def extension_objective(self, batch: dict, preds: Any = None) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Detection loss of the extension exit on all frames and again on the frames the main exit handles poorly,
        plus distillation of the cloud's head outputs (see the module docstring)."""
        m = self.model
        img = batch["img"]
        bs = img.shape[0]
        if getattr(self, "ext_det", None) is None:
            m.extension.args = self.hyp
            self.ext_det = v8DetectionLoss(m.extension)
        with torch.no_grad():
            edge_out, feats = m.edge_forward(img, keep=self._edge_keep())
            cloud_out = m.cloud_forward(img)
            imgsz = tuple(img.shape[2:])
            edge = batch_stats(detections(m.edge.model[-1], edge_out), batch, imgsz)
            cloud = batch_stats(detections(m.cloud.model[-1], cloud_out), batch, imgsz)
            poor = torch.from_numpy(marginal_gains(edge, cloud) > POOR_FRAME_GAIN).to(img.device)
        out = m.extension_forward(feats)
        det = self.ext_det(out, batch)[0].sum() / bs
        hard = torch.zeros((), device=img.device)
        if poor.any():
            hard = self.ext_det(select_images(out, poor), select_labels(batch, poor))[0].sum() / int(poor.sum())
        kd = torch.zeros((), device=img.device)
        teacher = raw_head_output(cloud_out)
        if self.hyp.kd > 0 and raw_head_output(out)["scores"].shape == teacher["scores"].shape:
            kd = head_distillation(out, cloud_out, m.extension.model[-1].reg_max)
        loss = torch.stack([det, hard, self.hyp.kd * kd]) * bs
        return loss, {"det": det.detach(), "hard": hard.detach(), "kd": kd.detach(),
                      "hard_share": poor.float().mean()}

    def joint_objective(self, batch: dict, preds: Any = None) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Edge, adapted and gate objectives combined by preference weights or by the Pareto descent direction."""
        m = self.model
        img = batch["img"]
        edge_trains = getattr(self.hyp, "freeze", None) != "edge"
        edge_out, feats = m.edge_forward(img, keep=self._edge_keep())
        terms = self.adaptation_terms(batch, feats)
        adapted = sum(getattr(self.hyp, n) * terms[n] for n in ("feat", "det", "kd", "rate"))
        gate, _, _ = self.gate_objective(
            batch, {k: v.detach() for k, v in feats.items()}, _detach(edge_out), _detach(terms["adapted_out"])
        )
        objectives = [adapted, gate]
        prefs = [self.prefs[1], self.prefs[2]]
        if edge_trains:
            objectives.insert(0, self.edge_det(edge_out, batch)[0].sum() / img.shape[0])
            prefs.insert(0, self.prefs[0])
        prefs = torch.stack(prefs).to(img.device)
        if self.hyp.pareto and torch.is_grad_enabled():  # validation reports the weighted sum
            weights = self._pareto_weights(objectives, prefs)
        else:
            weights = prefs / prefs.sum() * len(objectives)
        self.last_weights = weights.detach()
        total = sum(w * o for w, o in zip(weights, objectives))
        names = ("edge", "adapted", "gate")[-len(objectives) :]
        items = {n: o.detach() for n, o in zip(names, objectives)}
        items.update({f"w_{n}": w.detach() for n, w in zip(names, weights)})
        items.setdefault("edge", torch.zeros((), device=img.device))
        items.setdefault("w_edge", torch.zeros((), device=img.device))
        items = {k: items[k] for k in ("edge", "adapted", "gate", "w_edge", "w_adapted", "w_gate")}
        return total[None] * img.shape[0], items

    def _pareto_weights(self, objectives: list[torch.Tensor], prefs: torch.Tensor) -> torch.Tensor:
        """Loss weights that make the backward pass produce the Pareto descent direction.

        Each objective's gradient over the trainable parameters is normalised to unit length (otherwise the
        objective with the smallest gradient takes all the weight, MGDA's known failure mode), scaled by its
        preference, and the min-norm combination a of those is found; returning a_i * p_i / |g_i| as loss weights
        makes the summed loss's gradient exactly that combination.
        """
        params = [p for p in self.model.parameters() if p.requires_grad]
        rows = []
        for obj in objectives:
            grads = torch.autograd.grad(obj, params, retain_graph=True, allow_unused=True)
            rows.append(torch.cat([(g if g is not None else torch.zeros_like(p)).flatten() for g, p in zip(grads, params)]))
        grads = torch.stack(rows).float()
        norms = grads.norm(dim=1)
        # An objective with no gradient is stationary: no step can raise it to first order, so it does not
        # constrain the direction (left in, its zero gradient would be the min-norm point and stop all progress).
        active = norms > 1e-12 * norms.max().clamp_min(1e-30)
        weights = torch.zeros_like(norms)
        if active.any():
            scaled = grads[active] / norms[active, None] * prefs[active, None].float()
            weights[active] = min_norm_weights(scaled) * prefs[active].float() / norms[active]
        return weights.to(prefs.dtype)


def _detach(output: Any) -> Any:
    """Detach a head output (tensor, tuple or dict of tensors)."""
    if isinstance(output, torch.Tensor):
        return output.detach()
    if isinstance(output, tuple):
        return tuple(_detach(x) for x in output)
    if isinstance(output, dict):
        return {k: _detach(v) for k, v in output.items()}
    if isinstance(output, list):
        return [_detach(x) for x in output]
    return output


# objective name (`ecc_yolo.stages.Stage.objective`) -> the ECCLoss method that computes it
OBJECTIVES = {
    "detector": ECCLoss.detector_objective,
    "adapt": ECCLoss.adapt_objective,
    "gate": ECCLoss.gate_step_objective,
    "extension": ECCLoss.extension_objective,
    "joint": ECCLoss.joint_objective,
}
