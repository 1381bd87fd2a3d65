"""`ECC`: the Python API, an Ultralytics `Model` whose network is an `ECCModel`.

    from ecc_yolo import ECC
    ecc = ECC("cfg/ecc-yolo11n-l.yaml")            # or a trained ECC .pt, or a zoo name
    ecc.info(imgsz=640)                             # costs: GFLOPs per part, payload bytes, parameters
    ecc.train(data="data.yaml", stage="adapt")      # see docs/TRAINING.md
    ecc.val(data="data.yaml")                       # mAP per route and mAP versus offload ratio
    results = ecc.predict("image.jpg", route="adapted")
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ultralytics.engine.model import Model
from ultralytics.utils import LOGGER

from ecc_yolo import zoo
from ecc_yolo.args import all_defaults, check_keys, default_project, ecc_defaults
from ecc_yolo.checkpoint import load_ecc, save_ecc
from ecc_yolo.deploy import resolve
from ecc_yolo.nn.ecc_model import ECCModel
from ecc_yolo.spec import load_spec, resolve_cfg_path


class ECC(Model):
    """An edge-cloud collaborative detector with the Ultralytics model interface."""

    def __init__(
        self,
        model: str | Path = "ecc-yolo11n-l.yaml",
        edge_model: str | Path | None = None,
        cloud_model: str | Path | None = None,
        verbose: bool = False,
    ) -> None:
        """Build an ECC from a cfg (path or shipped name) or load a trained ECC checkpoint.

        Args:
            model: ECC cfg (`cfg/ecc-yolo11n-l.yaml`, `ecc-yolo11n-l`) or ECC checkpoint (`.pt`).
            edge_model: replace the cfg's edge with this Ultralytics YAML or checkpoint (e.g. `yolo11n.pt`).
            cloud_model: replace the cfg's cloud likewise (e.g. `yolo11l.pt`).
            verbose: print the model summary.
        """
        self._part_overrides = {k: str(v) for k, v in (("edge", edge_model), ("cloud", cloud_model)) if v}
        name = str(model)
        if not name.endswith((".yaml", ".yml", ".pt")):
            if zoo.is_zoo_name(name):  # a trained model of the zoo, checked against its manifest
                name = str(zoo.resolve(name))
            else:
                try:  # a shipped cfg named without its suffix
                    name = str(resolve_cfg_path(name))
                except FileNotFoundError:
                    pass
        super().__init__(model=name, task="detect", verbose=verbose)
        self.overrides = {**ecc_defaults(), **self.overrides}

    def _new(self, cfg: str, task: str | None = None, verbose: bool = False) -> None:
        """Build a fresh ECC model from a cfg (parts from YAML, or from .pt checkpoints the cfg names)."""
        spec = load_spec(cfg)
        if self._part_overrides:
            spec = load_spec({**spec.to_dict(), **self._part_overrides})
        self.cfg = cfg
        self.task = "detect"
        self.model = ECCModel(spec, verbose=verbose)
        self.overrides["model"] = self.cfg
        self.overrides["task"] = self.task
        self.model.args = {**all_defaults(), **self.overrides}
        self.model.task = self.task
        self.model_name = cfg

    def _load(self, weights: str, task: str | None = None) -> None:
        """Load a trained ECC checkpoint."""
        if self._part_overrides:
            raise ValueError("edge_model/cloud_model replace parts of a cfg; a trained ECC .pt already has both")
        self.model, self.ckpt = load_ecc(weights)
        self.task = "detect"
        self.overrides = self.model.args = self._reset_ckpt_args(dict(self.model.args))
        self.ckpt_path = self.model.pt_path
        self.overrides["model"] = weights
        self.overrides["task"] = self.task
        self.model_name = weights

    @property
    def task_map(self) -> dict[str, dict[str, Any]]:
        """The classes Ultralytics' Model machinery builds for each job."""
        from ecc_yolo.engine.predictor import ECCPredictor
        from ecc_yolo.engine.trainer import ECCTrainer
        from ecc_yolo.engine.validator import ECCValidator

        return {
            "detect": {"model": ECCModel, "trainer": ECCTrainer, "validator": ECCValidator, "predictor": ECCPredictor}
        }

    def costs(self, imgsz: int = 640) -> dict[str, Any]:
        """GFLOPs per part, payload bytes and parameters at `imgsz` (see `ecc_yolo.costs.ecc_costs`)."""
        from ecc_yolo.costs import ecc_costs

        return ecc_costs(self.model, imgsz)

    def info(self, detailed: bool = False, verbose: bool = True, imgsz: int = 640) -> dict[str, Any]:
        """Log and return the cost summary at `imgsz`."""
        costs = self.costs(imgsz)
        if verbose:
            from ecc_yolo.costs import format_costs

            LOGGER.info(format_costs(self.model.spec.name, costs))
        return costs

    def save(self, filename: str | Path = "ecc.pt") -> Path:
        """Save the whole ECC model as one checkpoint."""
        return save_ecc(self.model, filename)

    def predict(self, source=None, stream: bool = False, predictor=None, **kwargs: Any):
        """Ultralytics predict, plus `route=` (auto | edge | cloud | adapted); image size, NMS and the offload
        decision are the model's deployment settings (`ecc_yolo.deploy.resolve`) where not given."""
        check_keys(kwargs)
        kwargs = {**self.deploy_args(kwargs), **kwargs}
        return super().predict(source=source, stream=stream, predictor=predictor, **kwargs)

    def deploy_args(self, overrides: dict[str, Any]) -> dict[str, Any]:
        """The deployment settings as `key=value` arguments: the model's own, with `overrides` applied (one call to
        `ecc_yolo.deploy.resolve`, so that Ultralytics' own defaults, e.g. predict's conf, never replace them)."""
        s = resolve(self.model, overrides)
        return {"imgsz": s.imgsz, "conf": s.conf, "iou": s.iou, "max_det": s.max_det, "router": s.router,
                "gate_threshold": s.threshold, "margin": s.margin}

    def train(self, trainer=None, **kwargs: Any):
        """Train one stage (`stage=edge|cloud|adapt|gate|joint`, see docs/TRAINING.md)."""
        check_keys(kwargs)
        return super().train(trainer=trainer, **kwargs)

    def val(self, validator=None, **kwargs: Any) -> Any:
        """Benchmark every route and router on a dataset (see `ecc_yolo.eval.benchmark.evaluate`).

        Runs the edge, the adapted route and the full cloud once on every image, then sweeps the offload ratio for
        ECC_I, ECC_D, ECC_D+, the oracles and random routing. Writes curve.csv, summary.json, summary.md and plots
        into project/name, and returns the summary (mAP values are mAP50-95 in 0..1).

        Args:
            validator: a validator class to run instead, as in Ultralytics (e.g. `ECCValidator`, the trainer's
                per-epoch validation); its metrics are returned.
            **kwargs: data (data YAML or COCO layout folder; required), imgsz, batch, device, plots, project, name,
                exist_ok, and max_images (evaluate the first N images).
        """
        if validator is not None:
            return super().val(validator=validator, **kwargs)
        from ultralytics.cfg import get_save_dir

        from ecc_yolo.args import get_args
        from ecc_yolo.eval.benchmark import evaluate

        if "project" not in kwargs:
            kwargs["project"] = default_project()
        args = get_args({"imgsz": resolve(self.model, kwargs).imgsz, "batch": 8, "name": "val", **kwargs,
                         "mode": "val"})
        if not args.data:
            raise ValueError("val needs data= (a data YAML or a COCO layout folder)")
        out = get_save_dir(args)
        imgsz = args.imgsz if isinstance(args.imgsz, int) else max(args.imgsz)
        self.metrics = evaluate(self.model, args.data, out, imgsz=imgsz, batch=args.batch, device=args.device,
                                max_images=args.max_images, plots=args.plots, bootstrap=args.bootstrap,
                                rate=args.rate_curve)
        return self.metrics
