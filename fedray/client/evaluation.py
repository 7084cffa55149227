"""Evaluation of a host's model as per-batch sums, so that hosts can share a test set.

The server test set was evaluated by host 0 alone while the other hosts waited (on
pfl-research's CIFAR-10 protocol, 10,000 images every 10 rounds: 15% of the mean
round). A metric that is a mean, ``sum(total) / sum(count)`` over the batches
(Keras's loss tracker and accuracy metrics are ``keras.metrics.Mean``), can instead be
evaluated in parts on several hosts side by side: each returns every batch's
``(total, count)`` (:class:`~fedray.records.MeanStates`) and the driver adds them in
batch order (:func:`~fedray.records.merge_means`), with the same result bit for bit
however many hosts took part. Metrics that are not means (AUC, a user's own) keep the
whole test set on one host.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any


def while_loop(tf: Any, count: Any, body: Callable[..., Any], state: Any) -> Any:
    """``for i in range(count): state = body(i, *state)`` as one ``tf.while_loop``."""
    out = tf.while_loop(
        lambda i, *_: i < count, lambda i, *st: (i + 1, *body(i, *st)), (tf.constant(0), *state)
    )
    return out[1:]


def model_step(tf: Any, model: Any, name: str) -> Any:
    """``model.<name>``; a user's override of Keras's own goes through AutoGraph."""
    import functools

    import keras

    method = getattr(type(model), name)
    if method is getattr(keras.Model, name):
        return getattr(model, name)
    return functools.partial(tf.autograph.to_graph(method), model)


def trace_whole(
    tf: Any,
    model: Any,
    load: Callable[[Any], None],
    test_step: Callable[[Any], Any],
    specs: list[Any],
    eval_batch: int,
) -> Any:
    """The traced ``evaluate(x, y, params)``: the model's metrics over all of ``x``."""

    def evaluate(x: Any, y: Any, params: Any) -> Any:
        load(params)

        def step(i: Any) -> Any:
            lo = i * eval_batch
            test_step((x[lo : lo + eval_batch], y[lo : lo + eval_batch]))
            return ()

        while_loop(tf, (tf.shape(x)[0] + eval_batch - 1) // eval_batch, step, ())
        return model.get_metrics_result()

    traced = tf.function(evaluate, input_signature=specs, autograph=False)
    return traced.get_concrete_function()


def mean_leaves(model: Any) -> list[tuple[str, Any, Any]] | None:
    """``(name, total, count)`` of each of the model's metrics, or None if one is no mean.

    The model's metrics must be built (one ``test_step``). Containers (Keras's compiled
    metrics and losses) are opened; every leaf must be a ``keras.metrics.Mean`` that
    keeps Keras's own ``result`` (total over count), and the leaves' names must be
    exactly the keys of ``model.get_metrics_result()``.
    """
    import keras

    leaves: list[tuple[str, Any, Any]] = []

    def walk(metrics: Any) -> bool:
        for metric in metrics:
            if isinstance(metric, keras.metrics.Mean):
                if type(metric).result is not keras.metrics.Mean.result:
                    return False
                leaves.append((metric.name, metric.total, metric.count))
            elif not (hasattr(metric, "metrics") and walk(metric.metrics)):
                return False
        return True

    if not walk(model.metrics):
        return None
    names = [name for name, _, _ in leaves]
    if len(set(names)) != len(names) or set(names) != set(model.get_metrics_result()):
        return None
    return leaves


def trace_states(
    tf: Any,
    model: Any,
    leaves: list[tuple[str, Any, Any]],
    load: Callable[[Any], None],
    test_step: Callable[[Any], Any],
    specs: list[Any],
    eval_batch: int,
) -> Any:
    """The traced ``states(x, y, params, lo, hi)``: batches ``[lo, hi)``'s sums.

    Loads ``params``, then for each batch of ``eval_batch`` rows resets the metrics,
    runs the model's ``test_step`` and records every leaf's ``(total, count)``.
    Returns a ``(hi - lo, leaves, 2)`` float64 tensor.
    """

    def states(x: Any, y: Any, params: Any, lo: Any, hi: Any) -> Any:
        load(params)
        out = tf.TensorArray(tf.float64, size=hi - lo, element_shape=[len(leaves), 2])

        def step(i: Any, out: Any) -> Any:
            start = (lo + i) * eval_batch
            for metric in model.metrics:
                metric.reset_state()
            test_step((x[start : start + eval_batch], y[start : start + eval_batch]))
            sums = tf.stack(
                [tf.stack([tf.cast(t, tf.float64), tf.cast(c, tf.float64)]) for _, t, c in leaves]
            )
            return (out.write(i, sums),)

        (out,) = while_loop(tf, hi - lo, step, (out,))
        return out.stack()

    scalar = tf.TensorSpec([], tf.int32)
    traced = tf.function(states, input_signature=[*specs, scalar, scalar], autograph=False)
    return traced.get_concrete_function()
