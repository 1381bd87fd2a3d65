"""The `ecc-yolo` command: Ultralytics-style `ecc-yolo MODE key=value ...`."""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ecc_yolo.version import __version__

HELP = f"""ecc-yolo {__version__}: edge-cloud collaborative object detection for Ultralytics YOLO.

Usage: ecc-yolo MODE key=value ...

Modes:
  demo     the whole product on the built-in synthetic data: benchmark, cloud server, stream client (offline)
             ecc-yolo demo            (train=True adds a short adapter and gate fine-tune)
  info     costs of an ECC model: GFLOPs per part, payload bytes, parameters
             ecc-yolo info model=cfg/ecc-yolo11n-l.yaml imgsz=640 format=json
  synth    write the synthetic, difficulty-controlled dataset (and a video)
             ecc-yolo synth out=datasets/synth train=3000 val=600 imgsz=256 seed=0
  train    train one stage: stage=edge|cloud|adapt|extension|gate|joint (docs/TRAINING.md)
             ecc-yolo train model=cfg/ecc-tiny-11.yaml data=datasets/synth/data.yaml stage=adapt epochs=3
  val      mAP of every route and of the offload decision
             ecc-yolo val model=runs/ecc/adapt/weights/best.pt data=datasets/synth/data.yaml
  predict  run one route (route=auto|edge|cloud|adapted) on images or videos, like `yolo predict`
  serve    the cloud server: HTTP API for images and feature payloads, micro-batching, /metrics (backend=ray: Ray Serve)
             ecc-yolo serve model=runs/ecc/gate/weights/best.pt host=127.0.0.1 port=8000 imgsz=320
  detect   the edge client on a video, stream or webcam: edge on every frame, chosen frames offloaded to a server
             ecc-yolo detect model=runs/ecc/gate/weights/best.pt source=video.mp4 cloud=http://127.0.0.1:8000 imgsz=320
  track    detect, plus Ultralytics' tracker (tracker=bytetrack.yaml|botsort.yaml|...) on each frame's final answer
             ecc-yolo track model=ecc-synth2-q-n-160 source=video.mp4 cloud=http://127.0.0.1:8000 tracker=bytetrack.yaml
  export   the device's part (edge detector, gate, adapter encoders) as ONNX or OpenVINO, for `detect model=<export>`
             ecc-yolo export model=runs/ecc/gate/weights/best.pt format=onnx imgsz=320   (or format=openvino)
  help     this text;  version: the version

Every Ultralytics argument (epochs, batch, imgsz, device, project, name, ...) works as with `yolo`; ecc-yolo's
own arguments and defaults are in ecc_yolo/cfg/default.yaml. Model cfgs: cfg/README.md.
"""


class UsageError(ValueError):
    """A command line that cannot run: unknown mode, malformed pair, missing value."""


def parse_pairs(tokens: list[str]) -> dict[str, Any]:
    """`key=value` tokens -> dict, values typed like Ultralytics does (`smart_value`), except secrets (token=), which
    are taken verbatim: `token=0x10` must not become 16, nor `token=none` turn authentication off."""
    from ultralytics.cfg import merge_equals_args, parse_key_value_pair

    from ecc_yolo.args import ECC_ARG_TYPES

    out: dict[str, Any] = {}
    for token in merge_equals_args(tokens):
        if "=" not in token:
            raise UsageError(f"'{token}' is not key=value (e.g. imgsz=640)")
        try:
            key, value = parse_key_value_pair(token)
        except AssertionError as e:
            raise UsageError(str(e)) from None
        out[key] = token.split("=", 1)[1].strip() if ECC_ARG_TYPES.get(key, ("",))[0] == "secret" else value
    return out


def run_info(args: dict[str, Any]) -> None:
    """`ecc-yolo info`: print the cost summary (text, or one JSON object with format=json)."""
    from ecc_yolo.costs import format_costs
    from ecc_yolo.deploy import resolve
    from ecc_yolo.engine.model import ECC

    _checked(args)
    fmt = args.get("format", "text")
    if fmt not in ("text", "json"):
        raise UsageError(f"info format must be text or json, got '{fmt}'")
    ecc = ECC(args.get("model", "ecc-yolo11n-l.yaml"), edge_model=args.get("edge_model"),
              cloud_model=args.get("cloud_model"))
    deploy = resolve(ecc.model, args)  # the model's deployment settings, with any key=value given
    if not isinstance(deploy.imgsz, int) or deploy.imgsz < 32 or deploy.imgsz % 32:
        raise UsageError(f"imgsz must be a multiple of 32 >= 32, got {deploy.imgsz!r}")
    costs = ecc.costs(deploy.imgsz)
    if fmt == "json":
        print(json.dumps({"model": ecc.model.spec.name, **costs, "deploy": deploy.as_dict()}))
    else:
        print(format_costs(ecc.model.spec.name, costs))
        print(f"deployment: {deploy.describe()}")


def _model_and_args(args: dict[str, Any], default: str = "ecc-yolo11n-l.yaml"):
    """The ECC named by model= (with edge_model=/cloud_model= applied) and the remaining arguments."""
    from ecc_yolo.engine.model import ECC

    args = dict(args)
    model = args.pop("model", default)
    parts = {k: args.pop(k) for k in ("edge_model", "cloud_model") if args.get(k)}
    return ECC(model, **parts), args


def _checked(args: dict[str, Any]) -> dict[str, Any]:
    """The arguments, after refusing unknown keys and bad ecc-yolo values."""
    from ecc_yolo.args import check_ecc_values, check_keys

    check_keys(args)
    check_ecc_values(args)
    return args


def run_train(args: dict[str, Any]) -> None:
    """`ecc-yolo train`: one training stage (Ultralytics' trainer with ecc-yolo's stages)."""
    _checked(args)
    if "data" not in args and not args.get("resume"):
        raise UsageError("train needs data=<data.yaml> (e.g. one written by `ecc-yolo synth`)")
    if args.get("resume") not in (None, False, True):  # resume=path/to/last.pt
        args["model"] = args["resume"]
    ecc, rest = _model_and_args(args)
    ecc.train(**rest)


def run_val(args: dict[str, Any]) -> None:
    """`ecc-yolo val`: the benchmark, every route and every router (ecc_yolo/eval/benchmark.py)."""
    _run_mode(args, "val", "data", "data=<data.yaml>")


def run_predict(args: dict[str, Any]) -> None:
    """`ecc-yolo predict`: Ultralytics' predict through one route (route=auto lets the gate choose)."""
    _run_mode(args, "predict", "source", "source=<image, folder or video>", save=True)


def _run_mode(args: dict[str, Any], mode: str, required: str, usage: str, **defaults: Any) -> None:
    """Check the arguments, refuse a missing `required` key (saying `usage`), then run `ECC.<mode>` on the model
    with the other arguments over `defaults`."""
    _checked(args)
    if required not in args:
        raise UsageError(f"{mode} needs {usage}")
    ecc, rest = _model_and_args(args)
    getattr(ecc, mode)(**{**defaults, **rest})


def _serving_args(args: dict[str, Any], mode: str) -> Any:
    """Validated arguments of serve/detect: they need a trained ECC checkpoint or zoo name (detect also takes the
    edge's ONNX or OpenVINO export: the .onnx, the IR folder or its .xml)."""
    from ecc_yolo import zoo
    from ecc_yolo.args import get_args

    _checked(args)
    model = str(args.get("model", ""))
    suffixes = (".pt", ".onnx", ".xml") if mode == "detect" else (".pt",)
    exported_folder = mode == "detect" and bool(model) and Path(model).is_dir()  # an OpenVINO export
    if not (model.endswith(suffixes) or exported_folder or zoo.is_zoo_name(model)):
        what = "an ECC checkpoint (.pt), a zoo name or an edge export (.onnx, OpenVINO folder or .xml)" \
            if mode == "detect" else "an ECC checkpoint (.pt) or a zoo name"
        raise UsageError(f"{mode} needs model=<{what}> (the edge and the cloud must hold the same model)")
    return get_args(args)  # image size, NMS and the offload decision: the model's unless given (ecc_yolo.deploy)


def run_serve(args: dict[str, Any]) -> None:
    """`ecc-yolo serve`: the cloud server (FastAPI on uvicorn, or Ray Serve with backend=ray)."""
    ns = _serving_args(args, "serve")
    if ns.backend == "ray":
        try:
            import ray.serve  # noqa: F401
        except ImportError:
            raise UsageError('backend=ray needs Ray Serve: pip install -e ".[ray]"') from None
    from ecc_yolo.serve.run import serve

    serve(ns, overrides=args)


def run_detect(args: dict[str, Any], track: bool = False) -> None:
    """`ecc-yolo detect`: the edge stream client; saves like `yolo predict` and prints a summary. With track=True
    (`ecc-yolo track`), each frame's final answer is tracked (ecc_yolo/serve/tracking.py) before it is saved."""
    from ecc_yolo.args import default_project

    mode = "track" if track else "detect"
    if "source" not in args:
        raise UsageError(f"{mode} needs source=<video, image folder, stream URL or webcam index>")
    ns = _serving_args({"save": True, "project": default_project(), "name": mode, **args}, "detect")
    if ns.route != "edge" and not ns.cloud:
        raise UsageError(f"{mode} route={ns.route} needs cloud=<server URL, e.g. http://127.0.0.1:8000> "
                         f"(or route=edge)")
    if track:
        from ecc_yolo.serve.tracking import tracker_config

        try:
            tracker_config(ns.tracker)
        except ValueError as e:
            raise UsageError(str(e)) from None
    from ecc_yolo.edge import NotAnEdgeExport
    from ecc_yolo.serve.client import detect
    from ecc_yolo.serve.link import ModelMismatchError

    try:
        detect(ns, overrides=args, track=track)
    except (ModelMismatchError, NotAnEdgeExport) as e:
        raise UsageError(str(e)) from None


def run_track(args: dict[str, Any]) -> None:
    """`ecc-yolo track`: `ecc-yolo detect` with Ultralytics' multi-object tracking (tracker=) on the final answers;
    each box of detections.jsonl gets its track_id."""
    run_detect(args, track=True)


def run_synth(args: dict[str, Any]) -> None:
    """`ecc-yolo synth`: write the synthetic dataset (and, with video=N, an N-frame video)."""
    from ecc_yolo.data.synthetic import GENERATOR_VERSION, check_version, generate_dataset, generate_video

    allowed = {"out", "train", "val", "imgsz", "seed", "mix", "video", "empty_fraction", "overwrite", "domain",
               "version"}
    unknown = set(args) - allowed
    if unknown:
        raise UsageError(f"synth does not take {sorted(unknown)}; it takes {sorted(allowed)}")
    out = args.get("out", "datasets/synth")
    kwargs = {k: args[k] for k in ("train", "val", "imgsz", "seed", "empty_fraction", "overwrite", "domain")
              if k in args}
    try:
        kwargs["version"] = check_version(args.get("version", GENERATOR_VERSION))
    except ValueError as e:
        raise UsageError(str(e)) from None
    if "mix" in args:
        kwargs["mix"] = tuple(args["mix"])
    data = generate_dataset(out, **kwargs)
    print(f"dataset: {data}")
    if args.get("video"):
        video = generate_video(f"{out}/video.mp4", frames=int(args["video"]), imgsz=args.get("imgsz", 256),
                               seed=args.get("seed", 0), version=kwargs["version"])
        print(f"video: {video}")


def run_export(args: dict[str, Any]) -> None:
    """`ecc-yolo export format=onnx|openvino`: the device's graph (edge detector, gate, adapter encoders) for edge
    runtimes."""
    from ecc_yolo.edge import OPENVINO_SUFFIX, export_edge_onnx, export_edge_openvino

    _checked(args)
    fmt = args.get("format", "onnx")
    if fmt not in ("onnx", "openvino"):
        raise UsageError(f"export supports format=onnx or format=openvino (the edge part), got '{fmt}'")
    from ecc_yolo import zoo
    from ecc_yolo.deploy import resolve

    ecc, _ = _model_and_args(args)
    model = ecc.model
    imgsz = resolve(model, args).imgsz  # the model's deployment size unless imgsz= is given
    if not isinstance(imgsz, int) or imgsz < 32 or imgsz % 32:
        raise UsageError(f"imgsz must be a multiple of 32 >= 32, got {imgsz!r}")
    source = Path(str(ecc.model_name))
    # like Ultralytics: next to a checkpoint, else (a cfg, or a zoo model inside the installed package) here
    beside = source.suffix == ".pt" and source.resolve().parent != zoo.zoo_dir().resolve()
    out = (source.parent if beside else Path.cwd()) / f"{source.stem}-edge"
    if fmt == "openvino":  # a folder, as Ultralytics writes: <stem>-edge_openvino_model/<stem>-edge.xml (+ .bin)
        print(f"edge export: {export_edge_openvino(model, f'{out}{OPENVINO_SUFFIX}', imgsz)}")
    else:
        print(f"edge export: {export_edge_onnx(model, f'{out}.onnx', imgsz)}")


def run_demo_mode(args: dict[str, Any]) -> None:
    """`ecc-yolo demo`: data, benchmark, cloud server and stream client, on the synthetic data (ecc_yolo/demo.py)."""
    from ecc_yolo.demo import run_demo

    allowed = {"model", "train", "project", "name", "device"}
    unknown = set(args) - allowed
    if unknown:
        raise UsageError(f"demo does not take {sorted(unknown)}; it takes {sorted(allowed)}")
    if not isinstance(args.get("train", False), bool):
        raise UsageError(f"train must be True or False, got {args['train']!r}")
    run_demo(model=args.get("model"), train=args.get("train", False), project=args.get("project"),
             name=args.get("name", "demo"), device=str(args.get("device", "cpu")))


MODES: dict[str, Callable[[dict[str, Any]], None]] = {
    "info": run_info,
    "synth": run_synth,
    "train": run_train,
    "val": run_val,
    "predict": run_predict,
    "export": run_export,
    "demo": run_demo_mode,
    "serve": run_serve,
    "detect": run_detect,
    "track": run_track,
}


def entrypoint(argv: list[str] | None = None) -> int:
    """Run the command line; returns the process exit status."""
    tokens = sys.argv[1:] if argv is None else list(argv)
    if not tokens or tokens[0] in ("help", "-h", "--help"):
        print(HELP)
        return 0
    if tokens[0] in ("version", "--version"):
        print(__version__)
        return 0
    mode, rest = tokens[0], tokens[1:]
    if mode not in MODES:
        print(f"ecc-yolo: error: unknown mode '{mode}'. Modes: {', '.join(sorted(MODES))}, help, version.",
              file=sys.stderr)
        return 2
    os.environ.setdefault("YOLO_OFFLINE", "1")  # never reach for the network from the CLI unless asked to
    from ecc_yolo.args import ArgumentError
    from ecc_yolo.payload.codec import PayloadError
    from ecc_yolo.spec import ECCConfigError

    try:
        MODES[mode](parse_pairs(rest))
    except (UsageError, ArgumentError, ECCConfigError, PayloadError, FileNotFoundError, SyntaxError) as e:
        print(f"ecc-yolo {mode}: error: {e}", file=sys.stderr)
        return 2
    return 0


def main() -> None:
    """Console-script entry point."""
    sys.exit(entrypoint())
