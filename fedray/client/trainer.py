"""The Keras trainer of a client host: one compiled model, every client's rows, one traced loop.

A host owns its clients; a trainer only trains them. :class:`KerasTrainer` keeps all
of the host's training rows in one in-memory tensor (client k owns rows
``[off_k, off_k + n_k)``) and traces one ``tf.function`` that trains many clients in
turn, with the step pieces the strategy asks for (the features' proximal term and
gradient offset, :class:`~fedray.features.LocalObjective`; DP-SGD's clipped and noised
per-example gradients). Any object with the
same methods (:class:`Trainer`) can stand in for it; the tests use a numpy one.

DP-SGD: Abadi et al., CCS 2016, arXiv:1607.00133.
"""

from __future__ import annotations

import logging
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from fedray.client.devices import configure_tensorflow, data_tensors
from fedray.client.evaluation import mean_leaves, model_step, trace_states, trace_whole, while_loop
from fedray.client.spec import TrainJob
from fedray.client.steps import DPSGDGradient, GradientOffset, Proximal, gradient_step
from fedray.records import MeanStates, Metrics, Params, batch_range
from fedray.strategy.rules import dp_mechanisms
from fedray.tree import aligned_concatenate

if TYPE_CHECKING:
    from fedray.client.spec import HostSpec
    from fedray.data import HostData

logger = logging.getLogger(__name__)


class KerasTrainer:
    """The host's compiled Keras model and its traced training and evaluation loops.

    Args:
        spec: The host's spec (model, client settings, threads).
        data: The host's shards, after any simulated label flips.
    """

    def __init__(self, spec: HostSpec, data: HostData) -> None:
        self._device = configure_tensorflow(spec.threads, verbose=spec.verbose, gpu=spec.gpu)
        import keras
        import tensorflow as tf

        from fedray.client.models import build_model, sample_rows

        self._tf = tf
        self.spec = spec
        keras.utils.set_random_seed(spec.seed)
        builder = spec.source.model_fn if spec.source is not None else None
        sample = sample_rows(data.shards)  # a user's model is run on it before training
        self.model = build_model(spec.model, spec.train, data.info, builder=builder, sample=sample)
        self.model.optimizer.build(self.model.trainable_variables)
        self._rows: dict[int, tuple[int, int]] = {}
        offset = 0
        for cid, shard in data.shards.items():
            self._rows[cid] = (offset, len(shard.x))
            offset += len(shard.x)
        rows = data.rows or [
            aligned_concatenate([getattr(s, k) for s in data.shards.values()]) for k in "xy"
        ]
        self._x_all, self._y_all = data_tensors(tf, rows, self._device)  # shared, on the CPU
        self._local_test: dict[int, tuple[Any, Any]] = {}
        for cid, shard in data.shards.items():
            if len(shard.x_test):
                self._local_test[cid] = (tf.constant(shard.x_test), tf.constant(shard.y_test))
        self._server_test: tuple[Any, Any] | None = None
        if data.x_test is not None and data.y_test is not None and len(data.x_test):
            test = data_tensors(tf, [data.x_test, data.y_test], self._device)  # after rows
            self._server_test = (test[0], test[1])
        self._fit_fn, self._eval_fn = self._compile_loops(data.info)

    def describe(self) -> dict[str, Any]:
        """TensorFlow's thread pools in this process, and its GPU share if any."""
        threading = self._tf.config.threading
        return {
            "tf_intra_op_threads": threading.get_intra_op_parallelism_threads(),
            "tf_inter_op_threads": threading.get_inter_op_parallelism_threads(),
            "server_parts": self._server_batches(),
            **self._device,
        }

    def initial_params(self) -> Params:
        """The freshly initialised model's weights (identical on every host: same seed)."""
        return [np.asarray(w) for w in self.model.get_weights()]

    def _set(self, params: Params) -> None:
        self.model.set_weights(params)

    def _compile_loops(self, info: Any) -> tuple[Any, Any]:
        """Trace one function that trains many clients, and one for evaluation.

        ``fit_many(offsets, sizes, seeds, max_steps, params, corrections, noise_seeds, nulls)``
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
        batch = self.spec.train.batch_size
        epochs = self.spec.train.local_epochs
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

        # Plain tf.while_loop/tf.cond loops, no AutoGraph (its conversion was ~1 s of each
        # host's start); a model's own train_step or test_step still goes through it.
        train_step = model_step(tf, model, "train_step")
        test_step = model_step(tf, model, "test_step")
        objective = self.spec.objective  # the features' terms, fixed at trace time
        mu, offset = objective.proximal, objective.offset
        trainable = list(model.trainable_variables)
        anchor_index = [next(i for i, w in enumerate(weights) if w is v) for v in trainable]
        custom = objective.custom  # else the model's own train_step
        custom_step = gradient_step(
            tf,
            model,
            anchor_index,
            Proximal(mu) if mu > 0 else None,
            GradientOffset() if offset else None,
        )

        dp = self.spec.client.dp_sgd
        trainable_ids = {id(v) for v in trainable}
        dp_moves = [id(w) in trainable_ids for w in weights]
        dp_step = self._dp_step(anchor_index, mu, offset)

        # Under DP a client whose training raised on its data trains once more on none
        # of it (a null job: zero inputs and labels), so the server cannot tell; only
        # a DP run's loops carry that branch.
        loop = _ClientLoop(
            tf=tf,
            model=model,
            weights=weights,
            x_all=x_all,
            y_all=y_all,
            batch=batch,
            epochs=epochs,
            resets=resets,
            seed_generators=seed_generators,
            load=load,
            train_step=train_step,
            custom_step=custom_step if custom else None,
            dp_step=dp_step,
            dp_moves=dp_moves,
            private=bool(dp_mechanisms(self.spec.aggregator, self.spec.client)),
        )
        names = ["loss"] if dp is not None else metric_names
        if custom and "loss" not in names:
            names = [*names, "loss"]

        fit_many = _fit_many(tf, weights, names, offset, loop.train_one)

        fit_concrete, initial = self._trace_fit(fit_many, params_spec, stacked_spec)
        eval_concrete = self._trace_eval(
            load, test_step, [*data_spec, params_spec], eval_batch, initial
        )
        self._eval_batch = eval_batch
        self._set([v.numpy() for v in initial])
        self._metric_names = names
        return fit_concrete, eval_concrete

    def _dp_step(self, anchor_index: Sequence[int], mu: float, offset: bool) -> Any:
        """DP-SGD's traced step (with the features' proximal and offset terms), or None."""
        dp = self.spec.client.dp_sgd
        if dp is None:
            return None
        import keras

        from fedray.privacy import poisson_batch_cap

        tf, model, batch = self._tf, self.model, self.spec.train.batch_size
        loss = model.loss
        per_example_loss = keras.losses.get(loss) if isinstance(loss, str) else loss
        # P(batch > cap) <= 1e-12 per step; the accountant spends that tail from δ.
        gradient = DPSGDGradient(dp.clip, dp.noise_multiplier, batch, poisson_batch_cap(batch))
        return gradient.build(
            tf,
            model,
            per_example_loss,
            anchor_index,
            Proximal(mu) if mu > 0 else None,  # the features' terms apply under DP-SGD
            GradientOffset() if offset else None,
        )

    def _trace_fit(self, fit_many: Any, params_spec: Any, stacked_spec: Any) -> tuple[Any, Any]:
        """Trace ``fit_many`` now, off round 1's path; (its concrete function, initial weights).

        The concrete function is kept: calling it skips the per-call argument binding of
        a polymorphic ``tf.function``. It runs once on no client, which builds it.
        """
        tf = self._tf
        vector = tf.TensorSpec([None], tf.int32)
        seeds_spec = tf.TensorSpec([None, 2], tf.int64)
        signature = [vector, vector, seeds_spec, vector, params_spec, stacked_spec, seeds_spec]
        traced = tf.function(fit_many, autograph=False, input_signature=[*signature, vector])
        concrete = traced.get_concrete_function()
        initial = [tf.constant(v.numpy()) for v in self.model.weights]
        none = tf.zeros([0], tf.int32)
        no_seeds = tf.zeros([0, 2], tf.int64)
        concrete(none, none, no_seeds, none, initial, self._no_corrections(initial), no_seeds, none)
        return concrete, initial

    def _trace_eval(
        self, load: Any, test_step: Any, spec: list[Any], eval_batch: int, initial: Any
    ) -> Any:
        """Trace the whole-set evaluation and, when every metric is a mean, the per-batch one."""
        tf, model = self._tf, self.model
        x_all, y_all = self._x_all, self._y_all
        eval_concrete = trace_whole(tf, model, load, test_step, spec, eval_batch)
        eval_concrete(x_all[:0], y_all[:0], initial)
        self._leaves = mean_leaves(model)
        self._states_fn = None
        if self._leaves is not None and self._server_test is not None:
            self._states_fn = trace_states(
                tf, model, self._leaves, load, test_step, spec, eval_batch
            )
            self._states_fn(x_all[:0], y_all[:0], initial, 0, 0)  # built, off round 1's path
        return eval_concrete

    @staticmethod
    def _no_corrections(params: Sequence[Any]) -> list[np.ndarray]:
        """Empty stacked offsets: what ``fit_many`` gets when no feature has one."""
        import tensorflow as tf

        return [tf.zeros([0, *p.shape], p.dtype) for p in params]

    def train(self, jobs: Sequence[TrainJob], params: Params) -> list[tuple[Params, Metrics]]:
        """Run the traced training of ``jobs`` in one call; per client (delta, metrics)."""
        tf = self._tf
        params_t = [tf.convert_to_tensor(p) for p in params]
        offsets = tf.constant([self._rows[j.cid][0] for j in jobs], tf.int32)
        sizes = tf.constant([self._rows[j.cid][1] for j in jobs], tf.int32)
        seeds = tf.constant(np.stack([j.seed for j in jobs]))
        steps = tf.constant([j.steps for j in jobs], tf.int32)
        noise = tf.constant(np.stack([j.noise_seed for j in jobs]))
        nulls = tf.constant([int(j.null) for j in jobs], tf.int32)
        if self.spec.objective.offset:
            corrections = [
                tf.constant(np.stack([j.offset[i] for j in jobs if j.offset is not None]))
                for i in range(len(params_t))
            ]
        else:
            corrections = self._no_corrections(params_t)
        deltas_t, metrics_t = self._fit_fn(
            offsets, sizes, seeds, steps, params_t, corrections, noise, nulls
        )
        deltas = [np.asarray(d) for d in deltas_t]  # read-only views: no copy of 9 x 6.5 MB
        metrics = np.stack([m.numpy() for m in metrics_t], axis=1)
        out = []
        for k in range(len(jobs)):
            logs = {name: float(v) for name, v in zip(self._metric_names, metrics[k], strict=True)}
            out.append(([d[k] for d in deltas], logs))
        return out

    def _evaluate(self, data: tuple[Any, Any], params: Params) -> Metrics:
        logs = self._eval_fn(data[0], data[1], [self._tf.convert_to_tensor(p) for p in params])
        return {k: float(v) for k, v in logs.items()}

    def _server_batches(self) -> int:
        """Batches the server test set can be evaluated in parts of (0: not in parts)."""
        test = self._server_test if self._states_fn is not None else None
        return 0 if test is None else -(-int(test[0].shape[0]) // self._eval_batch)

    def server_states(self, params: Params, part: int, of: int) -> MeanStates | None:
        """Part ``part`` of ``of`` of the server test set as per-batch metric sums, or None."""
        if self._states_fn is None or self._server_test is None or self._leaves is None:
            return None
        lo, hi = batch_range(self._server_batches(), part, of)
        x, y = self._server_test
        tensors = [self._tf.convert_to_tensor(p) for p in params]
        sums = self._states_fn(x, y, tensors, self._tf.constant(lo), self._tf.constant(hi))
        sums = np.asarray(sums).reshape(hi - lo, len(self._leaves), 2)
        return MeanStates(tuple(n for n, _, _ in self._leaves), lo, sums[..., 0], sums[..., 1])

    def evaluate(
        self, params: Params, split: str, cid: int | None = None
    ) -> tuple[int, Metrics] | None:
        """``params`` on the server test set, or a client's test split or training rows."""
        if split == "server":
            data = self._server_test
        elif split == "test":
            data = self._local_test.get(cid) if cid is not None else None
        else:
            data = self._train_rows(cid) if cid is not None else None
        if data is None:
            return None
        return int(data[0].shape[0]), self._evaluate(data, params)

    def _train_rows(self, cid: int) -> tuple[Any, Any] | None:
        """Client ``cid``'s training rows as tensors (slices of the host's data)."""
        if cid not in self._rows:
            return None
        offset, n = self._rows[cid]
        return self._x_all[offset : offset + n], self._y_all[offset : offset + n]

    def predict(self, params: Params, x: np.ndarray) -> np.ndarray:
        """The model's predictions for ``x`` under ``params``."""
        self._set(params)
        return np.asarray(self.model.predict(np.asarray(x, np.float32), verbose=0))

    def export(self, params: Params) -> bytes:
        """The model with ``params`` as ``.keras`` file bytes (so the driver needs no TF)."""
        self._set(params)
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "model.keras"
            self.model.save(path)
            return path.read_bytes()


def _fit_many(
    tf: Any, weights: Sequence[Any], names: Sequence[str], offset: bool, train_one: Any
) -> Any:
    """``fit_many``: ``train_one`` for each client in turn, deltas and metrics stacked."""

    def fit_many(
        offsets: Any,
        sizes: Any,
        seeds: Any,
        max_steps: Any,
        params: Any,
        corrections: Any,
        noise_seeds: Any,
        nulls: Any,
    ) -> Any:
        count = tf.shape(offsets)[0]
        deltas = [tf.TensorArray(v.dtype, size=count, element_shape=v.shape) for v in weights]
        metrics = [tf.TensorArray(tf.float32, size=count) for _ in names]

        def client(k: Any, deltas: Any, metrics: Any) -> Any:
            correction = [c[k] for c in corrections] if offset else params
            delta, logs = train_one(
                offsets[k],
                sizes[k],
                seeds[k],
                max_steps[k],
                params,
                correction,
                noise_seeds[k],
                nulls[k],
            )
            deltas = [ta.write(k, d) for ta, d in zip(deltas, delta, strict=True)]
            metrics = [
                ta.write(k, tf.cast(logs[name], tf.float32))
                for ta, name in zip(metrics, names, strict=True)
            ]
            return deltas, metrics

        deltas, metrics = while_loop(tf, count, client, (deltas, metrics))
        return [ta.stack() for ta in deltas], [ta.stack() for ta in metrics]

    return fit_many


@dataclass(frozen=True)
class _ClientLoop:
    """One client's traced local training, the pieces of :meth:`KerasTrainer._compile_loops`.

    ``train_one`` loads the global weights, restores the optimizer's initial state and
    the random layers' seeds, and runs every local epoch: a stateless shuffle and the
    model's own ``train_step`` (or the custom step of the features' local terms), or DP-SGD's
    secret Poisson batches. It returns ``local - global`` and the metrics.
    """

    tf: Any
    model: Any
    weights: Sequence[Any]
    x_all: Any
    y_all: Any
    batch: int
    epochs: int
    resets: Sequence[tuple[Any, Any]]
    seed_generators: Sequence[Any]
    load: Callable[[Any], None]
    train_step: Any
    custom_step: Any  # the features' proximal term and gradient offset, or None
    dp_step: Any  # DP-SGD's step, or None
    dp_moves: Sequence[bool]  # which weights DP-SGD moves (the trainable ones)
    private: bool  # under DP: a null job trains on zeros

    def rows(self, x: Any, y: Any, null: Any) -> Any:
        """``(x, y)``, or zeros of their shapes for a null job."""
        tf = self.tf
        if not self.private:
            return x, y
        return tf.cond(null > 0, lambda: (tf.zeros_like(x), tf.zeros_like(y)), lambda: (x, y))

    def batch_step(self, idx: Any, params: Any, correction: Any, null: Any) -> Any:
        """One step on the rows ``idx``; returns (loss * size, size) for custom steps."""
        tf = self.tf
        xb, yb = self.rows(tf.gather(self.x_all, idx), tf.gather(self.y_all, idx), null)
        size = tf.cast(tf.shape(idx)[0], tf.float32)
        if self.custom_step is not None:
            loss = self.custom_step(xb, yb, params, correction)
            return tf.cast(loss, tf.float32) * size, size
        self.train_step((xb, yb))
        return tf.constant(0.0, tf.float32), size

    def dp_epoch(self, job: _Job, epoch: Any, left: Any, loss_sum: Any, seen: Any) -> Any:
        """DP-SGD: secret Poisson batches, not a shuffle."""
        tf, n = self.tf, job.n
        x, y = self.rows(
            self.x_all[job.offset : job.offset + n],
            self.y_all[job.offset : job.offset + n],
            job.null,
        )
        num_batches = (n + self.batch - 1) // self.batch

        def step(i: Any, loss_sum: Any, seen: Any) -> Any:
            s0 = tf.stack(
                [
                    job.noise_seed[0],
                    job.noise_seed[1] + tf.cast(epoch * num_batches + i, tf.int64) * 4,
                ]
            )
            step_loss, size = self.dp_step(
                x,
                y,
                n,
                s0,
                s0 + tf.constant([0, 1], tf.int64),
                s0 + tf.constant([0, 2], tf.int64),
                job.params,
                job.correction,
                job.null,
            )
            return loss_sum + step_loss, seen + size

        return while_loop(tf, tf.minimum(num_batches, left), step, (loss_sum, seen))

    def shuffle_epoch(self, job: _Job, epoch: Any, left: Any, loss_sum: Any, seen: Any) -> Any:
        """A stateless shuffle of the rows: full batches, then the partial one."""
        tf, n, batch = self.tf, job.n, self.batch
        num_batches, full = (n + batch - 1) // batch, n // batch
        epoch_seed = tf.stack([job.seed[0], job.seed[1] + tf.cast(epoch, tf.int64)])
        order = tf.random.experimental.stateless_shuffle(tf.range(n), seed=epoch_seed)
        order += job.offset

        def step(i: Any, loss_sum: Any, seen: Any) -> Any:
            idx = tf.reshape(order[i * batch : (i + 1) * batch], [batch])
            step_loss, size = self.batch_step(idx, job.params, job.correction, job.null)
            return loss_sum + step_loss, seen + size

        loss_sum, seen = while_loop(tf, tf.minimum(full, left), step, (loss_sum, seen))

        def partial() -> Any:  # the epoch's last, smaller batch
            rest = order[full * batch :]
            step_loss, size = self.batch_step(rest, job.params, job.correction, job.null)
            return loss_sum + step_loss, seen + size

        return tf.cond(
            tf.logical_and(full < num_batches, left > full), partial, lambda: (loss_sum, seen)
        )

    def train_one(
        self,
        offset: Any,
        n: Any,
        seed: Any,
        max_steps: Any,
        params: Any,
        correction: Any,
        noise_seed: Any,
        null: Any,
    ) -> Any:
        """One client's local training from ``params``: ``(local - global, metrics)``."""
        tf = self.tf
        job = _Job(offset, n, seed, params, correction, noise_seed, null)
        self.load(params)
        for v, init in self.resets:
            v.assign(init)
        for k, sg in enumerate(self.seed_generators):
            sg.state.assign(tf.cast(tf.stack([seed[0] + k + 1, seed[1]]), sg.state.dtype))
        num_batches = (n + self.batch - 1) // self.batch
        run_epoch = self.dp_epoch if self.dp_step is not None else self.shuffle_epoch
        zero = tf.constant(0.0, tf.float32)
        loss_sum, seen = while_loop(  # stragglers stop early: at most max_steps
            tf,
            tf.constant(self.epochs),
            lambda e, *sums: run_epoch(job, e, max_steps - e * num_batches, *sums),
            (zero, zero),
        )
        delta = [v - p for v, p in zip(self.weights, params, strict=True)]
        logs = self.model.get_metrics_result()
        if self.dp_step is not None:
            # Only the trainable weights move by noised gradients; non-trainable
            # state (BatchNorm's moving statistics) was updated from raw examples
            # and must not leave the host: its delta is zero.
            delta = [
                d if keep else tf.zeros_like(d)
                for d, keep in zip(delta, self.dp_moves, strict=True)
            ]
            return delta, {"loss": loss_sum / tf.maximum(seen, 1.0)}
        if self.custom_step is not None:  # the task loss without the proximal term
            logs = {**logs, "loss": loss_sum / tf.maximum(seen, 1.0)}
        return delta, logs


@dataclass(frozen=True)
class _Job:
    """One client's job inside the traced loop (tensors)."""

    offset: Any
    n: Any
    seed: Any
    params: Any
    correction: Any
    noise_seed: Any
    null: Any
