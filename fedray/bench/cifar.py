"""pfl-research's CIFAR-10 protocol, side by side with its compute floor.

Granqvist et al., "pfl-research: simulation framework for accelerating research in
Private Federated Learning", 2024, arXiv:2404.06430: 1,000 IID clients of 50 images,
50 clients a round, 1 local epoch of batch 10, client SGD 0.1, server SGD 1.0,
unweighted, evaluation every 10 rounds, ``simple_cnn`` (``experiments/cifar_pfl.yaml``).

Systems, each in fresh processes on the same config, data and seed:

* ``fedray``: ``fedray.run`` on a private local Ray instance (``clients_per_actor:
  auto``: one host per CPU; ``runtime.balance``: every host serves every client, and
  each round's 50 are dealt evenly over them).
* ``floor``: the round's optimizer steps (50 clients x 5 steps) split over as many
  compiled TensorFlow loops as fedray has hosts, one thread each, running side by side
  in separate processes that start their timed loops together (each traces its loop,
  says ``ready`` and waits for ``go``); the floor of a round is the slowest loop's
  median time (10 repeats).

The two alternate ``--repeats`` times, so that the machine's drift touches both; the
figure is the median of the per-repeat ratios. fedray's round is its median round
(evaluation every 10 rounds is reported apart, as the mean round).

It trains on real CIFAR-10 when ``keras.datasets`` has it cached (or at ``--data``, an
``.npz`` with ``x_train``, ``y_train``, ``x_test``, ``y_test``), else on CIFAR-shaped
data of the same size (50,000 + 10,000 images, 32x32x3 uint8, ten classes of noisy
colour patterns) generated from the seed, and says which.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

logger = logging.getLogger(__name__)

CONFIG = "experiments/cifar_pfl.yaml"


def cifar_shaped(path: Path, seed: int = 0, sizes: tuple[int, int] = (50_000, 10_000)) -> None:
    """Write CIFAR-10-shaped data to ``path`` (``.npz``): 10 classes of colour patterns."""
    rng = np.random.default_rng(seed)
    patterns = rng.integers(104, 152, (10, 8, 8, 3))  # close classes under heavy noise

    def images(n: int) -> tuple[np.ndarray, np.ndarray]:
        y = rng.integers(0, 10, n)
        base = np.repeat(np.repeat(patterns[y], 4, axis=1), 4, axis=2)
        x = np.clip(base + rng.normal(0, 80, base.shape), 0, 255).astype(np.uint8)
        return x, y.astype(np.uint8).reshape(-1, 1)

    (x, y), (xt, yt) = images(sizes[0]), images(sizes[1])
    np.savez(path, x_train=x, y_train=y, x_test=xt, y_test=yt)


def data_source(given: str | None) -> tuple[list[str], str]:
    """(overrides, description) of the data the benchmark trains on."""
    if given:
        return [f"data.path={given}"], f"CIFAR-10 from {given}"
    cache = Path(os.environ.get("KERAS_HOME", Path.home() / ".keras")) / "datasets"
    if (cache / "cifar-10-batches-py").is_dir():
        return [], "real CIFAR-10 (keras.datasets cache)"
    path = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "fedray"
    path.mkdir(parents=True, exist_ok=True)
    path /= "cifar_shaped_v2.npz"  # generated once per machine (180 MB), from seed 0
    if not path.exists():
        cifar_shaped(path)
    return [f"data.path={path}"], "CIFAR-shaped synthetic data (real CIFAR-10 not found)"


def floor_half(overrides: Sequence[str], share: int, of: int) -> dict[str, Any]:
    """One of ``of`` side-by-side loops: its share of round 1's steps, one thread."""
    from fedray.bench.speed import _load, first_sample, timed_loop
    from fedray.client.devices import configure_tensorflow

    cfg, ds, parts = _load(CONFIG, overrides)
    configure_tensorflow(1, verbose=False)
    import keras
    import tensorflow as tf

    from fedray.client.models import build_model

    chosen = [parts[k] for k in first_sample(cfg)][share::of]
    batch = cfg.client.batch_size
    steps = sum(-(-len(p) // batch) for p in chosen) * cfg.client.local_epochs
    keras.utils.set_random_seed(cfg.seed)
    model = build_model(cfg.model, cfg.client, ds.info)
    rows = np.concatenate(chosen)
    x, y = tf.constant(ds.x_train[rows]), tf.constant(ds.y_train[rows])
    return {"loop_s": timed_loop(model, x, y, batch, steps, 10, _await_go), "steps": steps}


def _await_go() -> None:
    """Tell the parent this loop is traced, then wait until every loop is."""
    sys.stdout.write("ready\n")
    sys.stdout.flush()
    sys.stdin.readline()


def _child(argv: Sequence[str]) -> dict[str, Any]:
    from fedray.bench.speed import measure

    system, rounds, extra = argv[0], int(argv[1]), list(argv[2:])
    overrides = [f"rounds={rounds}", *extra]
    if system == "fedray":
        res = measure("fedray", CONFIG, overrides)
        res.pop("hosts", None)
        return res
    share, of = (int(v) for v in system.removeprefix("floor").split("/"))
    return floor_half(overrides, share, of)


def _spawn(args: Sequence[str]) -> subprocess.Popen[str]:
    cmd = [sys.executable, "-m", "fedray.bench.cifar", "child", *args]
    return subprocess.Popen(
        cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )


def floor_round(hosts: int, extra: Sequence[str]) -> tuple[float, int]:
    """(seconds, steps) of a floor round: ``hosts`` loops started together, the slowest."""
    loops = [_spawn([f"floor{i}/{hosts}", "1", *extra]) for i in range(hosts)]
    for proc in loops:  # every loop traced and waiting
        if proc.stdout is None or proc.stdout.readline().strip() != "ready":
            _result(proc)  # raises with the child's stderr when it failed
            raise RuntimeError("a floor loop answered before it was traced and ready")
    for proc in loops:  # all at once
        if proc.stdin is not None:
            proc.stdin.write("go\n")
            proc.stdin.flush()
    halves = [_result(proc) for proc in loops]
    return max(h["loop_s"] for h in halves), sum(h["steps"] for h in halves)


def _result(proc: subprocess.Popen[str]) -> dict[str, Any]:
    out, err = proc.communicate(timeout=3600)
    if proc.returncode != 0:
        raise RuntimeError(f"benchmark child failed:\n{err[-4000:]}")
    result: dict[str, Any] = json.loads(out.strip().splitlines()[-1])
    return result


def main(argv: Sequence[str] | None = None) -> int:
    """``fedray bench cifar`` / ``python -m fedray.bench.cifar``."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "child":
        logging.disable(logging.WARNING)
        sys.stdout.write(json.dumps(_child(argv[1:])) + "\n")
        return 0
    p = argparse.ArgumentParser(prog="fedray bench cifar", description=__doc__.split("\n")[0])
    p.add_argument("--rounds", type=int, default=20, help="rounds of fedray (the paper: 1500)")
    p.add_argument("--data", default=None, help="an .npz of CIFAR-10 (default: keras' cache)")
    p.add_argument("--out", default="experiments/results")
    p.add_argument("--repeats", type=int, default=3, help="fedray and floor rounds, alternated")
    args = p.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    extra, source = data_source(args.data)
    logger.warning("data: %s", source)
    hosts = max(1, os.cpu_count() or 1)
    rows = []
    for rep in range(args.repeats):
        fedray = _result(_spawn(["fedray", str(args.rounds), *extra]))
        floor, steps = floor_round(hosts, extra)
        rows.append(row(rep, source, hosts, fedray, floor, steps))
        logger.warning(
            "repeat %d: fedray %.3f s, floor %.3f s, %.2fx",
            rep,
            fedray["round_s"],
            floor,
            rows[-1]["ratio"],
        )
    import pandas as pd

    frame = pd.DataFrame(rows)
    frame.to_csv(out / "cifar.csv", index=False)
    table = markdown(frame)
    (out / "cifar.md").write_text(table + "\n")
    _plot(frame, out / "cifar.png")
    sys.stdout.write(table + "\n")
    return 0


def row(
    rep: int, source: str, hosts: int, fedray: dict[str, Any], floor: float, steps: int
) -> dict[str, Any]:
    """One repeat's figures: fedray's run and the floor measured right after it."""
    return {
        "repeat": rep,
        "data": source,
        "rounds": fedray["rounds"],
        "hosts": hosts,
        "fedray_round_s": fedray["round_s"],
        "floor_round_s": floor,
        "ratio": fedray["round_s"] / floor,
        "mean_round_s": fedray["mean_round_s"],
        "startup_s": fedray["startup_s"],
        "peak_pss_mb": fedray["peak_pss_mb"],
        "cpu_s_per_round": fedray["cpu_s_per_round"],
        "accuracy": fedray["quality"],
        "floor_steps": steps,
    }


def markdown(frame: Any) -> str:
    """One line per repeat, then the medians (the ratio: median of the repeats' ratios)."""
    head = (
        "| repeat | fedray round (s) | floor round (s) | fedray / floor | mean round with "
        "evaluation (s) | startup (s) | peak PSS (MB) | accuracy |\n"
        "|---|---:|---:|---:|---:|---:|---:|---:|"
    )

    def line(name: str, r: Any) -> str:
        return (
            f"| {name} | {r['fedray_round_s']:.3f} | {r['floor_round_s']:.3f} | "
            f"{r['ratio']:.2f} | {r['mean_round_s']:.3f} | {r['startup_s']:.1f} | "
            f"{r['peak_pss_mb']:.0f} | {r['accuracy']:.3f} |"
        )

    numeric = frame.drop(columns=["data"]).median()
    lines = [line(str(r["repeat"]), r) for _, r in frame.iterrows()]
    first = frame.iloc[0]
    note = f"\n\n{first['data']}; {first['rounds']} rounds, {first['hosts']} hosts."
    return "\n".join([head, *lines, line("**median**", numeric)]) + note


def _plot(frame: Any, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.5, 3))
    x = np.arange(len(frame))
    ax.bar(x - 0.2, frame["floor_round_s"], 0.4, color="#999999", label="compute floor")
    ax.bar(x + 0.2, frame["fedray_round_s"], 0.4, color="#1f77b4", label="fedray")
    ratio = float(frame["ratio"].median())
    ax.set(
        xticks=x,
        xticklabels=[f"repeat {r}" for r in frame["repeat"]],
        ylabel="seconds per round",
        title=f"CIFAR-10 protocol: {ratio:.2f}x floor",
    )
    ax.set_ylim(0, 1.3 * float(frame[["floor_round_s", "fedray_round_s"]].max().max()))
    ax.legend(loc="upper center", ncol=2, frameon=False)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
