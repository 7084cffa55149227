"""``runtime.balance``: every host serves every client; each call's clients are dealt evenly."""

import itertools

import numpy as np
import pytest

from fedray import config
from fedray.aggregators import Mean
from fedray.errors import ConfigError
from fedray.runtime.plan import HostPlan


def _plan(num_clients, per_host, balance):
    cfg = config.load(
        {"data": {"num_clients": num_clients}},
        [f"runtime.clients_per_actor={per_host}", f"runtime.balance={str(balance).lower()}"],
    )
    return HostPlan.make(cfg, Mean(), per_host)


def test_a_balanced_plan_gives_every_host_every_client_and_the_same_host_count():
    home, balanced = _plan(1000, 500, False), _plan(1000, 500, True)
    assert len(balanced.specs) == len(home.specs) == 2
    assert [s.client_ids for s in balanced.specs] == [range(1000), range(1000)]
    assert [s.with_test_set for s in balanced.specs] == [True, False]  # one server test set


def test_a_balanced_deal_is_even_over_the_hosts_that_are_up_and_loses_no_client():
    plan = _plan(1000, 250, True)  # 4 hosts
    rng = np.random.default_rng(0)
    for up in ([0, 1, 2, 3], [1, 3], [2]):
        for _ in range(50):
            sample = rng.choice(1000, int(rng.integers(1, 60)), replace=False).tolist()
            deal = plan.by_host(sample, up)
            assert set(deal) <= set(up)
            assert sorted(itertools.chain(*deal.values())) == sorted(sample)  # each once
            sizes = [len(deal.get(h, [])) for h in up]
            assert max(sizes) - min(sizes) <= 1  # never more than one client apart


def test_the_home_plan_is_unchanged_and_a_random_sample_is_what_balance_evens_out():
    # Without balance a client trains in its home host, so a round waits for the host
    # that drew the most of the sample: 50 of 1,000 over two homes of 500 averages 27.7
    # on the busier one (hand check: E|X - 25| for X ~ Hypergeometric(1000, 500, 50)).
    home, balanced = _plan(1000, 500, False), _plan(1000, 500, True)
    rng = np.random.default_rng(1)
    busiest_home, busiest_balanced = [], []
    for _ in range(2000):
        sample = rng.choice(1000, 50, replace=False).tolist()
        deal = home.by_host(sample)
        assert all(home.host_of[c] == h for h, ids in deal.items() for c in ids)
        busiest_home.append(max(len(v) for v in deal.values()))
        busiest_balanced.append(max(len(v) for v in balanced.by_host(sample).values()))
    assert 27.2 < np.mean(busiest_home) < 28.2
    assert set(busiest_balanced) == {25}


@pytest.mark.parametrize(
    "other",
    [
        "strategy.name=scaffold",
        "compression.topk=0.1",
        "privacy.secure_aggregation.enabled=true",
        "data.placement={0: site-a}",
    ],
)
def test_balance_is_refused_where_something_of_a_client_stays_in_one_host(other):
    with pytest.raises(ConfigError) as err:
        config.load({"data": {"num_clients": 8}}, ["runtime.balance=true", other])
    line = str(err.value)
    key = other.partition("=")[0]
    assert "does not work with" in line
    assert "runtime.balance" in line and key in line and "\n" not in line
