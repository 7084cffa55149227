"""End to end on a private local Ray instance: actors, broadcast, failures."""

import numpy as np
import pytest

from fedray import api, config
from fedray.aggregators import Mean
from fedray.errors import DataError
from fedray.records import ClientFailure, ClientUpdate, RoundInfo

ray = pytest.importorskip("ray")
pytestmark = pytest.mark.ray


def test_linreg_on_ray_matches_in_process_run(ray_instance, tmp_path, linreg_config):
    hist = api.run(linreg_config, out=tmp_path / "ray", overrides=["runtime.progress=false"])
    (y0,), (y10,) = hist.summary["predictions"]["outputs"]
    assert abs(y0 - 1) < 1.5 and abs(y10 - 31) < 1.5
    assert (tmp_path / "ray" / "model.keras").stat().st_size > 0
    assert set(hist.metrics["clients/ok"]) == {2}
    local = api.run(
        linreg_config,
        out=tmp_path / "local",
        overrides=["runtime.progress=false", "runtime.executor=local"],
    )
    for a, b in zip(hist.params, local.params):
        np.testing.assert_array_equal(a, b)  # same seed, same model, Ray or not


def test_hosts_are_actors_with_capped_threads_and_a_dead_host_fails_only_its_clients(
    ray_instance, linreg_config
):
    from fedray.runtime.ray_executor import RayExecutor

    cfg = config.load(linreg_config)
    ex = RayExecutor(cfg, Mean())
    try:
        pids = {info["pid"] for info in ex.host_info}
        assert len(pids) == 2  # one process per client
        assert all(info["tf_intra_op_threads"] == 1 for info in ex.host_info)
        params = ex.initial_params()
        ref = ex.broadcast(params)
        ray.kill(ex.hosts[1])
        out = ex.fit([0, 1], ref, RoundInfo(server_round=1, seed=0))
        by_id = {r.client_id: r for r in out}
        assert isinstance(by_id[0], ClientUpdate)
        assert isinstance(by_id[1], ClientFailure) and by_id[1].cause == "host"  # killed for good
        assert by_id[1].reason == "host 1 died during fit (ActorDiedError)" and by_id[1].host == 1
    finally:
        ex.close()


def test_balanced_hosts_share_every_call_and_a_dead_host_costs_no_client(
    ray_instance, linreg_config
):
    from fedray.records import HostRecovery
    from fedray.runtime.ray_executor import RayExecutor

    cfg = config.load(
        linreg_config,
        ["data.num_clients=6", "runtime.clients_per_actor=3", "runtime.balance=true"],
    )
    ex = RayExecutor(cfg, Mean())
    try:
        assert [info["clients"] for info in ex.host_info] == [list(range(6))] * 2
        # Each holds every client's rows once, in its trainer's tensor, not also in numpy.
        rows = [
            ray.get(
                h.__ray_call__.remote(
                    lambda host: (len(host.shards), int(host.trainer._x_all.shape[0]))
                )
            )
            for h in ex.hosts
        ]
        assert rows == [(0, 100), (0, 100)]
        params, extras = ex.broadcast(ex.initial_params())
        info = RoundInfo(server_round=1, seed=0)
        calls, skipped = ex._calls([5, 4, 3, 2], "fit", params, info, extras)
        assert not skipped and sorted(calls.values()) == [(0, [5, 3]), (1, [4, 2])]
        ray.get(list(calls))
        ids = [0, 1, 2, 3]  # at home, 0-2 would train on host 0 and 3 alone on host 1
        before = {r.client_id: r for r in ex.fit(ids, (params, extras), info)}
        ray.kill(ex.hosts[1])  # for good: it never restarts
        events = list(ex.fit(ids, (params, extras), info))
        lost = [e for e in events if isinstance(e, HostRecovery)]
        assert [(e.host, e.client_ids) for e in lost] == [(1, (1, 3))]
        after = {e.client_id: e for e in events if isinstance(e, ClientUpdate)}
        assert sorted(after) == ids  # re-run at once on host 0, not failed
        for cid in ids:  # the same training, whichever host ran it
            for a, b in zip(before[cid].delta, after[cid].delta, strict=True):
                np.testing.assert_array_equal(a, b)
        # Next round: host 1 is dead for good, so every client is dealt to host 0. At
        # home, host 1's clients would fail with "dead for good" every round from now on.
        again = list(ex.fit(ids, (params, extras), RoundInfo(server_round=2, seed=0)))
        assert sorted(e.client_id for e in again if isinstance(e, ClientUpdate)) == ids
        assert ex.supervisor.unavailable(1) is not None
    finally:
        ex.close()


def test_start_up_data_error_reaches_the_driver_unwrapped(ray_instance, tmp_path):
    cfg = config.load({"data": {"dataset": "csv", "path": str(tmp_path / "gone.csv")}})
    from fedray.runtime.ray_executor import RayExecutor

    with pytest.raises(DataError, match="data.path: file not found: '.*gone.csv'"):
        RayExecutor(cfg, Mean())


def test_fedbuff_on_ray_with_slow_clients(ray_instance, tmp_path, linreg_config):
    hist = api.run(
        linreg_config,
        out=tmp_path,
        overrides=[
            "strategy.name=fedbuff",
            "strategy.concurrency=2",
            "strategy.buffer_size=2",
            "rounds=4",
            "faults.delay_s=0.2",
            "runtime.progress=false",
        ],
    )
    assert list(hist.metrics["round"]) == [1, 2, 3, 4]
    assert (hist.metrics["clients/ok"] == 2).all()
    assert "agg/staleness_mean" in hist.metrics.columns
    # It learned y = 3x + 1 (noise variance 1: the optimum MSE is about 1). The loss need
    # not fall at every step: asynchronous steps depend on arrival timing.
    assert hist.metrics["eval/loss"].iloc[-1] < 2.0


def test_fit_on_ray_equals_fit_in_process_and_a_restarted_host_gets_its_shards_back(
    ray_instance, tmp_path
):
    import fedray
    from fedray.config import build
    from fedray.data import arrays as memory
    from fedray.runtime.ray_executor import RayExecutor
    from tests.e2e.test_api import create_model, textbook

    x, y = textbook()
    clients = [(x[:30], y[:30]), (x[30:70], y[30:70]), (x[70:], y[70:])]
    kw = {"rounds": 2, "strategy": fedray.strategy.fedavg(weighting="uniform")}
    on_ray = fedray.fit(
        create_model,
        clients,
        out=tmp_path / "r",
        runtime={"progress": False, "clients_per_actor": 2},
        **kw,
    )
    local = fedray.fit(
        create_model,
        clients,
        out=tmp_path / "l",
        runtime={"executor": "local", "progress": False},
        **kw,
    )
    for a, b in zip(on_ray.params, local.params, strict=True):
        np.testing.assert_array_equal(a, b)
    source = memory.from_clients(clients, model_fn=create_model)
    cfg = config.load(
        {"data": {"dataset": "memory", "num_clients": 3}, "runtime": {"clients_per_actor": 2}}
    )
    executor = RayExecutor(cfg, build.build_strategy(cfg).aggregator, source=source)
    try:
        ray.kill(executor.hosts[1], no_restart=False)  # Ray restarts it with the same args
        import time

        params = executor.initial_params()
        deadline = time.monotonic() + 120
        while True:  # the restarted host evaluates client 2 on its training shard
            try:
                call = executor.hosts[1].evaluate_clients.remote([2], params, "train")
                back = ray.get(call, timeout=60)
                break
            except ray.exceptions.ActorUnavailableError:
                assert time.monotonic() < deadline, "the host never came back"
                time.sleep(0.5)
        assert [(e.client_id, e.num_examples) for e in back] == [(2, 30)]  # its shard again
    finally:
        executor.close()


@pytest.mark.parametrize(
    "cell", [("secagg + central", "packed"), ("fedbuff", "fed_eval")], ids=" x ".join
)
def test_a_sample_of_interaction_cells_on_ray(ray_instance, tmp_path, monkeypatch, cell):
    # The interaction matrix runs in-process with a numpy trainer; a sample runs here,
    # on Ray actors with the Keras trainer, with the same invariants.
    from tests.privacy.harness import assert_charged, spy_runs
    from tests.test_interactions import decide, overrides

    assert decide(cell) is None
    seen = spy_runs(monkeypatch)
    hist = api.run({}, out=tmp_path, overrides=[*overrides(cell), "runtime.executor=ray"])
    assert len(hist.rows) == 2 and all(np.all(np.isfinite(p)) for p in hist.params)
    if "fed_eval" in cell:
        assert all(r["fed_eval/clients"] > 0 for r in hist.rows)
    else:
        assert any(r.get("agg/secagg/clients", 0) >= 3 for r in hist.rows)
        assert_charged(seen["counters"][0], seen["ledgers"][0])


def test_hosts_share_the_server_evaluation_and_a_dead_one_changes_no_digit(
    ray_instance, linreg_config
):
    from fedray.runtime.ray_executor import RayExecutor

    # 12,000 rows: a test set of several evaluation batches, over 2 hosts.
    cfg = config.load(linreg_config, ["data.num_samples=12000", "runtime.clients_per_actor=1"])
    ex = RayExecutor(cfg, Mean())
    try:
        assert ex.plan.evaluators == 2 and [s.with_test_set for s in ex.plan.specs] == [True] * 2
        assert ex.host_info[0]["server_parts"] == 12  # batches of 1,024 to share
        handle = ex.broadcast(ex.initial_params())
        alone = ray.get(ex.hosts[0].evaluate.remote(handle[0]))  # host 0, all of it
        parts = [ray.get(h.evaluate_part.remote(handle[0], p, 2)) for p, h in enumerate(ex.hosts)]
        (a, b) = [(p.first_batch, len(p.totals)) for p in parts]
        assert a[0] == 0 and a[1] >= 1 and b == (a[1], b[1]) and b[1] >= 1  # halves
        assert ex.evaluate(handle) == alone  # shared, bit for bit
        ray.kill(ex.hosts[1])  # for good: its part goes to host 0
        assert ex.evaluate(handle) == alone
        assert ex.supervisor.unavailable(1) is not None
    finally:
        ex.close()
