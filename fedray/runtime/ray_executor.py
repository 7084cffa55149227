"""``RayExecutor``: client hosts as Ray actors.

Hosts are the plain :class:`~fedray.client.host.ClientHost` made remote here. Each
round the global weights are put in the object store once and the same ref goes to
every host; updates are collected with ``ray.wait`` as hosts finish, with a deadline.
Restarts and dead hosts are the :class:`~fedray.runtime.supervisor.Supervisor`'s.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Iterator, Sequence
from dataclasses import replace
from typing import Any

from fedray.aggregators import Aggregator
from fedray.config import Config
from fedray.data.arrays import InMemory
from fedray.errors import ConfigError, one_line
from fedray.features import Feature
from fedray.records import (
    ClientEval,
    ClientFailure,
    ClientUpdate,
    FitEvent,
    Metrics,
    Params,
    PartialSum,
    RoundInfo,
)
from fedray.runtime import warm
from fedray.runtime.plan import (
    MAX_RERUNS,
    HostPlan,
    auto_layout,
    clients_per_host,
    evaluators,
    fail_all,
    group_clients,
    host_slots,
    least_busy,
)
from fedray.runtime.ray_host import (
    ShardStore,
    host_cpus,
    measure_gpu_share,
    probe_spec,
    reservation,
    start_hosts,
)
from fedray.runtime.stream import evaluate_server, start_error, stream, unwrap
from fedray.runtime.supervisor import Supervisor
from fedray.secagg import SecAggError
from fedray.strategy import ClientOptions

logger = logging.getLogger(__name__)


class RayExecutor:
    """Ray actors hosting the clients; ``runtime.clients_per_actor`` per host (default auto).

    Args:
        config: The validated run config.
        aggregator: The strategy's aggregator (its ``encode`` runs in the hosts).
        client: The strategy's client options (DP-SGD).
        features: The strategy's features, whose client halves run in the hosts.
        pre_aggregate: Hosts send one partial sum each (see :class:`HostSpec`).
        max_update_norm: The hosts' norm check when they pre-aggregate.
        source: The clients' arrays (``fedray.fit``): each shard is put in the object
            store once and handed to its host (and to the host again after a restart).
    """

    def __init__(
        self,
        config: Config,
        aggregator: Aggregator,
        *,
        client: ClientOptions = ClientOptions(),  # noqa: B008 - frozen, immutable
        features: tuple[Feature, ...] = (),
        pre_aggregate: bool = False,
        max_update_norm: float | None = None,
        source: InMemory | None = None,
    ) -> None:
        import ray

        self._ray = ray
        resources, trial = reservation()  # the whole cluster, or a sweep trial's bundles
        total_cpus = float(resources.get("CPU", 1.0))
        gpus = config.runtime.gpus_per_host
        if gpus == "auto":  # a measured share, from here on
            if resources.get("GPU", 0.0) < 1:  # the probe would wait for ever
                raise ConfigError(
                    f"runtime.gpus_per_host='auto': the cluster has {resources.get('GPU', 0.0):g}"
                    " GPUs, and measuring a host takes a whole one; give a share or add GPUs"
                )
            gpus = measure_gpu_share(probe_spec(config, aggregator, client, source, features), 1.0)
            runtime = config.runtime.model_copy(update={"gpus_per_host": gpus})
            config = config.model_copy(update={"runtime": runtime})
        setting = config.runtime.clients_per_actor
        slots = host_slots(resources, gpus)
        per_host = clients_per_host(setting, config.data.num_clients, slots)
        num_hosts = len(group_clients(config.data.num_clients, per_host))
        if config.runtime.balance:
            logger.info(
                "runtime.balance: %d actors, each loading all %d clients; every round's "
                "clients are dealt evenly over them",
                num_hosts,
                config.data.num_clients,
            )
        elif setting == "auto":
            unit = "CPUs" if gpus is None else f"GPU shares of {gpus:g}"
            clients = config.data.num_clients
            logger.info("%s", auto_layout(clients, num_hosts, per_host, slots, unit))
        cpus_per_host = host_cpus(total_cpus, num_hosts, trial)
        threads = max(1, math.floor(total_cpus / num_hosts))
        # In-memory shards go into the object store once, each; a store actor keeps
        # their refs, so a restarted host gets its shards back from the object store.
        store_name, self._store = f"fedray-shards-{os.getpid()}-{id(self)}", None
        host_refs: list[list[Any]] = []
        sources = None
        if source is not None:
            refs = {c: ray.put(xy) for c, xy in source.shards.items()}
            test_ref = None if source.test is None else ray.put(source.test)

            def sources(g: tuple[int, ...], with_test_set: bool) -> InMemory:
                part = source.for_host(g, with_test_set=with_test_set)
                test = [test_ref] if part.test is not None else []
                host_refs.append([refs[c] for c in g] + test)
                return replace(part, shards=dict.fromkeys(g), test=None)  # the refs travel apart

        self.plan = HostPlan.make(
            config,
            aggregator,
            per_host,
            sources=sources,
            evaluators=evaluators(config.evaluation.hosts, slots),
            client=client,
            features=features,
            threads=threads,
            pre_aggregate=pre_aggregate,
            max_update_norm=max_update_norm,
        )
        groups = self.plan.groups
        if source is not None:
            store = ray.remote(ShardStore).options(num_cpus=0, name=store_name)
            self._store = store.remote(host_refs)
        self._warm = config.runtime.address == warm.ADDRESS  # `fedray up`'s loaded hosts
        self.hosts = (
            warm.acquire(list(self.plan.specs), store_name)
            if self._warm
            else start_hosts(config, self.plan.specs, store_name, cpus_per_host, trial)
        )
        self._num_clients = config.data.num_clients
        self._round_timeout_s = config.runtime.round_timeout_s
        self.supervisor = Supervisor(self.hosts, groups, config.runtime.restart_timeout_s)
        self._tickets: dict[Any, tuple[int, int]] = {}  # FedBuff: in-flight ref -> (client, host)
        try:
            self.host_info = ray.get([h.ready.remote() for h in self.hosts])
        except ray.exceptions.RayTaskError as exc:
            self.close()
            raise start_error(exc, "a client host") from None
        logger.info(
            "%d client hosts ready (%d clients, %.2f CPU and %d TF threads each)",
            len(self.hosts),
            self._num_clients,
            cpus_per_host,
            threads,
        )

    @property
    def num_clients(self) -> int:
        """Number of registered clients."""
        return self._num_clients

    def placement(self) -> dict[int, str]:
        """Which Ray node runs each client (node ids)."""
        return {cid: str(info["node_id"]) for info in self.host_info for cid in info["clients"]}

    def initial_params(self) -> Params:
        """Weights of host 0's freshly built model."""
        return list(self._ray.get(self.hosts[0].initial_params.remote()))

    def broadcast(self, params: Params, downs: tuple[Params | None, ...] | None = None) -> Any:
        """Put ``params`` and the features' downlinks in the object store once, for every host."""
        return self._ray.put(params), (self._ray.put(downs) if downs else None)

    def _up(self, exclude: int | None = None) -> list[int]:
        """The hosts that can take a call now."""
        return [
            i
            for i in range(len(self.hosts))
            if i != exclude and self.supervisor.unavailable(i) is None
        ]

    def _calls(
        self, client_ids: Sequence[int], method: str, *args: Any
    ) -> tuple[dict[Any, tuple[int, list[int]]], list[ClientFailure]]:
        """Start ``method`` on each host with sampled clients; skip hosts that are down.

        A balanced plan deals the clients over the hosts that are up, so a host that is
        down costs no client while another host is up.
        """
        calls: dict[Any, tuple[int, list[int]]] = {}
        skipped: list[ClientFailure] = []
        up = self._up() if self.plan.balanced else None
        if up == []:
            reason = self.supervisor.unavailable(0) or "no host is up"
            return calls, fail_all(client_ids, reason, "unavailable", 0)
        for h, ids in self.plan.by_host(client_ids, up).items():
            down = self.supervisor.unavailable(h)
            if down is not None:
                skipped.extend(fail_all(ids, down, "unavailable", h))
            else:
                calls[getattr(self.hosts[h], method).remote(ids, *args)] = (h, ids)
        return calls, skipped

    def fit(self, client_ids: Sequence[int], params: Any, info: RoundInfo) -> Iterator[FitEvent]:
        """Start every sampled client's training and yield updates as they finish.

        The clients of a host that dies mid-round are run again on the restarted host
        (task re-execution), up to :data:`~fedray.runtime.plan.MAX_RERUNS` times, while
        the round's deadline allows; each re-execution is yielded as a
        :class:`~fedray.records.HostRecovery` before its clients' results. A balanced
        plan re-runs them at once on another host that is up, without waiting for the
        restart.
        """
        self.supervisor.await_restarts()
        params_ref, downs_ref = params
        calls, skipped = self._calls(client_ids, "fit", params_ref, info, downs_ref)
        runs: dict[tuple[int, ...], int] = {}  # re-executions so far, per lost call

        def rerun(index: int, ids: list[int], deadline: float | None) -> Any:
            dispatch = runs.get(tuple(ids), 0) + 1
            if dispatch > MAX_RERUNS:
                return None
            others = self._up(exclude=index) if self.plan.balanced else []
            if others:  # any host serves any client: the least busy other one takes them
                index = least_busy(others, (h for h, _ in calls.values()))
            else:
                self.supervisor.await_restarts(only={index}, until=deadline)
                if self.supervisor.unavailable(index) is not None:
                    return None
            runs[tuple(ids)] = dispatch
            again = replace(info, dispatch=dispatch)
            return self.hosts[index].fit.remote(ids, params_ref, again, downs_ref), index

        yield from skipped
        yield from stream(
            self._ray, self.hosts, self.supervisor, calls, "fit", self._round_timeout_s, rerun
        )

    def call(
        self, client_ids: Sequence[int], step: str, payload: dict[int, Any], info: RoundInfo
    ) -> dict[int, Any]:
        """One secure-aggregation step on every host with these clients, in parallel.

        Only each host's own clients' payloads travel to it; a host that fails or misses
        ``runtime.round_timeout_s`` drops its clients from the protocol.
        """
        ray = self._ray
        if step == "advertise":
            self.supervisor.await_restarts()  # restarted hosts join the new round
        calls = {}
        for h, ids in self.plan.by_host(client_ids).items():
            if self.supervisor.unavailable(h) is None:
                part = {c: payload[c] for c in ids if c in payload}
                calls[self.hosts[h].secure_step.remote(step, ids, part, info)] = h
        out: dict[int, Any] = {}
        ready, _ = ray.wait(list(calls), num_returns=len(calls), timeout=self._round_timeout_s)
        for ref in ready:
            try:
                out.update(ray.get(ref))
            except ray.exceptions.RayTaskError as exc:
                cause = unwrap(exc)
                if isinstance(cause, SecAggError):  # tampering: stop the round, loudly
                    raise cause from None
                logger.warning("secure aggregation step %s failed on a host: %s", step, cause)
            except ray.exceptions.RayActorError:
                self.supervisor.mark_down(calls[ref])
        return out

    def _on_hosts(self, method: str, *args: Any) -> list[Any]:
        """Call ``method`` on every host that is up; a host that dies is marked down."""
        ray = self._ray
        self.supervisor.await_restarts()
        calls = {
            getattr(h, method).remote(*args): i
            for i, h in enumerate(self.hosts)
            if self.supervisor.unavailable(i) is None
        }
        out = []
        for ref, index in calls.items():
            try:
                out.append(ray.get(ref))
            except ray.exceptions.RayActorError:
                self.supervisor.mark_down(index)
        return out

    def save_client_state(self, server_round: int) -> int:
        """Every host saves its clients' state for this checkpoint; how many clients.

        A host that is down keeps its clients' last saved state, which is theirs still
        (they could not train since); a restarted host reloads it
        (:meth:`~fedray.runtime.supervisor.Supervisor.restore_host_state`).
        """
        saved = sum(int(n) for n in self._on_hosts("save_client_state", server_round))
        self.supervisor.saved_round = server_round
        return saved

    def load_client_state(self, server_round: int) -> int:
        """Every host reloads its clients' state of that checkpoint; how many clients."""
        self.supervisor.saved_round = server_round
        return sum(int(n) for n in self._on_hosts("load_client_state", server_round))

    def prune_client_state(self, server_round: int) -> None:
        """Every host drops its saved state older than that checkpoint's."""
        self._on_hosts("prune_client_state", server_round)

    def submit(self, client_id: int, params: Any, info: RoundInfo) -> Any:
        """Start one client's training on its host; the ticket is the result's ref.

        A balanced plan sends it to the host with the fewest clients in flight.
        """
        params_ref, downs_ref = params
        index = self.plan.host_of[client_id]
        up = self._up() if self.plan.balanced else []
        if up:
            index = least_busy(up, (h for _, h in self._tickets.values()))
        ref = self.hosts[index].fit.remote([client_id], params_ref, info, downs_ref)
        self._tickets[ref] = (client_id, index)
        return ref

    def wait(self, tickets: list[Any]) -> list[tuple[Any, ClientUpdate | ClientFailure]]:
        """Block until the first ticket finishes (``ray.wait``); return it."""
        ray = self._ray
        ready, _ = ray.wait(tickets, num_returns=1)
        out: list[tuple[Any, ClientUpdate | ClientFailure]] = []
        for ref in ready:
            cid, index = self._tickets.pop(ref)
            try:
                result = ray.get(ref)[0]
                if isinstance(result, PartialSum):
                    raise RuntimeError(
                        "asynchronous training needs every update: pre_aggregate is on"
                    )
                out.append((ref, result))
            except ray.exceptions.RayError as exc:
                reason = f"host {index} failed: {one_line(unwrap(exc))}"
                out.append((ref, ClientFailure(cid, reason, "host", index)))
        return out

    def evaluate(self, params: Any) -> Metrics:
        """Centralized evaluation on the server test set ({} when its hosts are down).

        When every metric is a mean, the plan's evaluators each take a part of the
        test set side by side (a part whose host fails goes to another); otherwise
        host 0 evaluates all of it. The result is the same either way.
        """
        self.supervisor.await_restarts()
        batches = int(self.host_info[0].get("server_parts", 0))  # 0: not in parts
        return evaluate_server(
            self._ray, self.hosts, self.supervisor, params[0], self.plan.evaluators, batches
        )

    def evaluate_clients(
        self, client_ids: Sequence[int], params: Any, split: str = "test"
    ) -> list[ClientEval | ClientFailure]:
        """Federated evaluation on the clients' local ``test`` splits or ``train`` shards."""
        self.supervisor.await_restarts()
        calls, skipped = self._calls(client_ids, "evaluate_clients", params[0], split)
        return [*skipped, *stream(self._ray, self.hosts, self.supervisor, calls, "evaluate")]

    def export(self, params: Params) -> bytes:
        """The final model as ``.keras`` bytes, saved by host 0."""
        self.supervisor.await_restarts()
        return bytes(self._ray.get(self.hosts[0].export.remote(params)))

    def predict(self, params: Params, x: list[list[float]]) -> list[list[float]]:
        """Predictions of the model with ``params`` (computed on host 0)."""
        import numpy as np

        return np.asarray(self._ray.get(self.hosts[0].predict.remote(params, x))).tolist()  # type: ignore[no-any-return]

    def close(self) -> None:
        """Kill the host actors (and the shard store, which frees the shards)."""
        if self._warm:  # give the warm hosts back, empty
            warm.release(self.hosts)
        for h in [] if self._warm else self.hosts:
            self._ray.kill(h)
        self.hosts = []
        if self._store is not None:
            self._ray.kill(self._store)
            self._store = None
