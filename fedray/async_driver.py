"""The asynchronous round loop of FedBuff.

Clients train continuously; the server steps every ``buffer_size`` arrivals.

Nguyen et al., "Federated Learning with Buffered Asynchronous Aggregation", AISTATS
2022, arXiv:2106.06639. Layer 2: the strategy's math plus an executor that can
``submit`` one client's training and ``wait`` for whichever finishes first (Ray:
``ray.wait`` on in-flight refs). A logged "round" is one server step.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import replace
from typing import Any, Protocol

import numpy as np

from fedray import tree
from fedray.aggregators import broadcast
from fedray.callbacks import Callback, Logs
from fedray.checkpoint import DriverState
from fedray.driver import due, evaluate_round, weighted_logs
from fedray.records import ClientEval, ClientFailure, ClientUpdate, Params, RoundInfo
from fedray.strategy import Strategy
from fedray.validation import validate_update

logger = logging.getLogger(__name__)


class AsyncExecutor(Protocol):
    """What the asynchronous loop needs beyond the synchronous ``Executor``."""

    @property
    def num_clients(self) -> int:
        """Number of registered clients."""
        ...

    def initial_params(self) -> Params:
        """The freshly initialised global model's weights."""
        ...

    def broadcast(self, params: Params, extras: dict[str, Params] | None = None) -> Any:
        """Make the weights available to every host once."""
        ...

    def submit(self, client_id: int, params: Any, info: RoundInfo) -> Any:
        """Start one client's training; returns a ticket."""
        ...

    def wait(self, tickets: list[Any]) -> list[tuple[Any, ClientUpdate | ClientFailure]]:
        """Block until at least one ticket finishes; return the finished ones."""
        ...

    def evaluate(self, params: Any) -> dict[str, float]:
        """Centralized evaluation."""
        ...

    def evaluate_clients(
        self, client_ids: Sequence[int], params: Any, split: str = "test"
    ) -> list[ClientEval | ClientFailure]:
        """Evaluation on the clients' own ``test`` splits or ``train`` shards."""
        ...


def run_async(
    *,
    strategy: Strategy,
    executor: AsyncExecutor,
    rounds: int,
    seed: int,
    callback: Callback,
    evaluate_every: int = 1,
    federated_evaluate_every: int = 0,
    train_evaluate_every: int = 0,
    max_update_norm: float | None = None,
    resume: DriverState | None = None,
    checkpoint: Callable[[DriverState], object] | None = None,
    checkpoint_every: int = 0,
) -> Params:
    """Run ``rounds`` buffered server steps and return the final global params.

    Each idle client is picked uniformly at random (seeded) whenever a training slot
    frees; an update's staleness is the number of server steps taken since its client
    started, written to ``protocol["staleness"]`` for the aggregator. ``fit/*`` are
    example-weighted over the step's updates, as in synchronous rounds.

    Checkpoints are taken after a server step (every ``checkpoint_every``), before the
    step is reported. They hold, besides the model, optimizer and aggregator state, RNG
    and history, the buffered updates and the clients still in flight with the model
    version each started from. ``resume`` restores the buffer and starts those clients
    again from their own versions with their own seeds: a client's randomness comes
    from its dispatch, so in-process (where arrivals come in dispatch order) a resumed
    run equals the uninterrupted one bit for bit. On Ray, arrival order follows timing,
    so a resumed run is the same process continued, not a replay.
    """
    buffering = strategy.buffering
    if buffering is None:
        raise ValueError(f"strategy {strategy.name!r} has no buffering; use run_rounds")
    rng = np.random.default_rng(seed)
    params = executor.initial_params()
    agg_state = strategy.aggregator.init(params)
    opt_state = strategy.server_optimizer.init(params)
    version, dispatched = 0, 0
    rows: list[Logs] = []
    loop: dict[str, Any] = {}
    if resume is not None:
        params, agg_state, opt_state = resume.params, resume.agg_state, resume.opt_state
        rng.bit_generator.state = resume.rng_state
        version, dispatched = resume.server_round, int(resume.loop_state.get("dispatched", 0))
        rows, loop = list(resume.rows), resume.loop_state
    handles = {version: executor.broadcast(params, broadcast(strategy.aggregator, agg_state))}
    versions: dict[int, Params] = {version: params}  # models that in-flight clients started from
    for v, p in loop.get("versions", {}).items():
        versions[int(v)] = list(p)
    idle = set(range(executor.num_clients))
    in_flight: dict[Any, tuple[int, int, int]] = {}  # ticket -> (client, version, dispatch)
    buffer: list[ClientUpdate] = [ClientUpdate(**u) for u in loop.get("buffer", [])]
    failures = 0
    concurrency = min(buffering.concurrency, executor.num_clients)

    def start(cid: int, started: int, index: int) -> None:
        if started not in handles:
            handles[started] = executor.broadcast(
                versions[started], broadcast(strategy.aggregator, agg_state)
            )
        info = RoundInfo(server_round=index, seed=seed, num_sampled=1)
        idle.discard(cid)
        in_flight[executor.submit(cid, handles[started], info)] = (cid, started, index)

    def dispatch() -> None:
        nonlocal dispatched
        while len(in_flight) < concurrency and idle:
            cid = int(rng.choice(sorted(idle)))
            dispatched += 1  # a fresh shuffle seed per dispatch, derived from the count
            start(cid, version, dispatched)

    def state() -> DriverState:
        live = {v for _, v, _ in in_flight.values()}
        return DriverState(
            server_round=version,
            params=params,
            agg_state=agg_state,
            opt_state=opt_state,
            rng_state=dict(rng.bit_generator.state),
            rows=rows,
            loop_state={
                "dispatched": dispatched,
                "in_flight": [list(t) for t in in_flight.values()],  # in dispatch order
                "versions": {str(v): versions[v] for v in sorted(live)},
                "buffer": [dict(vars(u)) for u in buffer],
            },
        )

    callback.on_run_begin({"num_clients": executor.num_clients, "rounds": rounds})
    for cid, started, index in loop.get("in_flight", []):  # resumed: the same clients again
        start(int(cid), int(started), int(index))
    logs: Logs = dict(rows[-1]) if rows else {}
    t_step = time.perf_counter()
    while version < rounds:
        while len(buffer) >= buffering.buffer_size and version < rounds:
            batch, buffer = buffer[: buffering.buffer_size], buffer[buffering.buffer_size :]
            callback.on_round_begin(version + 1)
            delta, agg_state, meas = strategy.aggregator.aggregate(batch, agg_state, rng)
            new_params, new_opt = strategy.server_optimizer.apply(params, delta, opt_state)
            committed = tree.all_finite(new_params)
            if committed:
                params, opt_state = new_params, new_opt
            version += 1
            versions[version] = params
            handles[version] = (
                executor.broadcast(params, broadcast(strategy.aggregator, agg_state))
                if committed
                else handles[version - 1]
            )
            live = {v for _, v, _ in in_flight.values()} | {version}
            for v in [v for v in versions if v not in live]:
                versions.pop(v)
                handles.pop(v, None)
            logs = {
                "clients/ok": len(batch),
                "clients/failed": failures,
                "round/committed": int(committed),
                **{f"agg/{k}": v for k, v in meas.items()},
                **weighted_logs(batch, "fit"),
            }
            failures = 0
            logs.update(
                evaluate_round(
                    executor,
                    handles[version],
                    due(version, evaluate_every, rounds),
                    due(version, federated_evaluate_every, rounds),
                    due(version, train_evaluate_every, rounds),
                )
            )
            now = time.perf_counter()
            logs["time/round_s"] = now - t_step
            t_step = now
            rows.append({"round": version, **logs})
            # Checkpoint first, then report: a reported step always has its checkpoint.
            if checkpoint is not None and due(version, checkpoint_every, rounds):
                checkpoint(state())
            callback.on_round_end(version, logs)
        if version >= rounds:
            break
        dispatch()
        for ticket, result in executor.wait(list(in_flight)):
            cid, started, _ = in_flight.pop(ticket)
            idle.add(cid)
            if isinstance(result, ClientFailure):
                failures += 1
                logger.warning("client %d failed: %s", cid, result.reason)
                continue
            problem = validate_update(result, params, max_update_norm)
            if problem is not None:
                failures += 1
                logger.warning("client %d failed: %s", cid, problem)
                continue
            stale = {**result.protocol, "staleness": float(version - started)}
            buffer.append(replace(result, protocol=stale))
    callback.on_run_end(logs)
    return params
