"""`ecc-yolo serve`: pick the server backend from the run arguments and run it until interrupted.

Its own module so that neither backend imports the other: `server.py` (FastAPI on uvicorn) and `ray_app.py` (Ray
Serve, which builds on `server.create_app`) are both imported from here.
"""

from __future__ import annotations

from typing import Any

from ultralytics.utils import LOGGER

from ecc_yolo.serve.engine import CloudEngine
from ecc_yolo.serve.server import ServerSettings, build_app


def engine_kwargs(args: Any) -> dict[str, Any]:
    """CloudEngine settings from a validated argument namespace (Ultralytics' predict arguments)."""
    return {"imgsz": args.imgsz, "conf": 0.25 if args.conf is None else float(args.conf), "iou": float(args.iou),
            "max_det": int(args.max_det), "classes": args.classes, "agnostic_nms": bool(args.agnostic_nms)}


def serve(args: Any) -> None:
    """Run the server until interrupted (`ecc-yolo serve`): uvicorn, or Ray Serve with backend=ray."""
    from ultralytics.utils.torch_utils import select_device

    settings = ServerSettings.from_args(args)
    auth = "bearer token required" if settings.token else "no authentication (set token= or ECC_YOLO_TOKEN)"
    if args.backend == "ray":
        from ecc_yolo.serve.ray_app import serve_ray

        LOGGER.info(f"ecc-yolo serve: Ray Serve, {args.replicas} replica(s), {auth}")
        serve_ray(str(args.model), settings, {**engine_kwargs(args), "device": str(args.device or "cpu")},
                  host=args.host, port=args.port, replicas=args.replicas)
        return
    engine = CloudEngine.from_checkpoint(args.model, device=select_device(args.device, verbose=False),
                                         **engine_kwargs(args))
    LOGGER.info(f"ecc-yolo serve: {engine.model.spec.name} fingerprint {engine.fingerprint.hex()} at "
                f"http://{args.host}:{args.port} (imgsz {engine.input_shape}, max_batch {settings.max_batch}, "
                f"max_wait_ms {settings.max_wait_ms}), {auth}")
    import uvicorn

    uvicorn.run(build_app(engine, settings), host=args.host, port=args.port,
                log_level="info" if args.verbose else "warning", **settings.uvicorn_options())
