"""Benchmark outputs: curve.csv, summary.json, summary.md and PNG plots in one run folder."""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

import numpy as np

from ecc_yolo.deploy import ECC_D, ECC_D_PLUS, ECC_I, MEANET
from ecc_yolo.eval.routers import CurvePoint
from ecc_yolo.routes import ADAPTED, CLOUD, DEVICE_ROUTES

_TARGETS = {"D": ("tab:blue", "adapted"), "D+": ("tab:purple", "three-way"), "I": ("tab:orange", "full cloud")}
_REFERENCES = {"oracle": (":", "greedy oracle"), "best_oracle": ("-.", "best oracle"), "random": ("--", "random")}
STYLE = {  # router -> (colour, line style, label): a colour per target, a line style per kind of router
    ECC_D: ("tab:blue", "-", "ECC_D (gate, adapted features)"),
    ECC_D_PLUS: ("tab:purple", "-", "ECC_D+ (gate, features or JPEG)"),
    ECC_I: ("tab:orange", "-", "ECC_I (gate, JPEG to full cloud)"),
    MEANET: ("tab:green", "-", "MEANet three exits (router)"),
    **{f"{kind}_{t}": (colour, line, f"{label} ({what})") for kind, (line, label) in _REFERENCES.items()
       for t, (colour, what) in _TARGETS.items() if not (kind == "random" and t == "D+")},
}


def write_curve_csv(curves: dict[str, list[CurvePoint]], path: Path) -> None:
    """Every point of every router, one row each."""
    rows = [p.row() for points in curves.values() for p in points]
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)


def write_summary(summary: dict[str, Any], folder: Path) -> None:
    """summary.json and a markdown table (summary.md)."""
    (folder / "summary.json").write_text(json.dumps(summary, indent=2))
    (folder / "summary.md").write_text(markdown(summary))


def _fmt(v: Any) -> str:
    if v is None:
        return "never"
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, dict) and "value" in v:  # an estimate: "0.342 [0.326, 0.358]"
        ci = v.get("ci")
        return _fmt(v["value"]) + ("" if not ci or ci[0] is None else f" [{ci[0]:.3f}, {ci[1]:.3f}]")
    if isinstance(v, float):
        return f"{v:.3f}"
    return str(v)


def markdown(summary: dict[str, Any]) -> str:
    """The summary as markdown tables; figures with a bootstrap interval read "value [lo, hi]" (95%)."""
    boot = summary.get("bootstrap", {})
    lines = [
        f"Images: {summary['images']} ({summary['data']}), imgsz {summary['imgsz']}; intervals: 95% percentile "
        f"bootstrap over images, {boot.get('resamples', 0)} resamples (paired across figures).",
        "",
        "| route | mAP50-95 | mAP50 |",
        "|---|---|---|",
    ]
    for route in (*DEVICE_ROUTES, ADAPTED, CLOUD):  # the device's routes first
        if f"{route}_map" in summary:
            estimate = {"value": summary[f"{route}_map"], "ci": summary.get(f"{route}_map_ci")}
            lines.append(f"| {route} | {_fmt(estimate)} | {summary[f'{route}_map50']:.3f} |")
    lines += ["", "| difference (paired) | mAP50-95 |", "|---|---|"]
    lines += [f"| {name} | {_fmt(v)} |" for name, v in summary.get("route_differences", {}).items()]
    lines += ["", f"Adapted route: cloud part alone {summary['adapted_cloud_gflops_share_of_cloud']:.3f} of the full "
              f"cloud's GFLOPs; end to end (edge + encoders + cloud part) "
              f"{summary['adapted_end_to_end_gflops_share_of_cloud']:.3f}; mAP "
              f"{_fmt(summary['adapted_share_of_cloud_map'])} of the cloud's.", ""]
    lines += [f"Oracles: {summary.get('oracles', '')}", ""]
    shares = [f"gain_share_at_{r:g}" for r in (0.1, 0.2, 0.3)]
    lines += ["| router | normalised score | " + " | ".join(f"gain share at {s.rsplit('_', 1)[1]}" for s in shares)
              + " | gain share / oracle's at 0.2 | raw AUC / oracle |", "|---|---|---|---|---|---|---|"]
    for router, figures in summary.get("scores", {}).items():
        lines.append(f"| {router} | {_fmt(figures.get('normalised_score', '-'))} | "
                     + " | ".join(_fmt(figures.get(s, "-")) for s in shares)
                     + f" | {_fmt(figures.get('gain_share_vs_oracle_at_0.2', '-'))} "
                     f"| {_fmt(figures.get('raw_auc_vs_oracle', '-'))} |")
    lines += ["", "| router | offload at 99% of cloud | bytes / frame | bytes / offloaded frame "
              "| / those frames' JPEG | device GFLOPs | cloud GFLOPs | total GFLOPs |",
              "|---|---|---|---|---|---|---|---|"]
    for name, key in ((ECC_D, "ecc_d"), (ECC_D_PLUS, "ecc_d_plus"), (ECC_I, "ecc_i")):
        op = summary[f"{key}_operating_point"]
        per_offloaded = summary[f"{key}_bytes_per_offloaded_frame"]
        lines.append(
            f"| {name} | {_fmt(summary[f'{key}_offload_at_99pct_cloud'])} | {op['bytes_per_frame']:.0f} "
            f"| {'-' if per_offloaded is None else f'{per_offloaded:.0f}'} "
            f"| {_fmt(summary[f'{key}_bytes_per_offloaded_frame_share_of_jpeg'])} "
            f"| {op['device_gflops']:.2f} | {op['cloud_gflops']:.2f} | {op['total_gflops']:.2f} |"
        )
    if summary.get("meanet"):
        m = summary["meanet"]
        own = m["own_decision"]
        equal = m["at_equal_total_gflops"]
        shares = "/".join(f"{m['exit_shares'][name]:.2f}" for name in ("main", "extension", "cloud"))
        lines += ["", "Three exits (MEANet router, its own decision): "
                  f"mAP50-95 {own['map']:.3f}, exits main/extension/cloud {shares}, "
                  f"device GFLOPs {own['device_gflops']:.2f}. Against ECC_D at equal offload ratio: >= ECC_D on "
                  f"{m['ratios_at_least_ecc_d']:.0%} of the ratios (mean difference "
                  f"{_fmt(m['mean_gain_over_ecc_d_at_equal_ratio'])}); at equal total GFLOPs per frame (the extension "
                  f"exit's device compute counted): >= ECC_D on {equal['ratios_at_least_ecc_d']:.0%} of the points "
                  f"(mean difference {_fmt(equal['mean_difference'])}, {equal['points_beyond_ecc_d_range']} points "
                  "beyond ECC_D's compute range, compared with its ratio-1 point)."]
        for key in (k for k in m if k.startswith("confusion")):
            when = "its own decision" if key == "confusion" else f"offload ratio {key.rsplit('_', 1)[1]}"
            lines += ["", f"| generated difficulty ({when}) | main | extension | cloud |", "|---|---|---|---|"]
            lines += [f"| {level} | {c['main']} | {c['extension']} | {c['cloud']} |" for level, c in m[key].items()]
    if summary.get("per_difficulty"):
        has_ext = any("extension" in v for v in summary["per_difficulty"].values())
        lines += ["", "| difficulty | images | edge | adapted | cloud |" + (" extension |" if has_ext else ""),
                  "|---|---|---|---|---|" + ("---|" if has_ext else "")]
        for level, v in summary["per_difficulty"].items():
            extension = f" | {v['extension']:.3f}" if "extension" in v else ""
            lines.append(f"| {level} | {v['images']} | {v['edge']:.3f} | {v['adapted']:.3f} | {v['cloud']:.3f}{extension} |")
    lines += ["", "| goal | met | figure | value | threshold |", "|---|---|---|---|---|"]
    for goal, g in summary["goals"].items():
        for i, c in enumerate(g["checks"]):
            lines.append(f"| {goal if i == 0 else ''} | {_fmt(g['met']) if i == 0 else ''} | {c['figure']} "
                         f"| {_fmt({'value': c['value'], 'ci': c['ci']})} | {c['rule']} {c['threshold']:g} |")
    return "\n".join(lines) + "\n"


def pareto_front(points: list[tuple[float, float]]) -> list[tuple[float, float]]:
    """Non-dominated (cost, mAP) points: no other point is cheaper and at least as accurate."""
    front, best = [], -np.inf
    for cost, value in sorted(points, key=lambda p: (p[0], -p[1])):
        if value > best:
            front.append((cost, value))
            best = value
    return front


def plot_all(curves: dict[str, list[CurvePoint]], summary: dict[str, Any], folder: Path) -> list[Path]:
    """mAP vs offload ratio, vs cloud GFLOPs, vs KB sent, and the Pareto frontier; returns the PNG paths."""
    import matplotlib

    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt

    edge, cloud = summary["edge_map"], summary["cloud_map"]
    paths = []
    for x_key, x_label, name in (
        ("ratio", "offload ratio", "map_vs_offload.png"),
        ("cloud_gflops", "mean cloud GFLOPs per frame", "map_vs_gflops.png"),
        ("bytes_per_frame", "mean KB sent per frame", "map_vs_kb.png"),
    ):
        fig, ax = plt.subplots(figsize=(7, 5), dpi=120)
        for router, (colour, style, label) in STYLE.items():
            if router not in curves:
                continue
            pts = curves[router]
            x = [getattr(p, x_key) / (1000 if x_key == "bytes_per_frame" else 1) for p in pts]
            ax.plot(x, [p.map for p in pts], style, color=colour, label=label, linewidth=1.6)
            if all(p.map_lo is not None for p in pts):  # the 95% bootstrap interval of each point
                ax.fill_between(x, [p.map_lo for p in pts], [p.map_hi for p in pts], color=colour, alpha=0.12,
                                linewidth=0)
        ax.axhline(edge, color="grey", linewidth=1, label=f"edge only ({edge:.3f})")
        ax.axhline(cloud, color="black", linewidth=1, label=f"cloud only ({cloud:.3f})")
        ax.axhline(0.99 * cloud, color="black", linewidth=0.8, linestyle=":", label="99% of cloud")
        a = curves["ECC_A"][0]
        ax.plot([getattr(a, x_key) / (1000 if x_key == "bytes_per_frame" else 1)], [a.map], "s", color="tab:green",
                label=f"ECC_A ({a.map:.3f})")
        ax.set_xlabel(x_label)
        ax.set_ylabel("mAP50-95")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, loc="lower right")
        ax.set_title(f"{summary['model']} on {summary['images']} images (bands: 95% bootstrap intervals)")
        fig.tight_layout()
        fig.savefig(folder / name)
        plt.close(fig)
        paths.append(folder / name)

    fig, axes = plt.subplots(1, 2, figsize=(12, 5), dpi=120)
    configs = [p for router, pts in curves.items()
               if not router.startswith(("oracle", "refined_oracle", "best_oracle", "random")) for p in pts]
    for ax, (key, label, scale) in zip(axes, (("cloud_gflops", "mean cloud GFLOPs per frame", 1),
                                              ("bytes_per_frame", "mean KB sent per frame", 1000))):
        ax.scatter([getattr(p, key) / scale for p in configs], [p.map for p in configs], s=12, color="tab:grey",
                   label="evaluated configurations")
        front = pareto_front([(getattr(p, key) / scale, p.map) for p in configs])
        ax.plot(*zip(*front), "-o", color="tab:red", markersize=4, label="Pareto frontier")
        ax.set_xlabel(label)
        ax.set_ylabel("mAP50-95")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8, loc="lower right")
    fig.suptitle("Performance vs computation and communication (ECC_I, ECC_A, ECC_D, ECC_D+, edge, cloud)")
    fig.tight_layout()
    fig.savefig(folder / "pareto.png")
    plt.close(fig)
    paths.append(folder / "pareto.png")
    return paths
