"""Invariant: crash anywhere, charge everything.

The driver is killed at seeded random points of a DP run (after an attempt's sample was
drawn, after its clients' updates arrived, when the new model is broadcast, after it
was evaluated) and the run is resumed. For every client, the resumed run's ledger must
charge at least every release that happened in both processes, counted where the
updates leave the hosts: the charges of the attempts a crash lost (made after the last
checkpoint) live in the run's privacy journal, not in the checkpoint.
"""

import random
from collections import Counter

import numpy as np
import pytest

from fedray import api
from tests.privacy.harness import ReleaseCounter, assert_charged, spy_runs

pytestmark = pytest.mark.slow


class DriverKilledError(Exception):
    """The driver dies."""


class CrashingCounter(ReleaseCounter):
    """Counts releases and kills the driver at ``point`` of round ``at`` (once)."""

    def __init__(self, inner, plan):
        super().__init__(inner)
        self.plan = plan
        self.broadcasts = 0
        self.evaluations = 0

    def _maybe(self, point, server_round):
        if self.plan.get("point") == point and self.plan.get("round") == server_round:
            self.plan.clear()
            raise DriverKilledError(f"driver killed {point} in round {server_round}")

    def fit(self, client_ids, params, info):
        self._maybe("after sampling", info.server_round)
        yield from super().fit(client_ids, params, info)
        self._maybe("after the updates arrived", info.server_round)

    def broadcast(self, params, downs=None):
        self.broadcasts += 1  # the first is the initial model, the k-th follows round k - 1
        self._maybe("at the broadcast", self.broadcasts - 1)
        return self.inner.broadcast(params, downs)

    def evaluate(self, handle):
        self.evaluations += 1
        out = self.inner.evaluate(handle)
        self._maybe("after the evaluation", self.evaluations)
        return out


COMMON = [
    "rounds=8",
    "data.dataset=linreg",
    "data.num_clients=6",
    "client.batch_size=16",
    "runtime.executor=local",
    "runtime.progress=false",
    "privacy.dp.noise_multiplier=4.0",
    "privacy.dp.delta=1e-5",
]
MODES = {
    "central": ["privacy.dp.mode=central", "strategy.fraction_fit=0.5"],
    "local": ["privacy.dp.mode=local"],
    "dpsgd": ["privacy.dp.mode=dpsgd"],
    "distributed": [
        "privacy.dp.mode=distributed",
        "privacy.secure_aggregation.enabled=true",
        "privacy.dp.max_dropout=0.0",
    ],
}
POINTS = ["after sampling", "after the updates arrived", "at the broadcast", "after the evaluation"]
CASES = [
    (mode, every, random.Random(f"{mode}{i}").randint(2, 6), point)
    for i, (mode, every, point) in enumerate(
        random.Random(30).sample([(m, e, p) for m in MODES for e in (1, 3) for p in POINTS], 12)
    )
]


@pytest.fixture
def crashing(monkeypatch):
    import fedray.client.trainer as trainer_mod
    from tests.fakes import NumpyTrainer

    monkeypatch.setattr(trainer_mod, "KerasTrainer", NumpyTrainer)
    plan = {}
    seen = spy_runs(monkeypatch, lambda executor: CrashingCounter(executor, plan))
    seen["plan"] = plan
    return seen


@pytest.mark.parametrize("mode,every,at,point", CASES, ids=str)
def test_a_crash_anywhere_leaves_every_release_charged(tmp_path, crashing, mode, every, at, point):
    overrides = [*COMMON, "runtime.pre_aggregate=false", f"checkpoint.every={every}", *MODES[mode]]
    crashing["plan"].update(point=point, round=at)
    with pytest.raises(DriverKilledError):
        api.run({}, out=tmp_path, overrides=overrides)
    resumable = (tmp_path / "checkpoint.npz").is_file()
    hist = api.run({}, out=tmp_path, overrides=overrides, resume=resumable)
    assert [r["round"] for r in hist.rows] == list(range(1, 9))
    both = ReleaseCounter(None)
    for counter in crashing["counters"]:
        both.released.update(counter.released)
        both.calls.extend(counter.calls)
    ledger = crashing["ledgers"][-1]
    assert_charged(both, ledger)
    if mode == "central":  # every attempt that sampled was charged, lost ones included
        started = sum(1 for c in both.calls)
        assert getattr(ledger, "ledger", ledger).rounds >= started
    # The attempts a crash lost (charged after the last checkpoint) are recorded as lost
    # in the history of the rounds that ran again; a run with no checkpoint yet starts
    # over, its earlier charges kept on the ledger.
    lost = sum(r.get("privacy/lost_attempts", 0) for r in hist.rows)
    last_saved = (at - 1) // every * every  # round `at` crashed before its checkpoint
    assert lost == (at - last_saved if resumable else 0), (lost, at, last_saved)
    assert np.isfinite(hist.summary["privacy"]["epsilon"])


def test_the_lost_rounds_raise_the_reported_epsilon(tmp_path, crashing):
    """The review's reproducer: local DP, checkpoint every 3, crash in round 5 after
    its updates arrived. Rounds 4 and 5 ran twice; every client released 10 times."""
    overrides = [*COMMON, "privacy.dp.mode=local", "checkpoint.every=3"]
    crashing["plan"].update(point="after the updates arrived", round=5)
    with pytest.raises(DriverKilledError):
        api.run({}, out=tmp_path, overrides=overrides)
    hist = api.run({}, out=tmp_path, overrides=overrides, resume=True)
    released = Counter()
    for counter in crashing["counters"]:
        released.update(counter.released)
    assert set(released.values()) == {10}
    ledger = crashing["ledgers"][-1]
    assert hist.summary["privacy"]["epsilon"] == pytest.approx(
        getattr(ledger, "ledger", ledger).client_epsilon(10)
    )
    assert [r.get("privacy/lost_attempts", 0) for r in hist.rows] == [0, 0, 0, 1, 1, 0, 0, 0]
