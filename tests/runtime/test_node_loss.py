"""Node loss on a simulated multi-node cluster: a worker node disappears mid-run.

The hosts are packed (two clients each), so a lost node takes a host with several
clients; the driver re-runs them on the host Ray restarts on the head. The hosts train
with numpy (the test is about the runtime), so they start without TensorFlow.
"""

import logging

import pytest

from fedray import api
from fedray.callbacks import Callback
from tests.conftest import ROOT

pytestmark = [pytest.mark.ray, pytest.mark.slow, pytest.mark.chaos]
ray = pytest.importorskip("ray")


def test_removing_a_worker_node_mid_run_reschedules_its_clients_and_completes(
    tmp_path, caplog, numpy_ray_hosts
):
    from ray.cluster_utils import Cluster

    caplog.set_level(logging.DEBUG, logger="fedray.runtime.supervisor")

    # The head has room for every host, so hosts lost with the worker restart there.
    cluster = Cluster(
        initialize_head=True,
        head_node_args={
            "num_cpus": 4,
            "object_store_memory": 100 << 20,
            "include_dashboard": False,
        },
    )
    worker = cluster.add_node(num_cpus=4, resources={"doomed": 1}, object_store_memory=100 << 20)
    ray.init(address=cluster.address, logging_level="ERROR", log_to_driver=False)
    cluster.wait_for_nodes()
    worker_id = next(n["NodeID"] for n in ray.nodes() if "doomed" in n["Resources"])

    class RemoveWorkerAfterRound2(Callback):
        def on_round_end(self, server_round, logs):
            if server_round == 2:
                cluster.remove_node(worker)

    try:
        hist = api.run(
            ROOT / "experiments" / "linreg.yaml",
            out=tmp_path,
            overrides=[
                "rounds=6",
                "data.num_clients=4",
                "runtime.clients_per_actor=2",
                "runtime.scheduling=spread",
                "runtime.round_timeout_s=30",
                "runtime.progress=false",
            ],
            callbacks=[RemoveWorkerAfterRound2()],
        )
        alive = {n["NodeID"] for n in ray.nodes() if n["Alive"]}
    finally:
        ray.shutdown()
        cluster.shutdown()
    on_worker = [h["clients"] for h in hist.summary["hosts"] if h["node_id"] == worker_id]
    assert on_worker, "SPREAD should have put some hosts on the worker node"
    assert [r["round"] for r in hist.rows] == [1, 2, 3, 4, 5, 6]
    assert [r["clients/ok"] for r in hist.rows[:2]] == [4, 4]
    assert worker_id not in alive  # the node really is gone
    # Its hosts restarted on the head (data regenerated there from the seed) and are back.
    assert caplog.text.count("is back") >= len(on_worker), caplog.text
    for r in hist.rows:  # any client that missed a round is counted as failed, not hidden
        assert r["clients/ok"] + r["clients/failed"] == 4
    # The round after the loss re-ran the lost host's clients, or counted them as failed.
    assert any(r.get("hosts/restarted") or r["clients/failed"] for r in hist.rows[2:])
    assert hist.rows[-1]["clients/ok"] == 4
    assert all(r["round/committed"] == 1 for r in hist.rows)
