"""``fedray audit``: measure what a trained run leaks about its training data.

Runs the loss-threshold membership-inference attack of
:mod:`fedray.privacy.audit` on a finished run: members are the clients' training
examples, non-members the held-out test examples (equal numbers, drawn with the run's
seed). Writes ``audit.csv`` (one row per run) and ``audit.png`` (ROC curves, and the
analytical ε next to the measured estimate). The estimate is empirical and single-run:
every score comes from one model, members are fixed by the train/test split, and it is
example-level while the analytical ε is client-level, so it says how much this attack
extracts, not what DP allows. Canary clients (``privacy.canaries``) give a client-level
estimate. Layer 3: loads the Keras model.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np

from fedray.errors import FedrayError
from fedray.privacy.audit import MembershipReport, membership_report, roc_curve


def _per_example_loss(model: Any, x: np.ndarray, y: np.ndarray, task: str) -> np.ndarray:
    pred = np.asarray(model.predict(x, batch_size=1024, verbose=0), np.float64)
    if task == "classification":
        p = np.clip(pred[np.arange(len(y)), y.astype(int).ravel()], 1e-12, 1.0)
        return np.asarray(-np.log(p), np.float64)
    return np.asarray(np.sum((pred.reshape(len(y), -1) - y.reshape(len(y), -1)) ** 2, axis=1))


def audit_run(run_dir: str | Path, *, max_examples: int = 2000) -> dict[str, Any]:
    """The membership-inference report of one run, plus its analytical ε.

    Raises:
        FedrayError: ``run_dir`` is not a finished run, or it has no test set.
    """
    d = Path(run_dir)
    if not (d / "summary.json").is_file() or not (d / "model.keras").is_file():
        raise FedrayError(f"'{d}' is not a finished fedray run (needs summary.json, model.keras)")
    from fedray.client.devices import import_keras

    keras = import_keras()  # only once the run is known to exist: bad input fails in a clean line

    from fedray import config as config_mod
    from fedray.data import load_host_data

    summary = json.loads((d / "summary.json").read_text())
    cfg = config_mod.load(summary["config"])
    ids = list(range(cfg.data.num_clients))
    host = load_host_data(cfg.data, cfg.seed, ids, with_test_set=True)
    xm = np.concatenate([host.shards[c].x for c in ids])
    ym = np.concatenate([host.shards[c].y for c in ids])
    xn, yn = host.x_test, host.y_test
    if xn is None or yn is None or len(xn) == 0:
        raise FedrayError(f"run '{d}' has no held-out test set (data.test_fraction = 0)")
    rng = np.random.default_rng([cfg.seed, 99])
    n = min(len(xm), len(xn), max_examples)
    mi, ni = rng.choice(len(xm), n, replace=False), rng.choice(len(xn), n, replace=False)
    model = keras.saving.load_model(d / "model.keras")
    task = host.info.task
    member_loss = _per_example_loss(model, xm[mi], ym[mi], task)
    nonmember_loss = _per_example_loss(model, xn[ni], yn[ni], task)
    privacy = summary.get("privacy") or {}
    delta = float(privacy.get("delta") or 1e-5)
    report = membership_report(member_loss, nonmember_loss, delta)
    return {
        "run": str(d),
        "mechanism": f"DP-FedAvg ({privacy['mode']})" if privacy else "no DP",
        "noise_multiplier": privacy.get("noise_multiplier", 0.0),
        "epsilon": privacy.get("epsilon", float("inf")) if privacy else float("inf"),
        "delta": delta,
        "accuracy": summary.get("final", {}).get("eval/accuracy"),
        **asdict(report),
        "_losses": (member_loss, nonmember_loss),
    }


def audit(runs: Sequence[str | Path], out_dir: str | Path) -> Any:
    """Audit each run; write ``audit.csv`` and ``audit.png`` to ``out_dir``; return the table."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import pandas as pd

    for run in runs:  # every path is checked before the first model loads
        if not (Path(run) / "summary.json").is_file():
            raise FedrayError(f"'{run}' is not a finished fedray run (needs summary.json)")
    results = [audit_run(r) for r in runs]
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    table = pd.DataFrame([{k: v for k, v in r.items() if not k.startswith("_")} for r in results])
    table.to_csv(out / "audit.csv", index=False)
    fig, (roc_ax, eps_ax) = plt.subplots(1, 2, figsize=(11, 4.5))
    for r in results:
        members, nonmembers = r["_losses"]
        fpr, tpr = roc_curve(-members, -nonmembers)
        eps = "∞" if not np.isfinite(r["epsilon"]) else f"{r['epsilon']:.2f}"
        roc_ax.plot(fpr, tpr, label=f"{Path(r['run']).name}: ε={eps}, AUC={r['auc']:.3f}")
    roc_ax.plot([0, 1], [0, 1], "k:", lw=1)
    roc_ax.set(
        xlabel="false positive rate",
        ylabel="true positive rate",
        title="loss-threshold membership inference",
    )
    roc_ax.legend(fontsize=7)
    names = [Path(r["run"]).name for r in results]
    x = np.arange(len(results))
    analytic = [min(r["epsilon"], 50.0) for r in results]
    eps_ax.bar(x - 0.2, analytic, 0.4, label="analytical ε, client-level (∞ drawn at 50)")
    eps_ax.bar(
        x + 0.2,
        [r["epsilon_lower_bound"] for r in results],
        0.4,
        label="empirical single-run estimate, example-level (95%)",
    )
    eps_ax.set_xticks(x, names, rotation=20, fontsize=7)
    eps_ax.set(ylabel="ε", title="analytical ε vs an empirical, single-run estimate")
    eps_ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out / "audit.png", dpi=120)
    plt.close(fig)
    return table


__all__ = ["MembershipReport", "audit", "audit_run"]
