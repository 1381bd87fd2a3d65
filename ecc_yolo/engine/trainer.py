"""ECCTrainer: Ultralytics' DetectionTrainer training one part of an ECC model at a time.

The training loop, optimizer, scheduler, EMA, AMP, checkpoints, resume, early stopping and plots are Ultralytics'.
What a stage changes:
    - which parts are trainable (`ecc_yolo.stages`: the stage's `trainable`); the rest is frozen after Ultralytics' own
      freezing pass and kept in eval mode, so its BatchNorm statistics do not move;
    - the objective (`ecc_yolo.losses.ECCLoss`), built here and set as the model's `criterion`, so the model's
      `loss` returns it like any YOLO loss;
    - validation (`ECCValidator`): every route side by side, fitness on the stage's own metric;
    - stage=edge with distill=True: Ultralytics' DistillationModel, with the ECC's own cloud as the teacher
      (written to weights/teacher.pt so that resume can rebuild it, as Ultralytics expects);
    - stage=adapt: the adapters' whitening statistics are calibrated on `calib` training batches first (images
      only), unless the model already has them;
    - a stage that reads no labels (stage=adapt_label_free, or its shorthand stage=adapt label_free=True): the
      training split is read as images only (`ImageOnlyDataset`: no label file is opened), the detection term is
      off, and best.pt is the last epoch (the stage's metric `LAST_EPOCH`).
Checkpoints (weights/last.pt, best.pt) hold the whole ECCModel; resume=True continues exactly (see save_model).
"""

from __future__ import annotations

import os
import random
from copy import copy, deepcopy
from typing import Any

import numpy as np
import torch
from ultralytics.models.yolo.detect import DetectionTrainer
from ultralytics.nn.distill_model import DistillationModel
from ultralytics.utils import DEFAULT_CFG, LOGGER, RANK
from ultralytics.utils.torch_utils import unwrap_model

from ecc_yolo.args import all_defaults, check_ecc_values, check_keys, default_project
from ecc_yolo.data.unlabeled import build_image_only_dataset
from ecc_yolo.engine.validator import ECCValidator
from ecc_yolo.losses import ECCLoss
from ecc_yolo.nn.adapters import calibrate_whitening, whitening_calibrated
from ecc_yolo.nn.ecc_model import PARTS, ECCModel, find_ecc
from ecc_yolo.stages import LAST_EPOCH, STAGES, get_stage, stage_for

RESUME_STATE = "last_state.pt"  # exact-resume state kept beside last.pt while a run is unfinished


def freeze_parts(ecc: ECCModel, parts: tuple[str, ...]) -> None:
    """Keep `parts` (names from PARTS) of an ECC model fixed: no gradients, and in eval mode even while the model
    trains (`ECCModel.train` keeps its `frozen` parts in eval mode: their BatchNorm statistics must not move)."""
    unknown = set(parts) - set(PARTS)
    if unknown:
        raise ValueError(f"unknown parts {sorted(unknown)}; valid: {PARTS}")
    ecc.frozen = tuple(parts)
    for name in PARTS:
        if getattr(ecc, name) is not None:
            getattr(ecc, name).requires_grad_(name not in parts)
    ecc.train(ecc.training)


def frozen_parts_arg(freeze: Any) -> tuple[str, ...]:
    """The ECC parts that `freeze=` names ("edge", "adapted_cloud,adapters", ...), beyond what the stage freezes
    anyway; an integer or a list of layer indices is Ultralytics' own layer freezing and names no part."""
    if not isinstance(freeze, str):
        return ()
    names = tuple(n.strip() for n in freeze.split(",") if n.strip())
    unknown = set(names) - set(PARTS)
    if unknown:
        raise ValueError(f"freeze={freeze!r}: unknown parts {sorted(unknown)}; valid: {PARTS}")
    return names


class ECCTrainer(DetectionTrainer):
    """Trains one ECC stage with Ultralytics' loop; see the module docstring."""

    def __init__(self, cfg: Any = DEFAULT_CFG, overrides: dict | None = None, _callbacks: dict | None = None):
        """Ultralytics trainer construction with ecc-yolo's defaults and checks.

        Args:
            cfg: base configuration (Ultralytics' default is replaced by ecc-yolo's, which includes it).
            overrides: arguments, e.g. {"model": "cfg/ecc-tiny-11.yaml", "data": ..., "stage": "adapt"}.
            _callbacks: Ultralytics callbacks.
        """
        overrides = dict(overrides or {})
        check_keys(overrides)
        check_ecc_values(overrides)
        if cfg is DEFAULT_CFG:
            cfg = all_defaults()
        stage = stage_for(overrides.get("stage", all_defaults()["stage"]), bool(overrides.get("label_free")))
        overrides["stage"] = stage.name  # label_free=True names its stage (a resumed run reads it back as is)
        overrides.setdefault("project", default_project())
        overrides.setdefault("name", overrides.get("stage", cfg.get("stage")))
        super().__init__(cfg, overrides, _callbacks)
        self.stage = self.args.stage
        self.stage_spec = get_stage(self.stage)
        if self.stage_spec.distills and self.args.distill and self.args.distill_model is None:
            self.args.distill_model = str(self.wdir / "teacher.pt")  # written once the model exists
        elif self.args.distill and not self.stage_spec.distills:
            LOGGER.warning(f"distill=True applies to stage={', '.join(s.name for s in STAGES.values() if s.distills)} "
                           f"only; ignored for stage={self.stage}")
        self.label_free = not self.stage_spec.reads_labels
        if self.label_free:
            if self.args.det:
                LOGGER.info(f"stage={self.stage} reads no labels: the detection term is off (det={self.args.det} "
                            f"set to 0)")
            self.args.det = 0.0

    # -- model ---------------------------------------------------------------------------------------------------
    def get_model(self, cfg: Any = None, weights: Any = None, verbose: bool = True) -> ECCModel:
        """An ECCModel from a cfg (path, name or self-contained dict), with `weights` (an ECC model) loaded."""
        model = ECCModel(cfg, nc=self.data["nc"], ch=self.data.get("channels", 3), verbose=verbose and RANK == -1)
        if weights:
            model.load(weights, verbose=verbose)
        model.set_route(get_stage(self.stage).route)
        return model

    def setup_model(self):
        """Ultralytics' setup, plus the distillation teacher file for stage=edge distill=True."""
        ckpt = super().setup_model()
        teacher = self.args.distill_model
        if self.stage_spec.distills and self.args.distill and teacher == str(self.wdir / "teacher.pt"):
            if not self.wdir.joinpath("teacher.pt").exists():
                self._write_teacher(find_ecc(self.model))
        return ckpt

    def _write_teacher(self, ecc: ECCModel) -> None:
        """Save the ECC's cloud as a standalone Ultralytics checkpoint for DistillationModel to load."""
        cloud = deepcopy(ecc.cloud).half()
        cloud.names = ecc.names
        torch.save({"model": cloud, "train_args": {}}, self.wdir / "teacher.pt")
        LOGGER.info(f"Distilling the edge from the ECC's cloud ({self.wdir / 'teacher.pt'})")

    def set_model_attributes(self):
        """Names, nc and args on the ECC model and on both detectors; the stage's criterion (the model is on its
        device by now, and the EMA copy made next takes its own copy of it)."""
        super().set_model_attributes()
        ecc = find_ecc(self.model)  # under a distillation wrapper, Ultralytics set these on the wrapper only
        ecc.nc, ecc.names, ecc.args = self.data["nc"], self.data["names"], self.args
        for part in (ecc.edge, ecc.cloud):
            part.nc, part.names, part.args = ecc.nc, ecc.names, self.args
        ecc.criterion = ECCLoss(ecc)

    def build_dataset(self, img_path: str, mode: str = "train", batch: int | None = None):
        """Ultralytics' dataset; a stage that reads no labels reads the training split (for training and for
        calibration) as images only."""
        if not (self.label_free and img_path == self.data["train"]):
            return super().build_dataset(img_path, mode, batch)
        stride = max(int(unwrap_model(self.model).stride.max()), 32)
        return build_image_only_dataset(self.args, img_path, batch, self.data, stride, augment=mode == "train")

    def plot_training_labels(self):
        """Ultralytics' label plots; a label-free run has no labels to plot."""
        if not self.label_free:
            super().plot_training_labels()

    def validate(self):
        """Ultralytics' validation; a stage whose metric is LAST_EPOCH has the epoch as fitness (best.pt: the last)."""
        metrics, fitness = super().validate()
        if self.stage_spec.metric == LAST_EPOCH and metrics is not None:
            self.best_fitness = fitness = float(self.epoch + 1)
        return metrics, fitness

    def _build_train_pipeline(self):
        """Dataloaders, then (stage=adapt) whitening calibration before the EMA copies the model."""
        super()._build_train_pipeline()
        ecc = find_ecc(self.model)
        if self.stage_spec.calibrates_whitening and not whitening_calibrated(ecc.adapters):
            # A loader of its own, without augmentation or shuffling: statistics of real images, and the training
            # loader's position and random state stay untouched (exact resume depends on it).
            loader = self.get_dataloader(self.data["train"], batch_size=self.batch_size, rank=-1, mode="val")
            images = []
            for i, batch in enumerate(loader):
                if i >= self.args.calib:
                    break
                images.append(self.preprocess_batch(batch)["img"])
            was_training = ecc.cloud.training
            ecc.cloud.eval()  # the cloud's running BatchNorm statistics, not the batch's, and left unchanged
            calibrate_whitening(ecc.adapters, ecc.cloud_cuts, images)
            ecc.cloud.train(was_training)
            LOGGER.info(f"Calibrated adapter whitening on {sum(len(x) for x in images)} training images")

    def _setup_train(self):
        """Ultralytics' setup, then freeze every part this stage does not train."""
        super()._setup_train()
        ecc = find_ecc(self.model)
        trainable = set(self.stage_spec.trainable) - set(frozen_parts_arg(self.args.freeze))
        freeze_parts(ecc, tuple(p for p in PARTS if p not in trainable))
        model = unwrap_model(self.model)
        if isinstance(model, DistillationModel):
            model._freeze_teacher()
        n = sum(p.numel() for p in model.parameters() if p.requires_grad)
        LOGGER.info(f"stage={self.stage}: training {', '.join(sorted(trainable))} ({n:,} parameters)")

    def get_validator(self):
        """ECCValidator on the test loader."""
        return ECCValidator(self.test_loader, save_dir=self.save_dir, args=copy(self.args), _callbacks=self.callbacks)

    # -- exact resume ------------------------------------------------------------------------------------------
    # Ultralytics' last.pt keeps only the fp16 EMA (the training weights are rebuilt from it), an fp16 optimizer
    # state and no random-number state, so a resumed run drifts from an uninterrupted one. Beside last.pt we keep
    # what an exact continuation needs; it is deleted when training completes.
    def save_model(self):
        """Ultralytics' checkpoints, plus weights/last_state.pt with the exact training state of this epoch; at
        stage=cloud the adapted route's tail copy saved equal to the trained cloud's tail; at stage=gate/joint the
        default operating point calibrated on this epoch's validation (`ECCValidator.operating_point`) when the
        epoch is the best so far or the last."""
        if self.stage_spec.syncs_tail_copy:
            for model in (self.model, self.ema.ema):
                find_ecc(unwrap_model(model)).sync_tail_copy()
        # the default operating point, fitted on this epoch's validation of the EMA model that is saved next, when it
        # becomes best.pt or at the last epoch (ECC_D+'s margins cost a bootstrap per share: about half a minute on
        # 300 images, growing with the split); last.pt keeps the latest fitted settings in between
        due = self.fitness == self.best_fitness or self.epoch + 1 >= self.epochs or getattr(self, "stop", False)
        if self.stage_spec.calibrates_operating_point and getattr(self.validator, "gate_scores", None) and due:
            settings = self.validator.operating_point(self.args.offload).as_dict()
            for model in (self.model, self.ema.ema):
                find_ecc(unwrap_model(model)).deploy = settings
        saved = super().save_model()
        if saved:
            state = {
                "epoch": self.epoch,
                "model": unwrap_model(self.model).state_dict(),
                "ema": self.ema.ema.state_dict(),
                "optimizer": self.optimizer.state_dict(),
                "rng": self._rng_state(),
            }
            # written aside and renamed: a run killed mid-write must not leave a truncated state that resume would read
            partial = self.wdir / f"{RESUME_STATE}.partial"
            torch.save(state, partial)
            os.replace(partial, self.wdir / RESUME_STATE)
        return saved

    def _rng_state(self) -> dict[str, Any]:
        generator = getattr(self.train_loader, "generator", None)
        return {
            "python": random.getstate(),
            "numpy": np.random.get_state(),
            "torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
            "loader": generator.get_state() if generator is not None else None,
        }

    def resume_training(self, ckpt):
        """Ultralytics' resume, then the exact training state saved with the same epoch, when there is one."""
        super().resume_training(ckpt)
        path = self.wdir / RESUME_STATE
        if ckpt is None or not self.resume or not path.exists():
            return
        state = torch.load(path, map_location=self.device, weights_only=False)
        if state["epoch"] != ckpt.get("epoch"):
            LOGGER.warning(f"{path} is from epoch {state['epoch']}, last.pt from {ckpt.get('epoch')}: not used")
            return
        unwrap_model(self.model).load_state_dict(state["model"])
        self.ema.ema.load_state_dict(state["ema"])
        self.optimizer.load_state_dict(state["optimizer"])
        rng = state["rng"]
        random.setstate(rng["python"])
        np.random.set_state(rng["numpy"])
        torch.set_rng_state(rng["torch"].cpu())
        if rng["cuda"] is not None and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(rng["cuda"])
        generator = getattr(self.train_loader, "generator", None)
        if rng["loader"] is not None and generator is not None:
            generator.set_state(rng["loader"].cpu())
        LOGGER.info(f"Restored the exact training state of epoch {state['epoch'] + 1} from {path}")

    def final_eval(self):
        """Ultralytics' final validation of best.pt; the exact-resume state is no longer needed."""
        (self.wdir / RESUME_STATE).unlink(missing_ok=True)
        super().final_eval()
