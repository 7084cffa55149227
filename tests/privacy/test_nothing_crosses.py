"""Invariant: nothing derived from a client's data crosses to the driver un-noised.

Every run mode (packed hosts that pre-aggregate, one update per client, top-k with its
residual, SCAFFOLD under DP-SGD) is walked with every DP mode, on data where one client
holds a row with an infinite feature, one client's code raises with its data in the
message, and some devices crash. Whatever reaches the driver (the hosts' start-up
facts, every result of a round, the evaluations) and whatever the driver writes
(``checkpoint.npz``, ``metrics.csv``, ``failures.csv``) may hold only noised values and
what the trust table (``docs/privacy.md``) lists as public:

* no shard size n_k, except under DP-SGD (where it is public by design);
* no example count, training metric or per-client state (top-k's residual, a control
  variate) in an update, and no update that is not finite;
* no failure whose cause is the client's data (``nan``, ``invalid``, code that raises
  on it), and no reason a client's code raised (a code bug that raises on any data
  still fails its client, with the reason in the host's log);
* in the checkpoint, no client's arrays.
"""

import csv
import itertools

import numpy as np
import pandas as pd
import pytest

from fedray import api
from fedray.client.host import WITHHELD
from fedray.config import build
from fedray.loop import checkpoint
from fedray.records import ClientEval, ClientFailure, ClientUpdate, PartialSum

pytestmark = [pytest.mark.slow, pytest.mark.filterwarnings("ignore::RuntimeWarning")]

DP = {
    "central": ["privacy.dp.mode=central", "strategy.fraction_fit=1.0"],
    "local": ["privacy.dp.mode=local"],
    "dpsgd": ["privacy.dp.mode=dpsgd"],
    "distributed": [
        "privacy.dp.mode=distributed",
        "privacy.secure_aggregation.enabled=true",
        "privacy.dp.max_dropout=0.5",
        "privacy.secure_aggregation.min_clients=2",
    ],
}
RUNS = {
    "packed, pre-aggregated": ["runtime.clients_per_actor=3"],
    "one update per client": ["runtime.pre_aggregate=false", "runtime.clients_per_actor=2"],
    "top-k": ["compression.topk=0.5", "runtime.pre_aggregate=false"],
    "scaffold": ["strategy.name=scaffold"],
}
SECRET = 3.14159  # the value the failing client's code quotes in its error


class Spy:
    """Keeps everything the driver receives from the hosts."""

    def __init__(self, inner):
        self.inner, self.received = inner, []

    def __getattr__(self, name):
        return getattr(self.inner, name)

    def fit(self, ids, params, info):
        for result in self.inner.fit(ids, params, info):
            self.received.append(result)
            yield result

    def evaluate_clients(self, ids, params, split="test"):
        out = self.inner.evaluate_clients(ids, params, split)
        self.received.extend(out)
        return out


@pytest.fixture
def spied(monkeypatch, tmp_path):
    import fedray.client.trainer as trainer_mod
    from tests.fakes import NumpyTrainer

    class Raising(NumpyTrainer):
        def _train_one(self, job, params):
            if job.cid == 4 and not job.null:  # its data makes it raise, quoting the data
                raise ValueError(f"label {SECRET} out of range")
            if job.cid == 5:  # a bug of the code, whatever the data
                raise ValueError(f"shape mismatch near {SECRET}")
            return super()._train_one(job, params)

    monkeypatch.setattr(trainer_mod, "KerasTrainer", Raising)
    spies = []
    real = build.make_executor

    def make(cfg, strategy, source=None):
        executor, started = real(cfg, strategy, source)
        spies.append(Spy(executor))
        return spies[-1], started

    monkeypatch.setattr(build, "make_executor", make)
    rng = np.random.default_rng(0)
    n = 8 * 20
    df = pd.DataFrame(
        {"x1": rng.normal(size=n), "x2": rng.normal(size=n), "label": rng.normal(size=n)}
    )
    df["client"] = np.repeat(np.arange(8), 20)
    df.loc[3, "x1"] = np.inf  # client 0 holds one bad row (a sensor glitch)
    df.to_csv(tmp_path / "bad.csv", index=False)
    return spies, tmp_path / "bad.csv"


CELLS = [
    (run, mode)
    for run, mode in itertools.product(RUNS, DP)
    if not (run == "scaffold" and mode != "dpsgd")  # client-level DP needs a mean
    and not (run == "top-k" and mode in ("local", "distributed"))  # refused: nothing saved
]


@pytest.mark.parametrize("run,mode", CELLS, ids=lambda v: str(v))
def test_nothing_a_client_owns_reaches_the_driver(tmp_path, spied, run, mode):
    spies, path = spied
    overrides = [
        *(f"data.path={path}", "data.dataset=csv", "data.partition=column"),
        *("data.column=client", "data.num_clients=8", "data.task=regression"),
        *("data.test_fraction=0.2", "rounds=3", "client.batch_size=8", "checkpoint.every=1"),
        *("runtime.executor=local", "runtime.progress=false", "faults.crash_rate=0.1"),
        *("privacy.dp.noise_multiplier=2.0", "privacy.dp.delta=1e-5"),
        *("strategy.on_too_few=skip", "strategy.min_fit_clients=1"),
        *DP[mode],
        *RUNS[run],
    ]
    out = tmp_path / "run"
    hist = api.run({}, out=out, overrides=overrides)
    spy = spies[-1]
    # The hosts' start-up facts: n_k only for DP-SGD's accountant.
    sizes = [info for info in spy.host_info if "examples" in info]
    assert bool(sizes) == (mode == "dpsgd")
    results = spy.received
    assert any(isinstance(r, (ClientUpdate, PartialSum)) for r in results)
    for r in results:
        assert not isinstance(r, ClientEval)
        if isinstance(r, ClientUpdate):
            assert r.metrics == {}
            # A feature reports under DP only what is computed from the private delta
            # (SCAFFOLD's delta_c under DP-SGD: post-processing); nothing else.
            assert all(rep is None for rep in r.reports) or (run, mode) == ("scaffold", "dpsgd")
            assert r.num_examples == 1 and all(np.isfinite(d).all() for d in r.delta)
        elif isinstance(r, PartialSum):
            assert r.metric_sums == {} and r.num_examples == len(r.client_ids)
        elif isinstance(r, ClientFailure):
            assert r.cause not in ("nan", "invalid"), r
            assert r.client_id != 4 or r.cause == "crash", r  # its data's failure: unseen
            if r.cause == "error":
                assert r.client_id == 5 and r.reason == WITHHELD, r
    errors = [r for r in results if isinstance(r, ClientFailure) and r.cause == "error"]
    assert errors, "the code bug of client 5 is still reported as a failure"
    # The driver's files: no client's arrays in the checkpoint ...
    fp = checkpoint.fingerprint(hist.summary["config"])
    state = checkpoint.load(out, config_fingerprint=fp)
    assert not any(isinstance(v, list) for v in state.client_state.values())
    # ... no un-noised statistic of the clients' data in metrics.csv ...
    with (out / "metrics.csv").open() as f:
        columns = next(csv.reader(f))
    leaks = [c for c in columns if c.startswith(("fit/", "failed/nan", "failed/invalid", "train/"))]
    assert leaks == [] and "agg/clipped_fraction" not in columns
    # ... no reason in failures.csv that quotes a client's data ...
    assert str(SECRET) not in (out / "failures.csv").read_text()
    # ... and no other file: the clients' own state is kept outside the run directory.
    driver = {"metrics.csv", "metrics.parquet", "summary.json", "model.keras", "failures.csv"}
    driver |= {"checkpoint.npz", "privacy-journal.jsonl", "tb"}
    assert {p.name for p in out.iterdir()} <= driver
