"""Invariant: what a client owns stays on its host.

Per-client state derived from a client's raw updates (top-k's error-feedback residual:
its unclipped update on the coordinates it did not send; SCAFFOLD's control variate)
is saved by the hosts, on their side, and never returned to the driver or written into
the driver's checkpoint. Resume and host restarts still restore it exactly
(``tests/runtime/test_chaos.py``, ``tests/aggregators/test_scaffold.py``).
"""

import functools
from pathlib import Path

import numpy as np
import pytest

from fedray import api
from fedray.client.host import ClientHost
from fedray.loop import checkpoint

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
    # No client's state reached the driver's checkpoint ...
    fp = checkpoint.fingerprint(hist.summary["config"])
    kept = checkpoint.load(tmp_path, config_fingerprint=fp).client_state
    assert not list(_arrays(kept)), "client state in the driver's checkpoint"
    # The residuals exist, on the hosts' side: raw values, far longer than the clip, in
    # owner-only files outside the run directory, which holds no file but the driver's.
    folder = Path(hist.summary["config"]["runtime"]["client_state_dir"])
    assert tmp_path not in folder.parents
    saved = sorted(folder.rglob("*.npz"))
    assert saved, "the hosts saved no client state"
    assert all(p.stat().st_mode & 0o077 == 0 for p in [folder, *saved])
    ours = {"metrics.csv", "metrics.parquet", "summary.json", "model.keras", "failures.csv"}
    ours |= {"checkpoint.npz", "privacy-journal.jsonl"}
    assert {p.name for p in tmp_path.iterdir()} - ours == {"tb"}
    residuals = []
    for path in saved:
        with np.load(path) as archive:
            residuals += [archive[k] for k in archive.files]  # top-k is the only feature
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


@pytest.mark.parametrize("dp", [None, "local"])
def test_a_hosts_data_size_on_a_gpu_stays_with_it_under_dp(dp):
    # gpu_data_mb is n_k times a row's bytes: with one client per host, its shard size.
    from fedray import config
    from fedray.aggregators import LocalDP, Mean
    from fedray.client.spec import HostSpec
    from tests.fakes import NumpyTrainer

    class OnAGpu(NumpyTrainer):
        def describe(self):
            return {**super().describe(), "gpu_data_mb": 1.25}

    agg = LocalDP(1.0) if dp else Mean()
    cfg = config.load({"data": {"dataset": "linreg", "num_clients": 1}})
    facts = ClientHost(HostSpec.from_config(cfg, (0,), agg, trainer=OnAGpu)).ready()
    assert ("gpu_data_mb" in facts) == (dp is None)
