"""Per-round settings reach the clients through any wrapping, or the wrapping is refused."""

from dataclasses import dataclass, field

import numpy as np
import pytest

from fedray.aggregators import (
    AdaptiveClip,
    CentralDP,
    NormBound,
    SecureAggregation,
    StalenessWeighted,
    client_settings,
)
from fedray.callbacks import Callback
from fedray.errors import ConfigError
from fedray.loop import Evaluation, run_rounds
from fedray.strategy import Strategy
from tests.privacy.fakes import EncodingExecutor


def adaptive():
    return CentralDP(
        noise_multiplier=0.5, expected_clients=6, clip=AdaptiveClip(initial=0.3, learning_rate=0.5)
    )


@dataclass(frozen=True)
class Bare:
    """A user's wrapper without a client_settings hook that keeps its inner state nested."""

    inner: object = field(default_factory=adaptive)

    def init(self, params):
        return {"inner": self.inner.init(params), "calls": 0}

    def encode(self, update, info):
        return self.inner.encode(update, info)

    def aggregate(self, updates, state, rng):
        delta, inner, meas = self.inner.aggregate(updates, state["inner"], rng)
        return delta, {"inner": inner, "calls": state["calls"] + 1}, meas


@dataclass(frozen=True)
class Nest(Bare):
    """The same wrapper, passing its inner's settings on from where it keeps them."""

    def client_settings(self, state):
        return client_settings(self.inner, state["inner"])


@pytest.mark.parametrize(
    "wrap",
    [
        lambda a: a,
        lambda a: NormBound(a, max_norm=2.0),
        StalenessWeighted,
        lambda a: SecureAggregation(CentralDP(0.5, 6, clip=0.3), clip=0.3),  # fixed clips only
        Nest,
        lambda a: Nest(NormBound(a)),
    ],
    ids=["bare", "norm_bound", "staleness", "secagg", "nest", "nest(norm_bound)"],
)
def test_the_clip_norm_reaches_the_clients_through_any_wrapping(wrap):
    agg = wrap(adaptive())
    assert client_settings(agg, agg.init([np.zeros(3, np.float32)])) == {"dp_clip": 0.3}


class SettingsSeen(EncodingExecutor):
    def __init__(self, aggregator):
        super().__init__(aggregator, num_clients=6)
        self.settings = []

    def fit(self, client_ids, params, info):
        self.settings.append(dict(info.settings))
        yield from super().fit(client_ids, params, info)


@pytest.mark.parametrize("wrap", [Bare, lambda a: NormBound(Bare(a))], ids=["bare", "nested"])
def test_a_wrapper_that_would_drop_the_clip_norm_is_refused_naming_it(wrap):
    # Before, a wrapper without the hook passed its inner's settings by a convention
    # (its state under "inner"); one that kept it elsewhere sent none, and its clients
    # clipped to the first norm while the server adapted: the noise no longer matched.
    with pytest.raises(ConfigError) as err:
        Strategy(aggregator=wrap(adaptive()))
    line = str(err.value)
    assert line.startswith("Bare wraps CentralDP") and "client_settings" in line


def test_a_nested_wrapper_s_clients_clip_to_the_adapted_norm():
    # Before the hooks, the loop read state["round_settings"] at the top of the state:
    # under a wrapper that nests its inner state, clients never got the adaptive clip
    # and clipped to the default while the server adapted its own.
    agg = Nest()
    executor = SettingsSeen(agg)
    strategy = Strategy(aggregator=agg, sampling="poisson", min_fit_clients=0)
    run_rounds(
        strategy=strategy,
        executor=executor,
        rounds=3,
        seed=0,
        callback=Callback(),
        evaluation=Evaluation(every=0),
        noise_seed=1,
        privacy=None,
    )
    clips = [s["dp_clip"] for s in executor.settings]
    assert clips[0] == 0.3 and len(set(clips)) == 3  # the norm adapts, and clients follow
