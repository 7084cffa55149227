"""The one loop: server steps from a scheduler, then the same body for every step.

Each step: check the privacy budget, let the scheduler collect updates
(:class:`~fedray.loop.schedulers.SyncRounds` or
:class:`~fedray.loop.schedulers.Buffered`), aggregate them, apply the server
optimizer, keep the new model only if it is finite, broadcast it, evaluate, write
the checkpoint and report the step to the callbacks. FedBuff's buffered steps get the
same evaluation, failure accounting and exact-resume checkpoints as synchronous
rounds, because they run through the same body.

Layer 2: knows the strategy (pure math) and the :class:`~fedray.loop.Executor`
protocol, never Ray or Keras.
"""

from __future__ import annotations

import logging
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from fedray import tree
from fedray.aggregators import client_settings
from fedray.callbacks import Callback, CallbackList, History, Logs, PrivacyBudget, RunControl
from fedray.errors import RoundFailedError
from fedray.features.base import FeatureState, RoundFacts, downlinks, server_update
from fedray.loop.checkpoint import CheckpointError, DriverState
from fedray.loop.executor import Executor, Inserts, PrivacyLedger
from fedray.loop.schedulers import Buffered, Context, Scheduler, Step, SyncRounds
from fedray.loop.steps import (
    Evaluation,
    aggregate,
    comm_logs,
    due,
    evaluate_round,
    fit_logs,
)
from fedray.records import AggState, ClientUpdate, Params, RoundInfo, RoundPolicy
from fedray.strategy import Strategy

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Checkpointer:
    """Hands the loop's full state to ``save`` every ``every`` steps (and after the last)."""

    save: Callable[[DriverState], object]
    every: int = 1


def default_scheduler(strategy: Strategy, policy: RoundPolicy = RoundPolicy()) -> Scheduler:  # noqa: B008
    """:class:`Buffered` for a strategy with buffering (FedBuff), else :class:`SyncRounds`.

    ``policy`` rules synchronous rounds; buffered steps take its ``max_update_norm``.
    """
    b = strategy.buffering
    if b is None:
        return SyncRounds(policy)
    return Buffered(b.concurrency, b.buffer_size, max_update_norm=policy.max_update_norm)


def run_rounds(  # noqa: PLR0913 - the loop's keyword options (issue 32 makes them features)
    *,
    strategy: Strategy,
    executor: Executor,
    rounds: int,
    seed: int,
    callback: Callback,
    history: History | None = None,
    scheduler: Scheduler | None = None,
    evaluation: Evaluation = Evaluation(),  # noqa: B008 - frozen, immutable
    checkpoint: Checkpointer | None = None,
    resume: DriverState | None = None,
    privacy: PrivacyLedger | None = None,
    rng_seed: int | None = None,
    noise_seed: int | None = None,
    canaries: Inserts | None = None,
) -> Params:
    """Run ``rounds`` server steps and return the final global params.

    A step commits its new model only if at least ``strategy.min_fit_clients``
    clients' updates count and the new model is finite; otherwise the global model
    stays as it was and ``round/committed`` is 0. The scheduler (default:
    :func:`default_scheduler`) decides who trains and what happens to failures.

    With ``checkpoint``, the full loop state (model, aggregator and optimizer state,
    sampling RNG, history, the hosts' per-client state and the scheduler's state) is
    saved before the step is reported, so a row in the history always has its
    checkpoint; ``resume`` continues from such a state, giving the same result as an
    uninterrupted run. Every step's logs are recorded in ``history`` (the run's one
    row store; a resumed run's history starts with the checkpoint's rows), which the
    callbacks see through :meth:`~fedray.callbacks.Callback.set_history`.

    With ``privacy``, every attempt is charged to the ledger before its clients start
    (``privacy/epsilon``), and the run stops cleanly before a step that would exceed
    its budget, keeping the model of the last allowed step. ``rng_seed`` seeds the
    sampling RNG apart from ``seed`` (client randomness).

    A run is private when its strategy holds a DP mechanism
    (:meth:`~fedray.strategy.Strategy.dp_mechanisms`), ledger or not. Then each
    attempt's sample is drawn from a secret key (``rng_seed``, else ``noise_seed``,
    else ``secrets``) with the round and the attempt, and the aggregator's noise from a
    fresh generator each step (seeded from ``secrets``, or derived from ``noise_seed``
    and the step for reproducible tests). Neither is ever checkpointed or the public
    ``seed``: a checkpoint can neither replay past samples nor regenerate past noise.
    ``canaries`` inserts canary updates into every aggregated step (an audit).

    Raises:
        RoundFailedError: Too few clients succeeded and the policy says to stop; the
            checkpoint holds every step before this one.
    """
    scheduler = scheduler or default_scheduler(strategy)
    private = bool(strategy.dp_mechanisms())
    key = None
    if private:  # a secret sample per attempt; the checkpointed generator stays unused
        key = next((k for k in (rng_seed, noise_seed) if k is not None), secrets.randbits(128))
    rng = np.random.default_rng(seed if rng_seed is None or private else rng_seed)
    params = executor.initial_params()
    loop = _Loop(
        ctx=Context(strategy, executor, rng, seed, privacy, key),
        scheduler=scheduler,
        history=history if history is not None else History(),
        rounds=rounds,
        evaluation=evaluation,
        checkpoint=checkpoint,
        canaries=canaries,
        noise_seed=noise_seed,
        private=private,
        params=params,
        agg_state=strategy.aggregator.init(params),
        opt_state=strategy.server_optimizer.init(params),
        feature_state=[f.init(params) for f in strategy.features],
    )
    first = 1 if resume is None else loop.resume_from(resume)
    loop.handle = executor.broadcast(loop.params, downlinks(strategy.features, loop.feature_state))
    if privacy is not None:  # the budget is a callback that stops the run, as any can
        callback = CallbackList([PrivacyBudget(privacy), callback])
    run = RunControl(rounds)
    run.params, run.server_round = loop.params, first - 1
    callback.set_history(loop.history)
    callback.set_run(run)
    callback.on_run_begin({"num_clients": executor.num_clients, "rounds": rounds})
    logs: Logs = dict(loop.history.rows[-1]) if loop.history.rows else {}
    for server_round in range(first, rounds + 1):
        callback.on_round_begin(server_round)
        if run.stop_training:
            break
        run.server_round = server_round
        logs = loop.round(server_round, callback)
        run.params = loop.params
        callback.on_round_end(server_round, logs)
        if run.stop_training:
            break
    if run.stop_training:
        logger.warning("%s", run.stop_reason)
    callback.on_run_end(logs)
    return loop.params


@dataclass
class _Loop:
    """The loop's state across server steps, and the body every step runs."""

    ctx: Context
    scheduler: Scheduler
    history: History
    rounds: int
    evaluation: Evaluation
    checkpoint: Checkpointer | None
    canaries: Inserts | None
    noise_seed: int | None
    private: bool
    params: Params
    agg_state: AggState
    opt_state: AggState
    feature_state: list[FeatureState]
    handle: Any = None

    def resume_from(self, state: DriverState) -> int:
        """Continue exactly where the checkpoint left off; returns the next round."""
        ctx = self.ctx
        self.params, self.agg_state, self.opt_state = state.params, state.agg_state, state.opt_state
        ctx.rng.bit_generator.state = state.rng_state
        self.history.rows = [dict(r) for r in state.rows]
        if state.client_state:  # the hosts reload what they saved for that checkpoint
            _reload_client_state(ctx.executor, state.client_state)
        if ctx.privacy is not None and "privacy" in state.loop_state:
            ctx.privacy.restore(state.loop_state["privacy"])
        self.scheduler.restore(state.loop_state.get("scheduler", {}))
        if "features" in state.loop_state:
            self.feature_state = _feature_states(ctx.strategy, state.loop_state["features"])
        return state.server_round + 1

    def round(self, server_round: int, callback: Callback) -> Logs:
        """One server step: collect, aggregate and commit, evaluate, record, checkpoint."""
        ctx = self.ctx
        t0 = time.perf_counter()
        try:
            step = self.scheduler.collect(
                ctx, server_round, self.params, self.handle, self.agg_state
            )
        except RoundFailedError as stop:  # the failures that stopped the run are logged too
            if isinstance(stop.step, Step):
                callback.on_failures(server_round, stop.step.failures, stop.step.recoveries)
            raise
        t_fit = time.perf_counter()
        logs = _step_logs(ctx.strategy, step, self.params)
        if step.failures or step.recoveries:
            callback.on_failures(server_round, step.failures, step.recoveries)
        logs["round/committed"] = int(self._commit(step, server_round, logs))
        if ctx.privacy is not None:
            logs["privacy/epsilon"] = ctx.privacy.epsilon()
            if lost := ctx.privacy.lost_attempts(server_round):  # charged, then lost to a crash
                logs["privacy/lost_attempts"] = lost
        t_agg = time.perf_counter()
        ev = evaluate_round(ctx.executor, self.handle, self.evaluation, server_round, self.rounds)
        logs.update(ev)
        t_end = time.perf_counter()
        logs.update(
            {
                "time/round_s": t_end - t0,
                "time/fit_s": t_fit - t0,
                "time/aggregate_s": t_agg - t_fit,
                "time/eval_s": t_end - t_agg,
            }
        )
        self.history.record(server_round, logs)
        if self.checkpoint is not None and due(server_round, self.checkpoint.every, self.rounds):
            self._save(server_round, self.checkpoint)
        return logs

    def _commit(self, step: Step, server_round: int, logs: Logs) -> bool:
        """Aggregate, apply the server optimizer, and keep the model only if it is finite."""
        ctx = self.ctx
        if len(step.participants) < ctx.strategy.min_fit_clients:
            return False
        noise = _noise_rng(self.private, ctx.seed, self.noise_seed, server_round)
        new = _server_step(
            ctx,
            step,
            self.params,
            (self.agg_state, self.feature_state),
            self.opt_state,
            server_round,
            self.canaries,
            noise,
        )
        new_params, (self.agg_state, feature_state), new_opt_state, measurements = new
        logs.update({f"agg/{k}": v for k, v in measurements.items()})
        if not tree.all_finite(new_params):
            logger.warning("round %d: aggregated model is not finite; rolled back", server_round)
            return False
        # The features' server state moves with the model (a rolled-back step keeps both).
        self.params, self.opt_state, self.feature_state = new_params, new_opt_state, feature_state
        downs = downlinks(ctx.strategy.features, self.feature_state)
        self.handle = ctx.executor.broadcast(self.params, downs)
        return True

    def _save(self, server_round: int, checkpoint: Checkpointer) -> None:
        """The full loop state, after the hosts saved their clients' state on their side."""
        ctx = self.ctx
        loop_state: dict[str, Any] = {"scheduler": self.scheduler.state()}
        if self.feature_state:
            names = [f.name for f in ctx.strategy.features]
            loop_state["features"] = [
                {"name": n, "state": s} for n, s in zip(names, self.feature_state, strict=True)
            ]
        if ctx.privacy is not None:
            loop_state["privacy"] = ctx.privacy.state()
        saved = ctx.executor.save_client_state(server_round)
        checkpoint.save(
            DriverState(
                server_round=server_round,
                params=self.params,
                agg_state=self.agg_state,
                opt_state=self.opt_state,
                rng_state=dict(ctx.rng.bit_generator.state),
                rows=self.history.rows,
                client_state={"round": server_round, "clients": saved} if saved else {},
                loop_state=loop_state,
            )
        )
        ctx.executor.prune_client_state(server_round)


def _step_logs(strategy: Strategy, step: Step, params: Params) -> Logs:
    """A step's clients, training metrics, traffic, failures and re-executions."""
    logs: Logs = {
        "clients/sampled": step.sampled,
        "clients/ok": len(step.participants),
        "clients/failed": len(step.failures),
        **fit_logs(step.updates),
        **comm_logs(
            strategy.aggregator, params, step.sampled, len(step.participants), strategy.features
        ),
    }
    if step.attempts > 1:
        logs["round/attempts"] = step.attempts
    logs.update({f"failed/{c}": n for c, n in step.failure_counts().items()})
    if step.recoveries:
        logs["hosts/restarted"] = len(step.recoveries)
        logs["clients/rerun"] = sum(len(r.client_ids) for r in step.recoveries)
    return logs


def _feature_states(strategy: Strategy, saved: list[dict[str, Any]]) -> list[FeatureState]:
    """The features' server states from a checkpoint, if it holds the same features.

    Raises:
        CheckpointError: The checkpoint was written for other features, or in another
            order (a hand-composed strategy is not in the config's fingerprint).
    """
    names = [f.name for f in strategy.features]
    found = [str(s["name"]) for s in saved]
    if found != names:
        raise CheckpointError(
            f"--resume: the checkpoint holds the state of features {found}, but the strategy "
            f"has {names}; resume with the strategy that wrote it"
        )
    return [dict(s["state"]) for s in saved]


def _reload_client_state(executor: Executor, saved: dict[str, int]) -> None:
    """The hosts reload their clients' state of the checkpoint; warn when some is missing."""
    found = executor.load_client_state(int(saved["round"]))
    if found < int(saved["clients"]):
        logger.warning(
            "resumed with the state of %d of the %d clients that had some at round %d (the "
            "hosts' client-state folder is not where they run now?); the others start afresh",
            found,
            saved["clients"],
            saved["round"],
        )


def _noise_rng(
    private: bool, seed: int, noise_seed: int | None, server_round: int
) -> np.random.Generator:
    """The generator of a step's aggregation randomness (DP's noise): never the sampler's.

    Private runs draw it fresh from ``secrets`` each step (``noise_seed`` fixes it, for
    reproducible tests); other runs derive it from the public seed and the step.

    >>> _noise_rng(False, 0, None, 1).random() == _noise_rng(False, 0, None, 1).random()
    True
    >>> _noise_rng(True, 0, None, 1).random() == _noise_rng(True, 0, None, 1).random()
    False
    """
    if not private:
        return np.random.default_rng([seed, server_round, 7])
    entropy = secrets.randbits(128) if noise_seed is None else [noise_seed, server_round, 7]
    return np.random.default_rng(entropy)


def _server_step(
    ctx: Context,
    step: Step,
    params: Params,
    states: tuple[AggState, list[FeatureState]],
    opt_state: AggState,
    server_round: int,
    canaries: Inserts | None,
    noise_rng: np.random.Generator,
) -> tuple[Params, tuple[AggState, list[FeatureState]], AggState, dict[str, float]]:
    """The step's next model and states, not yet committed.

    Aggregate the updates, run the features' server halves, apply the server optimizer.
    """
    strategy = ctx.strategy
    agg_state, feature_state = states
    updates = step.updates
    if canaries is not None:
        settings = client_settings(strategy.aggregator, agg_state)
        info = RoundInfo(server_round=server_round, seed=ctx.seed, num_sampled=0, settings=settings)
        updates = [*updates, *canaries.inserted(strategy.aggregator, params, info, updates)]
    delta, agg_state, measurements = aggregate(
        strategy.aggregator, updates, params, agg_state, noise_rng
    )
    if strategy.features:
        reports = [
            (u.client_id, u.num_examples, u.reports)
            for u in step.updates
            if isinstance(u, ClientUpdate) and len(u.reports) == len(strategy.features)
        ]
        hidden = any(
            m.privacy_mode in ("central", "distributed") for m in ctx.strategy.dp_mechanisms()
        )
        count = None if hidden else len(step.participants)  # DP releases no realised count
        facts = RoundFacts(server_round, ctx.executor.num_clients, params, count)
        delta, feature_state, more = server_update(
            strategy.features, delta, reports, feature_state, facts
        )
        delta = [
            np.asarray(d).astype(p.dtype, copy=False) for d, p in zip(delta, params, strict=True)
        ]
        measurements = {**measurements, **more}
    new_params, new_opt_state = strategy.server_optimizer.apply(params, delta, opt_state)
    return new_params, (agg_state, feature_state), new_opt_state, measurements
