"""Robust aggregation under a 20 % sign-flip attack (issue 5's robustness experiment).

Runs digits (10 IID clients, all sampled every round) with 2 Byzantine clients that send
-4 x their update, under fedavg, fedmedian, trimmed_mean (beta 0.2) and multi_krum (f 2),
plus attack-free fedavg. Writes results/robustness.csv, .md and .png.

    python experiments/robustness.py            # ~1-2 min on 2 cores (in-process clients)
"""

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import pandas as pd

import fedray

HERE = Path(__file__).parent
RESULTS = HERE / "results"
BASE = [
    "data.partition=iid",
    "strategy.fraction_fit=1.0",
    "strategy.min_fit_clients=7",
    "rounds=20",
    "evaluation.federated_every=0",
    "runtime.executor=local",
    "runtime.progress=false",
    "runtime.clients_per_actor=10",
]
ATTACK = ["attack.fraction=0.2", "attack.kind=sign_flip", "attack.scale=4"]
RUNS = {
    "fedavg, no attack": ["strategy.name=fedavg"],
    "fedavg": ["strategy.name=fedavg", *ATTACK],
    "fedmedian": ["strategy.name=fedmedian", *ATTACK],
    "trimmed_mean (beta 0.2)": ["strategy.name=trimmed_mean", "strategy.trim_beta=0.2", *ATTACK],
    "multi_krum (f 2)": ["strategy.name=multi_krum", "strategy.num_byzantine=2", *ATTACK],
}


def main() -> None:
    RESULTS.mkdir(exist_ok=True)
    curves, rows = {}, []
    for label, overrides in RUNS.items():
        hist = fedray.run(HERE / "digits.yaml", out=None, overrides=[*BASE, *overrides])
        curves[label] = hist.metrics[["round", "eval/accuracy"]]
        rows.append({"run": label, "final_accuracy": hist.final["eval/accuracy"]})
    table = pd.DataFrame(rows)
    clean = table.loc[table.run == "fedavg, no attack", "final_accuracy"].item()
    table["vs_attack_free_points"] = 100 * (table.final_accuracy - clean)
    table.to_csv(RESULTS / "robustness.csv", index=False)
    md = [
        "| strategy (20 % sign-flip attackers) | final accuracy | vs attack-free (points) |",
        "|---|---:|---:|",
    ]
    md += [
        f"| {r.run} | {r.final_accuracy:.3f} | {r.vs_attack_free_points:+.1f} |"
        for r in table.itertuples()
    ]
    (RESULTS / "robustness.md").write_text("\n".join(md) + "\n")
    fig, ax = plt.subplots(figsize=(6.5, 4))
    for label, df in curves.items():
        ax.plot(df["round"], df["eval/accuracy"], marker=".", label=label)
    ax.set_xlabel("round")
    ax.set_ylabel("test accuracy (digits)")
    ax.set_title("2 of 10 clients send -4 x their update")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(RESULTS / "robustness.png", dpi=110)
    print("\n".join(md))


if __name__ == "__main__":
    main()
