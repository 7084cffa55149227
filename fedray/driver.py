"""The round loop: sample, broadcast, fit, validate, aggregate, apply, evaluate, log.

Layer 2: knows the strategy (pure math) and an :class:`Executor` protocol, never Ray
or Keras. The same loop drives in-process tests (``LocalExecutor``) and Ray actors
(``RayExecutor``).
"""

from __future__ import annotations

import logging
import math
import secrets
import time
from collections.abc import Callable, Iterable, Sequence
from typing import Any, Protocol

import numpy as np

from fedray import tree
from fedray.aggregators import (
    Aggregator,
    Mean,
    Summable,
    broadcast,
    client_settings,
    combine,
    presum,
)
from fedray.callbacks import Callback, Logs
from fedray.checkpoint import DriverState
from fedray.errors import RoundFailedError
from fedray.privacy.canary import CanaryAudit
from fedray.records import (
    AggState,
    ClientEval,
    ClientFailure,
    ClientUpdate,
    FitResult,
    Metrics,
    Params,
    PartialSum,
    RoundInfo,
    RoundPolicy,
)
from fedray.strategy import Strategy
from fedray.validation import screen

logger = logging.getLogger(__name__)


class PrivacyLedger(Protocol):
    """The running privacy cost of a run (``fedray.privacy``'s accountants)."""

    def allows_next_round(self) -> bool:
        """Whether one more round stays within the budget."""
        ...

    def record(self, participants: Sequence[int]) -> float:
        """Spend one release event: every listed client released once; returns ε so far."""
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
    """Where client work runs. Implementations: ``LocalExecutor``, ``RayExecutor``."""

    @property
    def num_clients(self) -> int:
        """Number of registered clients."""
        ...

    def initial_params(self) -> Params:
        """The freshly initialised global model's weights."""
        ...

    def broadcast(self, params: Params, extras: dict[str, Params] | None = None) -> Any:
        """Make ``params`` (and the aggregator's ``extras``) available to every host once.

        Returns an opaque handle for ``fit`` and the evaluations.
        """
        ...

    def fit(self, client_ids: Sequence[int], params: Any, info: RoundInfo) -> Iterable[FitResult]:
        """Train the given clients from the broadcast ``params`` handle.

        Hosts that pre-aggregate send one :class:`PartialSum` for their valid updates.

        Results may be yielded as they arrive; the driver may stop reading early
        (over-commitment), and the executor then leaves the rest to finish unseen.
        """
        ...

    def evaluate(self, params: Any) -> Metrics:
        """Centralized evaluation on the held-out test set ({} when there is none)."""
        ...

    def client_phase(
        self, client_ids: Sequence[int], name: str, payload: dict[int, Any], info: RoundInfo
    ) -> dict[int, Any]:
        """Run one protocol step (secure aggregation) for each client inside its host.

        Returns the clients' answers; a client whose host failed is left out (dropped).
        """
        ...

    def evaluate_clients(
        self, client_ids: Sequence[int], params: Any, split: str = "test"
    ) -> list[ClientEval | ClientFailure]:
        """Evaluation on the clients' own ``test`` splits or ``train`` shards."""
        ...

    def client_state(self) -> dict[int, dict[str, Params]]:
        """Per-client state kept in the hosts across rounds (for checkpoints)."""
        ...

    def restore_client_state(self, state: dict[int, dict[str, Params]]) -> None:
        """Hand saved per-client state back to the hosts (on resume)."""
        ...

    def close(self) -> None:
        """Release hosts and resources."""
        ...


def weighted_logs(items: Sequence[ClientUpdate | ClientEval], prefix: str) -> Logs:
    """Example-weighted mean of each metric present in every item."""
    total = sum(i.num_examples for i in items)
    if not items or total <= 0:
        return {}
    keys = set.intersection(*(set(i.metrics) for i in items))
    return {
        f"{prefix}/{k}": sum(i.metrics[k] * i.num_examples for i in items) / total
        for k in sorted(keys)
    }


def evaluate_round(executor: Any, handle: Any, server: bool, federated: bool, train: bool) -> Logs:
    """The round's evaluations, each example-weighted over the clients that answer.

    ``eval/*`` on the server's test set, ``fed_eval/*`` on the clients' test splits
    and ``train/*`` on their training rows.
    """
    logs: Logs = {}
    if server:
        logs.update({f"eval/{k}": v for k, v in executor.evaluate(handle).items()})
    if federated:
        evals = executor.evaluate_clients(range(executor.num_clients), handle)
        answered = [e for e in evals if isinstance(e, ClientEval)]
        logs.update(weighted_logs(answered, "fed_eval"))
        logs["fed_eval/clients"] = len(answered)
    if train:  # the global model on every client's training data (FedProx's training loss)
        evals = executor.evaluate_clients(range(executor.num_clients), handle, "train")
        logs.update(weighted_logs([e for e in evals if isinstance(e, ClientEval)], "train"))
    return logs


def due(server_round: int, every: int, last: int) -> bool:
    """Whether a task run every ``every`` rounds (0: never) runs in ``server_round``.

    The ``last`` round always runs it.

    >>> [r for r in range(1, 8) if due(r, 3, 7)], due(7, 0, 7)
    ([3, 6, 7], False)
    """
    return bool(every) and (server_round % every == 0 or server_round == last)


def _sample(
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


def _fit_round(
    strategy: Strategy,
    executor: Executor,
    handle: Any,
    params: Params,
    policy: RoundPolicy,
    rng: np.random.Generator,
    seed: int,
    server_round: int,
    agg_state: AggState,
    privacy: PrivacyLedger | None = None,
) -> tuple[list[ClientUpdate | PartialSum], list[ClientFailure], int, int, list[int]]:
    """Fit one round, retrying per ``policy``.

    Returns (updates, failures, sampled, attempts, participants): ``participants`` are
    the clients whose updates count; under secure aggregation ``updates`` is the one
    decoded sum of theirs, and hosts that pre-aggregate send partial sums.

    With ``privacy``, every attempt is charged before its clients start: each started
    client counts as a release whether or not its update is kept (a failed attempt's
    noised updates reached the server too), and a retry that the budget cannot pay
    for is not started.
    """
    failures: list[ClientFailure] = []
    sampled = 0
    participants: list[int] = []
    hook = getattr(strategy.aggregator, "session", None)  # secure aggregation's protocol
    session = hook() if hook is not None else None
    ok = 0
    for attempt in range(policy.max_retries + 1 if policy.on_too_few == "retry" else 1):
        if attempt > 0 and privacy is not None and not privacy.allows_next_round():
            logger.warning(
                "round %d: no retry, a new attempt would exceed the privacy budget", server_round
            )
            break
        ids, wanted = _sample(strategy, executor.num_clients, policy, rng)
        sampled += len(ids)
        if privacy is not None:
            privacy.record(ids)  # charged before anything can leave a host
        info = RoundInfo(
            server_round=server_round,
            seed=seed,
            num_sampled=len(ids),
            attempt=attempt,
            settings=client_settings(strategy.aggregator, agg_state),
        )
        updates: list[ClientUpdate] = []
        partials: list[PartialSum] = []  # pre-aggregated in hosts, validated there
        server = None
        if session is not None:
            ids, dropped, server = session.start(executor, ids, info, rng)
            failures.extend(dropped)
        results = iter(executor.fit(ids, handle, info))
        for result in results:
            if isinstance(result, PartialSum):
                partials.append(result)
                continue
            checked = screen(result, params, policy.max_update_norm)
            if isinstance(checked, ClientUpdate):
                updates.append(checked)
            else:
                failures.append(checked)
            if len(updates) == wanted and len(ids) > wanted:
                break  # over-commitment: the first K valid updates make the round
        close = getattr(results, "close", None)
        if close is not None:
            close()  # let the executor abandon what is still running
        participants = sorted(
            [u.client_id for u in updates] + [c for p in partials for c in p.client_ids]
        )
        if session is not None and server is not None and updates:
            updates, participants, lost = session.finish(server, executor, updates, info, agg_state)
            failures.extend(lost)
        ok = len(participants)
        if ok >= strategy.min_fit_clients:
            break
        logger.warning(
            "round %d (attempt %d): only %d of %d clients succeeded, fewer than min_fit_clients=%d",
            server_round,
            attempt + 1,
            ok,
            len(ids),
            strategy.min_fit_clients,
        )
    for f in failures:
        logger.warning("round %d: client %d failed: %s", server_round, f.client_id, f.reason)
    if ok < strategy.min_fit_clients and policy.on_too_few != "skip":
        reasons = "; ".join(f"client {f.client_id}: {f.reason}" for f in failures[:5])
        raise RoundFailedError(
            f"round {server_round}: only {ok} clients succeeded after "
            f"{attempt + 1} attempt(s), fewer than strategy.min_fit_clients="
            f"{strategy.min_fit_clients} (strategy.on_too_few={policy.on_too_few!r}). "
            f"Failures: {reasons or 'none reported'}. Rounds before it are in the "
            "checkpoint (checkpoint.every); fix the cause and continue with --resume"
        )
    if ok < strategy.min_fit_clients:
        logger.warning(
            "round %d: the global model is unchanged (strategy.on_too_few='skip')", server_round
        )
    return [*updates, *partials], failures, sampled, attempt + 1, participants


def _aggregate(
    aggregator: Aggregator,
    updates: Sequence[ClientUpdate | PartialSum],
    params: Params,
    state: AggState,
    rng: np.random.Generator,
) -> tuple[Params, AggState, Metrics]:
    """The aggregator's result; partial sums (and any plain updates) go through its sum."""
    parts = [u for u in updates if isinstance(u, PartialSum)]
    plain = [u for u in updates if isinstance(u, ClientUpdate)]
    if not parts:
        return aggregator.aggregate(plain, state, rng)
    if not isinstance(aggregator, Summable):
        raise TypeError(f"partial sums need a Summable aggregator, got {type(aggregator).__name__}")
    if plain:
        parts.append(presum(plain, aggregator))
    total = combine(parts)
    cast = [np.asarray(t).astype(p.dtype) for t, p in zip(total.total, params, strict=True)]
    return aggregator.aggregate_sum(
        cast, len(total.client_ids), total.protocol_sums, state, rng, weight=total.weight
    )


def _fit_logs(updates: Sequence[ClientUpdate | PartialSum]) -> Logs:
    """Example-weighted training metrics (``fit/*``) from updates and partial sums."""
    parts = [u for u in updates if isinstance(u, PartialSum)]
    plain = [u for u in updates if isinstance(u, ClientUpdate)]
    if not parts:
        return weighted_logs(plain, "fit")
    sums = [*parts, *([presum(plain, Mean())] if plain else [])]
    total = combine(sums)
    if total.num_examples <= 0:
        return {}
    return {f"fit/{k}": v / total.num_examples for k, v in sorted(total.metric_sums.items())}


def _canary_updates(
    canaries: CanaryAudit,
    strategy: Strategy,
    params: Params,
    agg_state: AggState,
    server_round: int,
    seed: int,
    updates: Sequence[ClientUpdate | PartialSum],
) -> list[ClientUpdate]:
    """This round's canaries, encoded by the aggregator as a client's update would be."""
    settings = client_settings(strategy.aggregator, agg_state)
    info = RoundInfo(server_round=server_round, seed=seed, num_sampled=0, settings=settings)
    clip = settings.get("dp_clip")
    norm = None if clip is None else float(clip) * (1 - 1e-6)  # at the clip, never above
    counts = [(u.num_examples, 1) if isinstance(u, ClientUpdate)
              else (u.num_examples, len(u.client_ids)) for u in updates]  # fmt: skip
    clients = sum(c for _, c in counts)
    examples = max(1, round(sum(n for n, _ in counts) / clients)) if clients else 1
    raw = canaries.updates(server_round, params, norm, examples)  # weighted as an average client
    return [strategy.aggregator.encode(u, info) for u in raw]


def run_rounds(
    *,
    strategy: Strategy,
    executor: Executor,
    rounds: int,
    seed: int,
    callback: Callback,
    evaluate_every: int = 1,
    federated_evaluate_every: int = 0,
    train_evaluate_every: int = 0,
    resume: DriverState | None = None,
    checkpoint: Callable[[DriverState], object] | None = None,
    checkpoint_every: int = 0,
    policy: RoundPolicy = RoundPolicy(),  # noqa: B008 - frozen, immutable
    privacy: PrivacyLedger | None = None,
    rng_seed: int | None = None,
    noise_seed: int | None = None,
    canaries: CanaryAudit | None = None,
) -> Params:
    """Run ``rounds`` rounds of federated training and return the final global params.

    Evaluation: ``evaluate_every`` on the server test set (``eval/*``),
    ``federated_evaluate_every`` on the clients' test splits (``fed_eval/*``) and
    ``train_evaluate_every`` on all clients' training data (``train/*``).

    With ``checkpoint`` and ``checkpoint_every``, the full driver state is handed to
    ``checkpoint`` every N rounds (and after the last); ``resume`` continues from such a
    state, giving the same result as an uninterrupted run.

    A round commits its new model only if at least ``strategy.min_fit_clients``
    clients returned a valid update and the new model is finite; otherwise the
    global model stays as it was and ``round/committed`` is 0. ``policy`` decides
    over-commitment and what happens when too few clients succeed (retry, stop, skip).

    With ``privacy``, every round is charged to the ledger (``privacy/epsilon``), and
    the run stops cleanly before a round that would exceed its budget, keeping the
    model of the last allowed round. ``rng_seed`` seeds the driver's sampling RNG
    separately from ``seed`` (client randomness); DP runs pass a secret one so that
    the sample cannot be predicted. With ``privacy``, the aggregator's noise comes from
    a fresh generator each round, seeded from ``secrets`` (or derived from
    ``noise_seed`` and the round, for reproducible tests), never the sampling RNG and
    never checkpointed: a checkpoint cannot regenerate or predict the noise, and a
    resumed DP run equals the uninterrupted one except for the noise. ``canaries``
    inserts canary updates into every aggregated round (an audit run).

    Raises:
        RoundFailedError: Too few clients succeeded and ``policy`` says to stop; the
            checkpoint holds every round before this one.
    """
    rng = np.random.default_rng(seed if rng_seed is None else rng_seed)
    params = executor.initial_params()
    agg_state = strategy.aggregator.init(params)
    opt_state = strategy.server_optimizer.init(params)
    first = 1
    if resume is not None:  # continue exactly where the checkpoint left off
        params, agg_state, opt_state = resume.params, resume.agg_state, resume.opt_state
        rng.bit_generator.state = resume.rng_state
        first = resume.server_round + 1
        if resume.client_state:
            executor.restore_client_state(resume.client_state)
        if privacy is not None and "privacy" in resume.loop_state:
            privacy.restore(resume.loop_state["privacy"])
    handle = executor.broadcast(params, broadcast(strategy.aggregator, agg_state))
    callback.on_run_begin({"num_clients": executor.num_clients, "rounds": rounds})
    logs: Logs = dict(resume.rows[-1]) if resume is not None and resume.rows else {}
    rows: list[Logs] = list(resume.rows) if resume is not None else []
    for server_round in range(first, rounds + 1):
        if privacy is not None and not privacy.allows_next_round():
            logger.warning(
                "stopping before round %d: it would exceed the privacy budget "
                "(privacy.dp.max_epsilon); the model of round %d is final",
                server_round,
                server_round - 1,
            )
            break
        t0 = time.perf_counter()
        callback.on_round_begin(server_round)
        updates, failures, sampled, attempts, participants = _fit_round(
            strategy,
            executor,
            handle,
            params,
            policy,
            rng,
            seed,
            server_round,
            agg_state,
            privacy,
        )
        t_fit = time.perf_counter()
        logs = {
            "clients/sampled": sampled,
            "clients/ok": len(participants),
            "clients/failed": len(failures),
            **_fit_logs(updates),
        }
        if attempts > 1:
            logs["round/attempts"] = attempts
        committed = False
        if len(participants) >= strategy.min_fit_clients:
            noise_rng = rng
            if privacy is not None:
                noise_rng = np.random.default_rng(
                    secrets.randbits(128) if noise_seed is None else [noise_seed, server_round, 7]
                )
            if canaries is not None:
                updates = [*updates, *_canary_updates(canaries, strategy, params, agg_state,
                                                      server_round, seed, updates)]  # fmt: skip
            delta, agg_state, measurements = _aggregate(
                strategy.aggregator, updates, params, agg_state, noise_rng
            )
            new_params, new_opt_state = strategy.server_optimizer.apply(params, delta, opt_state)
            logs.update({f"agg/{k}": v for k, v in measurements.items()})
            if tree.all_finite(new_params):
                params, opt_state, committed = new_params, new_opt_state, True
                handle = executor.broadcast(params, broadcast(strategy.aggregator, agg_state))
            else:
                logger.warning(
                    "round %d: aggregated model is not finite; rolled back", server_round
                )
        logs["round/committed"] = int(committed)
        if privacy is not None:
            logs["privacy/epsilon"] = privacy.epsilon()
        t_agg = time.perf_counter()
        logs.update(
            evaluate_round(
                executor,
                handle,
                due(server_round, evaluate_every, rounds),
                due(server_round, federated_evaluate_every, rounds),
                due(server_round, train_evaluate_every, rounds),
            )
        )
        t_end = time.perf_counter()
        logs.update(
            {
                "time/round_s": t_end - t0,
                "time/fit_s": t_fit - t0,
                "time/aggregate_s": t_agg - t_fit,
                "time/eval_s": t_end - t_agg,
            }
        )
        rows.append({"round": server_round, **logs})
        # The checkpoint is written before the round is reported, so a row in
        # metrics.csv always has its checkpoint (a kill in between loses nothing).
        if checkpoint is not None and due(server_round, checkpoint_every, rounds):
            checkpoint(
                DriverState(
                    server_round=server_round,
                    params=params,
                    agg_state=agg_state,
                    opt_state=opt_state,
                    rng_state=dict(rng.bit_generator.state),
                    rows=rows,
                    client_state=executor.client_state(),
                    loop_state={"privacy": privacy.state()} if privacy is not None else {},
                )
            )
        callback.on_round_end(server_round, logs)
    callback.on_run_end(logs)
    return params
