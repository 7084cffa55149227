"""Sharing the server evaluation over hosts: dispatch, failover and the merge (no Ray)."""

import itertools
from types import SimpleNamespace

import numpy as np
import pytest

from fedray.records import MeanStates, batch_range, merge_means
from fedray.runtime.stream import evaluate_server
from fedray.runtime.supervisor import Supervisor


class DiedError(Exception):
    """Stands in for ``ray.exceptions.RayActorError``."""


FAKE_RAY = SimpleNamespace(
    get=lambda ref: ref(), exceptions=SimpleNamespace(RayActorError=DiedError)
)
ERR = np.random.default_rng(0).random((10, 2))  # 10 batches x 2 metrics of a test set


def states(part, of):
    lo, hi = batch_range(len(ERR), part, of)
    return MeanStates(("loss", "acc"), lo, ERR[lo:hi], np.full((hi - lo, 2), 4.0))


class Host:
    """A host actor's handle: ``method.remote(...)`` gives a ref that ``get`` runs."""

    def __init__(self, index, log, dies=False):
        def part(params, p, of):
            def ref():
                log.append((index, p))
                if dies:
                    raise DiedError(f"host {index}")
                return states(p, of)

            return ref

        self.evaluate_part = SimpleNamespace(remote=part)
        self.evaluate = SimpleNamespace(remote=lambda params: lambda: {"loss": float(index)})


def test_parts_add_up_the_same_whatever_their_number_or_order():
    whole = merge_means([states(0, 1)])
    assert whole == pytest.approx({"loss": ERR[:, 0].sum() / 40, "acc": ERR[:, 1].sum() / 40})
    for of in (2, 3, 7, 12):  # 12 parts of 10 batches: two are empty
        parts = [states(p, of) for p in range(of)]
        assert merge_means(parts) == whole  # bit for bit: one sum in batch order
        assert merge_means(parts[::-1]) == whole


def test_each_evaluator_takes_a_part_and_a_dead_ones_part_goes_to_another():
    log = []
    hosts = [Host(0, log), Host(1, log, dies=True), Host(2, log), Host(3, log)]
    sup = Supervisor(hosts, [(0,)] * 4, restart_timeout_s=1.0)
    got = evaluate_server(FAKE_RAY, hosts, sup, None, 3, len(ERR))  # host 3 holds no set
    assert got == merge_means([states(0, 1)])
    assert log[:3] == [(0, 0), (1, 1), (2, 2)]  # side by side, one part each
    assert log[3:] == [(0, 1)]  # host 1's part re-ran on a host that is up
    assert sup.unavailable(1) is not None and sup.unavailable(0) is None


def test_host_0_evaluates_alone_without_parts_to_share_and_nothing_is_made_up_when_down():
    log = []
    hosts = [Host(0, log), Host(1, log)]
    sup = Supervisor(hosts, [(0,), (1,)], restart_timeout_s=1.0)
    for evaluators, batches in [(1, 10), (2, 0), (2, 1)]:  # one host, no means, one batch
        assert evaluate_server(FAKE_RAY, hosts, sup, None, evaluators, batches) == {"loss": 0.0}
    assert log == []  # host 0 evaluated the whole set each time: no part was asked for
    dead = [Host(0, log, dies=True), Host(1, log, dies=True)]
    sup = Supervisor(dead, [(0,), (1,)], restart_timeout_s=1.0)
    assert evaluate_server(FAKE_RAY, dead, sup, None, 2, len(ERR)) == {}


@pytest.mark.parametrize("batches,of", [(0, 1), (1, 2), (10, 3), (3, 5)])
def test_batch_ranges_cover_every_batch_once_in_order(batches, of):
    ranges = [batch_range(batches, p, of) for p in range(of)]
    assert ranges[0][0] == 0 and ranges[-1][1] == batches
    assert all(a[1] == b[0] for a, b in itertools.pairwise(ranges))


def test_the_first_evaluators_hold_the_test_set_and_placement_keeps_it_on_host_0():
    from fedray import config
    from fedray.aggregators import Mean
    from fedray.runtime.plan import HostPlan, evaluators

    cfg = config.load({"data": {"num_clients": 6}})
    assert [evaluators("auto", c) for c in (1.0, 2.5, 3.0, 64.0)] == [1, 2, 3, 4]
    plan = HostPlan.make(cfg, Mean(), 1, evaluators=evaluators("auto", 2.0))
    assert plan.evaluators == 2
    assert [s.with_test_set for s in plan.specs] == [True, True, False, False, False, False]
    assert HostPlan.make(cfg, Mean(), 3, evaluators=8).evaluators == 2  # only 2 hosts
    placed = config.load({"data": {"num_clients": 6, "placement": {0: "site-a"}}})
    plan = HostPlan.make(placed, Mean(), 1, evaluators=4)
    assert plan.evaluators == 1 and sum(s.with_test_set for s in plan.specs) == 1


def test_more_than_one_evaluator_under_data_placement_is_refused_in_one_line():
    from fedray import config
    from fedray.errors import ConfigError

    with pytest.raises(ConfigError) as err:
        config.load({"data": {"placement": {0: "site-a"}}, "evaluation": {"hosts": 2}})
    line = str(err.value)
    assert "evaluation.hosts=2 does not work with data.placement=" in line
    assert "\n" not in line
    config.load({"data": {"placement": {0: "site-a"}}, "evaluation": {"hosts": 1}})  # fine
