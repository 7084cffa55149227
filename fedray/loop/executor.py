"""What the loop needs from where clients run, and from the privacy ledger.

Layer 2: protocols only. ``LocalExecutor`` and ``RayExecutor`` (``fedray.runtime``)
implement :class:`Executor`; ``fedray.privacy``'s accountants implement
:class:`PrivacyLedger`.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any, Protocol

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


class Inserts(Protocol):
    """Updates the server adds to a step's own before aggregating (a canary audit)."""

    def inserted(
        self,
        aggregator: Any,
        params: Params,
        info: RoundInfo,
        updates: Sequence[ClientUpdate | PartialSum],
    ) -> list[ClientUpdate]:
        """This step's inserted updates, encoded as a client's would be."""
        ...


class PrivacyLedger(Protocol):
    """The running privacy cost of a run (``fedray.privacy``'s accountants)."""

    def allows_next_round(self) -> bool:
        """Whether one more round stays within the budget."""
        ...

    def record(
        self, participants: Sequence[int], *, server_round: int = 0, attempt: int = 0
    ) -> float:
        """Spend one release event: every listed client released once; returns ε so far.

        Called before the attempt's clients start; a journaled ledger makes the charge
        durable first (:mod:`fedray.privacy.journal`).
        """
        ...

    def lost_attempts(self, server_round: int) -> int:
        """Attempts of ``server_round`` charged before a crash and lost (0 without one)."""
        ...

    def epsilon(self) -> float:
        """ε of what was recorded."""
        ...

    def state(self) -> dict[str, Any]:
        """What a checkpoint keeps."""
        ...

    def restore(self, state: dict[str, Any]) -> None:
        """Continue from :meth:`state`."""
        ...


class Executor(Protocol):
    """Where client work runs. Implementations: ``LocalExecutor``, ``RayExecutor``.

    Synchronous rounds use :meth:`fit`; buffered steps use :meth:`submit` and
    :meth:`wait`; secure aggregation's protocol steps use :meth:`call`.
    """

    @property
    def num_clients(self) -> int:
        """Number of registered clients."""
        ...

    def initial_params(self) -> Params:
        """The freshly initialised global model's weights."""
        ...

    def broadcast(self, params: Params, downs: tuple[Params | None, ...] | None = None) -> Any:
        """Make ``params`` (and the features' downlinks) available to every host once.

        Returns an opaque handle for ``fit``, ``submit`` and the evaluations.
        """
        ...

    def fit(self, client_ids: Sequence[int], params: Any, info: RoundInfo) -> Iterable[FitEvent]:
        """Train the given clients from the broadcast ``params`` handle.

        Hosts that pre-aggregate send one :class:`~fedray.records.PartialSum` for their
        valid updates. Results may be yielded as they arrive; the loop may stop reading
        early (over-commitment), and the executor then leaves the rest to finish unseen.
        A host that died under its clients and had them run again is reported as a
        :class:`~fedray.records.HostRecovery` before their results.
        """
        ...

    def submit(self, client_id: int, params: Any, info: RoundInfo) -> Any:
        """Start one client's training; returns a ticket for :meth:`wait`."""
        ...

    def wait(self, tickets: list[Any]) -> list[tuple[Any, ClientUpdate | ClientFailure]]:
        """Block until at least one ticket finishes; return the finished ones."""
        ...

    def call(
        self, client_ids: Sequence[int], step: str, payload: dict[int, Any], info: RoundInfo
    ) -> dict[int, Any]:
        """Run one typed protocol step (secure aggregation) for each client in its host.

        Returns the clients' answers; a client whose host failed is left out (dropped).
        """
        ...

    def evaluate(self, params: Any) -> Metrics:
        """Centralized evaluation on the held-out test set ({} when there is none)."""
        ...

    def evaluate_clients(
        self, client_ids: Sequence[int], params: Any, split: str = "test"
    ) -> list[ClientEval | ClientFailure]:
        """Evaluation on the clients' own ``test`` splits or ``train`` shards."""
        ...

    def save_client_state(self, server_round: int) -> int:
        """Hosts save their clients' state for the ``server_round`` checkpoint, where they are.

        Returns how many clients have state; none of it reaches the driver.
        """
        ...

    def load_client_state(self, server_round: int) -> int:
        """Hosts reload their clients' state of that checkpoint (on resume); how many."""
        ...

    def prune_client_state(self, server_round: int) -> None:
        """Hosts drop their saved state older than that (now durable) checkpoint's."""
        ...

    def close(self) -> None:
        """Release hosts and resources."""
        ...
