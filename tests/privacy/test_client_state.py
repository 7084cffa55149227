"""Invariant: what a client owns stays on its host.

Per-client state derived from a client's raw updates (top-k's error-feedback residual:
its unclipped update on the coordinates it did not send; SCAFFOLD's control variate)
is saved by the hosts, on their side, and never returned to the driver or written into
the driver's checkpoint. Resume and host restarts still restore it exactly
(``tests/runtime/test_chaos.py``, ``tests/aggregators/test_scaffold.py``).
"""

import functools

import numpy as np
import pytest

from fedray import api, checkpoint
from fedray.client.host import ClientHost

pytestmark = pytest.mark.slow


def _arrays(value):
    """Every numpy array inside ``value`` (dataclasses, dicts, lists, tuples)."""
    if isinstance(value, np.ndarray):
        yield value
    elif isinstance(value, dict):
        for v in value.values():
            yield from _arrays(v)
    elif isinstance(value, (list, tuple)):
        for v in value:
            yield from _arrays(v)
    elif hasattr(value, "__dataclass_fields__"):
        for name in value.__dataclass_fields__:
            yield from _arrays(getattr(value, name))


@pytest.fixture
def host_returns(monkeypatch):
    """Numpy hosts; every value any host method returns to its caller is kept."""
    import fedray.client.trainer as trainer_mod
    from tests.fakes import NumpyTrainer

    monkeypatch.setattr(trainer_mod, "KerasTrainer", NumpyTrainer)
    returned = []
    for name, method in list(vars(ClientHost).items()):
        if callable(method) and not name.startswith("_"):

            def spy(self, *args, _method=method, **kwargs):
                out = _method(self, *args, **kwargs)
                returned.append(out)
                return out

            monkeypatch.setattr(ClientHost, name, functools.wraps(method)(spy))
    return returned


def test_topk_residuals_never_reach_the_driver_or_its_checkpoint(tmp_path, host_returns):
    clip = 0.05
    overrides = [
        *("rounds=3", "data.dataset=linreg", "data.num_clients=6", "client.batch_size=8"),
        *("runtime.executor=local", "runtime.progress=false", "runtime.pre_aggregate=false"),
        *("checkpoint.every=1", "compression.topk=0.5", "privacy.dp.noise_multiplier=1.0"),
        *("privacy.dp.delta=1e-5", f"privacy.dp.clip={clip}"),
    ]
    hist = api.run({}, out=tmp_path, overrides=overrides)
    # No client's state reached the driver by name, nor its checkpoint ...
    named = [
        v
        for v in host_returns
        if isinstance(v, dict)
        and any("state/" in str(k) for e in v.values() if isinstance(e, dict) for k in e)
    ]
    assert named == []
    fp = checkpoint.fingerprint(hist.summary["config"])
    kept = checkpoint.load(tmp_path, config_fingerprint=fp).client_state
    assert not list(_arrays(kept)), "client state in the driver's checkpoint"
    # The residuals exist, on the hosts' side: raw values, far longer than the clip.
    saved = sorted((tmp_path / "client-state").rglob("*.npz"))
    assert saved, "the hosts saved no client state"
    residuals = []
    for path in saved:
        with np.load(path) as archive:
            residuals += [archive[k] for k in archive.files if "topk_residual" in k]
    assert len(residuals) == 6 * 2  # every client, both arrays of the linear model
    assert max(np.abs(r).max() for r in residuals) > 2 * clip
    secret = [r for r in residuals if np.any(r != 0)]
    # Nothing a host returned to the driver carries one ...
    for value in host_returns:
        for array in _arrays(value):
            for r in secret:
                assert not (array.shape == r.shape and np.array_equal(array, r))
    # ... and the driver's checkpoint holds none of them.
    with np.load(tmp_path / "checkpoint.npz") as archive:
        stored = [archive[k] for k in archive.files]
    for array in stored:
        for r in secret:
            assert not (array.shape == r.shape and np.array_equal(array, r))
