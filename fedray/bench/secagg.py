"""Secure-aggregation cost benchmark: SecAgg and SecAgg+ against plain summation.

For each number of clients n and model size d, one protocol round runs in-process
(``fedray.secagg.run_protocol``) on random 16-bit quantized inputs (r = 16 + log2 n
bits): the complete graph (SecAgg, Bonawitz et al. 2017) and the k = O(log n) Harary
graph (SecAgg+, Bell et al. 2020). Reported: mean client compute seconds (key
agreement, Shamir sharing, AEAD, mask expansion, unmask), server seconds (routing,
summation, secret reconstruction, removing the masks of dropped clients), and the
bytes a surviving client sends (mean over survivors); ``plain_s`` is the plain
float32 streaming sum of the n updates, the baseline. With ``--dropout`` that
fraction of clients drops after sharing keys, which costs the server one mask
re-expansion per (dropped, surviving neighbour) pair.

    fedray bench secagg [--clients 10 50 100] [--dims 100000 1000000] [--dropout 0.1]
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from fedray.secagg import Quantizer, default_degree, run_protocol


def measure(n: int, d: int, scheme: str, dropout: float, seed: int = 0) -> dict[str, float | str]:
    """One round of ``scheme`` ("secagg" or "secagg+") with n clients and d parameters."""
    rng = np.random.default_rng(seed)
    q = Quantizer(clip=1.0, bits=16)
    r = q.modulus_bits(n)
    floats = {u: rng.uniform(-1, 1, d).astype(np.float32) for u in range(n)}
    t0 = time.perf_counter()
    plain = np.zeros(d, np.float32)
    for x in floats.values():
        plain += x  # the server's work without secure aggregation: a streaming sum
    plain_s = time.perf_counter() - t0
    inputs = {u: q.encode(x, rng) for u, x in floats.items()}
    degree = n - 1 if scheme == "secagg" else default_degree(n)
    drops = sorted(rng.choice(n, size=int(dropout * n), replace=False).tolist())
    total, stats = run_protocol(
        inputs, round_id=1, modulus_bits=r, degree=degree, rng=rng, drop_after_shares=drops
    )
    survivors = stats["survivors"]
    if not isinstance(survivors, list):
        raise TypeError(f"run_protocol's survivors: expected a list, got {survivors!r}")
    decoded = q.decode_sum(total, len(survivors))
    want = np.sum([floats[u] for u in survivors], axis=0, dtype=np.float64)
    max_err = float(np.abs(decoded - want).max())
    client_s = stats["client_s"]
    sent = stats["bytes_sent"]
    server_s = stats["server_s"]
    if not (isinstance(client_s, dict) and isinstance(sent, dict) and isinstance(server_s, float)):
        raise TypeError(f"run_protocol's timings have unexpected types: {sorted(stats)}")
    del plain
    return {
        "scheme": scheme,
        "clients": n,
        "dim": d,
        "degree": float(degree),
        "dropped": float(len(drops)),
        "client_s": float(np.mean([client_s[u] for u in survivors])),
        "server_s": server_s,
        "client_kib_sent": float(np.mean([sent[u] for u in survivors])) / 1024,
        "plain_bytes_per_client_kib": d * 4 / 1024,
        "plain_s": plain_s,
        "max_abs_error": max_err,
        "error_bound": len(survivors) * q.step,
    }


def main(argv: Sequence[str] | None = None) -> int:
    """``fedray bench secagg``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import pandas as pd

    p = argparse.ArgumentParser(prog="fedray bench secagg", description=__doc__.split("\n")[0])
    p.add_argument("--clients", type=int, nargs="*", default=[10, 50, 100])
    p.add_argument("--dims", type=int, nargs="*", default=[100_000, 1_000_000])
    p.add_argument("--dropout", type=float, default=0.1)
    p.add_argument("--out", default="experiments/results")
    args = p.parse_args(list(sys.argv[1:] if argv is None else argv))
    rows = []
    for d in args.dims:
        for n in args.clients:
            for scheme in ("secagg+", "secagg"):
                rows.append(measure(n, d, scheme, args.dropout))
                sys.stdout.write(f"{rows[-1]}\n")
                sys.stdout.flush()
    df = pd.DataFrame(rows)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    df.to_csv(out / "secagg.csv", index=False)
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for (scheme, d), g in df.groupby(["scheme", "dim"]):
        label = f"{scheme}, d={d:.0e}"
        axes[0].plot(g["clients"], g["client_s"], "o-", label=label)
        axes[1].plot(g["clients"], g["server_s"], "o-", label=label)
    axes[0].set(
        xlabel="clients n", ylabel="s per client", title="client compute per round", yscale="log"
    )
    axes[1].set(xlabel="clients n", ylabel="s", title="server compute per round", yscale="log")
    for ax in axes:
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out / "secagg.png", dpi=120)
    sys.stdout.write(df.to_string(index=False) + "\n")
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())

__all__ = ["main", "measure"]
