"""Fractional GPUs on a simulated cluster: a private Ray instance with 2 fake GPUs."""

import collections

import pytest

from fedray import api
from tests.conftest import ROOT

pytestmark = [pytest.mark.ray, pytest.mark.slow]

COMMON = ["rounds=2", "runtime.progress=false", "checkpoint.every=0", "runtime.num_cpus=2",
          "runtime.num_gpus=2", "runtime.gpus_per_host=0.5"]  # fmt: skip


def test_hosts_share_the_gpus_ray_assigns(tmp_path, numpy_ray_hosts):
    one = [*COMMON, "data.num_clients=4", "runtime.clients_per_actor=1"]
    hist = api.run(ROOT / "experiments" / "linreg.yaml", out=tmp_path / "one", overrides=one)
    hosts = hist.summary["hosts"]
    assert len(hosts) == 4 and all(len(h["gpu_ids"]) == 1 for h in hosts)
    per_gpu = collections.Counter(h["gpu_ids"][0] for h in hosts)
    assert sorted(per_gpu.values()) == [2, 2]  # two hosts of 0.5 on each of the 2 GPUs
    # auto packs by the GPU shares, not the CPUs: 6 clients on 4 slots -> 3 hosts of 2.
    hist = api.run(ROOT / "experiments" / "linreg.yaml", out=tmp_path / "auto",
                   overrides=[*COMMON, "data.num_clients=6"])  # fmt: skip
    assert [len(h["clients"]) for h in hist.summary["hosts"]] == [2, 2, 2]
    assert hist.final["clients/ok"] == 6
