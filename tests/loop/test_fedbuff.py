"""FedBuff: staleness weighting and the asynchronous loop."""

import numpy as np
import pandas as pd
import pytest

from fedray.aggregators import Mean, StalenessWeighted, staleness_weight
from fedray.callbacks import Callback, History
from fedray.loop import run_rounds
from fedray.records import ClientUpdate
from fedray.strategy import fedbuff


def test_staleness_weights_scale_each_delta_before_the_mean():
    ups = [
        ClientUpdate(0, [np.array([4.0])], 1, protocol={"staleness": 0.0}),
        ClientUpdate(1, [np.array([4.0])], 1, protocol={"staleness": 3.0}),
    ]
    delta, _, meas = StalenessWeighted(Mean("uniform")).aggregate(ups, {}, np.random.default_rng(0))
    np.testing.assert_allclose(delta[0], [(4.0 * 1 + 4.0 * 0.5) / 2])
    assert meas["staleness_mean"] == 1.5 and meas["staleness_max"] == 3.0
    with pytest.raises(ValueError, match="got -1"):
        staleness_weight(-1)


class ScriptedExecutor:
    """Clients finish in a scripted order; each update pulls w towards 1 (delta = 1 - w)."""

    def __init__(self, n, finish_order):
        self.n, self.order, self.running, self.submitted = n, list(finish_order), {}, []
        self.peak = 0

    @property
    def num_clients(self):
        return self.n

    def initial_params(self):
        return [np.zeros(1)]

    def broadcast(self, params, downs=None):
        return [p.copy() for p in params]

    def submit(self, cid, params, info):
        ticket = len(self.submitted)
        self.submitted.append((cid, float(params[0][0]), info.server_round))
        self.running[ticket] = (cid, params)
        self.peak = max(self.peak, len(self.running))
        return ticket

    def wait(self, tickets):
        # The scripted client finishes first if it is running, else the oldest ticket.
        want = self.order.pop(0) if self.order else None
        pick = next((t for t in tickets if self.running[t][0] == want), min(tickets))
        cid, params = self.running.pop(pick)
        return [(pick, ClientUpdate(cid, [1.0 - params[0]], 1, {"loss": 0.0}))]

    def evaluate(self, params):
        return {"w": float(params[0][0])}

    def save_client_state(self, server_round):
        return 0

    def prune_client_state(self, server_round):
        pass


def test_async_loop_tracks_staleness_and_steps_every_buffer():
    ex = ScriptedExecutor(4, finish_order=[0, 1, 2, 3, 0, 1])
    rec = History()
    params = run_rounds(
        strategy=fedbuff(concurrency=2, buffer_size=2),
        executor=ex,
        rounds=2,
        seed=0,
        callback=Callback(),
        history=rec,
    )
    # Step 1 aggregates two fresh updates (staleness 0) from w = 0: w = 1.
    assert rec.rows[0]["agg/staleness_max"] == 0.0
    assert rec.rows[0]["eval/w"] == pytest.approx(1.0)
    # Step 2 mixes an update started before step 1 (staleness 1, delta 1 weighted by
    # 1/sqrt 2) and one started after it (delta 0): w = 1 + (0.7071 + 0) / 2.
    assert rec.rows[1]["agg/staleness_max"] == 1.0
    assert params[0][0] == pytest.approx(1.0 + (1.0 / np.sqrt(2)) / 2)
    assert len({s[2] for s in ex.submitted}) == len(ex.submitted)  # fresh seed per dispatch
    assert ex.peak == 2  # never more than `concurrency` clients in flight


def test_buffered_steps_refuse_a_privacy_ledger_rather_than_release_uncharged():
    from fedray.privacy import DPFedAvgAccountant

    ex = ScriptedExecutor(4, finish_order=[0, 1])
    with pytest.raises(ValueError, match="cannot be charged to a privacy ledger"):
        ledger = DPFedAvgAccountant(1.0, 0.5, 1e-5)
        run_rounds(
            strategy=fedbuff(concurrency=2, buffer_size=2),
            executor=ex,
            rounds=1,
            seed=0,
            callback=Callback(),
            privacy=ledger,
        )
    assert ex.submitted == []  # refused before any client started


def test_buffered_steps_checkpoint_and_resume_bit_for_bit():
    from fedray.loop import Checkpointer

    def run(rounds, resume=None, states=None):
        ex = ScriptedExecutor(4, finish_order=[])  # first in, first out: as in-process
        save = Checkpointer(states.append) if states is not None else None
        params = run_rounds(
            strategy=fedbuff(concurrency=3, buffer_size=2),
            executor=ex,
            rounds=rounds,
            seed=0,
            callback=Callback(),
            resume=resume,
            checkpoint=save,
        )
        return params, ex

    states = []
    full, first = run(5, states=states)
    resumed, ex = run(5, resume=states[1])
    np.testing.assert_array_equal(full[0], resumed[0])
    assert first.submitted[-len(ex.submitted) :] == ex.submitted  # the same dispatches
    assert states[1].loop_state["scheduler"]["in_flight"]  # clients were in flight at the cut
    assert ex.submitted[0][2] == states[1].loop_state["scheduler"]["in_flight"][0][2]


@pytest.mark.keras
def test_fedbuff_runs_end_to_end_in_process(tmp_path, linreg_config):
    pytest.importorskip("tensorflow")
    from fedray import api

    hist = api.run(
        linreg_config,
        out=tmp_path,
        overrides=[
            "strategy.name=fedbuff",
            "strategy.concurrency=3",
            "strategy.buffer_size=2",
            "data.num_clients=4",
            "rounds=5",
            "runtime.executor=local",
            "runtime.progress=false",
        ],
    )
    assert list(hist.metrics["round"]) == [1, 2, 3, 4, 5]
    assert (hist.metrics["clients/ok"] == 2).all()
    assert hist.metrics["eval/loss"].iloc[-1] < hist.metrics["eval/loss"].iloc[0]


@pytest.mark.keras
def test_fedbuff_resumes_from_its_last_server_step(tmp_path, linreg_config):
    pytest.importorskip("tensorflow")
    from fedray import api
    from fedray.loop import checkpoint

    common = [
        "strategy.name=fedbuff",
        "strategy.concurrency=3",
        "strategy.buffer_size=2",
        "data.num_clients=4",
        "runtime.executor=local",
        "runtime.progress=false",
    ]
    first = api.run(linreg_config, out=tmp_path, overrides=[*common, "rounds=3"])
    saved = checkpoint.load(
        tmp_path, config_fingerprint=checkpoint.fingerprint(first.summary["config"])
    )
    assert saved.server_round == 3 and saved.loop_state["scheduler"]["dispatched"] >= 6
    for a, b in zip(saved.params, first.params):
        np.testing.assert_array_equal(a, b)
    more = api.run(linreg_config, out=tmp_path, overrides=[*common, "rounds=6"], resume=True)
    assert list(more.metrics["round"]) == [1, 2, 3, 4, 5, 6]
    assert more.rows[:3] == first.rows  # the history continues in the same files
    assert list(pd.read_csv(tmp_path / "metrics.csv")["round"]) == [1, 2, 3, 4, 5, 6]
    assert more.metrics["eval/loss"].iloc[-1] < first.metrics["eval/loss"].iloc[-1]
