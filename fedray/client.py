"""The client host: a plain class that owns clients' data shards and one compiled model.

It is made remote at the edge (``ray.remote(ClientHost)`` in :mod:`fedray.runtime`)
and used in-process by :class:`fedray.local.LocalExecutor`, so it is testable
without Ray. One host serves one or many clients, one after another, on the same
compiled Keras model:

1. ``__init__``: cap TensorFlow's thread pools to the host's CPU share (before TF
   starts), load the shards, keep all clients' rows in one in-memory tensor, build
   and compile the model once, and trace the training and evaluation functions.
2. ``fit``: one call of the traced function trains every sampled client in turn: load
   the global weights, restore the optimizer's initial state (never the learning
   rate), run all local epochs. Each ``local - global`` then goes through the
   aggregator's ``encode``; with pre-aggregation the host validates and sums them
   into one :class:`~fedray.records.PartialSum`.
"""

from __future__ import annotations

import logging
import math
import os
import secrets
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from fedray.aggregators import Aggregator, Summable, presum
from fedray.attacks import attack_update, choose_attackers, flip_labels
from fedray.config import Config
from fedray.errors import ConfigError
from fedray.records import (
    ClientEval,
    ClientFailure,
    ClientOptions,
    ClientUpdate,
    Metrics,
    Params,
    PartialSum,
    RoundInfo,
)
from fedray.validation import screen

if TYPE_CHECKING:
    from fedray.memory import InMemory

logger = logging.getLogger(__name__)


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

    def __post_init__(self) -> None:
        if self.pre_aggregate and not isinstance(self.aggregator, Summable):
            raise ValueError(
                f"pre_aggregate needs a Summable aggregator (a linear rule), got "
                f"{type(self.aggregator).__name__}"
            )


def configure_tensorflow(threads: int, *, verbose: bool) -> None:
    """Set TF's thread pools and log level; must run before TF's first op."""
    if not verbose:
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    if "tensorflow" not in sys.modules:
        os.environ["TF_NUM_INTRAOP_THREADS"] = str(threads)
        os.environ["TF_NUM_INTEROP_THREADS"] = str(threads)
    import tensorflow as tf

    try:
        tf.config.threading.set_intra_op_parallelism_threads(threads)
        tf.config.threading.set_inter_op_parallelism_threads(threads)
    except RuntimeError:
        pass  # TF already running in this process (in-process executor): keep its pools
    if not verbose:
        tf.get_logger().setLevel(logging.ERROR)
        import warnings

        warnings.filterwarnings("ignore", module="keras")


@dataclass(frozen=True)
class _Job:
    """One client's planned training in a round (see :meth:`ClientHost._plan_fit`)."""

    cid: int
    steps: int  # local steps it runs (fewer when it straggles)
    total: int  # local steps of a full round
    fault: str | None  # simulated fault still to apply after training ("nan")
    correction: Params | None  # SCAFFOLD's c - c_i


class _SkipClientError(Exception):
    """A client that does not train this round, for the given reason."""


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
        cfg = spec.config
        configure_tensorflow(spec.threads, verbose=cfg.runtime.verbose)
        import keras
        import tensorflow as tf

        from fedray.data import load_host_data
        from fedray.models import build_model

        self._tf = tf
        if spec.source is not None:
            host_data = spec.source.host_data(cfg.data, cfg.seed)
        else:
            host_data = load_host_data(
                cfg.data, cfg.seed, spec.client_ids, with_test_set=spec.with_test_set
            )
        self.info = host_data.info
        self.shards = host_data.shards
        attack = cfg.attack
        self.attackers = choose_attackers(cfg.data.num_clients, attack.fraction, cfg.seed)
        if attack.kind == "label_flip" and self.attackers & set(self.shards):
            if self.info.task != "classification" or not self.info.num_classes:
                raise ConfigError(
                    "attack.kind = 'label_flip' needs a classification dataset; "
                    f"{cfg.data.dataset!r} is a {self.info.task} task"
                )
            for cid in self.attackers & set(self.shards):
                self.shards[cid].y = flip_labels(self.shards[cid].y, self.info.num_classes)
        keras.utils.set_random_seed(cfg.seed)
        builder = spec.source.model_fn if spec.source is not None else None
        self.model = build_model(cfg.model, cfg.client, self.info, builder=builder)
        self.model.optimizer.build(self.model.trainable_variables)
        # Tensors live in the host for the whole run: no per-round data pipeline. All
        # clients' training rows sit in one tensor; client k owns rows [off_k, off_k + n_k).
        self._rows: dict[int, tuple[int, int]] = {}
        offset = 0
        for cid, shard in self.shards.items():
            self._rows[cid] = (offset, len(shard.x))
            offset += len(shard.x)
        self._x_all = tf.constant(np.concatenate([s.x for s in self.shards.values()]))
        self._y_all = tf.constant(np.concatenate([s.y for s in self.shards.values()]))
        self._local_test: dict[int, tuple[Any, Any]] = {}
        for cid, shard in self.shards.items():
            if len(shard.x_test):
                self._local_test[cid] = (tf.constant(shard.x_test), tf.constant(shard.y_test))
        self._server_test: tuple[Any, Any] | None = None
        if host_data.x_test is not None and host_data.y_test is not None and len(host_data.x_test):
            self._server_test = (tf.constant(host_data.x_test), tf.constant(host_data.y_test))
        self._controls: dict[int, Params] = {}  # SCAFFOLD's client control variates
        self._secagg: dict[int, Any] = {}  # this round's SecAggClient per client (secret keys)
        self._secagg_inbox: dict[int, dict[int, bytes]] = {}
        self._fit_fn, self._eval_fn = self._compile_loops(host_data.info)
        self.setup_s = time.perf_counter() - t0

    def _compile_loops(self, info: Any) -> tuple[Any, Any]:
        """Trace one function that trains many clients, and one for evaluation.

        ``fit_many(offsets, sizes, seeds, max_steps, params, corrections, noise_seeds)``
        trains, one after another in one call, the clients whose rows are
        ``[offsets[k], offsets[k] + sizes[k])`` of the host's data tensor. For each it
        loads the global weights, restores the optimizer's initial state (never its
        learning rate), resets the metrics and the random layers' seeds, and runs every
        local epoch: a stateless shuffle seeded by ``seeds[k]`` and the epoch, then the
        model's own ``train_step`` on each gathered batch. It returns every client's
        ``local - global`` stacked along a new first axis, and its metrics.

        Everything runs inside one ``tf.function``: no per-step Python, no ``fit()``
        set-up, no ``tf.data`` iterator, and one function call per host per round
        instead of one per client (a call costs ~1 ms here, a small client's step
        ~0.08 ms). Full batches have a static shape; only an epoch's last, partial
        batch has a dynamic one, so most steps run kernels specialised for the batch
        size. The model's ``train_step`` / ``test_step`` are used, so a user model
        that overrides them keeps its behaviour. Both functions are traced here, at
        start-up, so round 1 pays no tracing.
        """
        tf, model = self._tf, self.model
        opt = model.optimizer
        resets = [
            (v, tf.constant(v.numpy()))
            for v in opt.variables
            if "learning_rate" not in v.path  # zeroing it would silently stop training
        ]
        weights = list(model.weights)
        # Dropout and other random layers: their generator state is reset per client
        # from (seed, round, id), so packed and dedicated hosts give identical results.
        seed_generators = [
            sg for layer in model._flatten_layers() for sg in getattr(layer, "_seed_generators", [])
        ]
        x_all, y_all = self._x_all, self._y_all
        data_spec = [
            tf.TensorSpec([None, *info.input_shape], tf.float32),
            tf.TensorSpec([None, *y_all.shape[1:]], y_all.dtype),
        ]
        params_spec = [tf.TensorSpec(v.shape, v.dtype) for v in weights]
        stacked_spec = [tf.TensorSpec([None, *v.shape], v.dtype) for v in weights]
        batch = self.spec.config.client.batch_size
        epochs = self.spec.config.client.local_epochs
        eval_batch = max(batch, 1024)  # evaluation needs no small batches: fewer steps

        def load(params: Any) -> None:
            for v, p in zip(weights, params, strict=True):
                v.assign(p)
            for metric in model.metrics:
                metric.reset_state()

        # Build the compiled metrics eagerly (Keras builds them lazily, on first use,
        # which a traced loop cannot do); test_step changes no weight.
        model.test_step((x_all[:1], y_all[:1]))
        metric_names = list(model.get_metrics_result())
        for metric in model.metrics:
            metric.reset_state()

        mu = float(self.spec.client.proximal_mu)
        trainable = list(model.trainable_variables)
        anchor_index = [next(i for i, w in enumerate(weights) if w is v) for v in trainable]

        scaffold = bool(self.spec.client.control_variates)
        custom = mu > 0 or scaffold  # decided at trace time; else the model's own train_step

        def custom_step(x: Any, y: Any, params: Any, correction: Any) -> Any:
            """Keras' train step with FedProx's and/or SCAFFOLD's change.

            FedProx adds mu/2 * ||w - w_global||^2 to the objective; SCAFFOLD adds the
            correction ``c - c_i`` to the gradient.
            """
            with tf.GradientTape() as tape:
                y_pred = model(x, training=True)
                loss = model.compute_loss(x=x, y=y, y_pred=y_pred, training=True)
                objective = loss
                if mu > 0:
                    drift = tf.add_n(
                        [
                            tf.reduce_sum(tf.square(v - tf.cast(params[j], v.dtype)))
                            for v, j in zip(trainable, anchor_index, strict=True)
                        ]
                    )
                    objective = loss + 0.5 * mu * drift
            grads = tape.gradient(objective, trainable)
            if scaffold:
                grads = [
                    g + tf.cast(correction[j], g.dtype)
                    for g, j in zip(grads, anchor_index, strict=True)
                ]
            opt.apply(grads, trainable)
            model.compute_metrics(x, y, y_pred)
            return loss

        dp = self.spec.client.dp_sgd
        import keras

        from fedray.privacy.accounting import poisson_batch_cap

        trainable_ids = {id(v) for v in model.trainable_variables}
        dp_moves = [id(w) in trainable_ids for w in weights]

        per_example_loss = (
            keras.losses.get(model.loss) if isinstance(model.loss, str) else model.loss
        )
        # P(batch > cap) <= 1e-12 per step; the accountant spends that tail from δ.
        dp_bmax = poisson_batch_cap(batch)

        def dp_step(x: Any, y: Any, n: Any, s0: Any, s1: Any, s2: Any) -> Any:
            """One DP-SGD step on a Poisson batch (padded to a fixed maximum with a mask)."""
            assert dp is not None
            q = tf.minimum(1.0, batch / tf.cast(n, tf.float32))
            k = tf.random.stateless_binomial(
                [], seed=s0, counts=tf.cast(n, tf.float32), probs=q, output_dtype=tf.int32
            )
            bmax = tf.minimum(n, dp_bmax)
            idx = tf.random.experimental.stateless_shuffle(tf.range(n), seed=s1)[:bmax]
            mask = tf.cast(tf.range(bmax) < k, tf.float32)
            xb, yb = tf.gather(x, idx), tf.gather(y, idx)

            def one(example: Any) -> Any:
                x1, y1 = example
                with tf.GradientTape() as tape:
                    pred = model(x1[None], training=True)
                    loss = per_example_loss(y1[None], pred)
                return [*tape.gradient(loss, trainable), loss]

            *grads, losses = tf.vectorized_map(one, (xb, yb))
            sq = tf.add_n([tf.reduce_sum(tf.reshape(tf.square(g), [bmax, -1]), 1) for g in grads])
            scale = tf.minimum(1.0, dp.clip / (tf.sqrt(sq) + 1e-12)) * mask
            noisy = []
            for j, g in enumerate(grads):
                summed = tf.tensordot(scale, g, axes=1)
                noise = tf.random.stateless_normal(
                    tf.shape(summed), seed=s2 + j, stddev=dp.noise_multiplier * dp.clip
                )
                noisy.append((summed + noise) / batch)  # the expected batch size, never k
            opt.apply(noisy, trainable)
            losses = tf.reshape(tf.cast(losses, tf.float32), [bmax])
            return tf.reduce_sum(losses * mask), tf.reduce_sum(mask)

        def batch_step(idx: Any, params: Any, correction: Any) -> Any:
            """One step on the rows ``idx``; returns (loss * size, size) for custom steps."""
            xb, yb = tf.gather(x_all, idx), tf.gather(y_all, idx)
            size = tf.cast(tf.shape(idx)[0], tf.float32)
            if custom:
                return tf.cast(custom_step(xb, yb, params, correction), tf.float32) * size, size
            model.train_step((xb, yb))
            return tf.constant(0.0, tf.float32), size

        def train_one(
            offset: Any, n: Any, seed: Any, max_steps: Any, params: Any, correction: Any,
            noise_seed: Any,
        ) -> Any:  # fmt: skip
            load(params)
            for v, init in resets:
                v.assign(init)
            for k, sg in enumerate(seed_generators):
                sg.state.assign(tf.cast(tf.stack([seed[0] + k + 1, seed[1]]), sg.state.dtype))
            num_batches = (n + batch - 1) // batch
            full = n // batch
            loss_sum = tf.constant(0.0, tf.float32)
            seen = tf.constant(0.0, tf.float32)
            for epoch in tf.range(epochs):
                left = max_steps - epoch * num_batches  # stragglers stop early
                if dp is not None:  # DP-SGD: secret Poisson batches, not a shuffle
                    x, y = x_all[offset : offset + n], y_all[offset : offset + n]
                    for i in tf.range(tf.minimum(num_batches, left)):
                        base = tf.cast(epoch * num_batches + i, tf.int64) * 4
                        s0 = tf.stack([noise_seed[0], noise_seed[1] + base])
                        s1 = s0 + tf.constant([0, 1], tf.int64)
                        s2 = s0 + tf.constant([0, 2], tf.int64)
                        step_loss, size = dp_step(x, y, n, s0, s1, s2)
                        loss_sum += step_loss
                        seen += size
                else:
                    epoch_seed = tf.stack([seed[0], seed[1] + tf.cast(epoch, tf.int64)])
                    order = tf.random.experimental.stateless_shuffle(tf.range(n), seed=epoch_seed)
                    order += offset
                    for i in tf.range(tf.minimum(full, left)):
                        idx = tf.reshape(order[i * batch : (i + 1) * batch], [batch])
                        step_loss, size = batch_step(idx, params, correction)
                        loss_sum += step_loss
                        seen += size
                    if tf.logical_and(full < num_batches, left > full):  # the partial batch
                        step_loss, size = batch_step(order[full * batch :], params, correction)
                        loss_sum += step_loss
                        seen += size
            delta = [v - p for v, p in zip(weights, params, strict=True)]
            logs = model.get_metrics_result()
            if dp is not None:
                # Only the trainable weights move by noised gradients; non-trainable
                # state (BatchNorm's moving statistics) was updated from raw examples
                # and must not leave the host: its delta is zero.
                delta = [
                    d if keep else tf.zeros_like(d) for d, keep in zip(delta, dp_moves, strict=True)
                ]
                return delta, {"loss": loss_sum / tf.maximum(seen, 1.0)}
            if custom:  # the task loss without the proximal term, averaged over examples
                logs = {**logs, "loss": loss_sum / tf.maximum(seen, 1.0)}
            return delta, logs

        names = ["loss"] if dp is not None else metric_names
        if custom and "loss" not in names:
            names = [*names, "loss"]

        def fit_many(
            offsets: Any, sizes: Any, seeds: Any, max_steps: Any, params: Any,
            corrections: Any, noise_seeds: Any,
        ) -> Any:  # fmt: skip
            count = tf.shape(offsets)[0]
            deltas = [tf.TensorArray(v.dtype, size=count, element_shape=v.shape) for v in weights]
            metrics = [tf.TensorArray(tf.float32, size=count) for _ in names]
            for k in tf.range(count):
                correction = [c[k] for c in corrections] if scaffold else params
                delta, logs = train_one(
                    offsets[k], sizes[k], seeds[k], max_steps[k], params, correction,
                    noise_seeds[k],
                )  # fmt: skip
                deltas = [ta.write(k, d) for ta, d in zip(deltas, delta, strict=True)]
                metrics = [
                    ta.write(k, tf.cast(logs[name], tf.float32))
                    for ta, name in zip(metrics, names, strict=True)
                ]
            return [ta.stack() for ta in deltas], [ta.stack() for ta in metrics]

        def eval_fn(x: Any, y: Any, params: Any) -> Any:
            load(params)
            n = tf.shape(x)[0]
            for i in tf.range((n + eval_batch - 1) // eval_batch):
                lo = i * eval_batch
                model.test_step((x[lo : lo + eval_batch], y[lo : lo + eval_batch]))
            return model.get_metrics_result()

        vector = tf.TensorSpec([None], tf.int32)
        seeds_spec = tf.TensorSpec([None, 2], tf.int64)
        fit_traced = tf.function(
            fit_many,
            input_signature=[
                vector, vector, seeds_spec, vector, params_spec, stacked_spec, seeds_spec
            ],
        )  # fmt: skip
        eval_traced = tf.function(eval_fn, input_signature=[*data_spec, params_spec])
        # Trace both now, off the critical path of round 1: no client, no step runs. The
        # concrete functions are kept: calling them skips the per-call argument binding
        # of a polymorphic tf.function (~0.5 ms, a tenth of a small client's training).
        fit_concrete = fit_traced.get_concrete_function()
        eval_concrete = eval_traced.get_concrete_function()
        initial = [tf.constant(v.numpy()) for v in weights]
        none = tf.zeros([0], tf.int32)
        no_seeds = tf.zeros([0, 2], tf.int64)
        fit_concrete(none, none, no_seeds, none, initial, self._no_corrections(initial), no_seeds)
        eval_concrete(x_all[:0], y_all[:0], initial)
        self._set([v.numpy() for v in initial])
        self._metric_names = names
        return fit_concrete, eval_concrete

    @staticmethod
    def _no_corrections(params: Sequence[Any]) -> list[np.ndarray]:
        """Empty stacked corrections: what ``fit_many`` gets when SCAFFOLD is off."""
        import tensorflow as tf

        return [tf.zeros([0, *p.shape], p.dtype) for p in params]

    def _check(self) -> None:
        if self._error is not None:
            raise self._error

    def ready(self) -> dict[str, Any]:
        """Raise the start-up error, if any; else describe the host."""
        self._check()
        return {
            "pid": os.getpid(),
            "clients": list(self.spec.client_ids),
            "examples": {cid: len(s.x) for cid, s in self.shards.items()},
            "threads": self.spec.threads,
            "tf_intra_op_threads": self._tf.config.threading.get_intra_op_parallelism_threads(),
            "tf_inter_op_threads": self._tf.config.threading.get_inter_op_parallelism_threads(),
            "setup_s": self.setup_s,
        }

    def initial_params(self) -> Params:
        """The freshly initialised model's weights (identical on every host: same seed)."""
        self._check()
        return [np.asarray(w) for w in self.model.get_weights()]

    def _set(self, params: Params) -> None:
        self.model.set_weights(params)

    @staticmethod
    def client_seed(seed: int, server_round: int, client_id: int) -> np.ndarray:
        """Shuffle seed of one client in one round, derived from (seed, round, id).

        Deriving it from the round (not from how often this host trained before) keeps
        results identical whether clients are packed or dedicated, and on resume.
        """
        state = np.random.SeedSequence([seed, server_round, client_id]).generate_state(2)
        return state.astype(np.int64)

    def _noise_seed(self, info: RoundInfo, cid: int) -> np.ndarray:
        """DP-SGD's batch-and-noise seed: secret, unless ``noise_seed`` fixes it."""
        dp = self.spec.client.dp_sgd
        if dp is None:
            return np.zeros(2, np.int64)
        if dp.noise_seed is None:
            return np.array([secrets.randbits(62), secrets.randbits(62)], np.int64)
        state = np.random.SeedSequence([dp.noise_seed, info.server_round, cid, 13])
        return state.generate_state(2).astype(np.int64)

    def _delay(self, cid: int) -> float:
        """Simulated extra seconds per fit: ``faults.delay_s * u``, ``u ~ U(0, 1)`` per client."""
        max_delay = self.spec.config.faults.delay_s
        if max_delay <= 0:
            return 0.0
        u = float(np.random.default_rng([self.spec.config.seed, 6, cid]).random())
        return max_delay * u

    def fault(self, cid: int, info: RoundInfo) -> str | None:
        """The simulated fault of this client in this round (see :func:`simulated_fault`)."""
        return simulated_fault(self.spec.config, info.seed, info.server_round, cid, info.attempt)

    def _crash(self, cid: int) -> None:
        """In-process there is no host process to lose: the client fails instead."""
        raise RuntimeError(f"simulated crash of client {cid}'s host (faults.crash_rate)")

    def _hang(self, cid: int) -> None:
        """In-process a hang would block the run: the client fails instead."""
        raise TimeoutError(f"simulated hang of client {cid} (faults.hang_rate)")

    def _straggler_steps(self, cid: int, info: RoundInfo, total: int) -> int:
        """Local steps this client runs this round (fewer when it straggles).

        With ``faults.straggler_fraction = p``, each sampled client straggles with
        probability ``p`` (randomness from (seed, round, id)); a straggler runs a uniform
        number of whole epochs in [1, E - 1] as in the FedProx paper, or, with E = 1, a
        uniform number of steps in [1, steps - 1].
        """
        p = self.spec.config.faults.straggler_fraction
        if p <= 0 or total <= 1:
            return total
        rng = np.random.default_rng([info.seed, info.server_round, cid, 5])
        if rng.random() >= p:
            return total
        epochs = self.spec.config.client.local_epochs
        per_epoch = total // epochs
        if epochs > 1:
            return int(rng.integers(1, epochs)) * per_epoch
        return int(rng.integers(1, total))

    def fit(
        self,
        client_ids: Sequence[int],
        params: Params,
        info: RoundInfo,
        extras: dict[str, Params] | None = None,
    ) -> list[ClientUpdate | ClientFailure | PartialSum]:
        """Train each client from ``params``; a client that raises becomes a ClientFailure.

        The clients train one after another inside one traced call (in chunks that
        keep the stacked updates under ~64 MB); then each update is encoded, masked or
        attacked on its own. ``extras`` carries what the aggregator broadcasts beside
        the weights (SCAFFOLD's server control variate ``"control"``). Results come
        back in the order of ``client_ids``; with ``spec.pre_aggregate`` the valid
        updates come back as one :class:`PartialSum` (first), followed by the failures.
        """
        self._check()
        done: dict[int, ClientUpdate | ClientFailure] = {}
        jobs: list[_Job] = []
        server_c = None  # SCAFFOLD's server control variate c: the same for every client
        if self.spec.client.control_variates:
            server_c = (extras or {}).get("control") or [np.zeros_like(p) for p in params]
        for cid in client_ids:
            try:
                jobs.append(self._plan_fit(cid, params, info, server_c))
            except _SkipClientError as skip:
                done[cid] = ClientFailure(cid, str(skip))
            except Exception as exc:
                done[cid] = ClientFailure(cid, f"{type(exc).__name__}: {exc}")
        model_bytes = sum(np.asarray(p).nbytes for p in params) or 1
        chunk = max(1, (64 << 20) // model_bytes)
        params_t = [self._tf.convert_to_tensor(p) for p in params]  # once for all clients
        for start in range(0, len(jobs), chunk):
            part = jobs[start : start + chunk]
            try:
                trained = self._train(part, params_t, info)
            except Exception as exc:
                for job in part:
                    done[job.cid] = ClientFailure(job.cid, f"{type(exc).__name__}: {exc}")
                continue
            for job, (delta, metrics) in zip(part, trained, strict=True):
                try:
                    done[job.cid] = self._finish_fit(job, delta, metrics, info, server_c)
                except Exception as exc:
                    done[job.cid] = ClientFailure(job.cid, f"{type(exc).__name__}: {exc}")
        results: list[ClientUpdate | ClientFailure] = [done[cid] for cid in client_ids]
        if not self.spec.pre_aggregate:
            return list(results)
        return self._presum(results, params)

    def _presum(
        self, results: Sequence[ClientUpdate | ClientFailure], params: Params
    ) -> list[ClientUpdate | ClientFailure | PartialSum]:
        """Validate each update as the driver would, then sum the valid ones."""
        assert isinstance(self.spec.aggregator, Summable)
        valid: list[ClientUpdate] = []
        failures: list[ClientUpdate | ClientFailure | PartialSum] = []
        for r in results:
            checked = screen(r, params, self.spec.max_update_norm)
            if isinstance(checked, ClientUpdate):
                valid.append(checked)
            else:
                failures.append(checked)
        if not valid:
            return failures
        return [presum(valid, self.spec.aggregator), *failures]

    def _plan_fit(self, cid: int, params: Params, info: RoundInfo, server_c: Params | None) -> _Job:
        """What one client runs this round; raises for a missing client or a simulated fault."""
        if cid not in self._rows:
            raise KeyError(f"client {cid} is not hosted here ({list(self._rows)})")
        fault = self.fault(cid, info)
        if fault == "crash":
            self._crash(cid)
        elif fault == "hang":
            self._hang(cid)
        n = self._rows[cid][1]
        total = self.spec.config.client.local_epochs * -(-n // self.spec.config.client.batch_size)
        steps = self._straggler_steps(cid, info, total)
        if steps < total and self.spec.config.faults.drop_stragglers:
            raise _SkipClientError(f"straggler dropped: {steps} of {total} local steps")
        correction = None
        if server_c is not None:
            own_c = self._controls.setdefault(cid, [np.zeros_like(p) for p in params])
            correction = [
                np.subtract(c, ci, dtype=np.asarray(p).dtype)
                for c, ci, p in zip(server_c, own_c, params, strict=True)
            ]
        return _Job(cid, steps, total, fault, correction)

    def _train(
        self, jobs: Sequence[_Job], params_t: list[Any], info: RoundInfo
    ) -> list[tuple[Params, Metrics]]:
        """Run the traced training of ``jobs`` in one call; per client (delta, metrics)."""
        tf = self._tf
        offsets = tf.constant([self._rows[j.cid][0] for j in jobs], tf.int32)
        sizes = tf.constant([self._rows[j.cid][1] for j in jobs], tf.int32)
        seeds = tf.constant(
            np.stack([self.client_seed(info.seed, info.server_round, j.cid) for j in jobs])
        )
        steps = tf.constant([j.steps for j in jobs], tf.int32)
        noise = tf.constant(np.stack([self._noise_seed(info, j.cid) for j in jobs]))
        if self.spec.client.control_variates:
            corrections = [
                tf.constant(np.stack([j.correction[i] for j in jobs if j.correction is not None]))
                for i in range(len(params_t))
            ]
        else:
            corrections = self._no_corrections(params_t)
        deltas_t, metrics_t = self._fit_fn(
            offsets, sizes, seeds, steps, params_t, corrections, noise
        )
        deltas = [d.numpy() for d in deltas_t]
        metrics = np.stack([m.numpy() for m in metrics_t], axis=1)
        out = []
        for k in range(len(jobs)):
            logs = {name: float(v) for name, v in zip(self._metric_names, metrics[k], strict=True)}
            out.append(([d[k] for d in deltas], logs))
        return out

    def _finish_fit(
        self,
        job: _Job,
        delta: Params,
        metrics: Metrics,
        info: RoundInfo,
        server_c: Params | None,
    ) -> ClientUpdate:
        """One trained client's update: control variates, encode, mask, simulated faults."""
        cid, steps, total = job.cid, job.steps, job.total
        if job.fault == "nan":  # a broken client: the driver must reject this update
            delta = [np.full_like(d, np.nan) for d in delta]
        metrics = {**metrics, "work_fraction": steps / total if total else 1.0}
        update_extras: dict[str, Params] = {}
        if server_c is not None:
            # Option II of Karimireddy et al.: c_i+ = c_i - c + (x - y_i) / (K * lr).
            own_c = self._controls[cid]
            scale = 1.0 / (max(steps, 1) * self.spec.config.client.learning_rate)
            delta_c = [
                (-c - d * scale).astype(d.dtype) for c, d in zip(server_c, delta, strict=True)
            ]
            self._controls[cid] = [ci + dc for ci, dc in zip(own_c, delta_c, strict=True)]
            update_extras["delta_c"] = delta_c
        if self.spec.client.dp_sgd is not None:
            # DP-SGD: only the noised weights leave the host; the training loss of raw
            # examples and the example count would leave un-noised.
            update = ClientUpdate(cid, delta, 1, {}, extras=update_extras)
        else:
            update = ClientUpdate(cid, delta, self._rows[cid][1], metrics, extras=update_extras)
        delay = self._delay(cid)
        if delay:  # a slow device (faults.delay_s): fixed per client, from the seed
            time.sleep(delay)
        update = self.spec.aggregator.encode(update, info)
        if update.masked is not None:  # secure aggregation: mask inside the host
            update = self._mask(update, info)
        if cid in self.attackers:
            attack = self.spec.config.attack
            rng = np.random.default_rng([info.seed, info.server_round, cid, 4])
            update = attack_update(update, attack.kind, attack.scale, rng)
        return update

    def secure_step(
        self, name: str, client_ids: Sequence[int], payload: dict[int, Any], info: RoundInfo
    ) -> dict[int, Any]:
        """One secure-aggregation step for each of this host's clients in ``client_ids``.

        ``advertise`` makes each client's fresh key pairs (kept here, never returned),
        ``share`` returns its encrypted Shamir shares, ``inbox`` stores the shares
        addressed to it, and ``unmask`` returns the shares the server may have. The
        masking itself happens in :meth:`fit`.
        """
        from fedray.secagg import SecAggAbortError, SecAggClient, SecAggError

        self._check()
        out: dict[int, Any] = {}
        for cid in client_ids:
            try:
                if name == "advertise":
                    neighbours, threshold, bits = payload[cid]
                    client = SecAggClient(cid, info.server_round, neighbours, threshold, bits)
                    self._secagg[cid] = client
                    out[cid] = client.advertise()
                elif name == "share":
                    out[cid] = self._secagg[cid].share_keys(payload[cid])
                elif name == "inbox":
                    self._secagg_inbox[cid] = payload[cid]
                    out[cid] = True
                elif name == "unmask":
                    dropped, survivors = payload[cid]
                    out[cid] = self._secagg.pop(cid).unmask(dropped, survivors)
                    self._secagg_inbox.pop(cid, None)
                else:
                    raise ValueError(f"unknown secure-aggregation step {name!r}")
            except SecAggAbortError as exc:  # too few live neighbours: this client drops out
                logger.warning("client %d: %s", cid, exc)
                self._secagg.pop(cid, None)
            except SecAggError:
                raise  # a protocol violation (tampering) must stop the round, loudly
            except Exception as exc:
                logger.warning("client %d: secure aggregation step %s failed: %s", cid, name, exc)
        return out

    def _mask(self, update: ClientUpdate, info: RoundInfo) -> ClientUpdate:
        client = self._secagg.get(update.client_id)
        if client is None or client.round_id != info.server_round:
            raise RuntimeError(
                f"client {update.client_id} has no secure-aggregation keys for round "
                f"{info.server_round} (its host restarted?)"
            )
        assert update.masked is not None
        inbox = self._secagg_inbox.get(update.client_id, {})
        return replace(update, masked=client.masked_input(update.masked, inbox))

    def client_state(self) -> dict[int, dict[str, Params]]:
        """Per-client state kept in this host across rounds (SCAFFOLD's control variates)."""
        self._check()
        return {cid: {"control": [np.array(c) for c in cs]} for cid, cs in self._controls.items()}

    def restore_client_state(self, state: dict[int, dict[str, Params]]) -> None:
        """Load per-client state saved by :meth:`client_state` (for the clients hosted here)."""
        self._check()
        for cid, entry in state.items():
            if cid in self._rows and "control" in entry:
                self._controls[cid] = [np.array(c) for c in entry["control"]]

    def _evaluate(self, data: tuple[Any, Any], params: Params) -> Metrics:
        logs = self._eval_fn(data[0], data[1], [self._tf.convert_to_tensor(p) for p in params])
        return {k: float(v) for k, v in logs.items()}

    def evaluate(self, params: Params) -> Metrics:
        """Centralized evaluation on the server test set held by this host."""
        self._check()
        if self._server_test is None:
            return {}
        return self._evaluate(self._server_test, params)

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
            data = self._local_test.get(cid) if split == "test" else self._train_rows(cid)
            if data is None:
                continue
            try:
                n = int(data[0].shape[0])
                out.append(ClientEval(cid, n, self._evaluate(data, params)))
            except Exception as exc:
                out.append(ClientFailure(cid, f"{type(exc).__name__}: {exc}"))
        return out

    def _train_rows(self, cid: int) -> tuple[Any, Any] | None:
        """Client ``cid``'s training rows as tensors (slices of the host's data)."""
        if cid not in self._rows:
            return None
        offset, n = self._rows[cid]
        return self._x_all[offset : offset + n], self._y_all[offset : offset + n]

    def predict(self, params: Params, x: np.ndarray) -> np.ndarray:
        """The model's predictions for ``x`` under ``params``."""
        self._check()
        self._set(params)
        return np.asarray(self.model.predict(np.asarray(x, np.float32), verbose=0))

    def export(self, params: Params) -> bytes:
        """The model with ``params`` as ``.keras`` file bytes (so the driver needs no TF)."""
        self._check()
        self._set(params)
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "model.keras"
            self.model.save(path)
            return path.read_bytes()


def simulated_fault(
    config: Config, seed: int, server_round: int, cid: int, attempt: int = 0
) -> str | None:
    """``"crash"``, ``"hang"``, ``"nan"`` or None for one client in one round.

    Drawn from (seed, round, client id, retry attempt) with ``faults.crash_rate``, ``hang_rate`` and
    ``nan_rate``, so a test can predict every injected fault.
    """
    f = config.faults
    if not (f.crash_rate or f.hang_rate or f.nan_rate):
        return None
    key = [seed, server_round, cid, 7] + ([attempt] if attempt else [])  # a retry draws anew
    u = float(np.random.default_rng(key).random())
    for kind, rate in (("crash", f.crash_rate), ("hang", f.hang_rate), ("nan", f.nan_rate)):
        if u < rate:
            return kind
        u -= rate
    return None


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
