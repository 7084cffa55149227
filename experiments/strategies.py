"""Paper-style comparisons of strategies (issue 5). Writes CSV + PNG + Markdown to results/.

    python experiments/strategies.py fedprox     # FedProx paper, Figure 1 trend (~4 min)
    python experiments/strategies.py adaptive    # FedAdam / FedYogi vs FedAvg, non-IID (~2 min)
    python experiments/strategies.py fedbuff     # FedBuff vs synchronous FedAvg, wall clock (Ray)

fedprox: Synthetic(1, 1), 30 devices, 10 sampled per round, E = 20, batch 10, lr 0.01,
90 % stragglers. FedAvg drops the stragglers (a deadline), FedProx (mu = 1) uses their
partial work (Li et al., MLSys 2020, arXiv:1812.06127, Figure 1).

adaptive: digits, 10 clients with Dirichlet(0.1) label skew, all sampled, E = 1, SGD 0.05;
FedAvg vs FedAdam vs FedYogi (Reddi et al., ICLR 2021, arXiv:2003.00295), server
learning rate 0.03, tau 1e-3.
"""

import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import pandas as pd

import fedray

HERE = Path(__file__).parent
RESULTS = HERE / "results"
LOCAL = ["runtime.executor=local", "runtime.progress=false", "runtime.clients_per_actor=1000"]
TARGET = 0.9  # accuracy for the wall-clock comparison

SUITES = {
    "fedprox": (
        "synthetic.yaml",
        [
            "rounds=200",
            "strategy.fraction_fit=0.3333334",
            "strategy.min_fit_clients=1",
            "client.local_epochs=20",
            "client.batch_size=10",
            "client.learning_rate=0.01",
            "faults.straggler_fraction=0.9",
            "evaluation.train_every=1",
        ],
        {
            "fedavg (drops stragglers)": ["strategy.name=fedavg", "faults.drop_stragglers=1"],
            "fedprox mu=0 (partial work)": ["strategy.name=fedprox", "strategy.proximal_mu=0"],
            "fedprox mu=1": ["strategy.name=fedprox", "strategy.proximal_mu=1"],
        },
        ["eval/accuracy", "train/loss"],
    ),
    "adaptive": (
        "digits.yaml",
        [
            "rounds=40",
            "data.alpha=0.1",
            "strategy.fraction_fit=1.0",
            "strategy.min_fit_clients=1",
            "evaluation.federated_every=0",
            "client.optimizer=sgd",
            "client.learning_rate=0.05",
            "client.local_epochs=1",
        ],
        {
            "fedavg": ["strategy.name=fedavg"],
            "fedadam": ["strategy.name=fedadam", "strategy.server_learning_rate=0.03"],
            "fedyogi": ["strategy.name=fedyogi", "strategy.server_learning_rate=0.03"],
        },
        ["eval/accuracy", "eval/loss"],
    ),
    "fedbuff": (
        "digits.yaml",
        [
            "rounds=60",
            "data.partition=iid",
            "evaluation.federated_every=0",
            "client.optimizer=sgd",
            "client.learning_rate=0.05",
            "faults.delay_s=1.0",
            "runtime.clients_per_actor=1",
            "runtime.executor=ray",
        ],
        {
            "fedavg (sync, 5 per round)": ["strategy.name=fedavg", "strategy.fraction_fit=0.5"],
            "fedbuff (5 in flight, buffer 3)": [
                "strategy.name=fedbuff",
                "strategy.concurrency=5",
                "strategy.buffer_size=3",
                "strategy.server_learning_rate=1.0",
            ],
        },
        ["eval/accuracy", "eval/loss"],
    ),
}


TITLES = {
    "fedprox": "Synthetic(1,1), 90 % stragglers: FedAvg drops them, FedProx keeps partial work",
    "adaptive": "digits, Dirichlet(0.1) over 10 clients: adaptive server optimizers",
    "fedbuff": "digits, 10 clients with fixed delays U(0, 1 s): synchronous vs buffered",
}


def run_suite(name: str) -> None:
    config, common, runs, metrics = SUITES[name]
    RESULTS.mkdir(exist_ok=True)
    frames, rows = [], []
    for label, overrides in runs.items():
        runtime = LOCAL if "runtime.executor=ray" not in common else ["runtime.progress=false"]
        hist = fedray.run(
            HERE / config, out=None, overrides=[*LOCAL, *runtime, *common, *overrides]
        )
        df = hist.metrics.assign(run=label, wall_s=hist.metrics["time/round_s"].cumsum())
        frames.append(df)
        final = df.ffill().iloc[-1]
        rows.append(
            {
                "run": label,
                **{m: float(final[m]) for m in metrics},
                "best_accuracy": float(df["eval/accuracy"].max()),
                f"seconds_to_{TARGET}": float(
                    df.loc[df["eval/accuracy"] >= TARGET, "wall_s"].min()
                ),
                "failed_clients": int(df["clients/failed"].sum()),
                "skipped_rounds": int((df["round/committed"] == 0).sum()),
            }
        )
    pd.concat(frames).to_csv(RESULTS / f"{name}.csv", index=False)
    table = pd.DataFrame(rows)
    cols = list(table.columns)
    md = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for r in table.itertuples(index=False):
        md.append(
            "| " + " | ".join(f"{v:.4f}" if isinstance(v, float) else str(v) for v in r) + " |"
        )
    (RESULTS / f"{name}.md").write_text("\n".join(md) + "\n")
    fig, axes = plt.subplots(1, len(metrics), figsize=(6 * len(metrics), 4))
    for ax, metric in zip(axes, metrics, strict=True):
        x = "wall_s" if name == "fedbuff" else "round"
        for df in frames:
            ax.plot(df[x], df[metric], label=df["run"].iloc[0])
        ax.set_xlabel("wall-clock seconds in rounds" if x == "wall_s" else "round")
        ax.set_ylabel(metric)
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle(TITLES[name])
    fig.tight_layout()
    fig.savefig(RESULTS / f"{name}.png", dpi=110)
    print("\n".join(md))


if __name__ == "__main__":
    for suite in sys.argv[1:] or list(SUITES):
        run_suite(suite)
