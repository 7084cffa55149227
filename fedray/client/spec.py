"""What a client host is given: its spec, and how clients are grouped into hosts."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from fedray.aggregators import Aggregator, Summable
from fedray.config import Config
from fedray.records import ClientOptions

if TYPE_CHECKING:
    from fedray.client.trainer import Trainer
    from fedray.data import HostData
    from fedray.memory import InMemory


@dataclass(frozen=True)
class HostSpec:
    """Everything a host needs to start: the config and the clients it serves.

    Attributes:
        config: The validated run config.
        client_ids: Global ids of the clients this host owns.
        aggregator: The strategy's aggregator, whose ``encode`` runs here.
        with_test_set: Hold the server test set for centralized evaluation.
        threads: TensorFlow intra/inter-op threads for this host.
        client: The strategy's client options (e.g. FedProx's ``proximal_mu``).
        pre_aggregate: Send one :class:`~fedray.records.PartialSum` of the valid
            updates per ``fit`` call instead of every update (the aggregator must be
            :class:`~fedray.aggregators.Summable`).
        max_update_norm: With ``pre_aggregate``, the host rejects updates longer than
            this before summing (the driver's check, moved to where the updates are).
        source: This host's clients' arrays (``fedray.fit``) instead of ``data.*``.
        trainer: Makes the host's trainer from the spec and its data; None is the
            compiled Keras model (:class:`~fedray.client.trainer.KerasTrainer`).
    """

    config: Config
    client_ids: tuple[int, ...]
    aggregator: Aggregator
    with_test_set: bool = False
    threads: int = 1
    client: ClientOptions = field(default_factory=ClientOptions)
    pre_aggregate: bool = False
    max_update_norm: float | None = None
    source: InMemory | None = None
    trainer: Callable[[HostSpec, HostData], Trainer] | None = None

    def __post_init__(self) -> None:
        if self.pre_aggregate and not isinstance(self.aggregator, Summable):
            raise ValueError(
                f"pre_aggregate needs a Summable aggregator (a linear rule), got "
                f"{type(self.aggregator).__name__}"
            )


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
