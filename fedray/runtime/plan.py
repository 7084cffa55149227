"""How clients are packed into hosts: one :class:`HostPlan` serves both executors.

``runtime.clients_per_actor: auto`` keeps one host per client while the CPUs allow and
packs evenly beyond that; hosts get contiguous blocks of client ids, so a client's host
is known from its id alone.

With ``runtime.balance`` every host loads every client's data instead, and each call's
clients are dealt evenly over the hosts that are up (:meth:`HostPlan.by_host`): a round
then waits for ``ceil(k / hosts)`` clients on each host, not for the unluckiest host's
share of a random sample (sampling 50 of 1,000 clients over two homes of 500 gives the
busier home 27.7 clients on average, 11% more than an even 25).
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from functools import cached_property
from typing import TYPE_CHECKING, Any, TypeVar

from fedray.client.spec import HostSpec
from fedray.errors import ConfigError
from fedray.records import ClientFailure

if TYPE_CHECKING:
    from fedray.aggregators import Aggregator
    from fedray.config import Config
    from fedray.data.arrays import InMemory


MAX_RERUNS = 2
"""How often one round attempt re-runs the clients of a host that died under them."""

T = TypeVar("T")


def tag(results: Sequence[T], host: int) -> list[T]:
    """Mark each failure in ``results`` with the host that served it."""
    return [replace(r, host=host) if isinstance(r, ClientFailure) else r for r in results]


def fail_all(client_ids: Sequence[int], reason: str, cause: str, host: int) -> list[ClientFailure]:
    """The same failure for each of a host's clients (its call was lost)."""
    return [ClientFailure(c, reason, cause, host) for c in client_ids]


def clients_per_host(setting: int | str, num_clients: int, cpu_slots: float) -> int:
    """Resolve ``runtime.clients_per_actor``; ``"auto"`` packs only beyond the CPU slots.

    ``auto`` keeps one host per client while ``num_clients <= cpu_slots`` and otherwise
    spreads the clients evenly over ``floor(cpu_slots)`` hosts.

    >>> [clients_per_host("auto", n, 2.0) for n in (2, 3, 8)], clients_per_host(3, 8, 2.0)
    ([1, 2, 4], 3)
    """
    if setting != "auto":
        return int(setting)
    hosts = max(1, min(num_clients, math.floor(cpu_slots)))
    return math.ceil(num_clients / hosts)


def auto_layout(num_clients: int, num_hosts: int, per_host: int, slots: float, unit: str) -> str:
    """The line saying what ``clients_per_actor: auto`` chose for ``slots`` ``unit``.

    Only a packed layout suggests one actor per client: when each client has its own
    actor already, there is nothing to set.

    >>> auto_layout(2, 2, 1, 2.0, "CPUs")
    'runtime.clients_per_actor=auto: 2 clients on 2 actors, one per client, for 2 CPUs'
    >>> auto_layout(8, 2, 4, 2.0, "CPUs").partition("; ")[2]
    'set runtime.clients_per_actor=1 for one actor per client'
    """
    head = f"runtime.clients_per_actor=auto: {num_clients} clients on {num_hosts} actors"
    if per_host == 1:
        return f"{head}, one per client, for {slots:g} {unit}"
    return (
        f"{head} ({per_host} per actor) for {slots:g} {unit}; "
        "set runtime.clients_per_actor=1 for one actor per client"
    )


def host_slots(resources: Mapping[str, float], gpus_per_host: float | None) -> float:
    """How many hosts fit at once: the CPUs, or with GPU shares ``GPUs / share``.

    >>> host_slots({"CPU": 16.0, "GPU": 2.0}, None), host_slots({"CPU": 16.0, "GPU": 2.0}, 0.25)
    (16.0, 8.0)

    Raises:
        ConfigError: Not even one host's GPU share fits.
    """
    if gpus_per_host is None:
        return float(resources.get("CPU", 1.0))
    slots = float(resources.get("GPU", 0.0)) / gpus_per_host
    if slots < 1:
        raise ConfigError(
            f"runtime.gpus_per_host={gpus_per_host:g}: the cluster has "
            f"{resources.get('GPU', 0.0):g} GPUs, too few for one host; lower it or add GPUs"
        )
    return slots


EVALUATORS = 4
"""``evaluation.hosts: auto``'s most: each evaluating host holds the whole test set."""


def evaluators(setting: int | str, cpu_slots: float) -> int:
    """Resolve ``evaluation.hosts``: ``auto`` is one per CPU slot, at most :data:`EVALUATORS`.

    Each one holds the server test set, so more than a few would cost memory for a
    shrinking gain: four hosts already quarter the evaluation.

    >>> evaluators("auto", 2.0), evaluators("auto", 16.0), evaluators(8, 2.0)
    (2, 4, 8)
    """
    if setting != "auto":
        return int(setting)
    return max(1, min(EVALUATORS, math.floor(cpu_slots)))


def least_busy(up: Sequence[int], in_flight: Iterable[int]) -> int:
    """The host of ``up`` with the fewest calls in flight (``in_flight``: their hosts).

    >>> least_busy([0, 1, 2], [0, 2, 0]), least_busy([2, 0], [])
    (1, 2)
    """
    busy = Counter(in_flight)
    return min(up, key=lambda h: busy[h])


def group_clients(num_clients: int, clients_per_host: int) -> list[tuple[int, ...]]:
    """Assign client ids to hosts in contiguous blocks of ``clients_per_host``.

    >>> group_clients(5, 2)
    [(0, 1), (2, 3), (4,)]
    """
    if clients_per_host < 1:
        raise ValueError(f"clients_per_host must be >= 1, got {clients_per_host}")
    return [
        tuple(range(s, min(s + clients_per_host, num_clients)))
        for s in range(0, num_clients, clients_per_host)
    ]


@dataclass(frozen=True)
class HostPlan:
    """Which clients each host serves, and the spec it starts from.

    Attributes:
        specs: One :class:`~fedray.client.spec.HostSpec` per host.
        balanced: Every host serves every client (``runtime.balance``); each call's
            clients are dealt over the hosts instead of going to their home host.
        evaluators: Hosts ``0 .. evaluators - 1`` hold the server test set and share
            its evaluation (:meth:`fedray.client.host.ClientHost.evaluate_part`).
    """

    specs: tuple[HostSpec, ...]
    balanced: bool = False
    evaluators: int = 1

    @classmethod
    def make(
        cls,
        config: Config,
        aggregator: Aggregator,
        per_host: int,
        *,
        sources: Callable[[tuple[int, ...], bool], InMemory | None] | None = None,
        evaluators: int = 1,
        **spec: Any,
    ) -> HostPlan:
        """Pack ``config``'s clients ``per_host`` to a host.

        ``sources(group, with_test_set)`` gives a host its in-memory data (``fedray.fit``);
        ``spec`` holds the other :class:`~fedray.client.spec.HostSpec` fields. Under
        ``runtime.balance`` there are as many hosts, but each one's group is every client.
        The first ``evaluators`` hosts (at most all; one under ``data.placement``, whose
        nodes may hold different files) load the server test set.
        """
        groups = group_clients(config.data.num_clients, per_host)
        balanced = config.runtime.balance
        if balanced:
            groups = [tuple(range(config.data.num_clients))] * len(groups)
        evaluators = 1 if config.data.placement else max(1, min(evaluators, len(groups)))
        return cls(
            tuple(
                HostSpec.from_config(
                    config,
                    g,
                    aggregator,
                    with_test_set=i < evaluators,
                    source=sources(g, i < evaluators) if sources is not None else None,
                    **spec,
                )
                for i, g in enumerate(groups)
            ),
            balanced,
            evaluators,
        )

    @property
    def groups(self) -> list[tuple[int, ...]]:
        """Each host's client ids."""
        return [tuple(s.client_ids) for s in self.specs]

    @cached_property
    def host_of(self) -> dict[int, int]:
        """The home host of every client (the first host that serves it)."""
        out: dict[int, int] = {}
        for i, s in enumerate(self.specs):
            for cid in s.client_ids:
                out.setdefault(cid, i)
        return out

    def by_host(
        self, client_ids: Sequence[int], up: Sequence[int] | None = None
    ) -> dict[int, list[int]]:
        """``client_ids`` grouped by the host that serves them in this call.

        Without balance a client goes to its home host (hosts in first-seen order). A
        balanced plan deals the clients in turn over the hosts in ``up`` (default: all),
        so no host gets more than one client more than another.

        >>> from fedray import config
        >>> from fedray.aggregators import Mean
        >>> plan = HostPlan.make(config.load({"data": {"num_clients": 5}}), Mean(), 2)
        >>> plan.groups, plan.by_host([4, 0, 1])
        ([(0, 1), (2, 3), (4,)], {2: [4], 0: [0, 1]})
        >>> cfg = config.load({"data": {"num_clients": 5}, "runtime": {"balance": True}})
        >>> HostPlan.make(cfg, Mean(), 2).by_host([4, 0, 1, 3], up=[0, 2])
        {0: [4, 1], 2: [0, 3]}
        """
        out: dict[int, list[int]] = {}
        if self.balanced:
            hosts = list(range(len(self.specs)) if up is None else up)
            for k, cid in enumerate(client_ids):
                out.setdefault(hosts[k % len(hosts)], []).append(cid)
            return out
        for cid in client_ids:
            out.setdefault(self.host_of[cid], []).append(cid)
        return out
