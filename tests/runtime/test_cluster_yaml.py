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
