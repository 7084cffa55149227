"""Byzantine client simulation, for testing robust aggregators (pure numpy).

A fixed ``fraction`` of clients, chosen once per run from the seed, are Byzantine:

* ``sign_flip``: send ``-scale * delta`` (Damaskinos et al. / Blanchard et al. style
  model-poisoning baseline);
* ``gaussian``: send a random direction scaled to L2 norm ``scale``;
* ``label_flip``: train honestly on labels ``C - 1 - y`` (Fang et al., USENIX Security
  2020, arXiv:1911.11815, list these three as the standard baselines).

The attack is applied to the client's final message, after any client-side encoding.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np

from fedray.records import ClientUpdate

ATTACKS = ("sign_flip", "gaussian", "label_flip")


def choose_attackers(num_clients: int, fraction: float, seed: int) -> frozenset[int]:
    """``round(fraction * num_clients)`` client ids, fixed for the whole run.

    >>> sorted(choose_attackers(10, 0.2, 0)) == sorted(choose_attackers(10, 0.2, 0))
    True
    >>> len(choose_attackers(10, 0.2, 0)), len(choose_attackers(10, 0.0, 0))
    (2, 0)
    """
    if not 0 <= fraction <= 1:
        raise ValueError(f"attack fraction must be in [0, 1], got {fraction}")
    k = round(fraction * num_clients)
    rng = np.random.default_rng([seed, 3])
    return frozenset(int(i) for i in rng.choice(num_clients, size=k, replace=False))


def attack_update(
    update: ClientUpdate, kind: str, scale: float, rng: np.random.Generator
) -> ClientUpdate:
    """The Byzantine version of an update (``label_flip`` leaves the update as trained).

    >>> u = ClientUpdate(0, [np.array([1.0, -2.0])], 5)
    >>> attack_update(u, "sign_flip", 3.0, np.random.default_rng(0)).delta[0].tolist()
    [-3.0, 6.0]
    >>> g = attack_update(u, "gaussian", 10.0, np.random.default_rng(0)).delta
    >>> round(float(np.sqrt(sum((d**2).sum() for d in g))), 6)
    10.0
    """
    if kind == "sign_flip":
        delta = [(-scale * d).astype(d.dtype) for d in update.delta]
    elif kind == "gaussian":
        noise = [rng.normal(size=d.shape) for d in update.delta]
        norm = float(np.sqrt(sum(float((n**2).sum()) for n in noise))) or 1.0
        delta = [
            (n * scale / norm).astype(d.dtype) for n, d in zip(noise, update.delta, strict=True)
        ]
    elif kind == "label_flip":
        return update
    else:
        raise ValueError(f"attack kind must be one of {ATTACKS}, got {kind!r}")
    return replace(update, delta=delta)


def flip_labels(y: np.ndarray, num_classes: int) -> np.ndarray:
    """``C - 1 - y``: every label moved to another class (for ``C >= 2``).

    >>> flip_labels(np.array([0, 1, 9]), 10).tolist()
    [9, 8, 0]
    """
    return (num_classes - 1 - y).astype(y.dtype)
