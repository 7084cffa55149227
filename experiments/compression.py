"""Accuracy against uplink bytes for update compression (issue 18).

    python experiments/compression.py          # blobs and digits (~3 min on 2 cores)

Nine settings on the repository's blobs and digits configs (MLP, 20 rounds): no
compression (float32), 8-, 4-, 2- and 1-bit unbiased stochastic quantization
(``compression.quantize_bits``), top-1 % with error feedback (``compression.topk``) and
a randomized Hadamard rotation before 4-, 2- or 1-bit quantization
(``compression.rotate``).
Bytes are what one encoded update takes (``comm/bytes_up``, summed over the run's
clients and rounds); each cell is the mean of SEEDS runs.

Writes results/compression.csv, .md and .png.
"""

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import pandas as pd

import fedray

HERE = Path(__file__).parent
RESULTS = HERE / "results"
LOCAL = [
    "runtime.executor=local",
    "runtime.progress=false",
    "checkpoint.every=0",
    "rounds=20",
    "evaluation.every=2",
    "evaluation.federated_every=0",
]
SETTINGS = {
    "float32": [],
    "8-bit": ["compression.quantize_bits=8"],
    "4-bit": ["compression.quantize_bits=4"],
    "top-1% + EF": ["compression.topk=0.01"],
    "rotate + 4-bit": ["compression.rotate=true", "compression.quantize_bits=4"],
    "2-bit": ["compression.quantize_bits=2"],
    "rotate + 2-bit": ["compression.rotate=true", "compression.quantize_bits=2"],
    "1-bit": ["compression.quantize_bits=1"],
    "rotate + 1-bit": ["compression.rotate=true", "compression.quantize_bits=1"],
}
WORKLOADS = {"blobs": HERE / "blobs.yaml", "digits": HERE / "digits.yaml"}
SEEDS = 2


def main() -> None:
    rows, curves = [], []
    for workload, path in WORKLOADS.items():
        for name, extra in SETTINGS.items():
            for seed in range(SEEDS):
                h = fedray.run(path, overrides=[*LOCAL, *extra, f"seed={seed}"])
                up = 0.0
                for r in h.rows:
                    up += r["comm/bytes_up"]
                    if "eval/accuracy" in r:
                        curves.append(
                            {
                                "workload": workload,
                                "setting": name,
                                "seed": seed,
                                "round": r["round"],
                                "uplink_mb": up / 1e6,
                                "accuracy": r["eval/accuracy"],
                            }
                        )
                rows.append(
                    {
                        "workload": workload,
                        "setting": name,
                        "seed": seed,
                        "params": h.summary["params"]["count"],
                        "bytes_per_update": h.rows[-1]["comm/bytes_up"] / h.rows[-1]["clients/ok"],
                        "compression": h.rows[-1]["comm/compression"],
                        "uplink_mb": up / 1e6,
                        "accuracy": h.final["eval/accuracy"],
                    }
                )
                print(rows[-1], flush=True)
    df = pd.DataFrame(rows)
    df.to_csv(RESULTS / "compression.csv", index=False)
    pd.DataFrame(curves).to_csv(RESULTS / "compression_curves.csv", index=False)
    cells = (
        df.groupby(["workload", "setting"], sort=False)
        .agg(
            params=("params", "first"),
            bytes=("bytes_per_update", "first"),
            ratio=("compression", "first"),
            mb=("uplink_mb", "mean"),
            acc=("accuracy", "mean"),
            sd=("accuracy", "std"),
        )
        .reset_index()
    )
    lines = [
        "| workload | setting | bytes per update | compression | uplink (MB, 20 rounds) | "
        "accuracy (mean ± std) |",
        "|---|---|---:|---:|---:|---:|",
    ]
    for _, c in cells.iterrows():
        lines.append(
            f"| {c['workload']} ({c['params']:,} params) | {c['setting']} | "
            f"{c['bytes']:,.0f} | {c['ratio']:.1f}x | {c['mb']:.3f} | "
            f"{c['acc']:.3f} ± {c['sd']:.3f} |"
        )
    (RESULTS / "compression.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    curve = pd.DataFrame(curves).groupby(["workload", "setting", "round"], sort=False)
    mean = curve[["uplink_mb", "accuracy"]].mean().reset_index()
    fig, axes = plt.subplots(1, len(WORKLOADS), figsize=(11, 4))
    for ax, workload in zip(axes, WORKLOADS, strict=True):
        for name in SETTINGS:
            s = mean[(mean["workload"] == workload) & (mean["setting"] == name)]
            ax.plot(s["uplink_mb"], s["accuracy"], "o-", ms=3, label=name)
        ax.set(
            xscale="log",
            xlabel="cumulative uplink (MB)",
            ylabel="test accuracy",
            title=f"{workload}: accuracy vs uplink bytes",
        )
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(RESULTS / "compression.png", dpi=120)


if __name__ == "__main__":
    main()
