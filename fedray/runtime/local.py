"""``LocalExecutor``: the executor contract, in-process, without Ray (tests, debugging)."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import replace
from typing import Any

from fedray.aggregators import Aggregator
from fedray.client.host import ClientHost
from fedray.config import Config
from fedray.data.arrays import InMemory
from fedray.errors import HostFaultError
from fedray.features import Feature
from fedray.records import (
    ClientEval,
    ClientFailure,
    ClientUpdate,
    FitEvent,
    HostRecovery,
    Metrics,
    Params,
    PartialSum,
    RoundInfo,
)
from fedray.runtime.plan import MAX_RERUNS, HostPlan, fail_all, tag
from fedray.runtime.plan import clients_per_host as resolve
from fedray.strategy import ClientOptions


class LocalExecutor:
    """Runs client hosts in this process, one after another.

    Args:
        config: The validated run config.
        aggregator: The strategy's aggregator (its ``encode`` runs in the hosts).
        clients_per_host: Clients per host; defaults to ``runtime.clients_per_actor``
            (``auto`` puts every client in one in-process host).
        client: The strategy's client options (DP-SGD).
        features: The strategy's features, whose client halves run in the hosts.
        pre_aggregate: Hosts send one partial sum each (see :class:`HostSpec`).
        max_update_norm: The hosts' norm check when they pre-aggregate.
        source: The clients' arrays (``fedray.fit``) instead of ``data.*``.
    """

    def __init__(
        self,
        config: Config,
        aggregator: Aggregator,
        *,
        clients_per_host: int | None = None,
        client: ClientOptions = ClientOptions(),  # noqa: B008 - frozen, immutable
        features: tuple[Feature, ...] = (),
        pre_aggregate: bool = False,
        max_update_norm: float | None = None,
        source: InMemory | None = None,
    ) -> None:
        per_host = clients_per_host or resolve(
            config.runtime.clients_per_actor, config.data.num_clients, cpu_slots=1
        )
        self.plan = HostPlan.make(
            config,
            aggregator,
            per_host,
            sources=(lambda g, test: source.for_host(g, with_test_set=test)) if source else None,
            client=client,
            features=features,
            pre_aggregate=pre_aggregate,
            max_update_norm=max_update_norm,
        )
        self.hosts = [ClientHost(spec) for spec in self.plan.specs]
        self.host_info = [h.ready() for h in self.hosts]
        self._num_clients = config.data.num_clients
        self._tickets = 0  # submit/wait (FedBuff): results of in-process "async" training
        self._done: dict[int, ClientUpdate | ClientFailure] = {}

    @property
    def num_clients(self) -> int:
        """Number of registered clients."""
        return self._num_clients

    def initial_params(self) -> Params:
        """Weights of host 0's freshly built model."""
        return self.hosts[0].initial_params()

    def broadcast(
        self, params: Params, downs: tuple[Params | None, ...] | None = None
    ) -> tuple[Params, tuple[Params | None, ...] | None]:
        """In-process: the handle is the params list and the downlinks themselves."""
        return params, downs

    def _by_host(self, client_ids: Sequence[int]) -> list[tuple[ClientHost, list[int]]]:
        return [(self.hosts[h], ids) for h, ids in self.plan.by_host(client_ids).items()]

    def fit(self, client_ids: Sequence[int], handle: Any, info: RoundInfo) -> Iterator[FitEvent]:
        """Train the sampled clients, host by host.

        A host whose call is lost (a simulated host crash) has its clients run again,
        up to :data:`~fedray.runtime.plan.MAX_RERUNS` times, as on Ray.
        """
        params, downs = handle
        for h, ids in self.plan.by_host(client_ids).items():
            run = info
            while True:
                try:
                    results = self.hosts[h].fit(ids, params, run, downs)
                except HostFaultError as exc:
                    if exc.kind == "hang":  # as on Ray: the deadline kills it, no time is left
                        yield from fail_all(ids, f"host {h}: {exc}", "timeout", h)
                        break
                    if run.dispatch >= MAX_RERUNS:
                        yield from fail_all(ids, f"host {h} lost: {exc}", "host", h)
                        break
                    yield HostRecovery(h, tuple(ids), str(exc))
                    run = replace(run, dispatch=run.dispatch + 1)
                    continue
                yield from tag(results, h)
                break

    def call(
        self, client_ids: Sequence[int], step: str, payload: dict[int, Any], info: RoundInfo
    ) -> dict[int, Any]:
        """One secure-aggregation step for each client, host by host."""
        out: dict[int, Any] = {}
        for host, ids in self._by_host(client_ids):
            out.update(host.secure_step(step, ids, payload, info))
        return out

    def submit(self, client_id: int, handle: Any, info: RoundInfo) -> int:
        """In-process: train now; the ticket is a sequence number (FIFO completion)."""
        result = next(
            r for r in self.fit([client_id], handle, info) if not isinstance(r, HostRecovery)
        )
        if isinstance(result, PartialSum):
            raise RuntimeError("asynchronous training needs every update: pre_aggregate is on")
        self._tickets += 1
        self._done[self._tickets] = result
        return self._tickets

    def wait(self, tickets: list[Any]) -> list[tuple[Any, ClientUpdate | ClientFailure]]:
        """The oldest submitted ticket (in-process training finished on submit)."""
        first = min(tickets)
        return [(first, self._done.pop(first))]

    def save_client_state(self, server_round: int) -> int:
        """Every host saves its clients' state for this checkpoint; how many clients."""
        return sum(host.save_client_state(server_round) for host in self.hosts)

    def load_client_state(self, server_round: int) -> int:
        """Every host reloads its clients' state of that checkpoint; how many clients."""
        return sum(host.load_client_state(server_round) for host in self.hosts)

    def prune_client_state(self, server_round: int) -> None:
        """Every host drops its saved state older than that checkpoint's."""
        for host in self.hosts:
            host.prune_client_state(server_round)

    def evaluate(self, handle: Any) -> Metrics:
        """Centralized evaluation on host 0's test set."""
        return self.hosts[0].evaluate(handle[0])

    def evaluate_clients(
        self, client_ids: Sequence[int], handle: Any, split: str = "test"
    ) -> list[ClientEval | ClientFailure]:
        """Federated evaluation on the clients' local ``test`` splits or ``train`` shards."""
        out: list[ClientEval | ClientFailure] = []
        for host, ids in self._by_host(client_ids):
            out.extend(host.evaluate_clients(ids, handle[0], split))
        return out

    def export(self, params: Params) -> bytes:
        """The final model as ``.keras`` bytes."""
        return self.hosts[0].export(params)

    def predict(self, params: Params, x: list[list[float]]) -> list[list[float]]:
        """Predictions of the model with ``params``."""
        import numpy as np

        return np.asarray(self.hosts[0].predict(params, np.asarray(x))).tolist()  # type: ignore[no-any-return]

    def close(self) -> None:
        """Drop the hosts."""
        self.hosts.clear()
