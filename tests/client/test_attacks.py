import numpy as np
import pytest

from fedray import config
from fedray.aggregators import Mean
from fedray.client.attacks import attack_update, choose_attackers, flip_labels
from fedray.client.host import ClientHost
from fedray.client.spec import HostSpec
from fedray.errors import ConfigError
from fedray.records import ClientUpdate, RoundInfo


def test_attackers_are_a_fixed_seeded_fraction():
    a = choose_attackers(50, 0.2, seed=1)
    assert len(a) == 10 and a == choose_attackers(50, 0.2, seed=1)
    assert a != choose_attackers(50, 0.2, seed=2)
    with pytest.raises(ValueError, match="got 1.5"):
        choose_attackers(10, 1.5, 0)


def test_update_attacks():
    u = ClientUpdate(3, [np.array([1.0, 2.0], np.float32), np.array([[2.0]], np.float32)], 7)
    flipped = attack_update(u, "sign_flip", 2.0, np.random.default_rng(0))
    assert [d.tolist() for d in flipped.delta] == [[-2.0, -4.0], [[-4.0]]]
    assert flipped.num_examples == 7 and flipped.delta[0].dtype == np.float32
    noise = attack_update(u, "gaussian", 5.0, np.random.default_rng(0))
    assert np.sqrt(sum((d.astype(np.float64) ** 2).sum() for d in noise.delta)) == pytest.approx(
        5.0
    )
    assert attack_update(u, "label_flip", 1.0, np.random.default_rng(0)) is u
    with pytest.raises(ValueError, match="got 'nope'"):
        attack_update(u, "nope", 1.0, np.random.default_rng(0))
    assert flip_labels(np.array([0, 3]), 4).tolist() == [3, 0]


def _host(overrides):
    pytest.importorskip("tensorflow")
    cfg = config.load({"data": {"dataset": "digits", "num_clients": 5}}, overrides)
    return ClientHost(HostSpec.from_config(cfg, tuple(range(5)), Mean()))


@pytest.mark.keras
def test_byzantine_clients_in_a_host_send_the_flipped_update():
    honest = _host([])
    attacked = _host(["attack.fraction=0.4", "attack.scale=3"])
    bad = attacked.attackers
    assert len(bad) == 2
    params = honest.initial_params()
    info = RoundInfo(server_round=1, seed=0)
    h = {u.client_id: u for u in honest.fit(range(5), params, info)}
    a = {u.client_id: u for u in attacked.fit(range(5), params, info)}
    for cid in range(5):
        factor = -3.0 if cid in bad else 1.0
        for x, y in zip(a[cid].delta, h[cid].delta):
            np.testing.assert_allclose(x, factor * y, rtol=1e-5, atol=1e-7)


@pytest.mark.keras
def test_label_flip_changes_only_the_attackers_labels():
    honest = _host([])
    flipped = _host(["attack.fraction=0.4", "attack.kind=label_flip"])
    for cid in range(5):
        expected = 9 - honest.shards[cid].y if cid in flipped.attackers else honest.shards[cid].y
        np.testing.assert_array_equal(flipped.shards[cid].y, expected)


@pytest.mark.keras
def test_label_flip_needs_classes():
    pytest.importorskip("tensorflow")
    cfg = config.load({"attack": {"fraction": 1.0, "kind": "label_flip"}})
    host = ClientHost(HostSpec.from_config(cfg, (0, 1), Mean()))
    with pytest.raises(ConfigError, match="'label_flip' needs a classification dataset"):
        host.ready()
