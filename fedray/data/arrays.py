"""Clients' data already in memory: ``fedray.fit(model_fn, clients, ...)``.

The Keras way to train on one's own arrays, federated: each client is an ``(x, y)``
pair, a ``tf.data.Dataset``, or the rows of a DataFrame that share a client column.
The driver checks and casts the shards once (as the config's datasets are), puts
each into Ray's object store once, and each host takes its own clients' shards from
there and keeps them; nothing travels again.

Layer 3: an edge, next to :mod:`fedray.data`.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from fedray.config import DataConfig
from fedray.data import DatasetInfo, HostData, Shard, _finish, _split
from fedray.errors import DataError, one_line

logger = logging.getLogger(__name__)

XY = tuple[np.ndarray, np.ndarray]


@dataclass(frozen=True)
class InMemory:
    """Shards given in Python instead of a dataset named by the config.

    Attributes:
        shards: Client id -> ``(x, y)``, cast as the model expects; on Ray, a host's
            spec carries None here and the arrays arrive from the object store.
        info: Input shape, outputs and task, from all the shards.
        test: The server's test set ``(x, y)``, or None (no ``eval/*``).
        model_fn: Builds the Keras model with no arguments (compiled or not); None
            builds ``model.name`` from the config.
    """

    shards: Mapping[int, XY | None]
    info: DatasetInfo
    test: XY | None = None
    model_fn: Callable[[], Any] | None = field(default=None, compare=False)

    def for_host(self, client_ids: Sequence[int], *, with_test_set: bool) -> InMemory:
        """Only what one host needs: its clients' shards (and the server test set if asked)."""
        return replace(
            self,
            shards={c: self.shards[c] for c in client_ids},
            test=self.test if with_test_set else None,
        )

    def filled(self, values: Sequence[Any]) -> InMemory:
        """The same with the shards (then the test set, if any) taken from ``values``."""
        ids = list(self.shards)
        shards = dict(zip(ids, values[: len(ids)], strict=True))
        test = values[len(ids)] if len(values) > len(ids) else None
        return replace(self, shards=shards, test=test)

    def host_data(self, cfg: DataConfig, seed: int) -> HostData:
        """This host's shards as :func:`fedray.data.load_host_data` would give them.

        A client's own test split (``data.client_test_fraction``) comes from its rows
        with randomness from ``(seed, client id)``.
        """
        shards: dict[int, Shard] = {}
        for cid, xy in self.shards.items():
            if xy is None:
                raise DataError(f"client {cid}: its shard never reached this host")
            x, y = xy
            if cfg.client_test_fraction > 0:
                x, y, xt, yt = _split(
                    x, y, cfg.client_test_fraction, np.random.default_rng([seed, 2, cid])
                )
            else:
                xt, yt = x[:0], y[:0]
            shards[cid] = Shard(cid, x, y, xt, yt)
        if self.test is None:
            return HostData(shards, self.info)
        return HostData(shards, self.info, self.test[0], self.test[1])


def _arrays(client: Any, name: str) -> XY:
    """``(x, y)`` of ``name`` (``clients[i]`` or ``test``): arrays or a ``tf.data.Dataset``."""
    if isinstance(client, tuple | list) and len(client) == 2:
        return np.asarray(client[0]), np.asarray(client[1])
    if hasattr(client, "as_numpy_iterator") and hasattr(client, "element_spec"):
        spec = client.element_spec
        if not isinstance(spec, tuple) or len(spec) != 2:
            raise DataError(
                f"{name}: the dataset's elements are not (x, y) pairs but {spec}; "
                "expected a tf.data.Dataset of (x, y) elements"
            )
        batched = getattr(spec[0], "shape", None)
        xs, ys = [], []
        try:
            for x, y in client.as_numpy_iterator():
                xs.append(np.asarray(x))
                ys.append(np.asarray(y))
        except Exception as exc:  # the user's pipeline (a map, a generator) raised
            raise DataError(f"{name}: reading the dataset raised {one_line(exc)}") from None
        if not xs:
            raise DataError(f"{name}: the dataset is empty; expected (x, y) elements")
        unbatched = batched is not None and len(batched) == xs[0].ndim and batched[0] is not None
        join = np.stack if unbatched or xs[0].ndim == 0 else np.concatenate
        return join(xs), join(ys)
    raise DataError(
        f"{name} is a {type(client).__name__}; expected an (x, y) pair of arrays "
        "or a tf.data.Dataset of (x, y) elements"
    )


def _from_frame(frame: Any, client_column: str, label: str) -> list[XY]:
    """One ``(x, y)`` per value of ``client_column``, in sorted order of the values."""
    for key, name in (("client_column", client_column), ("label", label)):
        if name not in frame.columns:
            raise DataError(
                f"{key}={name!r} is not a column of the DataFrame; its columns: "
                f"{', '.join(map(str, frame.columns))}"
            )
    features = [c for c in frame.columns if c not in (client_column, label)]
    return [
        (rows[features].to_numpy(), rows[label].to_numpy())
        for _, rows in frame.groupby(client_column, sort=True)
    ]


def from_clients(
    clients: Any,
    *,
    test: Any = None,
    model_fn: Callable[[], Any] | None = None,
    data: DataConfig | None = None,
    client_column: str | None = None,
    label: str = "label",
) -> InMemory:
    """Check, cast and describe the clients' shards (``fedray.fit``'s ``clients``).

    Args:
        clients: A list of ``(x, y)`` pairs or of ``tf.data.Dataset`` s, one per
            client; or a DataFrame with ``client_column``.
        test: The server's test set, ``(x, y)`` or a dataset; None for none.
        model_fn: The Keras model builder, kept for the hosts.
        data: ``data.task`` and ``data.num_classes`` decide the task as for files.
        client_column: With a DataFrame, the column naming each row's client.
        label: With a DataFrame, the target column; the others are the features.

    Raises:
        DataError: A shard is empty, not numeric, or its x and y lengths differ.
    """
    if hasattr(clients, "groupby"):
        if client_column is None:
            raise DataError("clients is a DataFrame: pass client_column= naming each row's client")
        pairs = _from_frame(clients, client_column, label)
    elif isinstance(clients, Iterable) and not isinstance(clients, str | bytes):
        pairs = [_arrays(c, f"clients[{i}]") for i, c in enumerate(clients)]
    else:
        raise DataError(f"clients is a {type(clients).__name__}; expected a list of clients")
    if not pairs:
        raise DataError("clients is empty; expected at least one client")
    for i, (x, y) in enumerate(pairs):
        if len(x) != len(y) or len(x) == 0:
            raise DataError(
                f"clients[{i}]: x has {len(x)} rows and y has {len(y)}; expected equal, > 0"
            )
    cfg = data or DataConfig()
    xt, yt = _arrays(test, "test") if test is not None else (pairs[0][0][:0], pairs[0][1][:0])
    whole = _finish(
        np.concatenate([x for x, _ in pairs]),
        np.concatenate([np.asarray(y) for _, y in pairs]),
        xt,
        yt,
        cfg,
        np.random.default_rng(0),
        "fedray.fit(clients=...)",
    )
    shards: dict[int, XY | None] = {}
    start = 0
    for i, (x, _) in enumerate(pairs):  # the cast rows of client i, copied out once
        stop = start + len(x)
        shards[i] = (whole.x_train[start:stop].copy(), whole.y_train[start:stop].copy())
        start = stop
    test_xy = (whole.x_test, whole.y_test) if test is not None else None
    return InMemory(shards=shards, info=whole.info, test=test_xy, model_fn=model_fn)
