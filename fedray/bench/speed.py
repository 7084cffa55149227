"""Speed benchmark: fedray against the naive tutorial loop and a compute floor.

Systems, each run in a fresh subprocess on the same config, data, partition and seed:

* ``fedray``: ``fedray.run`` on a private local Ray instance, ``clients_per_actor: auto``
  (one actor per client while CPU slots allow, packed beyond that).
* ``fedray_dedicated``: the same with one actor per client (``clients_per_actor: 1``),
  for client counts up to 4 (each TensorFlow actor costs ~4 s of CPU to start).
* ``naive``: the tutorial loop of federated averaging (McMahan et al., AISTATS 2017,
  arXiv:1602.05629, as written in most tutorials): every round, for every client,
  build a fresh Keras model, set the global weights, ``fit`` on the client's numpy
  arrays, ``get_weights``; then ``np.mean`` over clients and evaluate.
* ``floor``: one process runs the round's optimizer steps (the sum over clients of
  ``ceil(n_k / batch) * epochs``) in one traced TensorFlow loop with the same thread
  count as one fedray host; its time divided by the number of hosts that run in
  parallel is the compute floor of a round.

Measured per run: startup (process start to the first round), median round time,
CPU seconds per round and peak PSS of the whole process tree (driver plus every Ray
process), plus the final model quality. Runs are interleaved and repeated; medians
are reported, with ratios computed within this one benchmark run.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from fedray.bench.monitor import PeakPSS, tree_cpu_seconds
from fedray.bench.speed_report import markdown, plot, summarize
from fedray.errors import FedrayError

logger = logging.getLogger(__name__)

WORKLOADS: dict[str, tuple[str, tuple[int, ...]]] = {
    "linreg": ("experiments/linreg.yaml", (2, 4, 8, 32)),
    "blobs": ("experiments/blobs.yaml", (4, 8, 32)),
}
DEDICATED_MAX_CLIENTS = 4


def _overrides(clients: int, rounds: int | None) -> list[str]:
    out = [f"data.num_clients={clients}", "strategy.min_fit_clients=1", "runtime.progress=false"]
    if rounds is not None:
        out.append(f"rounds={rounds}")
    return out


def _quality(logs: dict[str, Any]) -> tuple[str, float]:
    if "eval/accuracy" in logs:
        return "accuracy", float(logs["eval/accuracy"])
    return "mse", float(logs["eval/loss"])


def run_fedray(config: str, overrides: Sequence[str]) -> dict[str, Any]:
    """One ``fedray.run`` of ``config``; its start, median round, CPU per round, quality."""
    from fedray.api import run
    from fedray.callbacks import Callback

    marks: dict[str, float] = {}

    class Probe(Callback):
        def on_run_begin(self, logs: dict[str, Any]) -> None:
            marks["begin"], marks["cpu0"] = time.time(), tree_cpu_seconds()

        def on_run_end(self, logs: dict[str, Any]) -> None:
            marks["end"], marks["cpu1"] = time.time(), tree_cpu_seconds()

    with tempfile.TemporaryDirectory() as out:
        hist = run(config, out=out, overrides=list(overrides), callbacks=[Probe()])
        hosts = json.loads((Path(out) / "summary.json").read_text()).get("hosts", [])
    round_s = [float(r["time/round_s"]) for r in hist.rows]
    metric, value = _quality(hist.final)
    return {
        "begin": marks["begin"],
        "round_s": statistics.median(round_s),
        "mean_round_s": statistics.mean(round_s),
        "first_round_s": round_s[0],
        "cpu_s_per_round": (marks["cpu1"] - marks["cpu0"]) / len(round_s),
        "rounds": len(round_s),
        "quality_metric": metric,
        "quality": value,
        "hosts": [{"node_id": h.get("node_id"), "clients": len(h["clients"])} for h in hosts],
    }


def _load(config: str, overrides: Sequence[str]) -> tuple[Any, Any, list[np.ndarray]]:
    from fedray import config as config_mod
    from fedray.data import load_dataset, partition_indices

    cfg = config_mod.load(config, list(overrides))
    ds = load_dataset(cfg.data, cfg.seed)
    return cfg, ds, partition_indices(ds, cfg.data, cfg.seed)


def first_sample(cfg: Any) -> list[int]:
    """The clients fedray's driver samples in round 1 (its RNG is seeded with the seed)."""
    from fedray.config.build import build_strategy

    return build_strategy(cfg).sample_clients(cfg.data.num_clients, np.random.default_rng(cfg.seed))


def run_naive(config: str, overrides: Sequence[str]) -> dict[str, Any]:
    """The tutorial loop on ``config``: sampled clients one after another, fresh models."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import keras

    from fedray.client.models import build_model
    from fedray.config.build import build_strategy

    cfg, ds, parts = _load(config, overrides)
    info = ds.info
    strategy = build_strategy(cfg)
    rng = np.random.default_rng(cfg.seed)  # the same samples as fedray's driver
    keras.utils.set_random_seed(cfg.seed)
    global_model = build_model(cfg.model, cfg.client, info)  # same initial weights as fedray
    weights = global_model.get_weights()
    begin, cpu0 = time.time(), tree_cpu_seconds()
    round_s, logs = [], {}
    for _ in range(cfg.rounds):
        t0 = time.perf_counter()
        local = []
        for idx in (parts[k] for k in strategy.sample_clients(len(parts), rng)):
            model = build_model(cfg.model, cfg.client, info)  # a fresh model per client
            model.set_weights(weights)
            model.fit(
                ds.x_train[idx],
                ds.y_train[idx],
                epochs=cfg.client.local_epochs,
                batch_size=cfg.client.batch_size,
                shuffle=True,
                verbose=0,
            )
            local.append(model.get_weights())
        weights = [np.mean([w[i] for w in local], axis=0) for i in range(len(weights))]
        global_model.set_weights(weights)
        logs = {
            f"eval/{k}": v
            for k, v in global_model.evaluate(
                ds.x_test, ds.y_test, batch_size=256, verbose=0, return_dict=True
            ).items()
        }
        round_s.append(time.perf_counter() - t0)
    cpu1 = tree_cpu_seconds()
    metric, value = _quality(logs)
    return {
        "begin": begin,
        "round_s": statistics.median(round_s),
        "mean_round_s": statistics.mean(round_s),
        "first_round_s": round_s[0],
        "cpu_s_per_round": (cpu1 - cpu0) / len(round_s),
        "rounds": len(round_s),
        "quality_metric": metric,
        "quality": value,
    }


def parallel_hosts(clients: int, cpus: int) -> int:
    """How many fedray hosts train at once with ``clients_per_actor: auto``."""
    from fedray.runtime.plan import clients_per_host

    per_host = clients_per_host("auto", clients, float(cpus))
    return min(math.ceil(clients / per_host), cpus)


def timed_loop(
    model: Any,
    x: Any,
    y: Any,
    batch: int,
    steps: int,
    repeats: int,
    ready: Callable[[], None] | None = None,
) -> float:
    """Median seconds of ``steps`` optimizer steps in one traced TensorFlow loop.

    Each step trains on a random batch of (x, y); the loop is traced and built first,
    then ``ready()`` (if given) is called, e.g. to start side by side with other loops.
    """
    import tensorflow as tf

    def loop(steps: Any) -> Any:
        n = tf.shape(x)[0]
        for s in tf.range(steps):
            idx = tf.random.stateless_uniform(
                [batch], seed=tf.stack([tf.cast(s, tf.int64), 7]), maxval=n, dtype=tf.int32
            )
            model.train_step((tf.gather(x, idx), tf.gather(y, idx)))
        return model.get_metrics_result()

    traced = tf.function(loop)
    traced(tf.constant(1))  # trace and build
    if ready is not None:
        ready()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        traced(tf.constant(steps))
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def run_floor(config: str, overrides: Sequence[str]) -> dict[str, Any]:
    """Round 1's optimizer steps in one traced loop, divided by the parallel hosts."""
    from fedray.client.devices import configure_tensorflow

    cfg, ds, parts = _load(config, overrides)  # numpy only: TF is not started yet
    cpus = os.cpu_count() or 1
    hosts = parallel_hosts(cfg.data.num_clients, cpus)
    configure_tensorflow(max(1, cpus // hosts), verbose=False)
    import keras
    import tensorflow as tf

    from fedray.client.models import build_model

    parts = [parts[k] for k in first_sample(cfg)]
    hosts = min(hosts, len(parts))
    batch, epochs = cfg.client.batch_size, cfg.client.local_epochs
    steps = sum(math.ceil(len(p) / batch) for p in parts) * epochs
    keras.utils.set_random_seed(cfg.seed)
    model = build_model(cfg.model, cfg.client, ds.info)
    x = tf.constant(ds.x_train[np.concatenate(parts)])
    y = tf.constant(ds.y_train[np.concatenate(parts)])

    loop_s = timed_loop(model, x, y, batch, steps, max(3, cfg.rounds))
    return {
        "begin": time.time(),
        "round_s": loop_s / hosts,
        "loop_s": loop_s,
        "steps": steps,
        "parallel_hosts": hosts,
    }


def child(system: str, config: str, clients: int, rounds: int | None) -> dict[str, Any]:
    """Run one system once in this process and measure it (called in a subprocess)."""
    res = measure(system, config, _overrides(clients, rounds))
    res.pop("hosts", None)
    return res


def measure(system: str, config: str, overrides: Sequence[str]) -> dict[str, Any]:
    """Run ``system`` once in this process: its figures plus startup and peak PSS."""
    import psutil

    created = psutil.Process().create_time()
    with PeakPSS() as mem:
        if system == "fedray":
            res = run_fedray(config, [*overrides, "runtime.clients_per_actor=auto"])
        elif system == "fedray_dedicated":
            res = run_fedray(config, [*overrides, "runtime.clients_per_actor=1"])
        elif system == "naive":
            res = run_naive(config, overrides)
        elif system == "floor":
            res = run_floor(config, overrides)
        else:
            raise ValueError(f"unknown system {system!r}")
    res["startup_s"] = res.pop("begin") - created
    res["peak_pss_mb"] = mem.peak / 2**20
    return res


def _systems(clients: int) -> list[str]:
    out = ["fedray", "naive", "floor"]
    if clients <= DEDICATED_MAX_CLIENTS:
        out.insert(1, "fedray_dedicated")
    return out


def spawn_child(module: str, args: Sequence[str], timeout_s: float) -> dict[str, Any]:
    """Run ``python -m MODULE child ARGS...`` in a fresh process; its last stdout line (JSON).

    Raises:
        RuntimeError: The child failed; the message ends with its stderr.
    """
    cmd = [sys.executable, "-m", module, "child", *args]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s)
    if res.returncode != 0:
        raise RuntimeError(f"{' '.join(args)} failed:\n{res.stderr[-4000:]}")
    out: dict[str, Any] = json.loads(res.stdout.strip().splitlines()[-1])
    return out


def run_benchmark(
    *,
    grid: Mapping[str, Sequence[int]],
    repeats: int,
    rounds: int | None,
    out_dir: Path,
    timeout_s: float = 1800,
) -> Any:
    """Run every (workload, clients, system) ``repeats`` times, interleaved; write results."""
    import pandas as pd

    out_dir.mkdir(parents=True, exist_ok=True)
    rows: list[dict[str, Any]] = []
    jobs = [(w, c) for w, counts in grid.items() for c in counts]
    for rep in range(repeats):
        for w, c in jobs:
            systems = _systems(c)
            systems = systems[rep % len(systems) :] + systems[: rep % len(systems)]  # rotate
            for system in systems:
                args = [system, WORKLOADS[w][0], str(c)]
                if rounds is not None:
                    args.append(str(rounds))
                t0 = time.perf_counter()
                result = spawn_child("fedray.bench.speed", args, timeout_s)
                rows.append(
                    {"workload": w, "clients": c, "system": system, "repeat": rep, **result}
                )
                logger.info(
                    "rep %d %s x%d %s: round %.4f s, startup %.1f s (%.0f s wall)",
                    rep,
                    w,
                    c,
                    system,
                    result["round_s"],
                    result["startup_s"],
                    time.perf_counter() - t0,
                )
                pd.DataFrame(rows).to_csv(out_dir / "speed_raw.csv", index=False)
    raw = pd.DataFrame(rows)
    summary = summarize(raw)
    summary.to_csv(out_dir / "speed.csv", index=False)
    plot(raw, out_dir / "speed.png")
    return summary


def _parse_grid(items: Sequence[str]) -> dict[str, list[int]]:
    grid: dict[str, list[int]] = {}
    for item in items:
        name, _, counts = item.partition(":")
        if name not in WORKLOADS:
            raise FedrayError(
                f"--grid {item!r}: unknown workload {name!r}; expected one of {sorted(WORKLOADS)}"
            )
        try:
            grid[name] = [int(c) for c in counts.split(",")] if counts else list(WORKLOADS[name][1])
        except ValueError:
            raise FedrayError(
                f"--grid {item!r}: expected WORKLOAD:N,N,... with client counts, e.g. linreg:2,4"
            ) from None
    return grid


def main(argv: Sequence[str] | None = None) -> int:
    """``fedray bench speed`` / ``python -m fedray.bench.speed``."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "child":
        system, config, clients = argv[1], argv[2], int(argv[3])
        rounds = int(argv[4]) if len(argv) > 4 else None
        logging.disable(logging.WARNING)
        sys.stdout.write(json.dumps(child(system, config, clients, rounds)) + "\n")
        return 0
    p = argparse.ArgumentParser(prog="fedray bench speed", description=__doc__.split("\n")[0])
    p.add_argument(
        "--grid",
        nargs="*",
        default=[f"{w}" for w in WORKLOADS],
        help="workloads, optionally with client counts: linreg:2,4 blobs:8",
    )
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--rounds", type=int, default=None, help="override the configs' rounds")
    p.add_argument("--out", default="experiments/results")
    args = p.parse_args(argv)
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    logger.setLevel(logging.INFO)
    summary = run_benchmark(
        grid=_parse_grid(args.grid),
        repeats=args.repeats,
        rounds=args.rounds,
        out_dir=Path(args.out),
    )
    table = markdown(summary)
    (Path(args.out) / "speed.md").write_text(table + "\n")
    sys.stdout.write(table + "\n")
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
