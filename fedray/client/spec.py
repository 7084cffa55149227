"""What a client host is given: its spec (data, model, training, faults), never the run."""

from __future__ import annotations

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
