"""The client host: a plain class that owns clients' shards and answers for each of them.

It is made remote at the edge (``ray.remote`` in :mod:`fedray.runtime.ray_executor`) and used
in-process by :class:`fedray.runtime.local.LocalExecutor`, so it is testable without Ray. One
host serves one or many clients, one after another, with one trainer
(:mod:`fedray.client.trainer`):

1. ``__init__``: load the shards (or take ``fedray.fit``'s), apply simulated label
   flips, and start the trainer (the compiled model and its traced loops).
2. ``fit``: plan each sampled client (simulated faults, straggling, the features'
   gradient offsets), train them all in one trainer call, then finish each update on
   its own: the features' client halves (:mod:`fedray.features`, with each client's
   state kept here), the aggregator's ``encode``, masking, simulated attacks.
   With pre-aggregation the host validates and sums them into one
   :class:`~fedray.records.PartialSum`.
3. ``secure_step``: the client side of secure aggregation; secret keys stay here.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from fedray import tree
from fedray.aggregators import LinearAggregator, presum
from fedray.client.attacks import attack_update, choose_attackers, flip_labels
from fedray.client.behaviours import (
    simulated_delay,
    simulated_fault,
    simulated_host_fault,
    straggler_steps,
)
from fedray.client.spec import HostSpec, Trainer, TrainJob, client_seed, noise_seed
from fedray.client.state_store import ClientState, ClientStateStore
from fedray.errors import ConfigError, HostFaultError, one_line
from fedray.features.base import Trained, client_offset, client_update
from fedray.loop.validation import screen
from fedray.records import (
    ClientEval,
    ClientFailure,
    ClientUpdate,
    MeanStates,
    Metrics,
    Params,
    PartialSum,
    RoundInfo,
    merge_means,
)
from fedray.secagg.session import MissingKeysError, SecureClients
from fedray.strategy.rules import dp_mechanisms

logger = logging.getLogger(__name__)

WITHHELD = "the client's code raised; under DP its reason stays in its host's log"
"""The reason a failure carries to the server when the host keeps the real one."""


@dataclass(frozen=True)
class _Job:
    """One client's planned round (see :meth:`ClientHost._plan_fit`)."""

    train: TrainJob  # what the trainer runs
    total: int  # local steps of a full round
    fault: str | None  # simulated fault still to apply after training ("nan")

    @property
    def cid(self) -> int:
        """The client."""
        return self.train.cid


class _SkipClientError(Exception):
    """A client that does not train this round: ``cause`` (a failure cause) and why."""

    def __init__(self, cause: str, reason: str) -> None:
        super().__init__(reason)
        self.cause = cause


class ClientHost:
    """Owns the shards of ``spec.client_ids`` and one compiled model."""

    def __init__(self, spec: HostSpec) -> None:
        self.spec = spec
        self._error: BaseException | None = None
        try:
            self._setup(spec)
        except Exception as exc:  # delivered by ready(), so the caller gets the real error
            self._error = exc

    def _setup(self, spec: HostSpec) -> None:
        t0 = time.perf_counter()
        from fedray.data import load_host_data

        if spec.source is not None:
            host_data = spec.source.host_data(spec.data, spec.seed)
        else:
            host_data = load_host_data(
                spec.data, spec.seed, spec.client_ids, with_test_set=spec.with_test_set
            )
        self.info = host_data.info
        self.shards = host_data.shards
        attack = spec.attack
        self.attackers = choose_attackers(spec.data.num_clients, attack.fraction, spec.seed)
        if attack.kind == "label_flip" and self.attackers & set(self.shards):
            if self.info.task != "classification" or not self.info.num_classes:
                raise ConfigError(
                    "attack.kind = 'label_flip' needs a classification dataset; "
                    f"{spec.data.dataset!r} is a {self.info.task} task"
                )
            for cid in self.attackers & set(self.shards):
                self.shards[cid].y = flip_labels(self.shards[cid].y, self.info.num_classes)
            host_data.rows = None  # the shards' labels are no longer views of it
        self._examples = {cid: len(s.x) for cid, s in self.shards.items()}
        # Under DP nothing a client's data decides leaves the host but the mechanism's
        # release: not a failure its data caused, nor the reason its code raised.
        self._private = bool(dp_mechanisms(spec.aggregator, spec.client))
        make = spec.trainer
        if make is None:
            from fedray.client.trainer import KerasTrainer

            make = KerasTrainer
        self.trainer: Trainer = make(spec, host_data)
        self._features = tuple(spec.features)
        self._start_loss = any(f.declaration().start_loss for f in self._features)
        # Per client, one state per feature (None: not made yet, or not in a restored file).
        self._states: dict[int, list[Params | None]] = {}
        self._store = (  # where the clients' state is saved: this side of the trust line
            None
            if spec.state_dir is None
            else ClientStateStore(spec.state_dir, str(min(spec.client_ids, default=0)))
        )
        # This round's SecAgg keys per client (secret), and the host's own bound on how
        # few survivors an unmask request may name (not the server's word for it).
        self._secure = SecureClients.for_aggregator(spec.aggregator)
        self.setup_s = time.perf_counter() - t0

    def _check(self) -> None:
        if self._error is not None:
            raise self._error

    def ready(self) -> dict[str, Any]:
        """Raise the start-up error, if any; else describe the host."""
        self._check()
        # Shard sizes leave the host only for DP-SGD's accountant, where they are public;
        # under DP the data's size on a GPU (n_k times a row's bytes) stays here too.
        sizes = {"examples": dict(self._examples)} if self.spec.client.dp_sgd is not None else {}
        facts = self.trainer.describe()
        if self._private:
            facts.pop("gpu_data_mb", None)
        return {
            "pid": os.getpid(),
            "clients": list(self.spec.client_ids),
            **sizes,
            "threads": self.spec.threads,
            **facts,
            "setup_s": self.setup_s,
        }

    def initial_params(self) -> Params:
        """The freshly initialised model's weights (identical on every host: same seed)."""
        self._check()
        return self.trainer.initial_params()

    def _host_fault(self, kind: str, cid: int) -> None:
        """In-process there is no host process to lose or hang: the whole call fails."""
        raise HostFaultError(kind, f"simulated host {kind} while planning client {cid}")

    def fit(
        self,
        client_ids: Sequence[int],
        params: Params,
        info: RoundInfo,
        downs: tuple[Params | None, ...] | None = None,
    ) -> list[ClientUpdate | ClientFailure | PartialSum]:
        """Train each client from ``params``; a client that raises becomes a ClientFailure.

        The clients train one after another inside one traced call (in chunks that
        keep the stacked updates under ~64 MB); then each update is encoded, masked or
        attacked on its own. ``downs`` holds each feature's downlink, sent beside the
        weights (SCAFFOLD's server control variate). Results come
        back in the order of ``client_ids``; with ``spec.pre_aggregate`` the valid
        updates come back as one :class:`PartialSum` (first), followed by the failures.
        """
        self._check()
        done: dict[int, ClientUpdate | ClientFailure] = {}
        jobs: list[_Job] = []
        down = downs if downs is not None else (None,) * len(self._features)
        for cid in client_ids:
            try:
                jobs.append(self._plan_fit(cid, params, info, down))
            except _SkipClientError as skip:
                done[cid] = ClientFailure(cid, str(skip), skip.cause)
            except HostFaultError:
                raise
            except Exception as exc:
                done[cid] = self._raised(cid, exc, info)
        model_bytes = sum(np.asarray(p).nbytes for p in params) or 1
        chunk = max(1, (64 << 20) // model_bytes)
        for start in range(0, len(jobs), chunk):
            part = jobs[start : start + chunk]
            for job, outcome in zip(part, self._train(part, params, info), strict=True):
                done[job.cid] = self._finished(job, outcome, params, info, down)
        # The host screens each update as the driver will (which still checks): a NaN or
        # a wrong shape is then reported by the host that served it, as its client's own.
        norm = self.spec.max_update_norm
        results = [screen(done[cid], params, norm) for cid in client_ids]
        if not self.spec.pre_aggregate:
            return list(results)
        return self._presum(results)

    def _finished(
        self,
        job: _Job,
        outcome: tuple[Params, Metrics] | ClientFailure,
        params: Params,
        info: RoundInfo,
        down: tuple[Params | None, ...],
    ) -> ClientUpdate | ClientFailure:
        """A trained client's update (:meth:`_finish_fit`), or why it failed."""
        if isinstance(outcome, ClientFailure):
            return outcome
        try:
            return self._finish_fit(job, *outcome, params, info, down)
        except _SkipClientError as skip:
            return ClientFailure(job.cid, str(skip), skip.cause)
        except MissingKeysError as exc:  # a re-run after a restart: a protocol dropout
            return ClientFailure(job.cid, str(exc), "secagg")
        except Exception as exc:
            return self._raised(job.cid, exc, info)

    def _train(
        self, jobs: Sequence[_Job], params: Params, info: RoundInfo
    ) -> list[tuple[Params, Metrics] | ClientFailure]:
        """Train ``jobs`` in one trainer call; when it raises, each on its own.

        One client whose training raises (bad data, a user model's bug) then fails
        alone instead of taking its chunk's other clients with it.
        """
        try:
            return list(self.trainer.train([job.train for job in jobs], params))
        except Exception as exc:
            if len(jobs) == 1:
                return [self._failed(jobs[0], params, info, exc)]
        return [outcome for job in jobs for outcome in self._train([job], params, info)]

    def _failed(
        self, job: _Job, params: Params, info: RoundInfo, exc: Exception
    ) -> tuple[Params, Metrics] | ClientFailure:
        """What a client whose training raised ``exc`` sends.

        Without DP, a failure with the reason. Under DP the failure would be an
        un-noised release of the client's data, so the client trains once more on none
        of it (a null job): when that works, the failure was its data's, and it sends
        what the null job gives (DP-SGD: noise alone) or, for the other mechanisms, a
        zero update their encode then clips and noises; the server cannot tell. When
        the null job raises too, the code is at fault whatever the data, and the client
        fails (the reason stays in this host's log).
        """
        if not self._private:
            return self._raised(job.cid, exc, info)
        logger.warning(
            "client %d raised in round %d: %s", job.cid, info.server_round, one_line(exc)
        )
        try:
            null = self.trainer.train([replace(job.train, null=True)], params)[0]
        except Exception as again:
            return self._raised(job.cid, again, info)
        if self.spec.client.dp_sgd is not None:
            return null[0], {}
        return [np.zeros_like(p) for p in params], {}

    def _presum(
        self, results: Sequence[ClientUpdate | ClientFailure]
    ) -> list[ClientUpdate | ClientFailure | PartialSum]:
        """Sum the screened valid updates into one partial sum; failures follow it."""
        if not isinstance(self.spec.aggregator, LinearAggregator):  # HostSpec refuses it too
            raise TypeError(
                f"pre-aggregation needs a linear aggregator (a LinearAggregator), got "
                f"{self.spec.aggregator}"
            )
        valid = [r for r in results if isinstance(r, ClientUpdate)]
        failures: list[ClientUpdate | ClientFailure | PartialSum] = [
            r for r in results if isinstance(r, ClientFailure)
        ]
        if not valid:
            return failures
        return [presum(valid, self.spec.aggregator), *failures]

    def _state(self, cid: int, params: Params) -> list[Params]:
        """Client ``cid``'s state, one per feature (each feature's ``client_init`` at first)."""
        states = self._states.setdefault(cid, [None] * len(self._features))
        for i, f in enumerate(self._features):
            if states[i] is None:
                states[i] = f.client_init(params)
        return [s if s is not None else [] for s in states]

    def _plan_fit(
        self, cid: int, params: Params, info: RoundInfo, down: tuple[Params | None, ...]
    ) -> _Job:
        """What one client runs this round; raises for a missing client or a simulated fault."""
        if cid not in self._examples:
            raise KeyError(f"client {cid} is not hosted here ({list(self._examples)})")
        host_fault = simulated_host_fault(
            self.spec.faults, info.seed, info.server_round, cid, info.attempt
        )
        if host_fault is not None and info.dispatch == 0:
            self._host_fault(host_fault, cid)
        fault = simulated_fault(self.spec.faults, info.seed, info.server_round, cid, info.attempt)
        if fault == "crash":
            raise _SkipClientError("crash", "simulated device crash (faults.crash_rate)")
        if fault == "hang":
            raise _SkipClientError("hang", "simulated device hang (faults.hang_rate)")
        n = self._examples[cid]
        total = self.spec.train.local_epochs * -(-n // self.spec.train.batch_size)
        steps = straggler_steps(self.spec.faults, self.spec.train.local_epochs, info, cid, total)
        if steps < total and self.spec.faults.drop_stragglers:
            raise _SkipClientError(
                "straggler", f"straggler dropped: {steps} of {total} local steps"
            )
        offset = None  # without features no client keeps state: nothing is made per client
        if self._features:
            offset = client_offset(self._features, down, self._state(cid, params), params)
        seed = client_seed(info.seed, info.server_round, cid)
        job = TrainJob(cid, steps, seed, noise_seed(self.spec.client.dp_sgd, info, cid), offset)
        return _Job(job, total, fault)

    def _finish_fit(
        self,
        job: _Job,
        delta: Params,
        metrics: Metrics,
        params: Params,
        info: RoundInfo,
        down: tuple[Params | None, ...],
    ) -> ClientUpdate:
        """One trained client's update: the features' client halves, encode, mask, faults."""
        cid, steps, total = job.train.cid, job.train.steps, job.total
        if job.fault == "nan":  # a broken client: the driver must reject this update
            delta = [np.full_like(d, np.nan) for d in delta]
        if not tree.all_finite(delta):
            if not self._private:  # before a feature's state (a residual) takes it in
                raise _SkipClientError("nan", "update contains NaN or Inf")
            # Under DP the failure would be an un-noised release of the client's data:
            # it sends the mechanism's release of a zero update, which looks like any other.
            logger.warning("client %d: its update was not finite; it sends a zero one", cid)
            delta, metrics = [np.zeros_like(d) for d in delta], {}
        metrics = {**metrics, "work_fraction": steps / total if total else 1.0}
        if self._features:
            delta, reports = self._client_halves(job, delta, params, down)
        else:
            reports = ()
        if self.spec.client.dp_sgd is not None:
            # DP-SGD: only the noised weights leave the host; the training loss of raw
            # examples and the example count would leave un-noised.
            update = ClientUpdate(cid, delta, 1, {}, reports=reports)
        else:
            update = ClientUpdate(cid, delta, self._examples[cid], metrics, reports=reports)
        delay = simulated_delay(self.spec.faults, self.spec.seed, cid)
        if delay:  # a slow device (faults.delay_s): fixed per client, from the seed
            time.sleep(delay)
        update = self.spec.aggregator.encode(update, info)
        if update.masked is not None:  # secure aggregation: mask inside the host
            update = self._secure.mask(update, info)
        if cid in self.attackers:
            attack = self.spec.attack
            rng = np.random.default_rng([info.seed, info.server_round, cid, 4])
            update = attack_update(update, attack.kind, attack.scale, rng)
        return update

    def _client_halves(
        self, job: _Job, delta: Params, params: Params, down: tuple[Params | None, ...]
    ) -> tuple[Params, tuple[Params | None, ...]]:
        """The features' client halves, in order, on this client's state (kept here)."""
        cid = job.cid
        start_loss = None
        if self._start_loss:  # the global model's loss on the client's rows
            result = self.trainer.evaluate(params, "train", cid)
            start_loss = None if result is None else float(result[1].get("loss", np.nan))
        trained = Trained(
            cid,
            delta,
            params,
            job.train.steps,
            float(self.spec.train.learning_rate),
            self._examples[cid],
            start_loss,
        )
        out, reports, states = client_update(
            self._features, trained, down, self._state(cid, params)
        )
        self._states[cid] = list(states)
        return out, reports

    def secure_step(
        self, name: str, client_ids: Sequence[int], payload: dict[int, Any], info: RoundInfo
    ) -> dict[int, Any]:
        """One secure-aggregation step for this host's clients (:class:`SecureClients`)."""
        self._check()
        return self._secure.step(name, client_ids, payload, info)

    def _keys(self) -> list[str]:
        """Each feature's key in the saved state: its position and its name."""
        return [f"{i}-{f.name}" for i, f in enumerate(self._features)]

    def _client_state(self) -> ClientState:
        """Per-client state kept in this host across rounds: each feature's, by key."""
        out: ClientState = {}
        for cid, states in self._states.items():
            entry = {
                key: [np.array(a) for a in s]
                for key, s in zip(self._keys(), states, strict=True)
                if s is not None and len(s)
            }
            if entry:
                out[cid] = entry
        return out

    def save_client_state(self, server_round: int) -> int:
        """Save the clients' state for the checkpoint of ``server_round``, here; how many.

        Nothing of it is returned: the state is derived from the clients' data (top-k's
        residual is their raw update) and never crosses to the driver.
        """
        self._check()
        state = self._client_state()
        if self._store is not None:
            self._store.save(server_round, state)
        return len(state)

    def load_client_state(self, server_round: int) -> int:
        """Reload the clients' state saved for the checkpoint of ``server_round``; how many."""
        self._check()
        if self._store is None:
            return 0
        state = self._store.load(server_round, self._examples)
        self._restore(state)
        return len(state)

    def prune_client_state(self, server_round: int) -> None:
        """Drop this host's saved state older than ``server_round``'s (now durable)."""
        self._check()
        if self._store is not None:
            self._store.prune(server_round)

    def _restore(self, state: ClientState) -> None:
        """Take the clients' saved state (for the clients hosted here)."""
        for cid, entry in state.items():
            if cid not in self._examples:
                continue
            self._states[cid] = [  # a feature with nothing saved starts from client_init
                [np.array(a) for a in entry[key]] if key in entry else None for key in self._keys()
            ]

    def evaluate(self, params: Params) -> Metrics:
        """Centralized evaluation on the server test set held by this host.

        Metrics that are means are added up batch by batch, as when hosts share the
        set (:meth:`evaluate_part`), so the result never depends on how many did.
        """
        self._check()
        states = self.trainer.server_states(params, 0, 1)
        if states is not None:
            return merge_means([states])
        result = self.trainer.evaluate(params, "server")
        return {} if result is None else result[1]

    def evaluate_part(self, params: Params, part: int, of: int) -> MeanStates | None:
        """Part ``part`` of ``of`` of the server test set, for :func:`merge_means`."""
        self._check()
        return self.trainer.server_states(params, part, of)

    def evaluate_clients(
        self, client_ids: Sequence[int], params: Params, split: str = "test"
    ) -> list[ClientEval | ClientFailure]:
        """Evaluate ``params`` on each client's ``test`` split or ``train`` shard.

        Clients without a local test split are skipped for ``test``; ``train`` gives the
        global model's loss on the training data (as plotted in the FedProx paper).
        """
        self._check()
        out: list[ClientEval | ClientFailure] = []
        for cid in client_ids:
            if cid not in self._examples:
                continue
            try:
                result = self.trainer.evaluate(params, split, cid)
            except Exception as exc:
                out.append(ClientFailure(cid, one_line(exc)))
                continue
            if result is not None:
                out.append(ClientEval(cid, result[0], result[1]))
        return out

    def predict(self, params: Params, x: np.ndarray) -> np.ndarray:
        """The model's predictions for ``x`` under ``params``."""
        self._check()
        return self.trainer.predict(params, x)

    def export(self, params: Params) -> bytes:
        """The model with ``params`` as ``.keras`` file bytes (so the driver needs no TF)."""
        self._check()
        return self.trainer.export(params)

    def _raised(self, cid: int, exc: BaseException, info: RoundInfo) -> ClientFailure:
        """The failure of a client whose code raised ``exc`` (the traceback: debug log).

        Under DP the reason, which may quote the client's data, stays in this host's
        log; the server learns only that the client's code raised.
        """
        logger.debug("client %d raised in round %d", cid, info.server_round, exc_info=exc)
        if not self._private:
            return ClientFailure(cid, one_line(exc), "error")
        logger.warning("client %d raised in round %d: %s", cid, info.server_round, one_line(exc))
        return ClientFailure(cid, WITHHELD, "error")
