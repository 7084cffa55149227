"""A simulated multi-node cluster (ray.cluster_utils.Cluster): placement and spreading."""

import pytest

from fedray import api, config
from fedray.aggregators import Mean
from tests.conftest import ROOT

pytestmark = [pytest.mark.ray, pytest.mark.slow]
ray = pytest.importorskip("ray")


@pytest.fixture(scope="module")
def cluster():
    from ray.cluster_utils import Cluster

    c = Cluster(
        initialize_head=True,
        head_node_args={
            "num_cpus": 1,
            "resources": {"site_a": 1},
            "object_store_memory": 100 << 20,
            "include_dashboard": False,
        },
    )
    worker = c.add_node(num_cpus=1, resources={"site_b": 1}, object_store_memory=100 << 20)
    ray.init(address=c.address, logging_level="ERROR", log_to_driver=False)
    c.wait_for_nodes()
    nodes = {
        res: n["NodeID"]
        for n in ray.nodes()
        if n["Alive"]
        for res in ("site_a", "site_b")
        if res in n["Resources"]
    }
    yield {"cluster": c, "nodes": nodes, "worker": worker}
    ray.shutdown()
    c.shutdown()


def _cfg(*overrides):
    return config.load(ROOT / "experiments" / "linreg.yaml", ["runtime.progress=false", *overrides])


def test_data_placement_pins_each_clients_host_to_its_node(cluster):
    from fedray.runtime.ray_executor import RayExecutor

    cfg = _cfg("data.placement={0: site_b, 1: site_a}")
    ex = RayExecutor(cfg, Mean())
    try:
        placed = ex.placement()
    finally:
        ex.close()
    assert placed == {0: cluster["nodes"]["site_b"], 1: cluster["nodes"]["site_a"]}


def test_spread_scheduling_uses_both_nodes_and_a_run_completes(cluster, tmp_path):
    hist = api.run(
        ROOT / "experiments" / "linreg.yaml",
        out=tmp_path,
        overrides=["runtime.progress=false", "runtime.scheduling=spread", "rounds=3"],
    )
    nodes = {h["node_id"] for h in hist.summary["hosts"]}
    assert nodes == set(cluster["nodes"].values())
    assert hist.final["clients/ok"] == 2


def test_packed_clients_with_different_placements_are_refused(cluster):
    from fedray.errors import ConfigError
    from fedray.runtime.ray_executor import RayExecutor

    cfg = _cfg("data.placement={0: site_a, 1: site_b}", "runtime.clients_per_actor=2")
    with pytest.raises(ConfigError, match=r"clients \[0, 1\] share one actor"):
        RayExecutor(cfg, Mean())


def test_placement_names_only_existing_clients():
    from fedray.errors import ConfigError

    with pytest.raises(ConfigError, match=r"data.placement names clients \[5\]"):
        _cfg("data.placement={5: site_a}")
