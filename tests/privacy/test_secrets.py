"""Invariant 4: nothing secret is persisted; the checkpoint cannot rebuild the noise."""

import numpy as np
import pytest

from fedray.aggregators import CentralDP, Mean
from fedray.callbacks import Callback
from fedray.loop import Checkpointer, run_rounds
from fedray.privacy import DPFedAvgAccountant
from fedray.strategy import Strategy, with_dp
from tests.privacy.fakes import EncodingExecutor

DIM, M, CLIP, Z = 40, 3.0, 100.0, 1.0


def _run(rounds, *, noise_seed=None, resume=None):
    agg = CentralDP(noise_multiplier=Z, expected_clients=M, clip=CLIP)
    strategy = with_dp(Strategy(aggregator=Mean(weighting="uniform"), fraction_fit=0.5), agg)
    states = []
    ex = EncodingExecutor(agg, num_clients=6, dim=DIM)
    params = run_rounds(
        strategy=strategy,
        executor=ex,
        rounds=rounds,
        seed=0,
        callback=Callback(),
        privacy=DPFedAvgAccountant(Z, 0.5, 1e-5),
        rng_seed=11,
        resume=resume,
        checkpoint=Checkpointer(states.append),
        **({"noise_seed": noise_seed} if noise_seed else {}),
    )
    return params, states, ex


@pytest.mark.slow
def test_the_checkpointed_generator_cannot_regenerate_the_noise():
    params, states, _ = _run(1)
    state = states[-1]
    released_sum = params[0].astype(np.float64) * M  # θ_0 = 0, server step 1: θ_1 = noised sum / m
    sampled = state.rows[-1]["clients/sampled"]
    assert sampled > 0
    # The attacker knows the checkpoint and, to make it easy, which clients took part:
    # their clipped updates sum to within a few units; the noise has std Z * CLIP = 100.
    sigma = Z * CLIP
    for back in range(0, 3000):
        h = np.random.PCG64()
        h.state = state.rng_state
        h.advance((1 << 128) - back)
        noise = np.random.Generator(h).normal(0.0, sigma, DIM)
        residual = released_sum - noise  # the un-noised sum, if the guess were right
        assert np.abs(residual).max() > 50.0, f"noise rebuilt from the checkpoint ({back} back)"
    # ... and nothing in the checkpoint is a generator state other than the sampler's.
    assert set(state.loop_state) == {"privacy", "scheduler"} and state.loop_state["scheduler"] == {}
    assert "history" in state.loop_state["privacy"]


@pytest.mark.slow
def test_resume_is_exact_with_a_noise_seed_and_differs_only_by_noise_without():
    full, _, _ = _run(4, noise_seed=5)
    _, states, _ = _run(2, noise_seed=5)
    resumed, _, _ = _run(4, noise_seed=5, resume=states[-1])
    np.testing.assert_array_equal(full[0], resumed[0])
    # Without a noise seed every round's noise is fresh: same samples, other noise.
    a, sa, _ = _run(2)
    b, sb, _ = _run(2)
    assert [r["clients/sampled"] for r in sa[-1].rows] == [
        r["clients/sampled"] for r in sb[-1].rows
    ]
    assert not np.array_equal(a[0], b[0])
