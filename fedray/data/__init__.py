"""Datasets and per-client shards.

A dataset is loaded (or generated from the seed) *inside* each client host, which
keeps only its own clients' shards. The driver never holds raw training data.

Datasets:

* ``linreg``, ``synthetic`` (FedProx's Synthetic(α, β), one natural client per device)
  and ``blobs``: generated from the seed (:mod:`fedray.data.synthetic`).
* ``digits``: scikit-learn's bundled 8x8 digits.
* ``npz``, ``csv``, ``parquet``: the user's files.
* ``mnist``, ``cifar10``: ``keras.datasets`` (downloads), or an ``.npz`` at ``data.path``.
* ``huggingface``: ``datasets.load_dataset`` (:mod:`fedray.data.huggingface`; the ``hf`` extra).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from fedray.config import DataConfig
from fedray.data import partition as part
from fedray.data.synthetic import host_rows, make_blobs, make_linreg
from fedray.data.tables import read_table, table_to_arrays
from fedray.errors import DataError
from fedray.tree import gather_rows


@dataclass
class Dataset:
    """Arrays of a whole dataset plus what models need to know about it."""

    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    task: str  # "classification" or "regression"
    num_classes: int | None = None
    groups: dict[str, np.ndarray] = field(default_factory=dict)

    @property
    def info(self) -> DatasetInfo:
        """Shapes and task, without the arrays (a regression: one output per target)."""
        targets = int(np.prod(self.y_train.shape[1:], dtype=np.int64))
        return DatasetInfo(
            input_shape=tuple(int(d) for d in self.x_train.shape[1:]),
            num_outputs=self.num_classes if self.task == "classification" else targets,  # type: ignore[arg-type]
            task=self.task,
            num_classes=self.num_classes,
        )


@dataclass(frozen=True)
class DatasetInfo:
    """What a model builder needs: input shape, output size and task."""

    input_shape: tuple[int, ...]
    num_outputs: int
    task: str
    num_classes: int | None


@dataclass
class Shard:
    """One client's data: a training split and an optional local test split."""

    client_id: int
    x: np.ndarray
    y: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray


def _split(
    x: np.ndarray, y: np.ndarray, fraction: float, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Random (train, test) split with ``fraction`` of the rows in the test part."""
    n_test = round(len(x) * fraction)
    perm = rng.permutation(len(x))
    test, train = np.sort(perm[:n_test]), np.sort(perm[n_test:])
    return x[train], y[train], x[test], y[test]


def _finish(
    x: np.ndarray,
    y: np.ndarray,
    x_test: np.ndarray | None,
    y_test: np.ndarray | None,
    cfg: DataConfig,
    rng: np.random.Generator,
    source: str,
) -> Dataset:
    """Infer the task, cast dtypes and split off a test set when none was given."""
    x = np.asarray(x)
    y = np.asarray(y)
    if len(x) != len(y):
        raise DataError(f"{source}: x has {len(x)} rows but y has {len(y)}; expected equal")
    if len(x) == 0:
        raise DataError(f"{source}: the dataset is empty; expected at least one row")
    if not np.issubdtype(x.dtype, np.number):
        raise DataError(f"{source}: features have dtype {x.dtype}; expected numbers")
    if x_test is None or y_test is None:
        x, y, x_test, y_test = _split(x, y, cfg.test_fraction, rng)
    y_all = np.concatenate([y.ravel(), np.asarray(y_test).ravel()])
    task = cfg.task
    if task == "auto":
        task = "classification" if np.issubdtype(y_all.dtype, np.integer) else "regression"
    if task == "classification":
        if not np.all(np.equal(np.mod(y_all, 1), 0)) or (len(y_all) and y_all.min() < 0):
            raise DataError(f"{source}: classification labels must be integers >= 0")
        num_classes = int(y_all.max()) + 1 if len(y_all) else 1
        if cfg.num_classes is not None:
            if num_classes > cfg.num_classes:
                raise DataError(
                    f"{source}: label {num_classes - 1} is out of range for "
                    f"data.num_classes={cfg.num_classes}"
                )
            num_classes = cfg.num_classes
        y, y_test = y.astype(np.int64).ravel(), np.asarray(y_test).astype(np.int64).ravel()
        if num_classes < 2:
            num_classes = 2
    else:
        num_classes = None
        y = y.astype(np.float32).reshape(len(y), -1)
        # An empty test split (test_fraction 0) keeps the target width of the training rows.
        y_test = np.asarray(y_test).astype(np.float32).reshape(len(y_test), y.shape[1])
    return Dataset(
        x_train=x.astype(np.float32, copy=False),  # every caller's x is its own already
        y_train=y,
        x_test=np.asarray(x_test).astype(np.float32),  # a copy: it may be fedray.fit's
        y_test=y_test,
        task=task,
        num_classes=num_classes,
    )


def _finish_grouped(
    x: np.ndarray,
    y: np.ndarray,
    x_test: np.ndarray | None,
    y_test: np.ndarray | None,
    groups: dict[str, np.ndarray],
    cfg: DataConfig,
    rng: np.random.Generator,
    source: str,
) -> Dataset:
    """:func:`_finish`, keeping the group columns aligned with the training rows."""
    if x_test is None and groups:
        n_test = round(len(x) * cfg.test_fraction)
        perm = rng.permutation(len(x))
        te, tr = np.sort(perm[:n_test]), np.sort(perm[n_test:])
        ds = _finish(x[tr], y[tr], x[te], y[te], cfg, rng, source)
        ds.groups = {k: v[tr] for k, v in groups.items()}
        return ds
    ds = _finish(x, y, x_test, y_test, cfg, rng, source)
    ds.groups = groups
    return ds


def _read_npz(path: Path, source: str) -> dict[str, np.ndarray]:
    try:
        with np.load(path, allow_pickle=False) as f:
            return {k: f[k] for k in f.files}
    except (OSError, ValueError) as exc:
        raise DataError(f"{source}: cannot read '{path}' as .npz: {exc}") from None


def _require_file(path: str | None, what: str) -> Path:
    if not path:
        raise DataError(f"data.path is required for {what}")
    p = Path(path).expanduser()
    if not p.is_file():
        raise DataError(f"data.path: file not found: '{p}' (needed for {what})")
    return p


def _load_keras_images(cfg: DataConfig, rng: np.random.Generator) -> Dataset:
    name = cfg.dataset
    if cfg.path:
        arrays = _read_npz(_require_file(cfg.path, name), name)
        missing = [k for k in ("x_train", "y_train", "x_test", "y_test") if k not in arrays]
        if missing:
            raise DataError(f"'{cfg.path}' lacks arrays {missing} for dataset {name!r}")
        (x, y), (xt, yt) = (
            (arrays["x_train"], arrays["y_train"]),
            (
                arrays["x_test"],
                arrays["y_test"],
            ),
        )
    else:  # pragma: no cover - needs the internet; tested by monkeypatching keras.datasets
        import keras

        module = keras.datasets.mnist if name == "mnist" else keras.datasets.cifar10
        (x, y), (xt, yt) = module.load_data()
    x, xt = (np.divide(a, 255.0, dtype=np.float32) for a in (x, xt))  # no float32 temporary
    if x.ndim == 3:
        x, xt = x[..., None], xt[..., None]
    y, yt = np.asarray(y).astype(np.int64).ravel(), np.asarray(yt).astype(np.int64).ravel()
    return _finish(x, y, xt, yt, cfg, rng, name)


def _linreg(cfg: DataConfig, seed: int, rng: np.random.Generator) -> Dataset:
    n = cfg.num_samples or 100
    x, y = make_linreg(n, rng)
    xt, yt = make_linreg(n, np.random.default_rng([seed, 10]))
    return _finish(x, y, xt, yt, cfg.model_copy(update={"task": "regression"}), rng, "linreg")


def _synthetic(cfg: DataConfig, seed: int, rng: np.random.Generator) -> Dataset:
    """Every device: its first 90 % trains (FedProx's generator)."""
    rows, test = _synthetic_rows(cfg, seed, range(cfg.num_clients), with_test_set=True)
    x, y = (np.concatenate([r[i] for r in rows.values()]) for i in (0, 1))
    xt, yt = test or (x[:0], y[:0])
    ds = _finish(x, y, xt, yt, cfg, rng, "synthetic")
    ds.num_classes = cfg.synthetic.num_classes
    ds.groups = {
        "client": np.repeat(np.arange(cfg.num_clients), [len(r[1]) for r in rows.values()])
    }
    return ds


def _blobs(cfg: DataConfig, seed: int, rng: np.random.Generator) -> Dataset:
    n = cfg.num_samples or 20_000
    x, y = make_blobs(n, rng)
    n_test = round(n * cfg.test_fraction)
    return _finish(x[n_test:], y[n_test:], x[:n_test], y[:n_test], cfg, rng, "blobs")


def _digits(cfg: DataConfig, seed: int, rng: np.random.Generator) -> Dataset:
    from sklearn.datasets import load_digits

    d = load_digits()
    x = (d.images / 16.0).astype(np.float32)[..., None]
    return _finish(x, d.target.astype(np.int64), None, None, cfg, rng, "digits")


def _npz(cfg: DataConfig, seed: int, rng: np.random.Generator) -> Dataset:
    path = _require_file(cfg.path, "dataset 'npz'")
    arrays = _read_npz(path, "npz")
    for key in ("x_train", "y_train"):
        if key not in arrays:
            raise DataError(
                f"'{path}' lacks array '{key}'; expected x_train, y_train "
                f"(and optionally x_test, y_test); found {sorted(arrays)}"
            )
    return _finish(
        arrays["x_train"],
        arrays["y_train"],
        arrays.get("x_test"),
        arrays.get("y_test"),
        cfg,
        rng,
        str(path),
    )


def _table(cfg: DataConfig, seed: int, rng: np.random.Generator) -> Dataset:
    name = cfg.dataset
    path = _require_file(cfg.path, f"dataset {name!r}")
    x, y, groups = table_to_arrays(read_table(path, name), cfg, path)
    test_x: np.ndarray | None = None
    test_y: np.ndarray | None = None
    if cfg.test_path:
        tpath = _require_file(cfg.test_path, "data.test_path")
        test_x, test_y, _ = table_to_arrays(
            read_table(tpath, name), cfg.model_copy(update={"partition": "iid"}), tpath
        )
    return _finish_grouped(x, y, test_x, test_y, groups, cfg, rng, str(path))


def _images(cfg: DataConfig, seed: int, rng: np.random.Generator) -> Dataset:
    return _load_keras_images(cfg, rng)


def _huggingface(cfg: DataConfig, seed: int, rng: np.random.Generator) -> Dataset:
    from fedray.data.huggingface import load_arrays

    (x, y, hx, hy, groups), classes = load_arrays(cfg)
    if classes is not None:  # text: the vocabulary fixes the classes
        cfg = cfg.model_copy(update={"num_classes": classes, "task": "classification"})
    return _finish_grouped(x, y, hx, hy, groups, cfg, rng, str(cfg.name))


SOURCES: dict[str, Callable[[DataConfig, int, np.random.Generator], Dataset]] = {
    "linreg": _linreg,
    "synthetic": _synthetic,
    "blobs": _blobs,
    "digits": _digits,
    "npz": _npz,
    "csv": _table,
    "parquet": _table,
    "mnist": _images,
    "cifar10": _images,
    "huggingface": _huggingface,
}
"""``data.dataset`` -> its loader ``(cfg, seed, rng) -> Dataset`` (``memory`` is fit's)."""


def load_dataset(cfg: DataConfig, seed: int) -> Dataset:
    """Load or generate the whole dataset named by ``cfg.dataset`` (:data:`SOURCES`).

    Raises:
        DataError: A missing or malformed file, named with what was expected.
    """
    loader = SOURCES.get(cfg.dataset)
    if loader is None:  # unreachable after config validation
        raise DataError(f"unknown dataset {cfg.dataset!r}; expected one of {sorted(SOURCES)}")
    return loader(cfg, seed, np.random.default_rng([seed, 0]))


def partition_indices(ds: Dataset, cfg: DataConfig, seed: int) -> list[np.ndarray]:
    """Split the training rows over ``cfg.num_clients`` clients per ``cfg.partition``."""
    rng = np.random.default_rng([seed, 1])
    n = len(ds.x_train)
    try:
        if cfg.partition == "iid":
            return part.iid(n, cfg.num_clients, rng)
        if cfg.partition == "column":
            col = cfg.column or "client"
            if col not in ds.groups:
                raise DataError(
                    f"data.column={col!r} is not a column of dataset {cfg.dataset!r}; "
                    f"available: {sorted(ds.groups) or 'none'}"
                )
            if cfg.column_values is not None:
                # Client k owns the rows whose value is column_values[k]. A node may hold
                # only its own clients' rows: other clients are simply empty here.
                values = ds.groups[col].astype(str)
                return [
                    np.flatnonzero(values == str(v)).astype(np.int64) for v in cfg.column_values
                ]
            parts, _ = part.column(ds.groups[col])
            if len(parts) != cfg.num_clients:
                raise DataError(
                    f"data.num_clients={cfg.num_clients} but column {col!r} has "
                    f"{len(parts)} distinct values; set data.num_clients={len(parts)}"
                )
            return parts
        if ds.task != "classification":
            raise DataError(
                f"data.partition={cfg.partition!r} needs class labels, but dataset "
                f"{cfg.dataset!r} is a regression task; use 'iid' or 'column'"
            )
        if cfg.partition == "dirichlet":
            return part.dirichlet(ds.y_train, cfg.num_clients, cfg.alpha, rng)
        return part.shards(
            ds.y_train, cfg.num_clients, rng, shards_per_client=cfg.shards_per_client
        )
    except DataError:
        raise
    except ValueError as exc:
        where = f"data.num_clients={cfg.num_clients}, data.partition={cfg.partition!r}"
        raise DataError(f"{where} on {cfg.dataset!r}: {exc}") from None


@dataclass
class HostData:
    """What one client host keeps: its clients' shards and, optionally, the test set.

    ``rows``, if set, is every shard's ``(x, y)`` in shard order, the shards its views.
    """

    shards: dict[int, Shard]
    info: DatasetInfo
    x_test: np.ndarray | None = None
    y_test: np.ndarray | None = None
    rows: tuple[np.ndarray, np.ndarray] | None = None


def load_host_data(
    cfg: DataConfig, seed: int, client_ids: Sequence[int], *, with_test_set: bool
) -> HostData:
    """Load the dataset and keep only the given clients' shards (copies of the table).

    A client's local test split (``client_test_fraction``) is drawn from its own rows
    with randomness derived from ``(seed, client_id)``. With ``with_test_set`` the
    held-out server test set is kept too, for centralized evaluation.
    """
    test: tuple[np.ndarray, np.ndarray] | None = None
    whole: tuple[np.ndarray, np.ndarray] | None = None
    if cfg.dataset == "synthetic" and cfg.partition == "column" and _natural(cfg):
        rows, test = _synthetic_rows(cfg, seed, client_ids, with_test_set=with_test_set)
        c = cfg.synthetic.num_classes
        info = DatasetInfo((cfg.synthetic.num_features,), c, "classification", c)
        parts: Sequence[Any] = range(cfg.num_clients)
    else:  # the whole table, then this host's rows of it
        ds = load_dataset(cfg, seed)
        parts = partition_indices(ds, cfg, seed)
        kept = list(dict.fromkeys(c for c in client_ids if 0 <= c < len(parts)))
        # One aligned table of this host's rows, the shards its views: no second copy for
        # the trainer's tensor (unless a local test split takes rows out of the shards).
        together, views = gather_rows(ds.x_train, ds.y_train, [parts[c] for c in kept])
        rows = dict(zip(kept, views, strict=True))
        whole = together if cfg.client_test_fraction == 0 and kept == list(client_ids) else None
        info, test = ds.info, (ds.x_test, ds.y_test)
    shards: dict[int, Shard] = {}
    for cid in client_ids:
        if not 0 <= cid < len(parts):
            raise DataError(f"client id {cid} out of range [0, {len(parts)})")
        x, y = rows[cid]
        if len(x) == 0:
            value = cfg.column_values[cid] if cfg.column_values else cid
            raise DataError(
                f"client {cid} ({cfg.column}={value!r}) has no training rows in "
                f"'{cfg.path or cfg.dataset}' on this node; place its actor where its data is "
                "(data.placement) or check data.column_values"
            )
        if cfg.client_test_fraction > 0:
            rng = np.random.default_rng([seed, 2, cid])
            x, y, xt, yt = _split(x, y, cfg.client_test_fraction, rng)
        else:
            xt, yt = x[:0], y[:0]
        shards[cid] = Shard(cid, x, y, xt, yt)  # no copy: no shard keeps a whole table alive
    if with_test_set and test is not None:
        return HostData(shards, info, *test, rows=whole)
    return HostData(shards, info, rows=whole)


def _synthetic_rows(
    cfg: DataConfig, seed: int, client_ids: Sequence[int], *, with_test_set: bool
) -> tuple[dict[int, tuple[np.ndarray, np.ndarray]], tuple[np.ndarray, np.ndarray] | None]:
    s = cfg.synthetic
    return host_rows(
        client_ids,
        cfg.num_clients,
        s.alpha,
        s.beta,
        seed,
        total=cfg.num_samples,
        with_test_set=with_test_set,
        num_features=s.num_features,
        num_classes=s.num_classes,
    )


def _natural(cfg: DataConfig) -> bool:
    """Whether the clients are Synthetic(α, β)'s own devices (a host can make just its own)."""
    return (cfg.column or "client") == "client" and cfg.column_values is None
