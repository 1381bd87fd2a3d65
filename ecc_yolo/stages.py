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

ROUTE_METRIC, ECC_D_METRIC = "route", "ecc_d"  # what picks best.pt: the stage's route's mAP, or ECC_D's at offload=


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
    label_free: bool = False  # accepts label_free=True (no labels read; feature matching and distillation only)
    calibrates_whitening: bool = False  # measures the cloud cut tensors' statistics before training
    syncs_tail_copy: bool = False  # saves the adapted route's tail copy equal to the trained cloud tail
    calibrates_operating_point: bool = False  # fits the model's default operating point at each save
    zoo_args: tuple[str, ...] = ()  # what the zoo pipeline adds to its `ecc-yolo train` command


STAGES: dict[str, Stage] = {s.name: s for s in (
    Stage("edge", EDGE, ("edge",), "detector", boosts_positives=True, distills=True, zoo_args=("distill=True",)),
    Stage("cloud", CLOUD, ("cloud",), "detector", syncs_tail_copy=True),
    Stage("adapt", ADAPTED, ("adapters", "adapted_cloud"), "adapt", label_free=True, calibrates_whitening=True,
          zoo_args=("det=1.0",)),
    Stage("gate", ADAPTED, ("gate", "router"), "gate", metric=ECC_D_METRIC, calibrates_operating_point=True,
          zoo_args=("rrb=2.0", "router_balance=True")),
    Stage("joint", ADAPTED, ("edge", "adapters", "gate", "adapted_cloud"), "joint", metric=ECC_D_METRIC,
          calibrates_whitening=True, calibrates_operating_point=True),
    Stage("extension", EXTENSION, ("extension",), "extension"),
)}


def get_stage(name: str) -> Stage:
    """The stage called `name`.

    Raises:
        ValueError: no such stage (the message lists them).
    """
    if name not in STAGES:
        raise ValueError(f"unknown stage '{name}'; stages: {', '.join(STAGES)}")
    return STAGES[name]
