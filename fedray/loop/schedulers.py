"""Schedulers: who trains in one server step, and what the step collects.

One loop (:func:`fedray.loop.run_rounds`) runs server steps; a scheduler fills each
with updates:

* :class:`SyncRounds`: a synchronous round. The strategy samples clients (plus
  over-commitment), they train from the same model, and failed rounds are retried,
  stopped or skipped by a :class:`~fedray.records.RoundPolicy`. Secure aggregation's
  session, when the aggregator has one, runs around the training.
* :class:`Buffered`: FedBuff (Nguyen et al., "Federated Learning with Buffered
  Asynchronous Aggregation", AISTATS 2022, arXiv:2106.06639). Clients train
  continuously, ``concurrency`` at a time; a step takes the first ``buffer_size``
  updates to arrive, each marked with its staleness (server steps since its client
  started) in ``protocol["staleness"]``.

Layer 2: a scheduler knows the strategy and the executor protocol only.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field, replace
from typing import Any, Protocol

import numpy as np

from fedray.aggregators import client_settings
from fedray.errors import RoundFailedError
from fedray.loop.executor import Executor, PrivacyLedger
from fedray.loop.validation import screen
from fedray.records import (
    FAILURE_CAUSES,
    AggState,
    ClientFailure,
    ClientUpdate,
    HostRecovery,
    Params,
    PartialSum,
    RoundInfo,
    RoundPolicy,
)
from fedray.strategy import Strategy

logger = logging.getLogger(__name__)


@dataclass
class Step:
    """What one server step collected.

    Attributes:
        updates: Valid updates and partial sums (hosts' pre-aggregates, the secure sum).
        failures: The clients that failed, with why.
        recoveries: Hosts that died under their clients, who were run again.
        sampled: How many clients were started for it.
        participants: The clients whose updates count.
        attempts: Tries it took (a synchronous round's retries).
    """

    updates: list[ClientUpdate | PartialSum] = field(default_factory=list)
    failures: list[ClientFailure] = field(default_factory=list)
    recoveries: list[HostRecovery] = field(default_factory=list)
    sampled: int = 0
    participants: list[int] = field(default_factory=list)
    attempts: int = 1

    def failure_counts(self) -> dict[str, int]:
        """How many clients failed, by cause (most first; ties in order of appearance)."""
        counts: dict[str, int] = {}
        for f in self.failures:
            counts[f.cause] = counts.get(f.cause, 0) + 1
        return dict(sorted(counts.items(), key=lambda kv: -kv[1]))

    def stamp(self, attempt: int, failures_from: int, recoveries_from: int) -> None:
        """Mark the failures and recoveries from these indices on as the attempt's."""
        self.failures[failures_from:] = [
            replace(f, attempt=attempt) for f in self.failures[failures_from:]
        ]
        self.recoveries[recoveries_from:] = [
            replace(r, attempt=attempt) for r in self.recoveries[recoveries_from:]
        ]


@dataclass(frozen=True)
class Context:
    """What a scheduler works with, fixed for a run.

    Attributes:
        strategy: The composed strategy.
        executor: Where clients run.
        rng: The driver's sampling generator of a run without DP (checkpointed, so a
            resumed run samples as the uninterrupted one did).
        seed: The run's public seed (client randomness).
        privacy: The privacy ledger, under DP.
        sampling_key: Under DP, the secret key each attempt's sample is drawn from
            (:meth:`sampler`); it is never checkpointed, so a checkpoint cannot replay
            past samples (which would void the amplification by sampling).
    """

    strategy: Strategy
    executor: Executor
    rng: np.random.Generator
    seed: int
    privacy: PrivacyLedger | None = None
    sampling_key: int | None = None

    def sampler(self, server_round: int, attempt: int) -> np.random.Generator:
        """The generator that samples ``server_round``'s ``attempt``.

        >>> ctx = Context(None, None, np.random.default_rng(0), 0, sampling_key=9)
        >>> a, b = ctx.sampler(3, 0).random(), ctx.sampler(3, 0).random()
        >>> a == b != ctx.sampler(3, 1).random()
        True
        """
        if self.sampling_key is None:
            return self.rng
        return np.random.default_rng([self.sampling_key, server_round, attempt, 5])


class Scheduler(Protocol):
    """Fills server steps with updates."""

    def collect(
        self, ctx: Context, server_round: int, params: Params, handle: Any, agg_state: AggState
    ) -> Step:
        """Run clients until server step ``server_round`` has its updates."""
        ...

    def state(self) -> dict[str, Any]:
        """What a checkpoint keeps (JSON-able values and arrays)."""
        ...

    def restore(self, state: dict[str, Any]) -> None:
        """Continue from :meth:`state`."""
        ...


def sample(
    strategy: Strategy, num_clients: int, policy: RoundPolicy, rng: np.random.Generator
) -> tuple[list[int], int]:
    """The clients to start and how many valid updates the round wants.

    Over-commitment adds ``ceil(K * over_commit)`` more clients, drawn from the
    rest; without it the RNG stream is exactly the strategy's own.
    """
    ids = strategy.sample_clients(num_clients, rng)
    wanted = len(ids)
    extra = min(math.ceil(wanted * policy.over_commit), num_clients - wanted)
    if extra > 0:
        rest = np.setdiff1d(np.arange(num_clients), ids)
        ids = sorted([*ids, *(int(i) for i in rng.choice(rest, size=extra, replace=False))])
    return ids, wanted


@dataclass
class SyncRounds:
    """Synchronous rounds: sample, train, collect, retrying per ``policy``.

    With a privacy ledger, every attempt is charged before its clients start: each
    started client counts as a release whether or not its update is kept (a failed
    attempt's noised updates reached the server too), and a retry that the budget
    cannot pay for is not started.
    """

    policy: RoundPolicy = field(default_factory=RoundPolicy)

    def state(self) -> dict[str, Any]:
        """Stateless between rounds (the sampling generator is the loop's)."""
        return {}

    def restore(self, state: dict[str, Any]) -> None:
        """Nothing to restore."""

    def collect(
        self, ctx: Context, server_round: int, params: Params, handle: Any, agg_state: AggState
    ) -> Step:
        """One round, retried per the policy.

        Raises:
            RoundFailedError: Too few clients succeeded and the policy says to stop.
        """
        strategy, policy, privacy = ctx.strategy, self.policy, ctx.privacy
        hook = getattr(strategy.aggregator, "session", None)  # secure aggregation
        session = hook() if hook is not None else None
        step = Step(attempts=0)
        tries = policy.max_retries + 1 if policy.on_too_few == "retry" else 1
        for attempt in range(tries):
            if attempt > 0 and privacy is not None and not privacy.allows_next_round():
                logger.warning(
                    "round %d: no retry, a new attempt would exceed the privacy budget",
                    server_round,
                )
                break
            step.attempts += 1
            rng = ctx.sampler(server_round, attempt)
            ids, wanted = sample(strategy, ctx.executor.num_clients, policy, rng)
            step.sampled += len(ids)
            if privacy is not None:
                # charged (durably, when journaled) before anything can leave a host
                privacy.record(ids, server_round=server_round, attempt=attempt)
            info = RoundInfo(
                server_round=server_round,
                seed=ctx.seed,
                num_sampled=len(ids),
                attempt=attempt,
                settings=client_settings(strategy.aggregator, agg_state),
            )
            server, marks = None, (len(step.failures), len(step.recoveries))
            if session is not None:
                ids, dropped, server = session.start(ctx.executor, ids, info, rng)
                step.failures.extend(dropped)
            updates, partials = self._train(ctx, ids, wanted, params, handle, info, step)
            participants = [u.client_id for u in updates] + [
                c for p in partials for c in p.client_ids
            ]
            step.updates, step.participants = [*updates, *partials], sorted(participants)
            if session is not None and server is not None and updates:
                total, lost = session.finish(server, ctx.executor, updates, info, agg_state)
                step.failures.extend(lost)
                step.updates = [] if total is None else [total]
                step.participants = [] if total is None else list(total.client_ids)
            step.stamp(attempt, *marks)  # whoever reported them: hosts, driver, protocol
            if len(step.participants) >= strategy.min_fit_clients:
                break
            logger.warning(
                "round %d (attempt %d): only %d of %d clients succeeded, fewer than "
                "min_fit_clients=%d",
                server_round,
                attempt + 1,
                len(step.participants),
                len(ids),
                strategy.min_fit_clients,
            )
        self._report(strategy, server_round, step)
        return step

    def _train(
        self,
        ctx: Context,
        ids: list[int],
        wanted: int,
        params: Params,
        handle: Any,
        info: RoundInfo,
        step: Step,
    ) -> tuple[list[ClientUpdate], list[PartialSum]]:
        """Train ``ids``; the first ``wanted`` valid updates make the round."""
        updates: list[ClientUpdate] = []
        partials: list[PartialSum] = []  # pre-aggregated in hosts, validated there
        results = iter(ctx.executor.fit(ids, handle, info))
        for result in results:
            if isinstance(result, HostRecovery):
                step.recoveries.append(result)
                continue
            if isinstance(result, PartialSum):
                partials.append(result)
                continue
            checked = screen(result, params, self.policy.max_update_norm)
            if isinstance(checked, ClientUpdate):
                updates.append(checked)
            else:
                step.failures.append(checked)
            if len(updates) == wanted and len(ids) > wanted:
                break  # over-commitment: the first K valid updates make the round
        close = getattr(results, "close", None)
        if close is not None:
            close()  # let the executor abandon what is still running
        return updates, partials

    def _report(self, strategy: Strategy, server_round: int, step: Step) -> None:
        """One summary line; stop the run when too few succeeded and the policy says so."""
        for f in step.failures:
            logger.debug(
                "round %d: client %d failed (%s): %s", server_round, f.client_id, f.cause, f.reason
            )
        line = summary(server_round, step)
        ok, need = len(step.participants), strategy.min_fit_clients
        if ok >= need:
            if step.failures:
                logger.warning("%s", line)
            elif step.recoveries:
                logger.info("%s", line)
            return
        if self.policy.on_too_few != "skip":
            raise RoundFailedError(
                f"{line}; fewer than strategy.min_fit_clients={need} "
                f"(strategy.on_too_few={self.policy.on_too_few!r})",
                step=step,
            )
        logger.warning(
            "round %d: the global model is unchanged (strategy.on_too_few='skip')", server_round
        )


def summary(server_round: int, step: Step) -> str:
    """The round's one line: who succeeded, failures counted by cause, re-executions.

    >>> step = Step(participants=[0, 1], sampled=4, failures=[
    ...     ClientFailure(2, "x", "crash"), ClientFailure(3, "y", "nan")],
    ...     recoveries=[HostRecovery(0, (0, 1), "died")])
    >>> summary(3, step)
    'round 3: 2/4 ok; failed: 1 crashed, 1 NaN; host 0 restarted, re-ran 2 clients'
    """
    line = f"round {server_round}: {len(step.participants)}/{step.sampled} ok"
    if step.attempts > 1:
        line += f" in {step.attempts} attempts"
    counts = step.failure_counts()
    if counts:
        line += "; failed: " + ", ".join(f"{n} {FAILURE_CAUSES[c]}" for c, n in counts.items())
    for r in step.recoveries:
        n = len(r.client_ids)
        line += f"; host {r.host} restarted, re-ran {n} client{'s' if n != 1 else ''}"
    return line


@dataclass
class Buffered:
    """FedBuff's buffered asynchronous steps.

    Each idle client is picked uniformly at random (from the loop's generator)
    whenever a training slot frees, and trains from the model of the step it started
    in. A client's randomness comes from its dispatch count, so in-process (where
    arrivals come in dispatch order) a resumed run equals the uninterrupted one bit
    for bit; on Ray, arrival order follows timing.

    Attributes:
        concurrency: Clients training at once.
        buffer_size: Updates per server step.
        max_update_norm: Reject (count as failed) any update whose L2 norm exceeds it.
    """

    concurrency: int
    buffer_size: int
    max_update_norm: float | None = None
    dispatched: int = field(default=0, init=False)
    buffer: list[ClientUpdate] = field(default_factory=list, init=False)
    versions: dict[int, Params] = field(default_factory=dict, init=False)  # in-flight models
    restarts: list[tuple[int, int, int]] = field(default_factory=list, init=False)  # resumed
    _handles: dict[int, Any] = field(default_factory=dict, init=False)
    _in_flight: dict[Any, tuple[int, int, int]] = field(default_factory=dict, init=False)
    _idle: set[int] | None = field(default=None, init=False)

    def state(self) -> dict[str, Any]:
        """The dispatch count, the buffer and the clients in flight with their models."""
        live = {v for _, v, _ in self._in_flight.values()}
        return {
            "dispatched": self.dispatched,
            "in_flight": [list(t) for t in self._in_flight.values()],  # in dispatch order
            "versions": {str(v): self.versions[v] for v in sorted(live)},
            "buffer": [dict(vars(u)) for u in self.buffer],
        }

    def restore(self, state: dict[str, Any]) -> None:
        """The buffer, and the in-flight clients to start again from their own models."""
        self.dispatched = int(state.get("dispatched", 0))
        self.buffer = [ClientUpdate(**u) for u in state.get("buffer", [])]
        self.versions = {int(v): list(p) for v, p in state.get("versions", {}).items()}
        self.restarts = [(int(c), int(v), int(i)) for c, v, i in state.get("in_flight", [])]

    def collect(
        self, ctx: Context, server_round: int, params: Params, handle: Any, agg_state: AggState
    ) -> Step:
        """Keep ``concurrency`` clients training until ``buffer_size`` updates arrived.

        Raises:
            ValueError: With a privacy ledger: buffered steps have no privacy analysis
                here, so their releases could not be charged.
        """
        if ctx.privacy is not None:
            raise ValueError(
                "buffered (FedBuff) steps have no privacy accounting: their releases cannot "
                "be charged to a privacy ledger; use synchronous rounds (SyncRounds) under DP"
            )
        version = server_round - 1  # server steps taken so far
        self.versions[version], self._handles[version] = params, handle
        if self._idle is None:  # the first step of this process
            self._idle = set(range(ctx.executor.num_clients))
            for cid, started, index in self.restarts:
                self._start(ctx, agg_state, cid, started, index)
            self.restarts = []
        live = {v for _, v, _ in self._in_flight.values()} | {version}
        for v in [v for v in self.versions if v not in live]:
            self.versions.pop(v)
            self._handles.pop(v, None)
        step = Step(sampled=0)
        slots = min(self.concurrency, ctx.executor.num_clients)
        while len(self.buffer) < self.buffer_size:
            while len(self._in_flight) < slots and self._idle:
                cid = int(ctx.rng.choice(sorted(self._idle)))
                self.dispatched += 1  # a fresh shuffle seed per dispatch, from the count
                step.sampled += 1
                self._start(ctx, agg_state, cid, version, self.dispatched)
            for ticket, result in ctx.executor.wait(list(self._in_flight)):
                cid, started, _ = self._in_flight.pop(ticket)
                self._idle.add(cid)
                checked = screen(result, params, self.max_update_norm)
                if isinstance(checked, ClientFailure):
                    step.failures.append(checked)
                    logger.warning("client %d failed: %s", cid, checked.reason)
                    continue
                stale = {**checked.protocol, "staleness": float(version - started)}
                self.buffer.append(replace(checked, protocol=stale))
        batch, self.buffer = self.buffer[: self.buffer_size], self.buffer[self.buffer_size :]
        step.updates = list(batch)
        step.participants = sorted(u.client_id for u in batch)
        return step

    def _start(self, ctx: Context, agg_state: AggState, cid: int, started: int, index: int) -> None:
        """Start client ``cid`` from the model of step ``started`` (dispatch ``index``)."""
        if started not in self._handles:  # a resumed client's older model
            # FedBuff refuses features that need synchronous rounds, so none sends a downlink.
            self._handles[started] = ctx.executor.broadcast(self.versions[started])
        info = RoundInfo(server_round=index, seed=ctx.seed, num_sampled=1)
        if self._idle is not None:
            self._idle.discard(cid)
        ticket = ctx.executor.submit(cid, self._handles[started], info)
        self._in_flight[ticket] = (cid, started, index)
