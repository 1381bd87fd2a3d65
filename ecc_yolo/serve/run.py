"""`ecc-yolo serve`: pick the server backend from the run arguments and run it until interrupted.

Its own module so that neither backend imports the other: `server.py` (FastAPI on uvicorn) and `ray_app.py` (Ray
Serve, which builds on `server.create_app`) are both imported from here.
"""

from __future__ import annotations

from typing import Any

from ultralytics.utils import LOGGER

from ecc_yolo.args import user_overrides
from ecc_yolo.checkpoint import load_ecc
from ecc_yolo.deploy import DeploySettings, resolve
from ecc_yolo.serve.engine import CloudEngine
from ecc_yolo.serve.server import ServerSettings, build_app


def engine_kwargs(deploy: DeploySettings, args: Any) -> dict[str, Any]:
    """CloudEngine settings: image size and NMS from the model's resolved deployment settings, classes and
    agnostic_nms from a validated argument namespace."""
    return {"imgsz": deploy.imgsz, "conf": deploy.conf, "iou": deploy.iou, "max_det": deploy.max_det,
            "classes": args.classes, "agnostic_nms": bool(args.agnostic_nms)}


def serve(args: Any, overrides: dict[str, Any] | None = None) -> None:
    """Run the server until interrupted (`ecc-yolo serve`): uvicorn, or Ray Serve with backend=ray. `overrides`:
    the `key=value` pairs the user gave, which win over the model's deployment settings (default: the keys of
    `args` that differ from their defaults)."""
    from ultralytics.utils.torch_utils import select_device

    model, _ = load_ecc(args.model)  # once: its deployment settings, then the engine serves it
    kwargs = engine_kwargs(resolve(model, user_overrides(args) if overrides is None else overrides), args)
    settings = ServerSettings.from_args(args)
    auth = "bearer token required" if settings.token else "no authentication (set token= or ECC_YOLO_TOKEN)"
    if args.backend == "ray":
        from ecc_yolo.serve.ray_app import serve_ray

        LOGGER.info(f"ecc-yolo serve: Ray Serve, {args.replicas} replica(s), {auth}")
        serve_ray(str(args.model), settings, {**kwargs, "device": str(args.device or "cpu")},
                  host=args.host, port=args.port, replicas=args.replicas)
        return
    engine = CloudEngine(model, device=select_device(args.device, verbose=False), **kwargs)
    LOGGER.info(f"ecc-yolo serve: {engine.model.spec.name} fingerprint {engine.fingerprint.hex()} at "
                f"http://{args.host}:{args.port} (imgsz {engine.input_shape}, max_batch {settings.max_batch}, "
                f"max_wait_ms {settings.max_wait_ms}), {auth}")
    import uvicorn

    uvicorn.run(build_app(engine, settings), host=args.host, port=args.port,
                log_level="info" if args.verbose else "warning", **settings.uvicorn_options())
