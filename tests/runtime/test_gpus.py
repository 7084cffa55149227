"""Fractional GPUs on a simulated cluster: a private Ray instance with 2 fake GPUs."""

import collections

import pytest

from fedray import api
from tests.conftest import ROOT

pytestmark = [pytest.mark.ray, pytest.mark.slow]

COMMON = [
    "rounds=2",
    "runtime.progress=false",
    "checkpoint.every=0",
    "runtime.num_cpus=2",
    "runtime.num_gpus=2",
    "runtime.gpus_per_host=0.5",
]


def test_hosts_share_the_gpus_ray_assigns(tmp_path, numpy_ray_hosts):
    one = [*COMMON, "data.num_clients=4", "runtime.clients_per_actor=1"]
    hist = api.run(ROOT / "experiments" / "linreg.yaml", out=tmp_path / "one", overrides=one)
    hosts = hist.summary["hosts"]
    assert len(hosts) == 4 and all(len(h["gpu_ids"]) == 1 for h in hosts)
    per_gpu = collections.Counter(h["gpu_ids"][0] for h in hosts)
    assert sorted(per_gpu.values()) == [2, 2]  # two hosts of 0.5 on each of the 2 GPUs
    # auto packs by the GPU shares, not the CPUs: 6 clients on 4 slots -> 3 hosts of 2.
    hist = api.run(
        ROOT / "experiments" / "linreg.yaml",
        out=tmp_path / "auto",
        overrides=[*COMMON, "data.num_clients=6"],
    )
    assert [len(h["clients"]) for h in hist.summary["hosts"]] == [2, 2, 2]
    assert hist.final["clients/ok"] == 6


def test_auto_measures_a_probe_host_and_the_share_reaches_ray(
    tmp_path, numpy_ray_hosts, monkeypatch
):
    # On this machine the probe host sees no GPU, so auto falls back to one host per
    # GPU: 2 hosts, one on each fake GPU.
    over = [*COMMON, "runtime.gpus_per_host=auto", "data.num_clients=4"]
    hist = api.run(ROOT / "experiments" / "linreg.yaml", out=tmp_path / "none", overrides=over)
    hosts = hist.summary["hosts"]
    assert sorted(h["gpu_ids"][0] for h in hosts) == ["0", "1"]
    assert hist.final["clients/ok"] == 4
    # A measured peak decides the share (here: as if the probe had measured 3000 MB on
    # a 16 GB GPU, two hosts per GPU): 4 hosts, two on each GPU.
    import fedray.runtime.ray_host as ray_host

    seen = []
    real = ray_host.share_from
    monkeypatch.setattr(
        ray_host,
        "share_from",
        lambda facts: seen.append(facts) or real({"peak_mb": 3000.0, "total_mb": 16384.0}),
    )
    hist = api.run(ROOT / "experiments" / "linreg.yaml", out=tmp_path / "two", overrides=over)
    assert seen == [{"peak_mb": None, "total_mb": None}]  # what the probe really reported
    per_gpu = collections.Counter(h["gpu_ids"][0] for h in hist.summary["hosts"])
    assert sorted(per_gpu.values()) == [2, 2]
    assert hist.final["clients/ok"] == 4


def test_a_probe_hosts_start_up_error_is_its_own_one_line(tmp_path):
    import ray

    from fedray import config
    from fedray.aggregators import Mean
    from fedray.errors import DataError
    from fedray.runtime.ray_executor import RayExecutor

    cfg = config.load(
        {
            "data": {"dataset": "csv", "path": str(tmp_path / "gone.csv")},
            "runtime": {"gpus_per_host": "auto"},
        }
    )
    ray.init(
        address="local",
        num_cpus=2,
        num_gpus=2,
        include_dashboard=False,
        log_to_driver=False,
        logging_level="ERROR",
    )
    try:  # the probe host is the first to read the data: its error, not Ray's wrapper
        with pytest.raises(DataError, match="data.path: file not found: '.*gone.csv'") as err:
            RayExecutor(cfg, Mean())
        assert type(err.value) is DataError and "\n" not in str(err.value)  # not Ray's
    finally:
        ray.shutdown()
