"""The speed benchmark's results: medians per system and size, ratios, a plot, a table.

Ratios are taken within one benchmark run (fedray against the naive loop and the
compute floor on the same machine, interleaved), since machines are noisy.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any


def summarize(raw: Any) -> Any:
    """Medians per (workload, clients, system) and fedray/naive ratios per row."""
    import pandas as pd

    cols = ["startup_s", "round_s", "cpu_s_per_round", "peak_pss_mb", "quality"]
    med = raw.groupby(["workload", "clients", "system"], sort=False)[cols].median().reset_index()
    out = []
    for (w, c), g in med.groupby(["workload", "clients"], sort=False):
        by = {r.system: r for r in g.itertuples()}
        fed, naive, floor = by.get("fedray"), by.get("naive"), by.get("floor")
        if fed is None or naive is None:
            continue
        row = {"workload": w, "clients": c}
        for col in cols:
            row[f"fedray_{col}"] = getattr(fed, col)
            row[f"naive_{col}"] = getattr(naive, col)
        for col in ("startup_s", "round_s", "cpu_s_per_round", "peak_pss_mb"):
            row[f"ratio_{col}"] = getattr(fed, col) / getattr(naive, col)
        row["speedup_round"] = naive.round_s / fed.round_s
        if floor is not None:
            row["floor_round_s"] = floor.round_s
            row["fedray_over_floor"] = fed.round_s / floor.round_s
        ded = by.get("fedray_dedicated")
        if ded is not None:
            row["dedicated_round_s"] = ded.round_s
            row["dedicated_startup_s"] = ded.startup_s
            row["dedicated_peak_pss_mb"] = ded.peak_pss_mb
        row["quality_metric"] = raw[(raw.workload == w)].quality_metric.dropna().iloc[0]
        out.append(row)
    return pd.DataFrame(out)


def plot(raw: Any, path: Path) -> None:
    """Median round time vs clients, one panel per workload, log-log."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    med = raw.groupby(["workload", "clients", "system"])["round_s"].median().reset_index()
    workloads = list(dict.fromkeys(raw.workload))
    fig, axes = plt.subplots(1, len(workloads), figsize=(5.5 * len(workloads), 4), squeeze=False)
    styles = {
        "naive": ("tab:red", "o", "naive loop"),
        "fedray": ("tab:blue", "s", "fedray (auto packing)"),
        "fedray_dedicated": ("tab:cyan", "^", "fedray (1 actor/client)"),
        "floor": ("tab:gray", "x", "compute floor"),
    }
    for ax, w in zip(axes[0], workloads, strict=True):
        for system, (color, marker, label) in styles.items():
            d = med[(med.workload == w) & (med.system == system)].sort_values("clients")
            if len(d):
                ax.plot(d.clients, d.round_s, marker=marker, color=color, label=label)
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xlabel("clients per round")
        ax.set_ylabel("median round time (s)")
        ax.set_title(w)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle("fedray vs the naive FedAvg loop (2-core CPU)")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def markdown(summary: Any) -> str:
    """The summary as a Markdown table (quoted in the READMEs)."""
    lines = [
        "| workload | clients | naive round (s) | fedray round (s) | speed-up | floor (s) | "
        "fedray / floor | startup fedray / naive (s) | CPU-s per round fedray / naive | "
        "peak PSS fedray / naive (MB) | quality fedray / naive |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in summary.itertuples():
        q = f"{r.fedray_quality:.4f} / {r.naive_quality:.4f} ({r.quality_metric})"
        lines.append(
            f"| {r.workload} | {r.clients} | {r.naive_round_s:.3f} | {r.fedray_round_s:.4f} | "
            f"{r.speedup_round:.0f}x | {getattr(r, 'floor_round_s', float('nan')):.4f} | "
            f"{getattr(r, 'fedray_over_floor', float('nan')):.2f} | "
            f"{r.fedray_startup_s:.1f} / {r.naive_startup_s:.1f} | "
            f"{r.fedray_cpu_s_per_round:.3f} / {r.naive_cpu_s_per_round:.3f} | "
            f"{r.fedray_peak_pss_mb:.0f} / {r.naive_peak_pss_mb:.0f} | {q} |"
        )
    return "\n".join(lines)
