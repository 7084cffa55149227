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
from collections.abc import Callable
from dataclasses import replace
from typing import Any, Protocol

import numpy as np

from fedray import tree
from fedray.callbacks import Callback, Logs
from fedray.checkpoint import DriverState
from fedray.driver import due
from fedray.records import ClientFailure, ClientUpdate, Params, RoundInfo
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


def run_async(
    *,
    strategy: Strategy,
    executor: AsyncExecutor,
    rounds: int,
    seed: int,
    callback: Callback,
    evaluate_every: int = 1,
    max_update_norm: float | None = None,
    resume: DriverState | None = None,
    checkpoint: Callable[[DriverState], object] | None = None,
    checkpoint_every: int = 0,
) -> Params:
    """Run ``rounds`` buffered server steps and return the final global params.

    Each idle client is picked uniformly at random (seeded) whenever a training slot
    frees; an update's staleness is the number of server steps taken since its client
    started, written to ``metrics["staleness"]`` for the aggregator.

    Checkpoints are taken after a server step (every ``checkpoint_every``). ``resume``
    continues from one: the model, optimizer and aggregator state, RNG and history are
    restored, and the clients that were in flight (or buffered) at the checkpoint
    start again from the restored model. Asynchronous runs depend on arrival timing,
    so a resumed run is a valid continuation, not a bit-identical replay.
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
    if resume is not None:
        params, agg_state, opt_state = resume.params, resume.agg_state, resume.opt_state
        rng.bit_generator.state = resume.rng_state
        version, dispatched = resume.server_round, int(resume.loop_state.get("dispatched", 0))
        rows = list(resume.rows)
    handle = executor.broadcast(params, agg_state.get("broadcast"))
    idle = set(range(executor.num_clients))
    in_flight: dict[Any, tuple[int, int]] = {}
    buffer: list[ClientUpdate] = []
    failures = 0
    concurrency = min(buffering.concurrency, executor.num_clients)

    def dispatch() -> None:
        nonlocal dispatched
        while len(in_flight) < concurrency and idle:
            cid = int(rng.choice(sorted(idle)))
            idle.discard(cid)
            dispatched += 1  # a fresh shuffle seed per dispatch, derived from the count
            info = RoundInfo(server_round=dispatched, seed=seed, num_sampled=1)
            in_flight[executor.submit(cid, handle, info)] = (cid, version)

    callback.on_run_begin({"num_clients": executor.num_clients, "rounds": rounds})
    dispatch()
    logs: Logs = dict(rows[-1]) if rows else {}
    t_step = time.perf_counter()
    while version < rounds:
        for ticket, result in executor.wait(list(in_flight)):
            cid, started = in_flight.pop(ticket)
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
            stale = {**result.metrics, "staleness": float(version - started)}
            buffer.append(replace(result, metrics=stale))
        while len(buffer) >= buffering.buffer_size and version < rounds:
            batch, buffer = buffer[: buffering.buffer_size], buffer[buffering.buffer_size :]
            callback.on_round_begin(version + 1)
            delta, agg_state, meas = strategy.aggregator.aggregate(batch, agg_state, rng)
            new_params, new_opt = strategy.server_optimizer.apply(params, delta, opt_state)
            committed = tree.all_finite(new_params)
            if committed:
                params, opt_state = new_params, new_opt
                handle = executor.broadcast(params, agg_state.get("broadcast"))
            version += 1
            logs = {
                "clients/ok": len(batch),
                "clients/failed": failures,
                "round/committed": int(committed),
                **{f"agg/{k}": v for k, v in meas.items()},
                "fit/loss": float(np.mean([u.metrics.get("loss", np.nan) for u in batch])),
            }
            failures = 0
            if due(version, evaluate_every, rounds):
                logs.update({f"eval/{k}": v for k, v in executor.evaluate(handle).items()})
            now = time.perf_counter()
            logs["time/round_s"] = now - t_step
            t_step = now
            callback.on_round_end(version, logs)
            rows.append({"round": version, **logs})
            if checkpoint is not None and due(version, checkpoint_every, rounds):
                checkpoint(
                    DriverState(
                        server_round=version,
                        params=params,
                        agg_state=agg_state,
                        opt_state=opt_state,
                        rng_state=dict(rng.bit_generator.state),
                        rows=rows,
                        loop_state={"dispatched": dispatched},
                    )
                )
        dispatch()
    callback.on_run_end(logs)
    return params
