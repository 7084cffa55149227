"""The rule table: one table of refusals, reached from configs and composed strategies."""

import pytest

from fedray import config
from fedray.aggregators import Mean, Median, NormBound, SecureAggregation
from fedray.errors import ConfigError
from fedray.strategy import Strategy, rules


def _load(*overrides):
    return config.load({"data": {"num_clients": 8}}, list(overrides))


def test_norm_bound_with_secure_aggregation_is_refused_naming_both_keys():
    # Before: it validated and built NormBound(SecureAggregation); no keys were
    # exchanged and every client failed at run time.
    with pytest.raises(ConfigError) as err:
        _load("privacy.secure_aggregation.enabled=true", "strategy.norm_bound=2")
    line = str(err.value)
    both = "privacy.secure_aggregation.enabled=True does not work with strategy.norm_bound=2"
    assert both in line
    assert "privacy.secure_aggregation.clip" in line and "\n" not in line


def test_max_update_norm_with_secure_aggregation_is_refused():
    # Before: masked updates skipped the norm check, so the bound silently did nothing.
    with pytest.raises(ConfigError, match="strategy.max_update_norm=3.0"):
        _load("privacy.secure_aggregation.enabled=true", "strategy.max_update_norm=3")


@pytest.mark.parametrize(
    "name,option",
    [
        ("fedavg", "trim_beta=0.2"),
        ("fedmedian", "proximal_mu=0.1"),
        ("krum", "beta1=0.5"),
        ("fedprox", "server_momentum=0.5"),
        ("scaffold", "weighting=examples"),
    ],
)
def test_an_option_the_recipe_ignores_is_refused(name, option):
    with pytest.raises(ConfigError) as err:
        _load(f"strategy.name={name}", f"strategy.{option}", "strategy.min_fit_clients=3")
    key = option.partition("=")[0]
    assert f"strategy.{key}=" in str(err.value) and f"strategy.name='{name}'" in str(err.value)


def test_an_option_read_by_the_recipe_passes_and_each_recipe_has_only_its_own():
    _load("strategy.name=trimmed_mean", "strategy.trim_beta=0.2")
    _load("strategy.name=fedadam", "strategy.beta1=0.5", "strategy.weighting=uniform")
    # Each recipe is its own model: even another recipe's option at its default is not
    # one of its keys, and what to_dict writes loads back unchanged.
    with pytest.raises(ConfigError, match="trim_beta=0.1 does not apply to strategy.name='fedavg'"):
        _load("strategy.name=fedavg", "strategy.trim_beta=0.1")
    for name in ("fedavg", "fedprox", "fedbuff", "trimmed_mean"):
        cfg = _load(f"strategy.name={name}")
        assert config.load(cfg.to_dict()) == cfg
        assert cfg.strategy.name == name
    assert "trim_beta" not in _load("strategy.name=fedavg").to_dict()["strategy"]


def test_a_strategy_without_a_name_is_fedavg_and_a_bad_name_is_one_line():
    assert config.load({"strategy": {"fraction_fit": 0.5}}).strategy.name == "fedavg"
    with pytest.raises(
        ConfigError,
        match=r"strategy.name = 'fedavgg': expected one of .*"
        r"\(did you mean 'fedavg'\?\)",
    ):
        _load("strategy.name=fedavgg")


def test_a_hand_composed_strategy_is_judged_by_the_same_rules_in_any_order():
    inside = Strategy(aggregator=NormBound(SecureAggregation(Mean(weighting="uniform"))))
    with pytest.raises(ConfigError, match="does not work with strategy.norm_bound=1.0"):
        rules.check_compatible(rules.strategy_features(inside))
    fine = Strategy(aggregator=NormBound(Median(), max_norm=1.0))
    rules.check_compatible(rules.strategy_features(fine))


def test_every_rule_names_two_keys_and_fires_on_its_own():
    for rule in rules.RULES:
        assert rule.a != rule.b and "." in rule.a and "." in rule.b
        hits = [
            r
            for r in rules.RULES
            if r.applies({rule.a: _on_value(rule.when_a), rule.b: _on_value(rule.when_b)})
        ]
        assert rule in hits


def _on_value(pred):
    for v in (
        True,
        1,
        0.5,
        3,
        "central",
        "local",
        "dpsgd",
        "distributed",
        "examples",
        "adaptive",
        "fedbuff",
        "scaffold",
        "krum",
        "x(y)",
        "fedray",
        None,
    ):
        if pred(v):
            return v
    raise AssertionError("no value turns the rule on")
