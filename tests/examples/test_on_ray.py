"""The example algorithms on Ray actors with the Keras trainer equal the in-process run."""

import numpy as np
import pytest

from fedray import api
from fedray.aggregators import Mean
from fedray.strategy import Strategy
from tests.examples.test_algorithms import _config, _example

ray = pytest.importorskip("ray")
pytestmark = [pytest.mark.ray, pytest.mark.keras]


def test_the_examples_on_ray_equal_their_in_process_runs(ray_instance, tmp_path):
    from ray import cloudpickle

    runs = {"fednova": ("FedNova", "examples"), "feddyn": ("FedDyn", "uniform")}
    runs["qffl"] = ("QFFL", "uniform")
    for name, (cls, weighting) in runs.items():
        module = _example(name)
        cloudpickle.register_pickle_by_value(module)  # as a user's own script would be
        strategy = Strategy(
            aggregator=Mean(weighting=weighting), features=(getattr(module, cls)(),)
        )
        got = {}
        for executor in ("ray", "local"):
            hist = api.run(
                _config(tmp_path),
                out=tmp_path / f"{name}-{executor}",
                strategy=strategy,
                overrides=[
                    f"runtime.executor={executor}",
                    "runtime.clients_per_actor=1",
                    "rounds=2",
                ],
            )
            got[executor] = hist.params
        for a, b in zip(got["ray"], got["local"], strict=True):
            np.testing.assert_array_equal(a, b)
        assert not np.allclose(got["ray"][0], 0)
