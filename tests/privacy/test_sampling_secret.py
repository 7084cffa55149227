"""Invariant: under DP, a checkpoint cannot replay the clients' sample.

Amplification by sampling holds only while the sample is secret. The review (W-3)
stepped the checkpoint's sampling generator back and regenerated every past Poisson
sample, which turned ε 1.83 into about 17.9. Under DP each attempt's sample is now drawn
from a secret key that is never written anywhere; the checkpoint keeps only a public,
unused generator.
"""

import numpy as np
import pytest

from fedray import api
from fedray.config import build
from fedray.loop import checkpoint

pytestmark = pytest.mark.slow

OVERRIDES = [
    *("rounds=4", "data.dataset=linreg", "data.num_clients=30", "client.batch_size=16"),
    *("runtime.executor=local", "runtime.progress=false", "checkpoint.every=1"),
    *("strategy.fraction_fit=0.3", "privacy.dp.noise_multiplier=1.0", "privacy.dp.delta=1e-5"),
]


@pytest.fixture
def samples(monkeypatch):
    """Numpy hosts; every sample the driver draws, in order."""
    import fedray.client.trainer as trainer_mod
    from tests.fakes import NumpyTrainer

    monkeypatch.setattr(trainer_mod, "KerasTrainer", NumpyTrainer)
    drawn = []
    real = build.make_executor

    def make(cfg, strategy, source=None):
        executor, started = real(cfg, strategy, source)
        fit = executor.fit

        def spy(ids, params, info):
            drawn.append(sorted(ids))
            return fit(ids, params, info)

        executor.fit = spy
        return executor, started

    monkeypatch.setattr(build, "make_executor", make)
    return drawn


def test_the_checkpoint_holds_nothing_the_sample_was_drawn_from(tmp_path, samples):
    hist = api.run({}, out=tmp_path, overrides=OVERRIDES)
    assert len(samples) == 4 and len({len(s) for s in samples}) > 1  # Poisson sizes vary
    fp = checkpoint.fingerprint(hist.summary["config"])
    state = checkpoint.load(tmp_path, config_fingerprint=fp)
    public = np.random.default_rng(hist.summary["config"]["seed"])
    # The checkpointed generator is the public seed's, never advanced: it drew nothing.
    assert state.rng_state == public.bit_generator.state
    # The review's attack: replay Poisson draws from the checkpointed generator.
    replay = np.random.default_rng()
    replay.bit_generator.state = state.rng_state
    replayed = [sorted(np.flatnonzero(replay.random(30) < 0.3).tolist()) for _ in range(4)]
    assert replayed != samples


def test_two_runs_with_the_same_public_seed_draw_different_samples(tmp_path, samples):
    api.run({}, out=tmp_path / "a", overrides=OVERRIDES)
    api.run({}, out=tmp_path / "b", overrides=OVERRIDES)
    assert samples[:4] != samples[4:]
