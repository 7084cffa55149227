"""The generic rules judge a feature by its declaration alone (no rule names it)."""

import numpy as np
import pytest

from fedray.errors import ConfigError
from fedray.features import Declaration, Feature, RunShape, Trained, check_features
from fedray.features.base import client_update


class Declares(Feature):
    def __init__(self, **kw):
        self.d = Declaration(**kw)

    def declaration(self):
        return self.d


DPSGD = RunShape(mechanism="privacy.dp.mode='dpsgd'", in_training=True)
CENTRAL = RunShape(mechanism="privacy.dp.mode='central'")


@pytest.mark.parametrize(
    ("declared", "shape", "words"),
    [
        ({"releases": ("x",)}, CENTRAL, "releases x un-noised"),
        ({"releases": ("x",), "from_update": True}, CENTRAL, "releases x un-noised"),
        ({"releases": ("x",)}, DPSGD, "releases x un-noised"),
        ({"start_loss": True}, DPSGD, "loss on its raw rows"),
        ({"releases": ("x",)}, RunShape(secure=True), "secure_aggregation"),
        ({"sync": True}, RunShape(buffered=True), "fedbuff"),
        ({"client_state": True}, RunShape(balanced=True), "runtime.balance"),
        ({"client_state": True}, RunShape(over_commit=0.5), "over_commit"),
        ({"mean": True}, RunShape(mean=False, aggregate="strategy.name='krum'"), "krum"),
        ({"rescales": True}, RunShape(norm_bound="strategy.norm_bound=1.0"), "norm_bound"),
    ],
)
def test_a_declaration_is_refused_in_one_line_naming_both(declared, shape, words):
    with pytest.raises(ConfigError) as err:
        check_features([Declares(**declared)], shape)
    line = str(err.value)
    assert line.startswith("Declares does not work with") and words in line and "\n" not in line


@pytest.mark.parametrize(
    ("declared", "shape"),
    [
        ({"releases": ("x",), "from_update": True}, DPSGD),  # post-processing of a private delta
        ({"start_loss": True}, CENTRAL),  # the mechanism clips and noises what follows
        ({"mean": True, "client_state": True}, RunShape(mean=True)),  # FedDyn, a plain mean
        ({"sync": True, "client_state": True}, DPSGD),
        ({}, RunShape(secure=True, balanced=True, buffered=True, over_commit=1.0)),
    ],
)
def test_what_the_math_allows_is_accepted(declared, shape):
    check_features([Declares(**declared)], shape)


class Sends(Feature):
    """Declares nothing, but sends a downlink and reports."""

    def downlink(self, state):
        return [np.zeros(1)]

    def client_update(self, trained, down, state):
        return trained.delta, [np.ones(1)], state


def test_a_downlink_is_refused_with_fedbuff_even_undeclared():
    # FedBuff starts clients from older models with no downlink: a feature that sends one
    # would get None after a resume, so overriding downlink is a declaration too.
    with pytest.raises(ConfigError, match="fedbuff"):
        check_features([Sends()], RunShape(buffered=True))


def test_a_report_its_declaration_does_not_name_is_refused_at_run_time():
    # The rules judged it by its declaration; an undeclared report would travel beside a
    # masked update, or be dropped by pre-aggregation, unseen by them.
    trained = Trained(0, [np.zeros(1)], [np.zeros(1)], 1, 0.1, 1)
    with pytest.raises(ValueError, match="releases nothing"):
        client_update([Sends()], trained, [None], [[]])
