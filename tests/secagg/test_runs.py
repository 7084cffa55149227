"""Secure aggregation inside fedray runs: in-process, on Ray with dropouts, with DP."""

import numpy as np
import pytest

from fedray import api, config
from fedray.errors import ConfigError
from tests.conftest import ROOT

pytest.importorskip("tensorflow")

COMMON = [
    "rounds=5",
    "data.num_clients=6",
    "strategy.min_fit_clients=1",
    "strategy.weighting=uniform",
    "runtime.progress=false",
    "checkpoint.every=0",
]
SECURE = ["privacy.secure_aggregation.enabled=true", "privacy.secure_aggregation.clip=10"]
LINREG = ROOT / "experiments" / "linreg.yaml"


@pytest.mark.keras
def test_secure_and_plain_runs_differ_only_by_the_quantization_error(tmp_path):
    local = ["runtime.executor=local", "runtime.clients_per_actor=3"]
    plain = api.run(LINREG, out=tmp_path / "p", overrides=[*COMMON, *local])
    secure = api.run(LINREG, out=tmp_path / "s", overrides=[*COMMON, *local, *SECURE])
    step = secure.final["agg/secagg/quantization_step"]
    assert step == pytest.approx(20 / (2**22 - 1))  # the default 22 bits
    # Each round's mean is off by at most one step per coordinate (stochastic rounding,
    # n clients, divided by n); linreg's local SGD is contractive, so after R rounds
    # the weights differ by at most R steps.
    for a, b in zip(plain.params, secure.params):
        assert np.abs(a - b).max() <= 5 * step
        assert not np.array_equal(a, b)  # the secure run really went through the codec
    assert [r["clients/ok"] for r in secure.rows] == [6] * 5
    assert "fit/loss" not in secure.final  # clients reveal nothing but masked vectors


@pytest.mark.keras
def test_hosts_send_only_masked_integers():
    from fedray.aggregators import SecureAggregation
    from fedray.client.host import ClientHost
    from fedray.client.spec import HostSpec
    from fedray.records import RoundInfo

    cfg = config.load(LINREG, ["data.num_clients=2"])
    agg = SecureAggregation(clip=10.0)
    host = ClientHost(HostSpec.from_config(cfg, (0, 1), agg))
    info = RoundInfo(1, 0)
    setup = {0: ([1], 2, 17), 1: ([0], 2, 17)}
    keys = host.secure_step("advertise", [0, 1], setup, info)
    shares = host.secure_step("share", [0, 1], {0: {1: keys[1]}, 1: {0: keys[0]}}, info)
    host.secure_step("inbox", [0, 1], {0: {1: shares[1][0]}, 1: {0: shares[0][1]}}, info)
    out = host.fit([0, 1], host.initial_params(), info)
    for u in out:
        assert u.delta == [] and u.metrics == {} and u.masked.dtype == np.uint32
        assert u.masked.size == 2 and int(u.masked.max()) < 2**17


@pytest.mark.ray
@pytest.mark.slow
def test_secure_aggregation_on_ray_survives_client_crashes(tmp_path, numpy_ray_hosts):
    # The hosts train with numpy: the protocol runs in the hosts whatever the trainer.
    overrides = [
        *COMMON,
        *SECURE,
        "faults.crash_rate=0.25",
        "runtime.clients_per_actor=1",
        "runtime.max_restarts=-1",
        "rounds=3",
    ]
    hist = api.run(LINREG, out=tmp_path, overrides=overrides)
    from fedray.client.behaviours import simulated_fault

    cfg = config.load(LINREG, overrides)
    crashes = 0
    for row in hist.rows:
        last = int(row.get("round/attempts", 1)) - 1  # a retry draws fresh faults
        faults = sum(
            simulated_fault(cfg.faults, 0, row["round"], c, last) is not None for c in range(6)
        )
        crashes += faults
        # A client that crashes after the key exchange is a SecAgg dropout: its pairwise
        # masks are removed through the survivors' shares, and the sum is exact. (Too
        # few survivors abort the protocol, revealing nothing, and the round is retried.)
        assert row["clients/ok"] == 6 - faults and row["round/committed"] == 1
        assert row["agg/secagg/clients"] == 6 - faults
    assert crashes > 0
    assert hist.final["eval/loss"] < 4.0  # it learned through the masked sums (MSE; noise 1)


@pytest.mark.keras
def test_secure_aggregation_composes_with_central_dp(tmp_path):
    hist = api.run(
        LINREG,
        out=tmp_path,
        overrides=[
            *COMMON,
            "runtime.executor=local",
            "runtime.clients_per_actor=6",
            "strategy.fraction_fit=0.5",
            "privacy.secure_aggregation.enabled=true",
            "privacy.dp.noise_multiplier=0.5",
            "privacy.dp.delta=1e-5",
            "privacy.dp.clip=5.0",
            "privacy.dp.noise_seed=1",
        ],
    )
    assert hist.summary["privacy"]["epsilon"] > 0
    row = hist.rows[-1]
    assert row["agg/dp/noise_std"] == pytest.approx(0.5 * 5.0 / 3.0)  # zC/m on the sum
    assert row["agg/secagg/quantization_step"] == pytest.approx(10 / (2**22 - 1))


@pytest.mark.parametrize(
    "overrides,message",
    [
        (["strategy.name=krum", "strategy.min_fit_clients=3"], "strategy.name='krum'"),
        (["strategy.weighting=examples"], "strategy.weighting='examples'"),
        (["privacy.secure_aggregation.threshold=0.4"], "greater than 0.5"),
    ],
)
def test_bad_secure_aggregation_configs_are_clear_errors(overrides, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(")):
        config.load({"data": {"num_clients": 6}}, [*SECURE, *overrides])


@pytest.mark.keras
def test_dp_sgd_under_secure_aggregation_accounts_the_real_clients(tmp_path):
    hist = api.run(
        LINREG,
        out=tmp_path,
        overrides=[
            *COMMON,
            *SECURE,
            "rounds=2",
            "runtime.executor=local",
            "runtime.clients_per_actor=6",
            "privacy.dp.mode=dpsgd",
            "privacy.dp.noise_multiplier=1.0",
            "privacy.dp.delta=1e-5",
            "privacy.dp.noise_seed=0",
        ],
    )
    per_client = hist.summary["privacy"]["epsilon_per_client"]
    assert sorted(int(c) for c in per_client) == list(range(6))  # not the sum's pseudo-id
    assert hist.final["agg/secagg/clients"] == 6


@pytest.mark.ray
@pytest.mark.slow
@pytest.mark.parametrize(
    "extra",
    [
        [
            "privacy.secure_aggregation.enabled=true",
            "privacy.dp.mode=distributed",
            "privacy.dp.noise_multiplier=0.5",
            "privacy.dp.delta=1e-5",
            "privacy.dp.noise_seed=5",
            "privacy.dp.clip=2.0",
        ],
        ["compression.topk=0.5", "runtime.clients_per_actor=3"],
    ],
    ids=["distributed DP", "top-k"],
)
def test_host_side_encoders_on_ray_equal_the_in_process_run(tmp_path, numpy_ray_hosts, extra):
    """Distributed DP's shares and masks, and top-k's per-client residuals, live in the
    hosts: on Ray actors the run equals the in-process one bit for bit."""
    overrides = [*COMMON, "rounds=3", *extra]
    on_ray = api.run(LINREG, out=tmp_path / "ray", overrides=overrides)
    local = api.run(
        LINREG, out=tmp_path / "local", overrides=[*overrides, "runtime.executor=local"]
    )
    for p, q in zip(on_ray.params, local.params, strict=True):
        np.testing.assert_array_equal(p, q)
    assert on_ray.rows[-1]["comm/bytes_up"] == local.rows[-1]["comm/bytes_up"] > 0
