"""Generated datasets: a linear regression, Synthetic(α, β) and Gaussian blobs.

Synthetic(α, β) is the benchmark of Li et al., "Federated Optimization in
Heterogeneous Networks" (FedProx), MLSys 2020, arXiv:1812.06127: α skews the clients'
models, β their inputs. Used by tests, benchmarks and the hello-world, so nothing is
downloaded.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any

import numpy as np

from fedray.errors import DataError

BLOCK = 1024
"""Devices of Synthetic(α, β) drawn together from one ``(seed, block)`` stream."""

SERVER_TEST_DEVICES = 10_000
"""The server's test set holds the held-out rows of the first this many devices."""


def make_linreg(n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """``n`` points of y = 3x + 1 + N(0, 1) with x ~ U(0, 10).

    >>> x, y = make_linreg(5, np.random.default_rng(0))
    >>> x.shape, y.shape
    ((5, 1), (5, 1))
    """
    x = rng.uniform(0.0, 10.0, size=(n, 1))
    y = 3.0 * x + 1.0 + rng.normal(0.0, 1.0, size=(n, 1))
    return x.astype(np.float32), y.astype(np.float32)


def synthetic_sizes(num_devices: int, seed: int, total: int | None = None) -> np.ndarray:
    """Every device's row count in Synthetic(α, β): ``lognormal(4, 2) + 50``, capped at 20,000.

    With ``total``, the sizes keep those lognormal proportions but are scaled to add up
    to exactly ``total`` rows (2 per device first), so the amount of data stays fixed
    however many devices share it. One cheap draw over all devices (8 bytes each),
    the same in every host.

    >>> synthetic_sizes(4, 0, total=20).tolist(), int(synthetic_sizes(1000, 0).min()) >= 50
    ([3, 5, 6, 6], True)
    >>> int(synthetic_sizes(10**6, 0, total=10**7).max())  # no device takes the rounding
    387
    """
    rng = np.random.default_rng([seed, 3])
    sizes = rng.lognormal(4, 2, num_devices).astype(np.int64) + 50
    sizes = np.minimum(sizes, 20_000)  # keep one heavy-tailed draw from dominating memory
    if total is not None:  # 2 rows each (one to train, one to test), the rest by weight
        if total < 2 * num_devices:
            raise DataError(
                f"data.num_samples={total} is too small for {num_devices} synthetic "
                f"devices; expected at least 2 per device ({2 * num_devices})"
            )
        share = (total - 2 * num_devices) * sizes / sizes.sum()
        scaled = 2 + np.floor(share).astype(np.int64)
        short = total - int(scaled.sum())  # < num_devices rows: the largest remainders get one
        if short:
            scaled[np.argpartition(np.floor(share) - share, short - 1)[:short]] += 1
        sizes = scaled
    return sizes


def _block(
    seed: int, block: int, sizes: np.ndarray, alpha: float, beta: float, features: int, classes: int
) -> list[tuple[np.ndarray, np.ndarray]]:
    """The rows of one block of devices, drawn from the block's own stream ``(seed, block)``.

    Devices of equal size are drawn together (one batched matmul for their labels).
    """
    rng = np.random.default_rng([seed, 4, block])
    f32 = np.float32
    n = len(sizes)
    mean_w = rng.normal(0.0, alpha, n).astype(f32)[:, None]  # u_k
    big_b = rng.normal(0.0, beta, n).astype(f32)[:, None]  # B_k
    w = mean_w[:, :, None] + rng.standard_normal((n, features, classes), dtype=f32)
    b = mean_w + rng.standard_normal((n, classes), dtype=f32)
    v = big_b + rng.standard_normal((n, features), dtype=f32)
    std_x = (np.arange(1, features + 1, dtype=np.float64) ** -0.6).astype(f32)  # (j^-1.2)^0.5
    out: list[Any] = [None] * n
    for size in np.unique(sizes):
        idx = np.flatnonzero(sizes == size)
        noise = rng.standard_normal((len(idx), int(size), features), dtype=f32)
        x = v[idx, None, :] + noise * std_x
        y = np.argmax(x @ w[idx] + b[idx, None, :], axis=2)
        for j, k in enumerate(idx):
            out[k] = (x[j], y[j])
    return out


def synthetic_devices(
    devices: Iterable[int],
    sizes: np.ndarray,
    alpha: float,
    beta: float,
    seed: int,
    *,
    num_features: int = 60,
    num_classes: int = 10,
) -> Iterator[tuple[int, np.ndarray, np.ndarray]]:
    """``(k, x_k, y_k)`` of each device in ``devices`` (ascending), and of no other block.

    Device k's rows depend only on ``seed``, ``sizes`` and its block ``k // BLOCK``
    (whose devices are drawn together, from the stream ``(seed, block)``), so a host
    generates its own clients' rows, and those of at most two partial blocks, never
    the whole population's. Device k draws ``u_k ~ N(0, alpha)``, ``W_k, b_k ~ N(u_k,
    1)``, ``B_k ~ N(0, beta)``, ``v_k ~ N(B_k, 1)`` and ``x ~ N(v_k, diag(j^-1.2))``;
    its labels are ``argmax(x W_k + b_k)``.

    >>> sizes = synthetic_sizes(3000, 0, total=6600)
    >>> a = {k: x for k, x, _ in synthetic_devices([5, 2500], sizes, 1.0, 1.0, 0)}
    >>> b = {k: x for k, x, _ in synthetic_devices(range(3000), sizes, 1.0, 1.0, 0)}
    >>> all(np.array_equal(a[k], b[k]) for k in a), a[5].shape
    (True, (2, 60))
    """
    wanted = np.asarray(sorted(set(devices)), dtype=np.int64)
    for block in np.unique(wanted // BLOCK):
        lo = int(block) * BLOCK
        rows = _block(
            seed, int(block), sizes[lo : lo + BLOCK], alpha, beta, num_features, num_classes
        )
        for k in wanted[(wanted >= lo) & (wanted < lo + BLOCK)]:
            x, y = rows[int(k) - lo]
            yield int(k), x, y


def train_test_cut(sizes: np.ndarray) -> np.ndarray:
    """Rows of each device that train (the rest are held out for the server): 90 %, >= 1.

    >>> train_test_cut(np.array([2, 10, 105])).tolist()
    [1, 9, 94]
    """
    return np.maximum(1, (0.9 * np.asarray(sizes)).astype(np.int64))


def host_rows(  # noqa: PLR0913 - Synthetic(alpha, beta)'s parameters, as the paper names them
    client_ids: Iterable[int],
    num_devices: int,
    alpha: float,
    beta: float,
    seed: int,
    *,
    total: int | None = None,
    with_test_set: bool = False,
    num_features: int = 60,
    num_classes: int = 10,
) -> tuple[dict[int, tuple[np.ndarray, np.ndarray]], tuple[np.ndarray, np.ndarray] | None]:
    """One host's devices' training rows, and the server test set if it holds it.

    Generates only those devices (and, with ``with_test_set``, the first
    :data:`SERVER_TEST_DEVICES`, whose held-out rows are the server's test set), so a
    host's start-up grows with its own clients, not with the population.

    Returns:
        ``({k: (x_k, y_k)}, (x_test, y_test) or None)``.
    """
    sizes = synthetic_sizes(num_devices, seed, total)
    cuts = train_test_cut(sizes)
    own = set(client_ids)
    tested = min(num_devices, SERVER_TEST_DEVICES) if with_test_set else 0
    train: dict[int, tuple[np.ndarray, np.ndarray]] = {}
    xt, yt = [], []
    for k, x, y in synthetic_devices(
        own.union(range(tested)),
        sizes,
        alpha,
        beta,
        seed,
        num_features=num_features,
        num_classes=num_classes,
    ):
        if k in own:
            train[k] = (x[: cuts[k]], y[: cuts[k]])
        if k < tested:
            xt.append(x[cuts[k] :])
            yt.append(y[cuts[k] :])
    return train, ((np.concatenate(xt), np.concatenate(yt)) if with_test_set else None)


def make_blobs(
    n: int, rng: np.random.Generator, *, num_features: int = 60, num_classes: int = 10
) -> tuple[np.ndarray, np.ndarray]:
    """Gaussian blobs: class means ~ N(0, 0.3^2) per feature, x = mean[label] + N(0, 1)."""
    means = rng.normal(0.0, 0.3, (num_classes, num_features))
    y = rng.integers(0, num_classes, n)
    x = means[y] + rng.normal(0.0, 1.0, (n, num_features))
    return x.astype(np.float32), y.astype(np.int64)
