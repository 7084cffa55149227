"""The ``fedray`` command line.

``fedray run CONFIG.yaml [--set key=value ...] [--out DIR] [--resume-if-exists] [--address A]``
``fedray sweep CONFIG --grid KEY=[v1,v2] [--grid ...] [--seeds N] [--max-concurrent K] [--out DIR]``
``fedray up [--num-cpus N] [--hosts K] [--state-dir DIR] [--temp-dir DIR]`` / ``fedray down
[--state-dir DIR | --temp-dir DIR]``: a warm instance (``--address fedray [--state-dir DIR]``)
``fedray cluster-token [--out .ray-token] [--force]``
``fedray plot RUN [RUN ...] [--out FILE.png] [--metric KEY]`` / ``fedray report RUN``
``fedray predict RUN --input FILE.csv [--output FILE.csv]``
``fedray bench speed [--repeats N] [--rounds R] [--grid linreg:2,4 blobs:8] [--out DIR]``
``fedray bench scale [--grid 1000:1000 10000:100] [--nodes M] [--out DIR]``
``fedray audit RUN [RUN ...] [--out DIR]``
``fedray privacy --noise-multiplier Z | --target-epsilon E  --sampling-rate Q --rounds T --delta D``
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from fedray.errors import FedrayError, RoundFailedError
from fedray.loop.checkpoint import FILENAME

logger = logging.getLogger("fedray.cli")


def _setup_logging(verbose: bool) -> None:
    """Log to stdout: rich's columns on a terminal, else whole plain lines (jobs, CI, pipes).

    Off a terminal rich would wrap each line at 80 columns.
    """
    from rich.console import Console
    from rich.logging import RichHandler

    handler: logging.Handler
    if Console().is_terminal:
        handler = RichHandler(show_path=False, rich_tracebacks=False)
    else:
        handler = logging.StreamHandler(sys.stdout)
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
    logging.basicConfig(level=logging.WARNING, format="%(message)s", handlers=[handler])
    logging.getLogger("fedray").setLevel(logging.DEBUG if verbose else logging.INFO)


STATE_DIR_HELP = (
    "where `fedray up` keeps the state of its instance: one instance per folder "
    "(default: $FEDRAY_UP_DIR, else ~/.cache/fedray/up)"
)


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="fedray", description="Federated learning on Ray + Keras.")
    sub = p.add_subparsers(dest="command", required=True)
    for add in (_add_run, _add_sweep, _add_warm, _add_tools):
        add(sub)
    from fedray.cli.privacy import add_parser

    add_parser(sub)
    return p


def _add_run(sub: Any) -> None:
    """``fedray run``."""
    r = sub.add_parser("run", help="train a federated model from a YAML config")
    r.add_argument("config", help="path to a YAML config, e.g. experiments/linreg.yaml")
    r.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a config key, e.g. --set rounds=20 (repeatable)",
    )
    r.add_argument("--out", help="output directory (default: runs/<config>-<timestamp>)")
    r.add_argument(
        "--address",
        help="Ray cluster to join: 'auto', host:port, or 'fedray' for the "
        "warm instance of `fedray up` (default: a private local one)",
    )
    r.add_argument("--local", action="store_true", help="run clients in-process, without Ray")
    r.add_argument("--state-dir", metavar="DIR", help=STATE_DIR_HELP + " (with --address fedray)")
    r.add_argument(
        "--resume",
        metavar="DIR",
        help="continue the run in DIR from its last checkpoint (writes into DIR)",
    )
    r.add_argument(
        "--resume-if-exists",
        action="store_true",
        help="with --out DIR: resume when DIR holds a checkpoint, else start fresh (for jobs "
        "that are retried: spot nodes, KubeRay)",
    )
    r.add_argument("--no-progress", action="store_true", help="log lines instead of a bar")
    r.add_argument(
        "--verbose", action="store_true", help="show TensorFlow's and Ray's start-up logs"
    )


def _add_sweep(sub: Any) -> None:
    """``fedray sweep``."""
    sw = sub.add_parser(
        "sweep", help="a grid of runs as Ray Tune trials (the same command again resumes it)"
    )
    sw.add_argument("config", help="path to a YAML config, e.g. experiments/linreg.yaml")
    sw.add_argument(
        "--grid",
        action="append",
        default=[],
        metavar="KEY=[V1,V2,...]",
        help="a key and its values, e.g. client.learning_rate=[0.01,0.05]",
    )
    sw.add_argument("--seeds", type=int, default=1, help="runs per combination (seed, seed+1, ...)")
    sw.add_argument("--max-concurrent", type=int, help="trials at once (default: one per CPU)")
    sw.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a config key in every trial (repeatable)",
    )
    sw.add_argument("--out", help="sweep directory (default: runs/sweep-<config>-<timestamp>)")
    sw.add_argument("--metric", help="metric to rank by (default eval/accuracy, else a loss)")
    sw.add_argument("--mode", choices=["min", "max"], help="lower or higher is better")
    sw.add_argument("--address", help="Ray cluster to join: 'auto' or host:port (default: local)")
    sw.add_argument("--no-progress", action="store_true", help="log lines instead of a table")


def _add_warm(sub: Any) -> None:
    """``fedray up`` and ``fedray down``."""
    upp = sub.add_parser("up", help="start a warm local Ray instance: hosts with TensorFlow loaded")
    upp.add_argument("--num-cpus", type=int, help="its CPUs (default: this machine's)")
    upp.add_argument("--hosts", type=int, help="warm hosts (default: one per CPU)")
    upp.add_argument("--state-dir", metavar="DIR", help=STATE_DIR_HELP)
    upp.add_argument(
        "--temp-dir",
        metavar="DIR",
        help="Ray's temp dir for it, new or empty, deleted by `fedray down`; a short path "
        "(Ray's sockets live in it) (default: a new /tmp/fedray-up-*)",
    )
    dn = sub.add_parser("down", help="stop exactly the instance `fedray up` started")
    dn.add_argument("--state-dir", metavar="DIR", help=STATE_DIR_HELP)
    dn.add_argument(
        "--temp-dir",
        metavar="DIR",
        help="instead, stop exactly the Ray head whose temp dir is DIR (`ray start --head "
        "--temp-dir DIR`, or fedray up's) and delete DIR; never `ray stop`, which stops "
        "every Ray instance of the machine",
    )


def _add_tools(sub: Any) -> None:
    """``cluster-token``, ``plot``, ``report``, ``predict``, ``bench``, ``audit``."""
    ct = sub.add_parser(
        "cluster-token", help="write a new Ray auth token for a cluster (file mode 0600)"
    )
    ct.add_argument("--out", default=".ray-token", help="token file (default: .ray-token)")
    ct.add_argument("--force", action="store_true", help="replace an existing token file")
    pl = sub.add_parser("plot", help="PNG curves of one or more runs (metric vs round and time)")
    pl.add_argument("runs", nargs="+", help="run directories (the --out of fedray run)")
    pl.add_argument("--out", help="PNG path (default: RUN/curves.png of the first run)")
    pl.add_argument("--metric", action="append", help="metric column(s), e.g. eval/accuracy")
    rp = sub.add_parser("report", help="print a summary table of a run or of a sweep")
    rp.add_argument("run", help="run directory, or a sweep directory (fedray sweep --out)")
    pr = sub.add_parser("predict", help="predict with a run's model.keras on a CSV/Parquet file")
    pr.add_argument("run", help="run directory")
    pr.add_argument("--input", required=True, help="CSV or Parquet with the feature columns")
    pr.add_argument("--output", help="CSV to write (default: <input>.predictions.csv)")
    b = sub.add_parser(
        "bench",
        help="benchmarks: 'fedray bench speed|scale|secagg|cifar [options, see --help]'",
    )
    b.add_argument("suite", choices=["speed", "scale", "secagg", "cifar"], help="which benchmark")
    b.add_argument("args", nargs=argparse.REMAINDER, help="options of the benchmark (--help)")
    au = sub.add_parser(
        "audit", help="membership-inference leakage of trained runs (AUC, empirical ε bound)"
    )
    au.add_argument("runs", nargs="+", help="run directories (the --out of fedray run)")
    au.add_argument("--out", help="where audit.csv and audit.png go (default: the first run)")


def _run(args: argparse.Namespace) -> int:
    from fedray.api import run

    overrides = list(args.overrides)
    if args.address:
        overrides.append(f"runtime.address={args.address}")
    if args.local:
        overrides.append("runtime.executor=local")
    if args.no_progress:
        overrides.append("runtime.progress=false")
    if args.verbose:
        overrides.append("runtime.verbose=true")
    if args.state_dir is not None:
        from fedray.runtime.warm import use_state_dir

        use_state_dir(args.state_dir)
    if args.resume and args.out and args.out != args.resume:
        raise FedrayError(f"--resume {args.resume} writes into that directory; drop --out")
    out = args.resume or args.out
    resume = bool(args.resume)
    if args.resume_if_exists:
        if not args.out:
            raise FedrayError("--resume-if-exists needs --out DIR: the directory to continue")
        resume = (Path(args.out) / FILENAME).exists()
        logger.info("%s %s", "resuming the run in" if resume else "starting a new run in", out)
    history = run(args.config, out=out, overrides=overrides, resume=resume)
    final = history.final
    shown = {k: v for k, v in final.items() if k.startswith(("fit/", "eval/", "fed_eval/"))}
    print("final: " + "  ".join(f"{k}={v:.4g}" for k, v in shown.items()))
    privacy = history.summary.get("privacy")
    if privacy:  # one ε: the one every round showed and every budget was held to
        print(
            f"privacy: ε={privacy['epsilon']:.4g} at δ={privacy['delta']:g} "
            f"({privacy['accountant']} accountant, {privacy['mode']} DP)"
        )
    preds = history.summary.get("predictions")
    if preds:
        for x, y in zip(preds["inputs"], preds["outputs"], strict=True):
            xs = ", ".join(f"{v:g}" for v in x)
            ys = ", ".join(f"{v:.4f}" for v in y)
            print(f"prediction at x=[{xs}]: {ys}")
    t = history.summary["time"]
    print(
        f"startup {t['startup_s']:.1f} s, median round {t['round_s_median']:.3f} s, "
        f"total {t['total_s']:.1f} s"
    )
    print(f"outputs in {history.out_dir}")
    return 0


def _sweep(args: argparse.Namespace) -> int:
    from fedray.sweeps import parse_grid, sweep

    if not args.grid:
        raise FedrayError("fedray sweep needs at least one --grid KEY=[v1,v2,...]")
    if args.max_concurrent is not None and args.max_concurrent < 1:
        raise FedrayError(f"--max-concurrent {args.max_concurrent}: expected an integer >= 1")
    df = sweep(
        args.config,
        grid=parse_grid(args.grid),
        seeds=args.seeds,
        out=args.out,
        overrides=args.overrides,
        max_concurrent=args.max_concurrent,
        metric=args.metric,
        mode=args.mode,
        address=args.address,
        progress=not args.no_progress and sys.stdout.isatty(),
    )
    _print_sweep(df)
    out = Path(df["out"].iloc[0]).parent.parent
    print(f"outputs in {out} (sweep.csv, sweep.png, runs/)")
    return 0 if (df["state"] == "TERMINATED").all() else 3


def _warm(args: argparse.Namespace) -> int:
    import time

    from fedray.runtime import warm

    if args.state_dir is not None:
        warm.use_state_dir(args.state_dir)
    if args.command == "down" and args.temp_dir is not None:
        killed = warm.down(args.temp_dir)
        print(f"stopped the Ray head of {args.temp_dir} ({killed} processes)")
        return 0
    if args.command == "down":
        state = warm.UpState.load()
        killed = warm.down()
        print(f"stopped the warm instance ({killed} processes)" if state else "no warm instance")
        return 0
    for flag, value in (("--num-cpus", args.num_cpus), ("--hosts", args.hosts)):
        if value is not None and value < 1:
            raise FedrayError(f"{flag} {value}: expected an integer >= 1")
    t0 = time.perf_counter()
    state = warm.up(args.num_cpus, args.hosts, temp_dir=args.temp_dir)
    print(
        f"warm instance up in {time.perf_counter() - t0:.1f} s: {state.cpus:g} CPUs, "
        f"{state.hosts} hosts with TensorFlow loaded"
    )
    where = "" if args.state_dir is None else f" --state-dir {args.state_dir}"
    exported = "" if args.state_dir is None else f" {warm.DIR_ENV}={args.state_dir}"
    print(
        f"use it: fedray run CONFIG --address {warm.ADDRESS}{where}   (or export "
        f"{warm.ENV}={warm.ADDRESS}{exported}); stop it: fedray down{where}"
    )
    return 0


def _print_sweep(df: object) -> None:
    from rich.console import Console

    from fedray.sweeps import summary_table

    Console(width=200).print(summary_table(df))


def _cluster_token(args: argparse.Namespace) -> int:
    from fedray.runtime.connect import write_token

    path = write_token(args.out, force=args.force)
    print(f"wrote {path} (mode 0600); never commit it. For ray commands on this machine:")
    print(f'export RAY_AUTH_MODE=token RAY_AUTH_TOKEN="$(cat {path})"')
    return 0


def _plot(args: argparse.Namespace) -> int:
    from fedray.reports import plot_runs

    out = args.out or str(Path(args.runs[0]) / "curves.png")
    print(f"wrote {plot_runs(args.runs, out, args.metric)}")
    return 0


def _report(args: argparse.Namespace) -> int:
    from rich.console import Console

    from fedray.reports import report
    from fedray.sweeps import PLAN, write

    if (Path(args.run) / PLAN).is_file():
        _print_sweep(write(args.run))
        return 0
    Console().print(report(args.run))
    return 0


def _predict(args: argparse.Namespace) -> int:
    from fedray.reports import predict

    src = Path(args.input)
    out = args.output or str(src.with_name(src.stem + ".predictions.csv"))
    print(f"wrote {predict(args.run, src, out)}")
    return 0


def _audit(args: argparse.Namespace) -> int:
    from rich.console import Console

    from fedray.cli.audit import audit

    out = args.out or args.runs[0]
    table = audit(args.runs, out)
    cols = [
        "mechanism",
        "epsilon",
        "accuracy",
        "auc",
        "advantage",
        "tpr_at_1pct_fpr",
        "epsilon_lower_bound",
    ]
    Console().print(table[cols].to_string(index=False, float_format=lambda v: f"{v:.4g}"))
    print(f"wrote {Path(out) / 'audit.csv'} and {Path(out) / 'audit.png'}")
    return 0


def _privacy(args: argparse.Namespace) -> int:
    from fedray.cli.privacy import privacy

    return privacy(args)


def _bench(args: argparse.Namespace) -> int:
    import importlib

    result: int = importlib.import_module(f"fedray.bench.{args.suite}").main(args.args)
    return result


COMMANDS: dict[str, Callable[[argparse.Namespace], int]] = {
    "run": _run,
    "cluster-token": _cluster_token,
    "plot": _plot,
    "sweep": _sweep,
    "up": _warm,
    "down": _warm,
    "report": _report,
    "predict": _predict,
    "audit": _audit,
    "privacy": _privacy,
    "bench": _bench,
}
"""What each command runs, with its parsed arguments; returns the exit status."""


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``fedray`` console script."""
    args = _parser().parse_args(argv)
    _setup_logging(getattr(args, "verbose", False))
    try:
        return COMMANDS[args.command](args)
    except RoundFailedError as exc:  # the run stopped; its checkpoint is intact
        print(f"fedray: error: {exc}", file=sys.stderr)
        return 3
    except FedrayError as exc:
        print(f"fedray: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("fedray: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
