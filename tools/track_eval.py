#!/usr/bin/env python
"""Tracking per route (docs/BENCHMARKS.md, "Tracking per route (issue 27)"): `ecc-yolo track` (detect with
Ultralytics' tracker on each frame's final answer) for route=edge, route=cloud and route=auto (the model's
calibrated default, no budget; also with the --auto-trackers, for comparison) against a loopback server, scored
with motmetrics against the synthetic videos' ground-truth tracks (`ecc_yolo.eval.tracking`: IoU >= 0.5,
class-aware; class-agnostic figures beside them).

    python tools/track_eval.py --model ecc-synth2-q-n-160 --out runs/track_eval \\
        --record docs/benchmarks/tracking.json

Videos: generator 2.0 at the model's image size, 15 FPS, seeds no split of the zoo used (777, 778, ...); each is
--frames frames in 25-frame scenes whose difficulties (easy, hard, complex, each twice per 150 frames) are shuffled
per video. Each scene starts new objects, so new ground-truth tracks.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import numpy as np

SEEDS = (777, 778)  # drawn for this benchmark; the zoo trained on seed 0 and tested on 20261206, videos 20261207+
SCENE_FRAMES = 25
ROUTES = ("edge", "cloud", "auto")
COLUMNS = ("mota", "idf1", "id_switches", "false_positives", "misses")


def schedule(frames: int, seed: int) -> list[tuple[int, str]]:
    """`frames` frames in SCENE_FRAMES-frame scenes (the last takes the rest), difficulties cycled then shuffled."""
    n = max(1, frames // SCENE_FRAMES)
    kinds = np.random.default_rng(seed).permutation([("easy", "hard", "complex")[i % 3] for i in range(n)])
    return [(SCENE_FRAMES + (frames - n * SCENE_FRAMES if i == n - 1 else 0), str(d)) for i, d in enumerate(kinds)]


def pooled_from_videos(per_video: list[dict]) -> tuple[float, float]:
    """(MOTA, IDF1) of videos pooled, from each video's counts: MOTA = 1 - (FN + FP + IDSW) / GT boxes, IDF1 =
    2 IDTP / (GT boxes + predicted boxes), with IDTP = IDR x GT boxes."""
    objects = sum(v["objects"] for v in per_video)
    errors = sum(v["misses"] + v["false_positives"] + v["id_switches"] for v in per_video)
    idtp = sum(v["idr"] * v["objects"] for v in per_video)
    predictions = sum(v["predictions"] for v in per_video)
    return 1 - errors / objects, 2 * idtp / (objects + predictions)


def paired_over_videos(a: dict, b: dict, resamples: int = 1000, seed: int = 0) -> dict:
    """Row a minus row b in pooled MOTA and IDF1, with a 95% paired bootstrap over videos (both rows scored on the
    same resampled videos)."""
    names = sorted(a["per_video"])
    rng = np.random.default_rng(seed)
    draws = [np.arange(len(names))] + [rng.integers(0, len(names), len(names)) for _ in range(resamples)]
    diffs = np.array([np.subtract(pooled_from_videos([a["per_video"][names[i]] for i in d]),
                                  pooled_from_videos([b["per_video"][names[i]] for i in d])) for d in draws])
    return {k: {"value": round(float(diffs[0, j]), 4),
                "ci": [round(float(np.quantile(diffs[1:, j], q)), 4) for q in (0.025, 0.975)]}
            for j, k in enumerate(("mota", "idf1"))} | {"videos": len(names), "resamples": resamples}


def markdown(result: dict) -> str:
    """The per-route table (both videos pooled)."""
    header = ("| route | tracker | MOTA | IDF1 | ID switches | FP | FN | MOTA / IDF1 class-agnostic | "
              "untracked detections: FP / FN | offload ratio | routes taken |")
    lines = [header, "|---|---|---|---|---|---|---|---|---|---|---|"]
    for row in result["rows"]:
        m, a, d = row["overall"], row["overall_class_agnostic"], row["untracked_detections"]
        taken = ", ".join(f"{k} {v}" for k, v in row["routes"].items() if v)
        lines.append(f"| {row['route']} | {row['tracker']} | {m['mota']:.3f} | {m['idf1']:.3f} | {m['id_switches']} | "
                     f"{m['false_positives']} | {m['misses']} | {a['mota']:.3f} / {a['idf1']:.3f} | "
                     f"{(str(d['false_positives']) + ' / ' + str(d['misses'])) if d else '-'} | "
                     f"{row['offload_ratio']:.1%} | {taken} |")
    gt = result["rows"][0]["overall"]
    lines.append(f"\n{gt['objects']} ground-truth boxes in {gt['gt_tracks']} tracks over {result['frames_total']} "
                 f"frames.")
    return "\n".join(lines)


def pooled(videos: list[Path], records: dict[str, list[dict]], class_aware: bool = True) -> tuple[dict, dict]:
    """Metrics of all videos pooled (motmetrics' overall), and per video."""
    from ecc_yolo.eval.tracking import accumulate, summarize

    per = summarize({v.stem: accumulate(v, records[v.stem], class_aware) for v in videos})
    overall = per.pop("overall", None)
    return overall or per[videos[0].stem], per


def untracked(records: list[dict]) -> list[dict]:
    """detect's records with every box its own id: detection-level FP, FN, precision and recall (not MOTA/IDF1)."""
    ids = iter(range(1, 1 << 40))
    return [{**r, "boxes": [{**b, "track_id": next(ids)} for b in r["boxes"]]} for r in records]


def main(argv: list[str] | None = None) -> dict:
    """Run every route on every video, score, write the record and print the table."""
    from ecc_yolo.args import get_args
    from ecc_yolo.checkpoint import load_ecc
    from ecc_yolo.data.synthetic import generate_video
    from ecc_yolo.deploy import model_settings
    from ecc_yolo.serve.client import detect
    from ecc_yolo.serve.engine import CloudEngine
    from ecc_yolo.serve.server import BackgroundServer, ServerSettings, build_app

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="ecc-synth2-q-n-160")
    p.add_argument("--out", required=True)
    p.add_argument("--frames", type=int, default=150)
    p.add_argument("--videos", type=int, default=2)
    p.add_argument("--tracker", default="bytetrack.yaml")
    p.add_argument("--routes", default=",".join(ROUTES))
    p.add_argument("--auto-trackers", default="botsort.yaml,tracktrack.yaml",
                   help="other trackers to run route=auto with, for comparison ('' for none)")
    p.add_argument("--cue", action="store_true", help="also route=auto with track_cue=True, and the gate alone "
                   "(budget=) at the share of frames that offloaded")
    p.add_argument("--record", default=None)
    opt = p.parse_args(argv)
    os.environ.setdefault("YOLO_OFFLINE", "1")
    start, out = time.time(), Path(opt.out)
    out.mkdir(parents=True, exist_ok=True)
    model, _ = load_ecc(opt.model)
    settings = model_settings(model)
    seeds = [SEEDS[i] if i < len(SEEDS) else SEEDS[-1] + i - len(SEEDS) + 1 for i in range(opt.videos)]
    videos = [generate_video(out / f"video{seed}.mp4", frames=opt.frames, fps=15, imgsz=settings.imgsz, seed=seed,
                             schedule=schedule(opt.frames, seed), progress=False) for seed in seeds]

    def run(route: str, tracker: str | None, url: str, extra: dict | None = None, label: str = ""
            ) -> tuple[list[dict], dict[str, list[dict]]]:
        """detect (track=True unless tracker is None) on every video, with `extra` arguments: summaries, and records
        per video."""
        summaries, records = [], {}
        for video in videos:
            name = f"{route}{label}-{Path(tracker).stem if tracker else 'untracked'}-{video.stem}"
            args = get_args({"model": str(opt.model), "source": str(video), "route": route, "cloud": url,
                             "tracker": tracker or opt.tracker, "save": True, "project": str(out), "name": name,
                             "exist_ok": True, "verbose": False, **(extra or {})})
            summaries.append(detect(args, model=model, overrides=extra or {}, track=tracker is not None))
            records[video.stem] = [json.loads(x) for x in (out / name / "detections.jsonl").read_text().splitlines()]
        return summaries, records

    rows, detections = [], {}
    with BackgroundServer(build_app(CloudEngine(model, imgsz=settings.imgsz), ServerSettings())) as server:
        runs = [(r, opt.tracker, {}) for r in opt.routes.split(",")]
        runs += [("auto", t, {}) for t in opt.auto_trackers.split(",") if t and t != opt.tracker]
        if opt.cue:  # the track-state cue, then the gate alone at the share of frames the cue ended up offloading
            runs += [("auto", opt.tracker, {"track_cue": True}), ("auto", opt.tracker, "same share")]
        for route, tracker, extra in runs:
            if extra == "same share":
                extra = {"budget": max(rows[-1]["offload_ratio"], 0.01)}
            label = "".join(f"-{k}{v}" for k, v in extra.items())
            t0 = time.time()
            summaries, records = run(route, tracker, server.url, extra, label)
            seconds = round(time.time() - t0, 1)
            if route + label not in detections and not extra.get("track_cue"):  # the same frames untracked: what
                # the tracker had to work with (with the cue, the frames depend on the tracker: none such)
                _, raw = run(route, None, server.url, extra, label)
                detections[route + label] = pooled(videos, {k: untracked(v) for k, v in raw.items()})[0]
            overall, per_video = pooled(videos, records)
            frames = sum(s["frames"] for s in summaries)
            rows.append({
                "route": route + (f" ({', '.join(f'{k}={v}' for k, v in extra.items())})" if extra else ""),
                "tracker": tracker, "overall": overall, "per_video": per_video,
                "overall_class_agnostic": pooled(videos, records, class_aware=False)[0],
                "untracked_detections": {k: detections[route + label][k] for k in
                                         ("precision", "recall", "false_positives", "misses")}
                if route + label in detections else None,
                "offload_ratio": round(sum(s["offload_ratio"] * s["frames"] for s in summaries) / frames, 4),
                "routes": {k: sum(s["routes"][k] for s in summaries) for k in summaries[0]["routes"]},
                "fallbacks": sum(s["fallbacks"] for s in summaries), "seconds": seconds})
            print(f"[track_eval] route={route} {tracker}: MOTA {overall['mota']:.3f}, IDF1 {overall['idf1']:.3f}, "
                  f"offload {rows[-1]['offload_ratio']:.1%} ({seconds} s)")
    result = {"model": str(opt.model), "tracker": opt.tracker, "imgsz": settings.imgsz, "fps": 15,
              "videos": [{"name": v.stem, "seed": seed, "schedule": schedule(opt.frames, seed)}
                         for v, seed in zip(videos, seeds)],
              "frames_total": opt.frames * len(videos), "default_router": settings.router,
              "matching": "IoU >= 0.5, class-aware (overall_class_agnostic: boxes only)", "rows": rows,
              **({"cue_minus_gate_at_same_share": paired_over_videos(rows[-2], rows[-1])} if opt.cue else {}),
              "seconds": round(time.time() - start, 1)}
    (out / "tracking.json").write_text(json.dumps(result, indent=1))
    if opt.record:
        Path(opt.record).write_text(json.dumps(result, indent=1) + "\n")
    print(markdown(result))
    if opt.cue:
        print("track cue - gate alone at the same share (paired bootstrap over videos):",
              json.dumps(result["cue_minus_gate_at_same_share"]))
    return result


if __name__ == "__main__":
    main()
