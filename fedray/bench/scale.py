"""Scaling benchmark: thousands of clients on one machine, and on a simulated cluster.

Workload: ``experiments/scale.yaml``, Synthetic(1, 1) of Li et al. (FedProx, MLSys
2020, arXiv:1812.06127) with the total data fixed at 100,000 rows, shared over the
registered clients in lognormal proportions; softmax regression, SGD, batch 10, one
local epoch. The sweep runs every pair of registered clients N in {10, 100, 1,000,
10,000} and clients sampled per round K in {10, 100, 1,000} with K <= N, and a point
of 1,000,000 registered clients of 10 rows each (10,000,000 rows), 100 a round.
A point ``N:K:ROWS`` sets the total rows; beyond ``FLOOR_MAX_CLIENTS`` registered
clients only fedray runs (the floor and the naive loop would load the whole table).

Systems, each in a fresh subprocess (see :mod:`fedray.bench.speed` for the first three):

* ``fedray``: packed hosts (``clients_per_actor: auto``: one TensorFlow actor per CPU),
  each sending one pre-aggregated sum per round;
* ``fedray_dedicated``: one actor per client, where that fits (N <= 10 here);
* ``naive``: the tutorial loop (a fresh Keras model and ``fit`` per sampled client), for
  K <= 100 and fewer rounds: it needs ~0.4 s per client per round;
* ``floor``: round 1's optimizer steps in one traced TensorFlow loop, divided by the
  hosts that run in parallel. ``(round - floor) / K`` is fedray's per-client framework
  overhead.

``--nodes M`` adds a run on a ``ray.cluster_utils.Cluster`` of M one-CPU nodes on this
machine, hosts spread over the nodes (``runtime.scheduling: spread``), and reports
which node ran which clients.
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from fedray.bench.speed import measure, spawn_child
from fedray.errors import FedrayError

logger = logging.getLogger(__name__)

CONFIG = "experiments/scale.yaml"
GRID: tuple[tuple[int, int, int | None], ...] = (
    *((n, k, None) for n in (10, 100, 1000, 10_000) for k in (10, 100, 1000) if k <= n),
    (1_000_000, 100, 10_000_000),
)
FLOOR_MAX_CLIENTS = 100_000
NAIVE_MAX_SAMPLED = 100
NAIVE_ROUNDS = 2
DEDICATED_MAX_CLIENTS = 10
DEFAULT_ROWS = 100_000  # experiments/scale.yaml's data.num_samples


def overrides(registered: int, sampled: int, rounds: int, rows: int | None = None) -> list[str]:
    """Config overrides for N registered clients with K sampled per round (ROWS in all)."""
    out = [f"data.num_clients={registered}", f"rounds={rounds}", "runtime.progress=false"]
    if rows:
        out.append(f"data.num_samples={rows}")
    if sampled < registered:
        out.append(f"strategy.clients_per_round={sampled}")
    return out


def systems(registered: int, sampled: int) -> list[str]:
    """The systems run for one (N, K) point."""
    if registered > FLOOR_MAX_CLIENTS:
        return ["fedray"]
    out = ["fedray", "floor"]
    if registered <= DEDICATED_MAX_CLIENTS:
        out.append("fedray_dedicated")
    if sampled <= NAIVE_MAX_SAMPLED:
        out.append("naive")
    return out


def run_multinode(config: str, over: Sequence[str], nodes: int) -> dict[str, Any]:
    """Run fedray on a simulated cluster of ``nodes`` one-CPU nodes; who ran what."""
    from fedray.api import run
    from fedray.runtime.connect import simulated_cluster

    with simulated_cluster(nodes) as names:
        with tempfile.TemporaryDirectory() as out:
            hist = run(
                config,
                out=out,
                overrides=[*over, "runtime.scheduling=spread", "runtime.clients_per_actor=auto"],
            )
            hosts = json.loads((Path(out) / "summary.json").read_text())["hosts"]
        round_s = [float(r["time/round_s"]) for r in hist.rows]
        placement = [
            {
                "node": names.get(h["node_id"], h["node_id"]),
                "host": i,
                "clients": len(h["clients"]),
                "first_client": min(h["clients"]),
                "last_client": max(h["clients"]),
            }
            for i, h in enumerate(hosts)
        ]
        return {"round_s": statistics.median(round_s), "nodes": nodes, "placement": placement}


def child(argv: Sequence[str]) -> dict[str, Any]:
    """``child SYSTEM N K ROUNDS ROWS [NODES]``: one measured run here (ROWS 0: the config's)."""
    system, registered, sampled, rounds = argv[0], int(argv[1]), int(argv[2]), int(argv[3])
    over = overrides(registered, sampled, rounds, int(argv[4]) or None)
    if system == "multinode":
        return run_multinode(CONFIG, over, int(argv[5]))
    res = measure(system, CONFIG, over)
    res.pop("hosts", None)
    return res


def run_benchmark(
    *,
    grid: Sequence[tuple[int, int, int | None]],
    repeats: int,
    rounds: int,
    out_dir: Path,
    nodes: int = 0,
    timeout_s: float = 1800,
) -> Any:
    """Run the sweep (and the multi-node run); write CSVs, Markdown tables and plots."""
    import pandas as pd

    out_dir.mkdir(parents=True, exist_ok=True)
    rows: list[dict[str, Any]] = []
    for rep in range(repeats):
        for n, k, total in grid:
            for system in systems(n, k):
                r = NAIVE_ROUNDS if system == "naive" else rounds
                t0 = time.perf_counter()
                result = spawn_child(
                    "fedray.bench.scale",
                    [system, str(n), str(k), str(r), str(total or 0)],
                    timeout_s,
                )
                rows.append(
                    {
                        "registered": n,
                        "sampled": k,
                        "rows": total or DEFAULT_ROWS,
                        "system": system,
                        "repeat": rep,
                        **result,
                    }
                )
                logger.info(
                    "rep %d N=%d K=%d %s: round %.4f s, startup %.1f s, PSS %.0f MB (%.0f s)",
                    rep,
                    n,
                    k,
                    system,
                    result["round_s"],
                    result.get("startup_s", 0.0),
                    result.get("peak_pss_mb", 0.0),
                    time.perf_counter() - t0,
                )
                pd.DataFrame(rows).to_csv(out_dir / "scale_raw.csv", index=False)
    raw = pd.DataFrame(rows)
    summary = summarize(raw)
    summary.to_csv(out_dir / "scale.csv", index=False)
    plot(summary, out_dir / "scale.png")
    tables = [markdown(summary)]
    if nodes:
        n, k = 1000, 1000
        t0 = time.perf_counter()
        result = spawn_child(
            "fedray.bench.scale",
            ["multinode", str(n), str(k), str(rounds), "0", str(nodes)],
            timeout_s,
        )
        placed = pd.DataFrame(result["placement"])
        placed.insert(0, "round_s", result["round_s"])
        placed.to_csv(out_dir / "scale_nodes.csv", index=False)
        logger.info(
            "multinode %d nodes: round %.3f s (%.0f s)",
            nodes,
            result["round_s"],
            time.perf_counter() - t0,
        )
        tables.append(nodes_markdown(placed, n, k))
    (out_dir / "scale.md").write_text("\n\n".join(tables) + "\n")
    return summary


def summarize(raw: Any) -> Any:
    """Medians per (N, K, system); per-client overhead = (fedray round - floor) / K."""
    import pandas as pd

    cols = ["startup_s", "round_s", "peak_pss_mb", "quality"]
    present = [c for c in cols if c in raw.columns]
    if "rows" not in raw.columns:
        raw = raw.assign(rows=DEFAULT_ROWS)
    keys = ["registered", "sampled", "rows"]
    med = raw.groupby([*keys, "system"], sort=False)[present].median()
    med = med.reset_index()
    out = []
    for (n, k, total), g in med.groupby(keys, sort=False):
        by = {r.system: r for r in g.itertuples()}
        fed, floor = by.get("fedray"), by.get("floor")
        if fed is None:
            continue
        row: dict[str, Any] = {
            "registered": n,
            "sampled": k,
            "rows": total,
            "fedray_round_s": fed.round_s,
            "fedray_startup_s": fed.startup_s,
            "fedray_peak_pss_mb": fed.peak_pss_mb,
            "fedray_quality": fed.quality,
        }
        if floor is not None:
            row["floor_round_s"] = floor.round_s
            row["overhead_ms_per_client"] = 1000 * (fed.round_s - floor.round_s) / k
        for name in ("fedray_dedicated", "naive"):
            other = by.get(name)
            if other is not None:
                row[f"{name}_round_s"] = other.round_s
                row[f"{name}_startup_s"] = other.startup_s
                row[f"{name}_peak_pss_mb"] = other.peak_pss_mb
                row[f"{name}_quality"] = other.quality
        out.append(row)
    return pd.DataFrame(out).sort_values(["registered", "sampled"], ignore_index=True)


def plot(summary: Any, path: Path) -> None:
    """Round time vs sampled clients (per N: fedray, floor, naive) and memory vs N, log-log."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4.4))
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for i, (n, g) in enumerate(summary.groupby("registered")):
        g = g.sort_values("sampled")
        c = colors[i % len(colors)]
        ax1.plot(g.sampled, g.fedray_round_s, marker="s", color=c, label=f"fedray, N={n:,}")
        if "floor_round_s" in g:
            ax1.plot(g.sampled, g.floor_round_s, marker="x", color=c, ls=":", alpha=0.7)
        if "naive_round_s" in g and g.naive_round_s.notna().any():
            d = g.dropna(subset=["naive_round_s"])
            ax1.plot(d.sampled, d.naive_round_s, marker="o", color=c, ls="--", alpha=0.7)
    ax1.plot([], [], "k:", marker="x", label="compute floor (dotted)")
    ax1.plot([], [], "k--", marker="o", label="naive loop (dashed)")
    ax1.set(
        xscale="log",
        yscale="log",
        xlabel="clients sampled per round (K)",
        ylabel="median round time (s)",
        title="round time vs clients",
    )
    by_n = summary.groupby("registered")
    ax2.plot(
        list(by_n.groups),
        by_n.fedray_peak_pss_mb.max() / 1024,
        marker="s",
        color="tab:blue",
        label="fedray (packed)",
    )
    if "fedray_dedicated_peak_pss_mb" in summary:
        d = summary.dropna(subset=["fedray_dedicated_peak_pss_mb"])
        ax2.plot(
            d.registered,
            d.fedray_dedicated_peak_pss_mb / 1024,
            marker="^",
            color="tab:cyan",
            ls="none",
            label="fedray (1 actor/client)",
        )
    if "naive_peak_pss_mb" in summary:
        d = summary.dropna(subset=["naive_peak_pss_mb"]).groupby("registered").naive_peak_pss_mb
        ax2.plot(
            list(d.groups), d.max() / 1024, marker="o", color="tab:red", ls="--", label="naive loop"
        )
    ax2.set(
        xscale="log",
        yscale="log",
        xlabel="registered clients (N)",
        ylabel="peak PSS, whole process tree (GiB)",
        title="memory vs clients",
    )
    for ax in (ax1, ax2):
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle(
        "fedray scaling on Synthetic(1, 1), 100,000 rows in all; 1,000,000 clients: "
        "10 rows each (2-core CPU)"
    )
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _cell(row: Any, col: str, fmt: str) -> str:
    value = getattr(row, col, None)
    if value is None or value != value:  # missing or NaN
        return "–"
    return format(value, fmt)


def _rows(row: Any) -> str:
    total = getattr(row, "rows", DEFAULT_ROWS)
    return "" if total == DEFAULT_ROWS else f" ({total:,} rows)"


def markdown(summary: Any) -> str:
    """The sweep as a Markdown table."""
    lines = [
        "| registered N | sampled K | fedray round (s) | floor (s) | overhead per client (ms) "
        "| startup (s) | peak PSS (GiB) | naive round (s) | 1 actor/client round (s) |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in summary.itertuples():
        lines.append(
            f"| {r.registered:,}{_rows(r)} | {r.sampled:,} | {r.fedray_round_s:.3f} | "
            f"{_cell(r, 'floor_round_s', '.3f')} | {_cell(r, 'overhead_ms_per_client', '.2f')} | "
            f"{r.fedray_startup_s:.1f} | {r.fedray_peak_pss_mb / 1024:.2f} | "
            f"{_cell(r, 'naive_round_s', '.2f')} | {_cell(r, 'fedray_dedicated_round_s', '.3f')} |"
        )
    return "\n".join(lines)


def nodes_markdown(placed: Any, registered: int, sampled: int) -> str:
    """Which simulated node ran which clients."""
    lines = [
        f"Simulated cluster, N={registered:,}, K={sampled:,}, median round "
        f"{placed.round_s.iloc[0]:.3f} s:",
        "",
        "| node | host | clients | client ids |",
        "|---|---:|---:|---|",
    ]
    for r in placed.itertuples():
        lines.append(f"| {r.node} | {r.host} | {r.clients:,} | {r.first_client}–{r.last_client} |")
    return "\n".join(lines)


def _parse_point(text: str) -> tuple[int, int, int | None]:
    """``N:K`` or ``N:K:ROWS`` (the total rows; default the config's 100,000).

    >>> _parse_point("1000000:100:10000000"), _parse_point("1000:100")
    ((1000000, 100, 10000000), (1000, 100, None))
    """
    parts = text.split(":")
    try:
        n, k = int(parts[0]), int(parts[1] if len(parts) > 1 and parts[1] else parts[0])
        rows = int(parts[2]) if len(parts) > 2 else None
        if len(parts) > 3:
            raise ValueError(text)
    except ValueError:
        raise FedrayError(f"--grid {text!r}: expected N:K or N:K:ROWS, e.g. 1000:100") from None
    if k > n:
        raise FedrayError(f"--grid {text!r}: K={k} exceeds N={n}; expected K <= N")
    return n, k, rows


def main(argv: Sequence[str] | None = None) -> int:
    """``fedray bench scale`` / ``python -m fedray.bench.scale``."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "child":
        logging.disable(logging.WARNING)
        sys.stdout.write(json.dumps(child(argv[1:])) + "\n")
        return 0
    p = argparse.ArgumentParser(prog="fedray bench scale", description=__doc__.split("\n")[0])
    p.add_argument(
        "--grid",
        nargs="*",
        default=[f"{n}:{k}" + (f":{r}" if r else "") for n, k, r in GRID],
        help="N:K[:ROWS] points, e.g. 1000:1000 1000000:100:10000000",
    )
    p.add_argument("--repeats", type=int, default=1)
    p.add_argument("--rounds", type=int, default=6)
    p.add_argument("--nodes", type=int, default=3, help="simulated nodes (0: skip that run)")
    p.add_argument("--out", default="experiments/results")
    args = p.parse_args(argv)
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    logger.setLevel(logging.INFO)
    run_benchmark(
        grid=[_parse_point(g) for g in args.grid],
        repeats=args.repeats,
        rounds=args.rounds,
        out_dir=Path(args.out),
        nodes=args.nodes,
    )
    sys.stdout.write((Path(args.out) / "scale.md").read_text())
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
