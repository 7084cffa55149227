"""A release counter: what each client sent to the server, whatever the code path.

Wrap any executor (fake, ``LocalExecutor``, ``RayExecutor``) in :class:`ReleaseCounter`
and run the loop as usual; :func:`assert_charged` then checks that the privacy ledger
charged at least what left the hosts.
"""

from collections import Counter

from fedray.privacy import DPFedAvgAccountant
from fedray.records import ClientEval, ClientUpdate, PartialSum


class ReleaseCounter:
    """Counts, per client, every update, partial sum and evaluation a host returned."""

    def __init__(self, inner):
        self.inner = inner
        self.released = Counter()  # client id -> values that reached the driver
        self.calls = []  # per fit call: Counter of releases in that call

    def __getattr__(self, name):
        return getattr(self.inner, name)

    def fit(self, client_ids, params, info):
        seen = Counter()
        try:
            for result in self.inner.fit(client_ids, params, info):
                if isinstance(result, PartialSum):
                    seen.update(result.client_ids)
                elif isinstance(result, ClientUpdate):
                    seen[result.client_id] += 1
                yield result
        finally:
            self.calls.append(seen)
            self.released.update(seen)

    def evaluate_clients(self, client_ids, params, split="test"):
        out = self.inner.evaluate_clients(client_ids, params, split)
        self.released.update(e.client_id for e in out if isinstance(e, ClientEval))
        return out


def assert_charged(counter: ReleaseCounter, ledger) -> None:
    """The ledger charged at least every release the counter saw."""
    assert counter.released, "nothing was released: the check would be vacuous"
    ledger = getattr(ledger, "ledger", ledger)  # a journaled ledger's accountant
    if isinstance(ledger, DPFedAvgAccountant):
        # One event per sampled attempt covers each of its clients once.
        assert all(max(c.values(), default=0) <= 1 for c in counter.calls)
        assert ledger.rounds >= sum(1 for c in counter.calls if c)
        assert max(counter.released.values()) <= ledger.rounds
        return
    for cid, n in counter.released.items():
        assert ledger.participations.get(cid, 0) >= n, (cid, n, ledger.participations)


def spy_runs(monkeypatch, wrap=ReleaseCounter):
    """Wrap every executor ``fedray.run`` builds in a :class:`ReleaseCounter`, and keep
    the privacy ledger each synchronous run is given.

    ``wrap`` makes the counter of each executor (a :class:`ReleaseCounter` subclass).
    Returns ``{"counters": [...], "ledgers": [...]}``, filled as runs start.
    """
    from fedray import api
    from fedray.config import build

    seen = {"counters": [], "ledgers": []}
    real_make, real_rounds = build.make_executor, api.run_rounds

    def make(cfg, strategy, source=None):
        executor, started = real_make(cfg, strategy, source)
        seen["counters"].append(wrap(executor))
        return seen["counters"][-1], started

    def rounds(**kw):
        seen["ledgers"].append(kw["privacy"])
        return real_rounds(**kw)

    monkeypatch.setattr(build, "make_executor", make)
    monkeypatch.setattr(api, "run_rounds", rounds)
    return seen
