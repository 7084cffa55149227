"""Every shipped experiment config runs (one short round, in-process)."""

import pytest

from fedray import api
from tests.conftest import ROOT

pytest.importorskip("tensorflow")

OFFLINE = sorted(
    p
    for p in (ROOT / "experiments").glob("*.yaml")
    if p.stem not in ("mnist", "cifar10", "cifar_pfl", "femnist", "shakespeare")
    and "cluster" not in p.stem
)


@pytest.mark.keras
@pytest.mark.parametrize("path", OFFLINE, ids=lambda p: p.stem)
def test_shipped_config_runs_one_round(path, tmp_path, monkeypatch):
    monkeypatch.chdir(ROOT)  # configs use repo-relative data paths
    hist = api.run(
        path,
        out=tmp_path,
        overrides=[
            "rounds=1",
            "runtime.executor=local",
            "runtime.progress=false",
            "runtime.clients_per_actor=1000",
        ],
    )
    assert hist.final["clients/ok"] >= 1 and hist.final["clients/failed"] == 0
    assert "eval/loss" in hist.final
