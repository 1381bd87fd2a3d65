"""Training stages: one object per stage, and the one place that says what each does.

A `Stage` owns what the trainer, the validator, the objectives and the zoo pipeline would otherwise decide by
branching on the stage's name: the parts it trains (the rest stay frozen), the route it validates as its own, the
metric that picks its best.pt, its objective (`ecc_yolo.losses.ECCLoss` runs `OBJECTIVES[stage.objective]`), what
it prepares or fits around training, and the arguments the zoo pipeline adds. Adding a stage is one entry in
`STAGES` (plus an objective in ecc_yolo/losses.py when none of the existing ones fits) and its test.

    from ecc_yolo.stages import get_stage
    get_stage("gate").trainable   # ("gate", "router")
"""

from __future__ import annotations

from dataclasses import dataclass

from ecc_yolo.routes import ADAPTED, CLOUD, EDGE, EXTENSION

# What picks best.pt: the stage's route's mAP, ECC_D's at offload=, or the last epoch (a stage that reads no labels
# has nothing to select an epoch by; the val split, if labelled, is still reported).
ROUTE_METRIC, ECC_D_METRIC, LAST_EPOCH = "route", "ecc_d", "last_epoch"


@dataclass(frozen=True)
class Stage:
    """A training stage (`ecc-yolo train stage=<name>`, docs/TRAINING.md)."""

    name: str
    route: str  # the route it trains and validates as its own (Ultralytics' tables, ROUTE_METRIC)
    trainable: tuple[str, ...]  # model parts (`ECCModel` children) it trains; the others are frozen
    objective: str  # its loss: a key of `ecc_yolo.losses.OBJECTIVES`
    metric: str = ROUTE_METRIC  # what its fitness (the choice of best.pt) is, by ecc-yolo's one mAP
    boosts_positives: bool = False  # rrb > 1 weighs the positives of its detection loss (recall-rate boosting)
    distills: bool = False  # accepts distill=True (Ultralytics' distillation from the ECC's own cloud)
    reads_labels: bool = True  # False: the training split is read as images only and the detection term is off
    label_free_variant: str | None = None  # the stage `label_free=True` selects instead of this one (shorthand)
    calibrates_whitening: bool = False  # measures the cloud cut tensors' statistics before training
    syncs_tail_copy: bool = False  # saves the adapted route's tail copy equal to the trained cloud tail
    calibrates_operating_point: bool = False  # fits the model's default operating point at each save
    zoo_args: tuple[str, ...] = ()  # what the zoo pipeline adds to its `ecc-yolo train` command


STAGES: dict[str, Stage] = {s.name: s for s in (
    Stage("edge", EDGE, ("edge",), "detector", boosts_positives=True, distills=True, zoo_args=("distill=True",)),
    Stage("cloud", CLOUD, ("cloud",), "detector", syncs_tail_copy=True),
    Stage("adapt", ADAPTED, ("adapters", "adapted_cloud"), "adapt", calibrates_whitening=True,
          label_free_variant="adapt_label_free", zoo_args=("det=1.0",)),
    # Knowledge adaptation to a new camera or domain from images alone: feature matching and distillation from the
    # cloud's outputs (docs/TRAINING.md).
    Stage("adapt_label_free", ADAPTED, ("adapters", "adapted_cloud"), "adapt", metric=LAST_EPOCH,
          reads_labels=False, calibrates_whitening=True),
    Stage("gate", ADAPTED, ("gate", "router"), "gate", metric=ECC_D_METRIC, calibrates_operating_point=True,
          zoo_args=("rrb=2.0", "router_balance=True")),
    Stage("joint", ADAPTED, ("edge", "adapters", "gate", "adapted_cloud"), "joint", metric=ECC_D_METRIC,
          calibrates_whitening=True, calibrates_operating_point=True),
    Stage("extension", EXTENSION, ("extension",), "extension"),
)}


def stage_for(name: str, label_free: bool = False) -> Stage:
    """The stage `stage=<name>` (with `label_free=True`: its label-free variant) selects.

    Raises:
        ValueError: no such stage, or one with no label-free variant.
    """
    stage = get_stage(name)
    if not label_free or not stage.reads_labels:
        return stage
    if stage.label_free_variant is None:
        allowed = ", ".join(s.name for s in STAGES.values() if s.label_free_variant)
        raise ValueError(f"label_free=True is an option of stage={allowed} (feature matching and distillation "
                         f"from the cloud need no labels), not stage={stage.name}")
    return get_stage(stage.label_free_variant)


def get_stage(name: str) -> Stage:
    """The stage called `name`.

    Raises:
        ValueError: no such stage (the message lists them).
    """
    if name not in STAGES:
        raise ValueError(f"unknown stage '{name}'; stages: {', '.join(STAGES)}")
    return STAGES[name]
