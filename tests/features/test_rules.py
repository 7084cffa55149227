"""The generic rules judge a feature by its declaration alone (no rule names it)."""

import pytest

from fedray.errors import ConfigError
from fedray.features import Declaration, Feature, RunShape, check_features


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
        ({"client_state": True, "releases": ("x",)}, RunShape(over_commit=0.5), "over_commit"),
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
        ({"client_state": True}, RunShape(over_commit=0.5)),  # top-k's residual: no report
        ({"sync": True, "client_state": True}, CENTRAL),  # FedDyn under central DP
        ({}, RunShape(secure=True, balanced=True, buffered=True, over_commit=1.0)),
    ],
)
def test_what_the_math_allows_is_accepted(declared, shape):
    check_features([Declares(**declared)], shape)
