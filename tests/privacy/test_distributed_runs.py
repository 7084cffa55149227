"""Distributed DP through the whole stack: what the server unmasks is noised, dropouts
beyond the configured fraction abort before unmasking, and the ledger charges it.

Hosts train with numpy (:class:`tests.fakes.NumpyTrainer`), in-process, so the test can
watch both sides: every client's signal and noise share as its host makes them, and
the integer sum the server's :class:`~fedray.secagg.protocol.SecAggServer` unmasks.
"""

import math

import numpy as np
import pytest

from fedray import api
from fedray.aggregators import distributed_dp
from fedray.secagg import protocol

BASE = [
    "rounds=6",
    "data.dataset=linreg",
    "data.num_clients=6",
    "client.batch_size=16",
    "runtime.executor=local",
    "runtime.progress=false",
    "privacy.secure_aggregation.enabled=true",
    "privacy.dp.mode=distributed",
    "privacy.dp.delta=1e-5",
    "privacy.dp.noise_multiplier=0.7",
    "privacy.dp.clip=0.5",
]


@pytest.fixture
def watched(monkeypatch):
    """Numpy hosts; records each client's rounded signal and noise share, and each
    integer sum the server unmasks."""
    import fedray.client.trainer as trainer_mod
    from tests.fakes import NumpyTrainer

    monkeypatch.setattr(trainer_mod, "KerasTrainer", NumpyTrainer)
    seen = {"signal": [], "noise": [], "variance": [], "unmasked": []}
    real_round, real_skellam = distributed_dp.conditional_round, distributed_dp.skellam
    real_unmask = protocol.SecAggServer.unmask

    def rounding(x, bound, rng, **kw):
        seen["signal"].append(real_round(x, bound, rng, **kw))
        return seen["signal"][-1]

    def noise(lam, size, rng):
        seen["variance"].append(2 * lam)  # Skellam(lam) - the share's variance
        seen["noise"].append(real_skellam(lam, size, rng))
        return seen["noise"][-1]

    def unmask(self, responses):
        total = real_unmask(self, responses)
        seen["unmasked"].append((self.modulus_bits, sorted(responses), total.copy()))
        return total

    monkeypatch.setattr(distributed_dp, "conditional_round", rounding)
    monkeypatch.setattr(distributed_dp, "skellam", noise)
    monkeypatch.setattr(protocol.SecAggServer, "unmask", unmask)
    return seen


def test_the_server_unmasks_only_a_noised_sum(tmp_path, watched):
    hist = api.run({}, out=tmp_path / "run", overrides=BASE)
    report = hist.summary["privacy"]
    assert report["mode"] == "distributed" and math.isfinite(report["epsilon"])
    sigma, b = report["sensitivity"] * 0.7, report["sensitivity"]
    assert len(watched["unmasked"]) == 6  # one unmasked sum per round, nothing else
    for i, (r, survivors, total) in enumerate(watched["unmasked"]):
        n = len(survivors)
        signal = sum(s for s in watched["signal"][6 * i : 6 * i + n])
        noise = sum(z for z in watched["noise"][6 * i : 6 * i + n])
        # The server's integers are exactly signal + noise (mod 2^r): it never sees the
        # signal alone ...
        assert np.array_equal(total, (signal + noise) & ((1 << r) - 1))
        assert np.linalg.norm(signal) <= n * b and np.abs(noise).max() > 0
        # ... and the noise it sees is the survivors' shares, whose variances add up to
        # at least sigma^2 per coordinate (the shares' law: test_distributed.py).
        variance = sum(watched["variance"][6 * i : 6 * i + n])
        assert variance >= sigma**2 * (1 - 1e-12)
        assert variance == pytest.approx(sigma**2 * n / report["min_survivors"])
    # Decoded, the server's view of the mean differs from the un-noised mean by noise of
    # the std it reports (dp/noise_std): z C (times the rounding's inflation) / m, times
    # sqrt(6 / m_min) as all 6 shares arrived where m_min = 5 would carry z C.
    assert report["min_survivors"] == 5
    assert hist.rows[-1]["agg/dp/noise_std"] == pytest.approx(
        0.7 * 0.5 * report["noise_inflation"] / 6 * math.sqrt(6 / 5)
    )
    # Each client was charged once per round, and epsilon is its six releases'.
    ledger_eps = report["epsilon_per_client"]
    assert set(ledger_eps) == set(range(6)) and len(set(ledger_eps.values())) == 1


def test_too_many_dropouts_abort_before_unmasking(tmp_path, watched):
    """max_dropout 0 of 6 clients: all 6 shares are needed for the noise, so a round
    that loses one client aborts (the protocol alone would unmask 4 of 6); every
    unmasked sum holds all 6."""
    extra = ["privacy.dp.max_dropout=0", "faults.crash_rate=0.1", "rounds=8"]
    hist = api.run({}, out=tmp_path / "run", overrides=[*BASE, *extra])
    assert hist.summary["privacy"]["min_survivors"] == 6
    sizes = [len(s) for _, s, _ in watched["unmasked"]]
    assert sizes and min(sizes) == 6
    aborted = [r["round"] for r in hist.rows if r.get("failed/aborted", 0) > 0]
    assert aborted, "the seed should make some round lose a client"
    assert len(sizes) + len(aborted) == 8
    failures = (tmp_path / "run" / "failures.csv").read_text()
    assert "fewer than 6 (privacy.secure_aggregation.min_clients, or under distributed" in failures
