"""Generated datasets: a linear regression, Synthetic(α, β) and Gaussian blobs.

Synthetic(α, β) is the benchmark of Li et al., "Federated Optimization in
Heterogeneous Networks" (FedProx), MLSys 2020, arXiv:1812.06127: α skews the clients'
models, β their inputs. Used by tests, benchmarks and the hello-world, so nothing is
downloaded.
"""

from __future__ import annotations

import numpy as np

from fedray.errors import DataError


def make_linreg(n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """``n`` points of y = 3x + 1 + N(0, 1) with x ~ U(0, 10).

    >>> x, y = make_linreg(5, np.random.default_rng(0))
    >>> x.shape, y.shape
    ((5, 1), (5, 1))
    """
    x = rng.uniform(0.0, 10.0, size=(n, 1))
    y = 3.0 * x + 1.0 + rng.normal(0.0, 1.0, size=(n, 1))
    return x.astype(np.float32), y.astype(np.float32)


def make_synthetic(
    num_devices: int,
    alpha: float,
    beta: float,
    rng: np.random.Generator,
    *,
    num_features: int = 60,
    num_classes: int = 10,
    total: int | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Synthetic(alpha, beta) of the FedProx paper (Li et al., 2020).

    Device k draws ``u_k ~ N(0, alpha)``, ``W_k, b_k ~ N(u_k, 1)``, ``B_k ~ N(0, beta)``,
    ``v_k ~ N(B_k, 1)`` and ``x ~ N(v_k, diag(j^-1.2))``; labels are
    ``argmax(softmax(x W_k + b_k))``. Device sizes are ``lognormal(4, 2) + 50`` as in the
    paper's generator. With ``total``, the sizes keep those lognormal proportions but
    are scaled to add up to exactly ``total`` rows (2 per device first), so the amount
    of data stays fixed however many devices share it.

    Returns:
        ``(x, y, device)``: features, labels and the device id of every row.
    """
    sizes = rng.lognormal(4, 2, num_devices).astype(np.int64) + 50
    sizes = np.minimum(sizes, 20_000)  # keep one heavy-tailed draw from dominating memory
    if total is not None:  # 2 rows each (one to train, one to test), the rest by weight
        if total < 2 * num_devices:
            raise DataError(
                f"data.num_samples={total} is too small for {num_devices} synthetic "
                f"devices; expected at least 2 per device ({2 * num_devices})"
            )
        spare = total - 2 * num_devices
        scaled = 2 + np.floor(spare * sizes / sizes.sum()).astype(np.int64)
        scaled[np.argmax(scaled)] += total - int(scaled.sum())
        sizes = scaled
    mean_w = rng.normal(0, alpha, num_devices)
    big_b = rng.normal(0, beta, num_devices)
    std_x = np.power(np.arange(1, num_features + 1, dtype=np.float64), -1.2) ** 0.5
    xs, ys, ds = [], [], []
    for k in range(num_devices):
        w = rng.normal(mean_w[k], 1, (num_features, num_classes))
        b = rng.normal(mean_w[k], 1, num_classes)
        v = rng.normal(big_b[k], 1, num_features)
        xk = v + rng.normal(0, 1, (sizes[k], num_features)) * std_x
        xs.append(xk)
        ys.append(np.argmax(xk @ w + b, axis=1))
        ds.append(np.full(sizes[k], k, dtype=np.int64))
    return (
        np.concatenate(xs).astype(np.float32),
        np.concatenate(ys).astype(np.int64),
        np.concatenate(ds),
    )


def make_blobs(
    n: int, rng: np.random.Generator, *, num_features: int = 60, num_classes: int = 10
) -> tuple[np.ndarray, np.ndarray]:
    """Gaussian blobs: class means ~ N(0, 0.3^2) per feature, x = mean[label] + N(0, 1)."""
    means = rng.normal(0.0, 0.3, (num_classes, num_features))
    y = rng.integers(0, num_classes, n)
    x = means[y] + rng.normal(0.0, 1.0, (n, num_features))
    return x.astype(np.float32), y.astype(np.int64)
