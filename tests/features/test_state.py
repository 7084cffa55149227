"""Features' state across a checkpoint: by name, refused when the features changed."""

import numpy as np
import pytest

from fedray import api
from fedray.aggregators import Mean
from fedray.features import FedProx, Scaffold, TopK
from fedray.loop.checkpoint import CheckpointError
from fedray.strategy import Strategy

OVERRIDES = [
    "rounds=2",
    "data.dataset=linreg",
    "data.num_clients=4",
    "client.batch_size=16",
    "runtime.executor=local",
    "runtime.progress=false",
    "checkpoint.every=1",
]


def _strategy(*features):
    return Strategy(aggregator=Mean(weighting="uniform"), features=features)


def test_a_resume_with_other_features_is_refused_naming_both(tmp_path, numpy_hosts):
    # A hand-composed strategy is not in the config's fingerprint: reordered features
    # would feed one feature's saved state to another (same shapes, no error).
    api.run(
        {},
        out=tmp_path,
        overrides=[*OVERRIDES, "rounds=1"],
        strategy=_strategy(Scaffold(), TopK(0.5)),
    )
    with pytest.raises(CheckpointError) as err:
        api.run(
            {},
            out=tmp_path,
            overrides=OVERRIDES,
            strategy=_strategy(TopK(0.5), Scaffold()),
            resume=True,
        )
    assert "['Scaffold', 'TopK']" in str(err.value) and "['TopK', 'Scaffold']" in str(err.value)


def test_resume_with_two_stateful_features_equals_the_uninterrupted_run(tmp_path, numpy_hosts):
    both = _strategy(FedProx(0.1), Scaffold(), TopK(0.5))
    full = api.run({}, out=tmp_path / "full", overrides=OVERRIDES, strategy=both)
    api.run({}, out=tmp_path / "cut", overrides=[*OVERRIDES, "rounds=1"], strategy=both)
    resumed = api.run({}, out=tmp_path / "cut", overrides=OVERRIDES, strategy=both, resume=True)
    for a, b in zip(full.params, resumed.params, strict=True):
        np.testing.assert_array_equal(a, b)


def test_a_host_restores_what_was_saved_and_starts_the_rest_afresh(tmp_path):
    from dataclasses import replace

    from fedray import config
    from fedray.client.host import ClientHost
    from fedray.client.spec import HostSpec
    from tests.fakes import NumpyTrainer

    cfg = config.load({"data": {"dataset": "linreg", "num_clients": 2}})
    spec = HostSpec.from_config(cfg, (0, 1), Mean(), features=(Scaffold(), TopK(0.5)))
    host = ClientHost(replace(spec, trainer=NumpyTrainer))
    params = host.initial_params()
    saved = [np.full_like(p, 2.0) for p in params]
    host._restore({0: {"0-Scaffold": saved}, 1: {"1-TopK": saved, "old-key": saved}})
    zero = [np.zeros_like(p) for p in params]
    c0, r0 = host._state(0, params)
    c1, r1 = host._state(1, params)
    assert [a.tolist() for a in c0] == [a.tolist() for a in saved] and r0 == []
    assert [a.tolist() for a in c1] == [a.tolist() for a in zero]  # Scaffold's client_init
    assert [a.tolist() for a in r1] == [a.tolist() for a in saved]


def test_under_central_dp_a_server_half_sees_no_realised_participant_count(tmp_path, numpy_hosts):
    # Central DP releases a noised sum over the expected count m; the realised |S| is
    # never released, so a feature's server half must not get it either.
    from fedray.features import Feature

    seen = []

    class Counts(Feature):
        def server_update(self, delta, reports, state, facts):
            seen.append(facts.participants)
            return delta, state, {}

    dp = ["privacy.dp.noise_multiplier=1", "privacy.dp.clip=1", "privacy.dp.delta=1e-5"]
    for mode in ("none", "central"):
        extra = [] if mode == "none" else ["privacy.dp.mode=central", *dp]
        strategy = _strategy(Counts())
        api.run({}, out=tmp_path / mode, overrides=[*OVERRIDES, *extra], strategy=strategy)
    assert seen[:2] == [4, 4] and seen[2:] == [None, None]
