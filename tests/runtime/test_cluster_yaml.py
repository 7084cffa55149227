"""cluster.yaml and the GCP variant pass Ray's own validation: the first steps of `ray up`.

`prepare_config` merges the provider's defaults; `validate_config` runs the JSON schema
and Ray's semantic checks. Neither calls the cloud. The negative cases prove the check
would catch a typo, a missing node_config or a bad head_node_type.
"""

import copy

import pytest
import yaml

from tests.conftest import ROOT

util = pytest.importorskip("ray.autoscaler._private.util")

CONFIGS = [ROOT / "cluster.yaml", ROOT / "experiments" / "cluster-gcp.yaml"]


def _validate(cfg):
    prepared = util.prepare_config(copy.deepcopy(cfg))
    util.validate_config(prepared)
    return prepared


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_cluster_config_is_valid(path):
    cfg = yaml.safe_load(path.read_text())
    prepared = _validate(cfg)
    assert prepared["head_node_type"] in prepared["available_node_types"]
    setup = " ".join(cfg["setup_commands"])
    assert "ray[default]==" in setup and "tensorflow-cpu==" in setup and "fedray" in setup


def test_every_key_is_commented():
    for path in CONFIGS:
        lines = path.read_text().splitlines()
        for i, line in enumerate(lines):
            stripped = line.strip()
            is_top_key = line and not line[0].isspace() and not line.startswith("#") and ":" in line
            if is_top_key:
                above = lines[i - 1].strip() if i else ""
                assert above.startswith("#") or "#" in stripped, f"{path.name}: {stripped}"


@pytest.mark.parametrize(
    "mutate,error",
    [
        (lambda c: c.update(max_worker=c.pop("max_workers")), "max_worker"),
        (lambda c: c["available_node_types"]["cpu_worker"].pop("node_config"), "node_config"),
        (lambda c: c.update(head_node_type="nope"), "head_node_type"),
        (lambda c: c.pop("provider"), "provider"),
    ],
    ids=["typo", "no-node-config", "bad-head-type", "no-provider"],
)
def test_validation_catches_mistakes(mutate, error):
    cfg = yaml.safe_load((ROOT / "cluster.yaml").read_text())
    mutate(cfg)
    with pytest.raises(Exception, match=error):
        _validate(cfg)


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_nodes_start_with_token_auth_and_the_token_is_shipped_but_never_committed(path):
    cfg = yaml.safe_load(path.read_text())
    starts = [
        c
        for c in cfg["head_start_ray_commands"] + cfg["worker_start_ray_commands"]
        if "ray start" in c
    ]
    assert starts and all(c.startswith("RAY_AUTH_MODE=token ray start") for c in starts)
    assert "--dashboard-host=127.0.0.1" in cfg["head_start_ray_commands"][-1]
    assert cfg["file_mounts"]["~/.ray/auth_token"] == "./.ray-token"  # where ray start looks
    assert ".ray-token" in cfg["rsync_exclude"]  # not copied a second time with the checkout
    assert ".ray-token" in (ROOT / ".gitignore").read_text().splitlines()
    assert "disabled" not in path.read_text()


def test_cluster_token_is_new_private_and_never_overwritten_by_accident(tmp_path):
    import stat

    from fedray.cli import main

    first, second = tmp_path / "a", tmp_path / "b"
    assert main(["cluster-token", "--out", str(first)]) == 0
    assert main(["cluster-token", "--out", str(second)]) == 0
    token = first.read_text().strip()
    assert len(token) == 64 and int(token, 16) >= 0 and token != second.read_text().strip()
    assert stat.S_IMODE(first.stat().st_mode) == 0o600
    assert main(["cluster-token", "--out", str(first)]) == 2  # a running cluster may use it
    assert first.read_text().strip() == token
    assert main(["cluster-token", "--out", str(first), "--force"]) == 0
    assert first.read_text().strip() != token
