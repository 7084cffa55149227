"""What a client host is given: its spec (data, model, training, faults), never the run."""

from __future__ import annotations

import secrets
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

from fedray.aggregators import Aggregator, LinearAggregator
from fedray.client.devices import GpuShare
from fedray.config import AttackConfig, ClientConfig, Config, DataConfig, FaultsConfig, ModelConfig
from fedray.features import Feature, LocalObjective
from fedray.features.base import local_objective
from fedray.privacy import DPSGD
from fedray.records import MeanStates, Metrics, Params, RoundInfo
from fedray.strategy import ClientOptions

if TYPE_CHECKING:
    from fedray.data import HostData
    from fedray.data.arrays import InMemory


@dataclass(frozen=True)
class TrainJob:
    """One client's training in a round, as the host planned it.

    Attributes:
        cid: The client.
        steps: Local steps it runs (fewer when it straggles).
        seed: Its shuffle seed, from (seed, round, id).
        noise_seed: DP-SGD's batch-and-noise seed (zeros without DP-SGD).
        offset: The client's gradient offset ``o_k`` (the features' sum, e.g.
            SCAFFOLD's ``c - c_i``), or None.
        null: Train on none of the client's data (zero inputs and labels, no example
            in any DP-SGD batch): under DP, what a client whose training raised on its
            data releases instead, so that the server cannot tell (see
            :meth:`~fedray.client.host.ClientHost.fit`).
    """

    cid: int
    steps: int
    seed: np.ndarray
    noise_seed: np.ndarray
    offset: Params | None = None
    null: bool = False


def client_seed(seed: int, server_round: int, client_id: int) -> np.ndarray:
    """Shuffle seed of one client in one round, derived from (seed, round, id).

    Deriving it from the round (not from how often its host trained before) keeps
    results identical whether clients are packed or dedicated, and on resume.
    """
    state = np.random.SeedSequence([seed, server_round, client_id]).generate_state(2)
    return state.astype(np.int64)


def noise_seed(dp: DPSGD | None, info: RoundInfo, cid: int) -> np.ndarray:
    """DP-SGD's batch-and-noise seed: secret, unless ``noise_seed`` fixes it (zeros without)."""
    if dp is None:
        return np.zeros(2, np.int64)
    if dp.noise_seed is None:
        return np.array([secrets.randbits(62), secrets.randbits(62)], np.int64)
    state = np.random.SeedSequence([dp.noise_seed, info.server_round, cid, 13])
    return state.generate_state(2).astype(np.int64)


class Trainer(Protocol):
    """What a host needs from its model: train, evaluate, predict, export."""

    def initial_params(self) -> Params:
        """The freshly initialised model's weights (identical on every host)."""
        ...

    def train(self, jobs: Sequence[TrainJob], params: Params) -> list[tuple[Params, Metrics]]:
        """Train every job's client from ``params``; per job ``(local - global, metrics)``."""
        ...

    def evaluate(
        self, params: Params, split: str, cid: int | None = None
    ) -> tuple[int, Metrics] | None:
        """``params`` on the server test set, or client ``cid``'s test split or rows.

        ``split`` is ``"server"``, ``"test"`` or ``"train"``; returns (examples,
        metrics), or None without such data.
        """
        ...

    def server_states(self, params: Params, part: int, of: int) -> MeanStates | None:
        """Part ``part`` of ``of`` of the server test set as per-batch metric sums.

        None without a server test set or when a metric is not a mean; ``describe()``
        says in ``server_parts`` how many batches there are to share (0: none).
        """
        ...

    def predict(self, params: Params, x: np.ndarray) -> np.ndarray:
        """The model's outputs for ``x`` under ``params``."""
        ...

    def export(self, params: Params) -> bytes:
        """The model with ``params`` as ``.keras`` file bytes."""
        ...

    def describe(self) -> dict[str, Any]:
        """Facts for the host's ``ready()`` (threads, device)."""
        ...


@dataclass(frozen=True)
class HostSpec:
    """Everything a host needs to start: narrow settings and the clients it serves.

    Never the whole run config: :meth:`from_config` picks the sections a host reads.

    Attributes:
        client_ids: Global ids of the clients this host owns (a ``range`` when contiguous).
        aggregator: The strategy's aggregator, whose ``encode`` runs here.
        seed: The run seed (data, model initialisation, client randomness).
        data: Where the clients' rows come from and how they are partitioned.
        model: The model to build.
        train: Local training (optimizer, batch size, epochs).
        faults: Simulated faults and stragglers.
        attack: Simulated Byzantine clients.
        verbose: Let TensorFlow log.
        with_test_set: Hold the server test set for centralized evaluation.
        threads: TensorFlow intra/inter-op threads for this host.
        client: The strategy's client options (DP-SGD).
        features: The strategy's features (:mod:`fedray.features`), whose client
            halves run here.
        pre_aggregate: Send one :class:`~fedray.records.PartialSum` of the valid
            updates per ``fit`` call instead of every update (the aggregator must be
            :class:`~fedray.aggregators.LinearAggregator`).
        max_update_norm: With ``pre_aggregate``, the host rejects updates longer than
            this before summing (the driver's check, moved to where the updates are).
        source: This host's clients' arrays (``fedray.fit``) instead of ``data.*``.
        trainer: Makes the host's trainer from the spec and its data; None is the
            compiled Keras model (:class:`~fedray.client.trainer.KerasTrainer`).
        gpu: This host's share of a GPU (``runtime.gpus_per_host``), or None.
        state_dir: Where this host saves its clients' state at checkpoints
            (``runtime.client_state_dir``: outside the run directory by default;
            :mod:`fedray.client.state_store`), or None to keep it in memory only.
    """

    client_ids: Sequence[int]
    aggregator: Aggregator
    seed: int
    data: DataConfig
    model: ModelConfig
    train: ClientConfig
    faults: FaultsConfig = field(default_factory=FaultsConfig)
    attack: AttackConfig = field(default_factory=AttackConfig)
    verbose: bool = False
    with_test_set: bool = False
    threads: int = 1
    client: ClientOptions = field(default_factory=ClientOptions)
    features: tuple[Feature, ...] = ()
    pre_aggregate: bool = False
    max_update_norm: float | None = None
    source: InMemory | None = None
    trainer: Callable[[HostSpec, HostData], Trainer] | None = None
    gpu: GpuShare | None = None
    state_dir: str | None = None

    @property
    def objective(self) -> LocalObjective:
        """The terms the features add to every local step."""
        return local_objective(self.features)

    def __post_init__(self) -> None:
        if self.pre_aggregate and not isinstance(self.aggregator, LinearAggregator):
            raise ValueError(
                f"pre_aggregate needs a linear aggregator (a LinearAggregator), got "
                f"{type(self.aggregator).__name__}"
            )

    @classmethod
    def from_config(
        cls, config: Config, client_ids: tuple[int, ...], aggregator: Aggregator, **kw: Any
    ) -> HostSpec:
        """The spec of a host of ``config``'s run (``kw``: the other fields)."""
        return cls(
            client_ids=compact(client_ids),
            aggregator=aggregator,
            seed=config.seed,
            data=config.data,
            model=config.model,
            train=config.client,
            faults=config.faults,
            attack=config.attack,
            verbose=config.runtime.verbose,
            gpu=_gpu_share(config),
            state_dir=config.runtime.client_state_dir,
            **kw,
        )


def compact(ids: Sequence[int]) -> Sequence[int]:
    """``ids`` as a ``range`` when they are contiguous, else a tuple.

    A host of 500,000 clients then travels in a few bytes, not megabytes (Ray would put
    such a constructor argument in the object store, and warn about restarts).

    >>> compact((3, 4, 5)), compact([1, 3])
    (range(3, 6), (1, 3))
    """
    ids = tuple(ids)
    if ids and ids == tuple(range(ids[0], ids[0] + len(ids))):
        return range(ids[0], ids[0] + len(ids))
    return ids


def _gpu_share(config: Config) -> GpuShare | None:
    rt = config.runtime
    if rt.gpus_per_host is None:
        return None
    if rt.gpus_per_host == "auto":  # the Ray executor measures it before any host starts
        raise ValueError("runtime.gpus_per_host=auto must be resolved to a share first")
    return GpuShare(fraction=rt.gpus_per_host, memory_growth=rt.gpu_memory_growth)
