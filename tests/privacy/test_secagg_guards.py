"""Secure aggregation's guards: minimum cohort, and unmask requests an honest server never sends."""

import numpy as np
import pytest

from fedray.secagg import SecAggClient, SecAggError, SecAggServer, shamir_combine, shamir_split
from fedray.secagg.shamir import interpolate_at_zero


def _setup(ids, t, r=20):
    graph = {u: [v for v in ids if v != u] for u in ids}
    clients = {u: SecAggClient(u, 1, graph[u], t, r) for u in ids}
    server = SecAggServer(1, graph, t, r)
    keys = server.collect_keys({u: c.advertise() for u, c in clients.items()})
    inbox = server.route_shares({u: clients[u].share_keys(keys[u]) for u in ids})
    return clients, server, inbox


def test_a_lying_server_cannot_isolate_one_input():
    ids = [0, 1, 2, 3, 4]
    x = {u: np.random.default_rng(u).integers(0, 2**16, 8, dtype=np.uint64) for u in ids}
    clients, server, inbox = _setup(ids, 3)
    masked = {u: clients[u].masked_input(x[u], inbox[u]) for u in ids}
    server.collect_masked(masked)
    others = [v for v in ids if v != 0]
    # The lie: "only client 0 survived". Everyone else is told it dropped ...
    for w in others:
        with pytest.raises(SecAggError, match="lists this client as dropped"):
            clients[w].unmask(others, [0])
    # ... and client 0 is told of fewer survivors than the threshold.
    with pytest.raises(SecAggError, match="fewer than the threshold t=3"):
        clients[0].unmask(others, [0])
    # An honest request is still answered, and the sum comes out exactly.
    fresh, server2, inbox2 = _setup(ids, 3)
    masked2 = {u: fresh[u].masked_input(x[u], inbox2[u]) for u in ids}
    dropped, survivors = server2.collect_masked(masked2)
    total = server2.unmask({u: fresh[u].unmask(dropped, survivors) for u in survivors})
    np.testing.assert_array_equal(total, sum(x.values()) % 2**20)


def test_a_host_refuses_to_unmask_fewer_survivors_than_distributed_dp_needs(tmp_path):
    """The review's W-4: m = 10, m_min = 9, t = 6. The server got all ten masked vectors
    but claims four dropped; the sum of six would carry 6/9 of the noise accounted."""
    from fedray import config
    from fedray.aggregators import DistributedDP, SecureAggregation
    from fedray.client.host import ClientHost
    from fedray.client.spec import HostSpec
    from fedray.records import RoundInfo
    from tests.fakes import NumpyTrainer

    ddp = DistributedDP(1.0, expected_clients=10.0, population=10, max_dropout=0.1)
    secure = SecureAggregation(inner=ddp, degree=9, threshold=0.6)
    assert ddp.min_survivors == 9 and secure.required_clients == 9
    cfg = config.load({"data": {"dataset": "linreg", "num_clients": 10}})
    host = ClientHost(HostSpec.from_config(cfg, tuple(range(10)), secure, trainer=NumpyTrainer))
    ids, info = list(range(10)), RoundInfo(1, 0)
    graph = {u: [v for v in ids if v != u] for u in ids}
    server = SecAggServer(1, graph, 6, 24)
    setup = {u: (graph[u], 6, 24) for u in ids}
    keys = server.collect_keys(host.secure_step("advertise", ids, setup, info))
    inbox = server.route_shares(host.secure_step("share", ids, keys, info))
    host.secure_step("inbox", ids, inbox, info)
    sent = host.fit(ids, host.initial_params(), info)  # every client masks its input
    assert all(u.masked is not None for u in sent)
    lie = {u: (ids[6:], ids[:6]) for u in ids[:6]}
    with pytest.raises(SecAggError, match="naming 6 survivors, fewer than the 9"):
        host.secure_step("unmask", ids[:6], lie, info)


@pytest.mark.keras
def test_rounds_below_the_minimum_cohort_reveal_nothing(tmp_path):
    pytest.importorskip("tensorflow")
    from fedray import api

    base = {
        "rounds": 4,
        "data": {"dataset": "linreg", "num_clients": 6},
        "strategy": {"fraction_fit": 0.3, "min_fit_clients": 1, "weighting": "uniform"},
        "runtime": {"executor": "local", "progress": False, "clients_per_actor": 6},
        "checkpoint": {"every": 0},
    }
    sa = {"secure_aggregation": {"enabled": True, "min_clients": 3}}
    # fraction 0.3 of 6 samples 2 clients: below the minimum, every round aborts.
    plain = api.run(
        {**base, "strategy": {**base["strategy"], "on_too_few": "skip"}, "privacy": sa},
        out=tmp_path / "plain",
    )
    assert [r["clients/ok"] for r in plain.rows] == [0] * 4
    assert all(r["round/committed"] == 0 for r in plain.rows)
    # Under central DP the round still happens: a noised zero round, no client inside.
    dp = {**sa, "dp": {"noise_multiplier": 1.0, "delta": 1e-5, "clip": 5.0, "noise_seed": 0}}
    private = api.run({**base, "privacy": dp}, out=tmp_path / "dp")
    for r in private.rows:
        assert r["round/committed"] == 1
        assert r["agg/secagg/clients"] == 0 or r["agg/secagg/clients"] >= 3


@pytest.mark.keras
def test_secure_aggregation_works_with_enabled_alone(tmp_path):
    pytest.importorskip("tensorflow")
    from fedray import api

    hist = api.run(
        {
            "rounds": 2,
            "data": {"dataset": "linreg", "num_clients": 4},
            "privacy": {"secure_aggregation": {"enabled": True}},
            "runtime": {"executor": "local", "progress": False, "clients_per_actor": 4},
            "checkpoint": {"every": 0},
        },
        out=tmp_path,
    )
    assert hist.final["agg/secagg/clients"] == 4
    assert hist.final["agg/secagg/quantization_step"] == pytest.approx(16 / (2**22 - 1))


@pytest.mark.parametrize("t", [2, 3, 5])
def test_fewer_than_t_shamir_shares_carry_no_secret(t):
    from fedray.secagg.shamir import CHUNK

    xs = list(range(1, t + 3))
    for trial in range(20):
        secret = np.random.default_rng(trial).bytes(32)
        chunks = tuple(int.from_bytes(secret[i : i + CHUNK], "big") for i in range(0, 32, CHUNK))
        shares = shamir_split(secret, t, xs)
        assert shamir_combine({x: shares[x] for x in xs[:t]}, t, 32) == secret
        # t - 1 shares fit a polynomial of degree t - 2 whose value at 0 is not the secret
        # (it would be, were the sharing polynomial one degree short).
        assert tuple(interpolate_at_zero({x: shares[x] for x in xs[: t - 1]})) != chunks
        assert all(shares[x] != chunks for x in xs)  # no share is the secret itself
