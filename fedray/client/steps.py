"""The pieces a client's traced training step is composed of.

The plain step is the model's own ``train_step``. Each piece changes one thing:

* :class:`Proximal` adds ``mu/2 ||w - w_global||^2`` to the objective (FedProx's term;
  any feature's :class:`~fedray.features.LocalObjective`, summed over them).
* :class:`GradientOffset` adds the client's offset ``o_k`` to the gradient, i.e.
  ``<o_k, w>`` to the objective (SCAFFOLD's ``c - c_i``, FedDyn's linear term).
* :class:`DPSGDGradient`: DP-SGD (Abadi et al., CCS 2016, arXiv:1607.00133) replaces
  the batch gradient by the clipped per-example gradients of a Poisson batch, summed,
  noised and divided by the expected batch size.

Every piece builds TensorFlow code at trace time (``tf`` is passed in, so this module
imports no TensorFlow).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

Step = Callable[..., Any]


@dataclass(frozen=True)
class Proximal:
    """The proximal term ``mu/2 ||w - w_global||^2``."""

    mu: float

    def penalty(self, tf: Any, trainable: Sequence[Any], anchors: Sequence[Any]) -> Any:
        """The term for the current weights and their global values."""
        drift = tf.add_n(
            [
                tf.reduce_sum(tf.square(v - tf.cast(a, v.dtype)))
                for v, a in zip(trainable, anchors, strict=True)
            ]
        )
        return 0.5 * self.mu * drift


@dataclass(frozen=True)
class GradientOffset:
    """The gradient offset ``g + o_k`` (the gradient of ``<o_k, w>``)."""

    def correct(self, tf: Any, grads: Sequence[Any], corrections: Sequence[Any]) -> list[Any]:
        """The corrected gradients."""
        return [g + tf.cast(c, g.dtype) for g, c in zip(grads, corrections, strict=True)]


def gradient_step(
    tf: Any,
    model: Any,
    anchor_index: Sequence[int],
    proximal: Proximal | None,
    control: GradientOffset | None,
) -> Step:
    """Keras' train step with the given pieces: ``step(x, y, params, correction) -> loss``.

    ``anchor_index[j]`` is the position of trainable variable ``j`` among the model's
    weights (and so in ``params`` and ``correction``).
    """
    trainable = list(model.trainable_variables)
    opt = model.optimizer

    def step(x: Any, y: Any, params: Any, correction: Any) -> Any:
        with tf.GradientTape() as tape:
            y_pred = model(x, training=True)
            loss = model.compute_loss(x=x, y=y, y_pred=y_pred, training=True)
            objective = loss
            if proximal is not None:
                anchors = [params[j] for j in anchor_index]
                objective = loss + proximal.penalty(tf, trainable, anchors)
        grads = tape.gradient(objective, trainable)
        if control is not None:
            grads = control.correct(tf, grads, [correction[j] for j in anchor_index])
        opt.apply(grads, trainable)
        model.compute_metrics(x, y, y_pred)
        return loss

    return step


@dataclass(frozen=True)
class DPSGDGradient:
    """DP-SGD's private gradient on a Poisson batch padded to ``cap`` rows.

    Only the sampled rows count: each padded row's per-example gradient is kept where
    the row is in the batch and its gradient is finite, and zeroed otherwise, so an
    example that was not drawn, or whose gradient overflows (one non-finite feature),
    changes nothing, as if absent. The proximal term's ``mu (w - w_global)`` and the
    offset ``o_k`` are added after the noise: they do not read the data, so they are
    post-processing and cost no privacy.

    Attributes:
        clip: Per-example L2 clip norm.
        noise_multiplier: z; the noise on the summed gradients has std ``z * clip``.
        batch_size: B, the expected batch size (the divisor, never the realised size).
        cap: The padded batch size (P(batch > cap) is spent from δ by the accountant).
    """

    clip: float
    noise_multiplier: float
    batch_size: int
    cap: int

    def build(
        self,
        tf: Any,
        model: Any,
        per_example_loss: Any,
        anchor_index: Sequence[int] = (),
        proximal: Proximal | None = None,
        control: GradientOffset | None = None,
    ) -> Step:
        """``step(x, y, n, s0, s1, s2, params, correction, null) -> (loss sum, batch size)``.

        ``params`` are the round's global weights (the proximal anchors) and
        ``correction`` the client's offset ``o_k``, both in the model's weight order;
        ``anchor_index[j]`` is trainable variable ``j``'s position there. A ``null``
        step (int > 0) keeps no example: its update is the noise alone.
        """
        trainable = list(model.trainable_variables)
        opt = model.optimizer
        batch, cap = self.batch_size, self.cap
        clip, std = self.clip, self.noise_multiplier * self.clip

        def step(  # noqa: PLR0913 - a traced step: the tensors it reads, one by one
            x: Any,
            y: Any,
            n: Any,
            s0: Any,
            s1: Any,
            s2: Any,
            params: Any,
            correction: Any,
            null: Any,
        ) -> Any:
            q = tf.minimum(1.0, batch / tf.cast(n, tf.float32))
            k = tf.random.stateless_binomial(
                [], seed=s0, counts=tf.cast(n, tf.float32), probs=q, output_dtype=tf.int32
            )
            bmax = tf.minimum(n, cap)
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
            drawn = tf.logical_and(mask > 0, null <= 0)
            keep = tf.logical_and(drawn, tf.math.is_finite(sq))  # drawn, and finite
            scale = tf.where(keep, tf.minimum(1.0, clip / (tf.sqrt(sq) + 1e-12)), 0.0)
            noisy = []
            for j, g in enumerate(grads):
                rows = tf.reshape(keep, tf.concat([[bmax], tf.ones([tf.rank(g) - 1], tf.int32)], 0))
                summed = tf.tensordot(scale, tf.where(rows, g, tf.zeros_like(g)), axes=1)
                noise = tf.random.stateless_normal(tf.shape(summed), seed=s2 + j, stddev=std)
                private = (summed + noise) / batch  # the expected batch size, never k
                v = trainable[j]
                if proximal is not None:  # the gradient of mu/2 ||w - w_global||^2
                    private += proximal.mu * (v - tf.cast(params[anchor_index[j]], v.dtype))
                if control is not None:
                    private += tf.cast(correction[anchor_index[j]], v.dtype)
                noisy.append(private)
            opt.apply(noisy, trainable)
            losses = tf.reshape(tf.cast(losses, tf.float32), [bmax])
            return tf.reduce_sum(tf.where(keep, losses, 0.0)), tf.reduce_sum(
                tf.cast(keep, tf.float32)
            )

        return step
