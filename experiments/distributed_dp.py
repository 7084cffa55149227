"""Distributed DP inside secure aggregation against central DP at the same ε (issue 18).

    python experiments/distributed_dp.py            # blobs and digits (~25 min on 2 cores)
    python experiments/distributed_dp.py blobs      # one workload

Both workloads train softmax regression with full participation (q = 1), so that the two
guarantees are comparable: central DP-FedAvg (McMahan et al. 2018) trusts the server with
the exact sum and noises it there; distributed DP (Skellam, Agarwal et al. 2021; the
distributed discrete Gaussian, Kairouz et al. 2021) never shows the server an un-noised
sum. For each target ε the noise multiplier of each mechanism is calibrated by its own
RDP accountant for the run's rounds (central: dp-accounting's Gaussian; distributed:
fedray.privacy.distributed, with the model's size), so the rows compare accuracy at equal
ε. Each cell is the mean of REPEATS runs with different seeds (the noise is secret, so
every run draws its own). Distributed DP also pays for ``privacy.dp.max_dropout`` (0.1:
each share carries 1/0.9 of its part) and for conditional rounding (``ddp/inflation``).

Writes results/distributed_dp.csv, .md and .png.
"""

import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import pandas as pd

import fedray
from fedray.privacy import DistributedPlan, calibrate_noise_multiplier
from fedray.privacy.distributed import calibrate

HERE = Path(__file__).parent
RESULTS = HERE / "results"
LOCAL = [
    "runtime.executor=local",
    "runtime.progress=false",
    "runtime.clients_per_actor=1000",
    "checkpoint.every=0",
    "model.name=linear",
    "strategy.fraction_fit=1.0",
    "strategy.min_fit_clients=1",
    "client.local_epochs=2",
    "client.batch_size=16",
    "evaluation.every=5",
]
WORKLOADS = {
    "blobs": (
        HERE / "blobs.yaml",
        ["rounds=20", "data.num_clients=200", "client.learning_rate=0.1"],
    ),
    "digits": (
        HERE / "digits.yaml",
        [
            "rounds=20",
            "data.num_clients=100",
            "data.partition=iid",
            "evaluation.federated_every=0",
            "data.client_test_fraction=0",
            "client.optimizer=sgd",
            "client.learning_rate=0.1",
        ],
    ),
}
EPSILONS = [2.0, 4.0, 8.0]
DELTA = 1e-5
CLIP = 0.5
MAX_DROPOUT = 0.1
BITS = 22
REPEATS = {"blobs": 2, "digits": 3}


def run_workload(name: str) -> list[dict]:
    path, extra = WORKLOADS[name]
    rows = []
    for seed in range(REPEATS[name]):
        base = [*LOCAL, *extra, f"seed={seed}"]
        plain = fedray.run(path, overrides=base)
        rounds = plain.summary["config"]["rounds"]
        clients = plain.summary["config"]["data"]["num_clients"]
        dim = plain.summary["params"]["count"]
        rows.append(
            {
                "workload": name,
                "seed": seed,
                "mechanism": "no DP",
                "accuracy": plain.final["eval/accuracy"],
            }
        )
        dp = [f"privacy.dp.delta={DELTA}", f"privacy.dp.clip={CLIP}"]
        secure = [
            "privacy.secure_aggregation.enabled=true",
            f"privacy.secure_aggregation.bits={BITS}",
            f"privacy.dp.max_dropout={MAX_DROPOUT}",
        ]
        for eps in EPSILONS:
            z = calibrate_noise_multiplier(eps, 1.0, rounds, DELTA, tol=1e-4)
            h = fedray.run(
                path,
                overrides=[
                    *base,
                    *dp,
                    "privacy.dp.mode=central",
                    f"privacy.dp.noise_multiplier={z}",
                ],
            )
            rows.append(
                {
                    "workload": name,
                    "seed": seed,
                    "mechanism": "central",
                    "target_epsilon": eps,
                    "epsilon": h.summary["privacy"]["epsilon_rdp"],
                    "noise_multiplier": z,
                    "accuracy": h.final["eval/accuracy"],
                    "noise_std": h.final["agg/dp/noise_std"],
                }
            )
            print(rows[-1], flush=True)
            for mech in ("skellam", "discrete_gaussian"):
                plan = DistributedPlan(
                    mech, 1.0, CLIP, dim, BITS, float(clients), clients, MAX_DROPOUT
                )
                zd = calibrate(plan, eps, rounds, DELTA)
                h = fedray.run(
                    path,
                    overrides=[
                        *base,
                        *dp,
                        *secure,
                        "privacy.dp.mode=distributed",
                        f"privacy.dp.mechanism={mech}",
                        f"privacy.dp.noise_multiplier={zd}",
                    ],
                )
                p = h.summary["privacy"]
                rows.append(
                    {
                        "workload": name,
                        "seed": seed,
                        "mechanism": mech,
                        "target_epsilon": eps,
                        "epsilon": p["epsilon"],
                        "noise_multiplier": zd,
                        "accuracy": h.final["eval/accuracy"],
                        "noise_std": h.final["agg/dp/noise_std"],
                        "inflation": p["noise_inflation"],
                        "scale": p["scale"],
                        "modulus_bits": p["modulus_bits"],
                    }
                )
                print(rows[-1], flush=True)
    return rows


def main(names: list[str]) -> None:
    rows = [r for n in names for r in run_workload(n)]
    df = pd.DataFrame(rows)
    out = RESULTS / "distributed_dp.csv"
    if out.exists() and len(names) < len(WORKLOADS):  # keep the other workload's rows
        old = pd.read_csv(out)
        df = pd.concat([old[~old["workload"].isin(names)], df], ignore_index=True)
    df.to_csv(out, index=False)
    lines = [
        "| workload | target ε | mechanism | z | ε spent | noise std on the mean | "
        "accuracy (mean ± std) | gap to central |",
        "|---|---:|---|---:|---:|---:|---:|---:|",
    ]
    cells = df.dropna(subset=["target_epsilon"]).groupby(
        ["workload", "target_epsilon", "mechanism"], sort=False
    )
    summary = cells.agg(
        z=("noise_multiplier", "mean"),
        eps=("epsilon", "max"),
        noise=("noise_std", "mean"),
        acc=("accuracy", "mean"),
        sd=("accuracy", "std"),
    ).reset_index()
    for _, r in summary.iterrows():
        central = summary[
            (summary["workload"] == r["workload"])
            & (summary["target_epsilon"] == r["target_epsilon"])
            & (summary["mechanism"] == "central")
        ]["acc"].iloc[0]
        gap = "–" if r["mechanism"] == "central" else f"{r['acc'] - central:+.3f}"
        lines.append(
            f"| {r['workload']} | {r['target_epsilon']:g} | {r['mechanism']} | "
            f"{r['z']:.3f} | {r['eps']:.3f} | {r['noise']:.4f} | "
            f"{r['acc']:.3f} ± {r['sd']:.3f} | {gap} |"
        )
    for w, g in df[df["mechanism"] == "no DP"].groupby("workload"):
        acc = g["accuracy"]
        lines.append(f"| {w} | ∞ | no DP | – | ∞ | 0 | {acc.mean():.3f} ± {acc.std():.3f} | |")
    (RESULTS / "distributed_dp.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    workloads = list(dict.fromkeys(df["workload"]))
    fig, axes = plt.subplots(1, len(workloads), figsize=(5 * len(workloads), 3.8), squeeze=False)
    for ax, w in zip(axes[0], workloads, strict=True):
        g = df[df["workload"] == w]
        for mech, style in [("central", "o-"), ("skellam", "s--"), ("discrete_gaussian", "^:")]:
            s = g[g["mechanism"] == mech].groupby("target_epsilon")["accuracy"]
            ax.errorbar(
                s.mean().index, s.mean(), yerr=s.std().fillna(0), fmt=style, capsize=3, label=mech
            )
        ax.axhline(
            g[g["mechanism"] == "no DP"]["accuracy"].mean(), color="k", ls=":", label="no DP"
        )
        ax.set(
            xscale="log",
            xlabel="ε (RDP, δ = 1e-5, q = 1)",
            ylabel="test accuracy",
            title=f"{w}: central vs distributed DP",
        )
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(RESULTS / "distributed_dp.png", dpi=120)


if __name__ == "__main__":
    main(sys.argv[1:] or list(WORKLOADS))
