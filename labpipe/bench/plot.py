"""The benchmark as a picture: seconds per stage for every plate (stacked bars) and peak memory."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from labpipe.bench.runs import STAGES

__all__ = ["plot_bench"]

_COLOURS = {
    "hash": "#bbbbbb",
    "read": "#888888",
    "overview": "#6baed6",
    "detect": "#2171b5",
    "crop": "#fd8d3c",
    "classify": "#31a354",
    "database": "#756bb1",
}


def plot_bench(report: dict[str, Any], path: Path) -> Path:
    """Write ``path`` (PNG): left, stacked seconds per stage per plate; right, peak RSS against targets."""
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    runs = report["plates"]
    labels = [r["label"] for r in runs]
    fig, (ax, mem) = plt.subplots(1, 2, figsize=(13, 4.8), gridspec_kw={"width_ratios": [3, 2]})
    bottom = [0.0] * len(runs)
    for stage in STAGES:
        values = [r["stage_seconds"][stage] for r in runs]
        ax.bar(range(len(runs)), values, bottom=bottom, color=_COLOURS[stage], label=stage)
        bottom = [b + v for b, v in zip(bottom, values, strict=True)]
    for i, r in enumerate(runs):
        ax.text(i, bottom[i], f"{r['seconds']:.1f} s", ha="center", va="bottom", fontsize=8)
    target = report["targets"]["plate_12000_200_seconds"]
    ax.axhline(target, color="red", linestyle=":", linewidth=1)
    ax.text(len(runs) - 0.5, target, f"target {target:g} s (12000², 200 specimens)", color="red",
            ha="right", va="bottom", fontsize=8)  # fmt: skip
    ax.set_xticks(range(len(runs)), labels, fontsize=7, rotation=30, ha="right")
    ax.set_ylabel("seconds")
    ax.set_title("end to end, by stage", fontsize=10)
    ax.legend(fontsize=7, ncols=4, loc="upper left")
    mem.bar(range(len(runs)), [r["peak_rss_mb"] for r in runs], color="#9e9ac8")
    for key, name in (("plate_12000_200_rss_mb", "12000²"), ("plate_20000_rss_mb", "20000²")):
        limit = report["targets"][key]
        mem.axhline(limit, color="red", linestyle=":", linewidth=1)
        mem.text(-0.4, limit, f"target {name}: {limit:g} MB", color="red", va="bottom", fontsize=8)
    mem.set_xticks(range(len(runs)), labels, fontsize=7, rotation=30, ha="right")
    mem.set_ylabel("peak resident memory, MB")
    mem.set_title("peak memory of the process", fontsize=10)
    m = report["machine"]
    fig.suptitle(f"labpipe bench: {m['cpus']} CPUs, torch {m['torch']}", fontsize=10)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
