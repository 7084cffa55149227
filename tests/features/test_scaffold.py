"""SCAFFOLD: its server half by hand, and it corrects drift where FedAvg drifts."""

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from fedray import api, config, data
from fedray.features import ClientReport, RoundFacts, Scaffold, Trained


def _toy(tmp_path):
    # Two sites with different local optima AND different curvature (x ranges), so the
    # average of local optima is not the global optimum: FedAvg's fixed point drifts.
    rng = np.random.default_rng(0)
    x0, x1 = rng.uniform(0, 1, 50), rng.uniform(2, 4, 50)
    path = tmp_path / "toy.csv"
    pd.DataFrame(
        {"x": np.r_[x0, x1], "site": [0] * 50 + [1] * 50, "label": np.r_[4 * x0, -2 * x1 + 3]}
    ).to_csv(path, index=False)
    return {
        "rounds": 60,
        "data": {
            "dataset": "csv",
            "path": str(path),
            "partition": "column",
            "column": "site",
            "num_clients": 2,
            "test_fraction": 0.0,
            "task": "regression",
        },
        "model": {"name": "linear"},
        "client": {
            "optimizer": "sgd",
            "learning_rate": 0.02,
            "local_epochs": 10,
            "batch_size": 64,
            "loss": "mse",
        },
        "evaluation": {"every": 0},
        "runtime": {"executor": "local", "progress": False, "clients_per_actor": 2},
    }


@pytest.mark.keras
def test_scaffold_converges_where_fedavg_drifts(tmp_path):
    pytest.importorskip("tensorflow")
    cfg = _toy(tmp_path)
    ds = data.load_dataset(config.load(cfg).data, 0)
    design = np.c_[ds.x_train[:, 0], np.ones(len(ds.x_train))]
    optimum = np.linalg.lstsq(design, ds.y_train[:, 0], rcond=None)[0]

    def final(name, per_actor=2):
        hist = api.run(
            cfg,
            out=tmp_path / f"{name}{per_actor}",
            overrides=[f"strategy.name={name}", f"runtime.clients_per_actor={per_actor}"],
        )
        return np.array([hist.params[0].ravel()[0], hist.params[1][0]]), hist.params

    fedavg, _ = final("fedavg")
    scaffold, packed = final("scaffold")
    assert np.linalg.norm(fedavg - optimum) > 0.2
    assert np.linalg.norm(scaffold - optimum) < 0.02
    # Client control variates live in the hosts: packed and dedicated hosts agree exactly.
    _, dedicated = final("scaffold", per_actor=1)
    for a, b in zip(packed, dedicated):
        np.testing.assert_array_equal(a, b)


def _facts(n):
    return RoundFacts(1, n, [np.zeros(2, np.float32)])


def test_scaffold_server_variate_after_two_rounds_by_hand():
    f = Scaffold()
    state = f.init([np.zeros(2, np.float32)])
    assert f.downlink(state)[0].tolist() == [0.0, 0.0]

    def rep(cid, dc):
        return ClientReport(cid, 1, [np.array(dc, np.float32)])

    delta = [np.ones(2)]
    out, state, meas = f.server_update(delta, [rep(0, [4, 0]), rep(1, [0, -4])], state, _facts(4))
    assert out is delta  # SCAFFOLD leaves the aggregated delta alone
    np.testing.assert_allclose(state["control"][0], [1.0, -1.0])  # 0 + 2/4 * (2, -2)
    _, state, meas = f.server_update(delta, [rep(2, [-8, 8])], state, _facts(4))
    np.testing.assert_allclose(state["control"][0], [-1.0, 1.0])  # + 1/4 * (-8, 8)
    np.testing.assert_allclose(f.downlink(state)[0], [-1.0, 1.0])
    assert meas["control_norm"] == pytest.approx(np.sqrt(2))


def test_scaffold_client_half_is_option_ii_by_hand():
    # c = (1, -1), c_i = (0.5, 0.5); K = 4 steps at lr 0.5 moved y by delta = (2, 0).
    f = Scaffold()
    c, ci = [np.array([1.0, -1.0], np.float32)], [np.array([0.5, 0.5], np.float32)]
    params = [np.zeros(2, np.float32)]
    np.testing.assert_allclose(f.offset(c, ci, params)[0], [0.5, -1.5])  # c - c_i
    trained = Trained(3, [np.array([2.0, 0.0], np.float32)], params, 4, 0.5, 10)
    delta, report, state = f.client_update(trained, c, ci)
    # c_i+ = c_i - c + (x - y) / (K lr) = (0.5, 0.5) - (1, -1) - (2, 0) / 2 = (-1.5, 1.5)
    np.testing.assert_allclose(state[0], [-1.5, 1.5])
    np.testing.assert_allclose(report[0], state[0] - ci[0])  # delta_c = c_i+ - c_i
    assert delta is trained.delta


@pytest.mark.keras
def test_scaffold_resume_restores_client_control_variates(tmp_path):
    pytest.importorskip("tensorflow")
    cfg = _toy(tmp_path)
    common = ["strategy.name=scaffold", "runtime.clients_per_actor=1"]
    full = api.run(cfg, out=tmp_path / "full", overrides=[*common, "rounds=8"])
    api.run(cfg, out=tmp_path / "cut", overrides=[*common, "rounds=4"])
    resumed = api.run(cfg, out=tmp_path / "cut", overrides=[*common, "rounds=8"], resume=True)
    for a, b in zip(full.params, resumed.params):
        np.testing.assert_array_equal(a, b)  # needs the clients' c_i, reloaded by the hosts
    from fedray.loop import checkpoint

    fp = checkpoint.fingerprint(config.load(cfg, [*common, "rounds=8"]).to_dict())
    state = checkpoint.load(tmp_path / "cut", config_fingerprint=fp)
    # The checkpoint records only that two clients have state; the c_i stayed with the
    # hosts, in their client-state folder (outside the run directory), the newest round's.
    assert state.client_state == {"round": 8, "clients": 2}
    assert not list((tmp_path / "cut").rglob("*.npz"))[1:]  # checkpoint.npz alone
    folder = resumed.summary["config"]["runtime"]["client_state_dir"]
    files = sorted(Path(folder).rglob("*.npz"))
    assert [f.parent.name for f in files] == ["round-000008", "round-000008"]
    with np.load(files[0]) as saved:
        assert np.abs(saved["0/0-Scaffold/0"]).sum() > 0  # client 0, SCAFFOLD's c_i, array 0


def test_the_control_variate_does_not_depend_on_arrival_order():
    # Ray delivers updates as hosts finish; the float32 mean of delta_c must not follow.
    from fedray.features.base import server_update

    rng = np.random.default_rng(4)
    f = Scaffold()
    state = f.init([np.zeros(50, np.float32)])
    scales = 10.0 ** rng.integers(-3, 4, size=40)  # mixed magnitudes: float sums round
    reports = [(i, 1, ([(rng.normal(size=50) * scales[i]).astype(np.float32)],)) for i in range(40)]
    facts = RoundFacts(1, 40, [np.zeros(50, np.float32)])
    delta = [np.zeros(50, np.float32)]
    want = server_update([f], delta, reports, [state], facts)[1][0]["control"][0]
    for seed in range(5):
        order = np.random.default_rng(seed).permutation(40)
        shuffled = [reports[i] for i in order]
        got = server_update([f], delta, shuffled, [state], facts)[1][0]["control"][0]
        np.testing.assert_array_equal(got, want)
