"""`ecc-yolo demo`: the whole product in one command, on the built-in synthetic data, with no network.

1. the model: the shipped zoo checkpoint (`ecc-synth2-q-n-160`, trained on 2 CPU cores by tools/train_zoo.py), or
   `model=`; nothing is trained unless `train=True`;
2. optionally (`train=True`) a short fine-tune of the adapters and the gate, so that the training stages are seen;
3. a synthetic evaluation split and a synthetic video whose difficulty changes over time;
4. the benchmark (`ecc-yolo val`): every route, every router, plots;
5. a local cloud server (`ecc-yolo serve`) and the edge stream client (`ecc-yolo detect route=auto`) on the video,
   at the model's calibrated default operating point (`ecc_yolo.deploy`: no budget; the summary prints the share
   it was calibrated to and the share the stream offloaded);
6. the server is stopped (also on Ctrl-C) and a summary says where everything is.
Re-running reuses what is still valid (the benchmark's cached model outputs) and overwrites the rest.
"""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path
from typing import Any

from ultralytics.utils import LOGGER

DEMO_SEED = 4242  # a seed no zoo training used
EVAL_IMAGES = 300
# The demo shows intervals but stays about a minute: 200 resamples (the benchmark's 1000 add minutes) and no codec
# rate curve (`tools/benchmark_coco.py --preset synthetic` measures both).
DEMO_BOOTSTRAP = 200
VIDEO_FRAMES, VIDEO_FPS = 180, 15
FINE_TUNE_IMAGES = 96


def _step(title: str) -> None:
    LOGGER.info(f"\n{'=' * 8} ecc-yolo demo: {title}")


def _ecc_yolo(*args: str) -> None:
    """Run an `ecc-yolo` command as a user would (this interpreter), failing loudly."""
    LOGGER.info("ecc-yolo " + " ".join(args))
    from ecc_yolo.args import command_line

    subprocess.run(command_line(*args), check=True)


def choose_model(model: str | None) -> tuple[str, str]:
    """(checkpoint or zoo name, "zoo" | "given") for the demo: the given model, else the first shipped zoo entry (the
    CPU zoo, zoo.DEFAULT_MODEL). Trains nothing."""
    from ecc_yolo import zoo

    if model:
        return model, "given"
    shipped = [name for name in zoo.available() if name in zoo.KNOWN]
    if not shipped:
        raise zoo.ZooError(
            f"no zoo model is shipped in {zoo.zoo_dir()}, so the demo has nothing to run; reinstall the package, train "
            f"the zoo with `{zoo.TRAIN_COMMAND[zoo.DEFAULT_MODEL]}` (about 70 minutes on 2 CPU cores), or pass "
            f"model=<your ECC checkpoint>"
        )
    return shipped[0], "zoo"


def _fine_tune(model: str, out: Path, imgsz: int) -> str:
    """A short adapter and gate fine-tune from the model, on a small synthetic training set (CPU, about a minute)."""
    data = out / "finetune-data"
    _ecc_yolo("synth", f"out={data}", f"train={FINE_TUNE_IMAGES}", "val=32", f"imgsz={imgsz}", f"seed={DEMO_SEED + 1}")
    runs = out / "finetune"
    for stage in ("adapt", "gate"):
        _ecc_yolo("train", f"model={model}", f"data={data / 'data.yaml'}", f"stage={stage}", "epochs=1",
                  f"imgsz={imgsz}", "batch=16", f"project={runs}", f"name={stage}", "exist_ok=True", "plots=False")
        model = str(runs / stage / "weights" / "best.pt")
    return model


def run_demo(model: str | None = None, train: bool = False, project: str | None = None, name: str = "demo",
             device: str = "cpu") -> dict[str, Any]:
    """Run the demo (see the module docstring); returns what it measured and where the outputs are."""
    from ecc_yolo.args import default_project
    from ecc_yolo.checkpoint import load_ecc
    from ecc_yolo.data.synthetic import generate_dataset, generate_video
    from ecc_yolo.deploy import model_settings
    from ecc_yolo.eval.benchmark import evaluate
    from ecc_yolo.serve.client import detect
    from ecc_yolo.serve.local import LocalServer

    os.environ.setdefault("YOLO_OFFLINE", "1")
    out = Path(project or default_project()) / name
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.time()

    _step("model")
    model, kind = choose_model(model)
    ecc, _ = load_ecc(model)
    imgsz = model_settings(ecc).imgsz if getattr(ecc, "args", None) else 256  # a cfg-built model: the demo's 256
    if train:
        _step("a short adapter and gate fine-tune (train=True)")
        model = _fine_tune(model, out, imgsz)
        ecc, _ = load_ecc(model)

    _step("synthetic evaluation split and video")
    data = generate_dataset(out / "data", train=0, val=EVAL_IMAGES, imgsz=imgsz, seed=DEMO_SEED)
    video = generate_video(out / "data" / "video.mp4", frames=VIDEO_FRAMES, fps=VIDEO_FPS, imgsz=imgsz, seed=DEMO_SEED)

    _step(f"benchmark: every route and router on {EVAL_IMAGES} images")
    bench = evaluate(ecc, data, out / "benchmark", imgsz=imgsz, batch=16, device=device, bootstrap=DEMO_BOOTSTRAP,
                     rate=False)

    # The stream decides as a user's `ecc-yolo detect route=auto` does: the model's calibrated operating point.
    deploy = model_settings(ecc)
    _step(f"cloud server and the edge stream client on the video (route=auto: {deploy.describe()})")
    LOGGER.info(f"ecc-yolo serve model={model} (log: {out / 'server.log'})")
    with LocalServer(model, imgsz, out / "server.log") as server:
        stream = detect({"model": model, "source": str(video), "cloud": server.url, "route": "auto",
                         "imgsz": imgsz, "save": True, "project": str(out), "name": "detect",
                         "exist_ok": True, "device": device, "verbose": False})

    result = {
        "model": model,
        "model_kind": kind,
        "imgsz": imgsz,
        **{f"{route}_map{part}": bench[f"{route}_map{part}"] for route in ("edge", "adapted", "cloud")
           for part in ("", "_ci")},
        "ecc_d": bench["ecc_d_operating_point"],
        "operating_point": deploy.as_dict(),
        "stream": stream,
        "seconds": round(time.time() - t0, 1),
        "outputs": {
            "plot: mAP vs offload ratio": out / "benchmark" / "map_vs_offload.png",
            "plot: Pareto frontier": out / "benchmark" / "pareto.png",
            "benchmark table": out / "benchmark" / "summary.md",
            "annotated video": next((out / "detect").glob("video.*"), out / "detect"),
            "JSON lines (one per frame)": out / "detect" / "detections.jsonl",
            "stream summary": out / "detect" / "summary.json",
        },
    }
    LOGGER.info(format_demo(result))
    return result


def calibrated_share(deploy: dict[str, Any]) -> str:
    """The offload share a model's operating point was calibrated to, or why there is none."""
    cal = deploy.get("calibration")
    return f"{cal['offload_share']:.1%} ({cal['split']})" if cal else "not calibrated"


def format_demo(result: dict[str, Any]) -> str:
    """The closing summary table and where everything is."""
    op, s = result["ecc_d"], result["stream"]
    def with_ci(route: str) -> str:  # 95% bootstrap interval over the images
        lo, hi = result[f"{route}_map_ci"]
        return f"{result[f'{route}_map']:.3f} [{lo:.3f}, {hi:.3f}]"

    rows = [
        ("edge mAP50-95", with_ci("edge")),
        ("cloud mAP50-95", with_ci("cloud")),
        ("adapted route mAP50-95", with_ci("adapted")),
        (f"ECC_D mAP50-95 (offload {op['ratio']:.0%})", f"{op['map']:.3f}"),
        ("operating point (router)", str(result["operating_point"]["router"])),
        ("operating point: calibrated share", calibrated_share(result["operating_point"])),
        ("stream: offload ratio", f"{s['offload_ratio']:.1%}"),
        ("stream: bytes per frame", f"{s['mean_bytes_per_frame']:.0f}"),
        ("stream: frames/s", f"{s['fps']:.1f}"),
        ("stream: fallbacks", str(s["fallbacks"])),
    ]
    lines = [f"\necc-yolo demo: {result['model']} at {result['imgsz']} px, {result['seconds']:.0f} s"]
    lines += [f"  {k:<34}{v:>22}" for k, v in rows]
    lines += ["Outputs:"] + [f"  {k:<28}{v}" for k, v in result["outputs"].items()]
    return "\n".join(lines)
