"""fedray: federated learning on Ray actors with Keras models.

``import fedray`` is light: Ray and TensorFlow load only when a run starts.

>>> import fedray
>>> fedray.__version__
'0.1.0'
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

if TYPE_CHECKING:
    from fedray.api import RunHistory


def run(config: Any, **kwargs: Any) -> RunHistory:
    """Train a federated model; see :func:`fedray.api.run`."""
    from fedray.api import run as _run

    return _run(config, **kwargs)


def fit(model_fn: Any, clients: Any, **kwargs: Any) -> RunHistory:
    """Train on clients' arrays already in memory; see :func:`fedray.api.fit`."""
    from fedray.api import fit as _fit

    return _fit(model_fn, clients, **kwargs)


def sweep(config: Any, **kwargs: Any) -> Any:
    """Run a grid of runs as Ray Tune trials; a DataFrame. See :func:`fedray.sweeps.sweep`."""
    from fedray.sweeps import sweep as _sweep

    return _sweep(config, **kwargs)


from fedray import features, strategy  # noqa: E402 - light (numpy): fedray.strategy.fedavg()

__all__ = ["__version__", "features", "fit", "run", "strategy", "sweep"]
