import numpy as np
import pytest

from fedray.strategy.server_opt import ServerOptimizer, ServerSGD


def test_sgd_two_steps_hand_computed():
    opt = ServerSGD(learning_rate=0.5)
    assert isinstance(opt, ServerOptimizer)
    p = [np.array([1.0, 2.0], np.float32)]
    s = opt.init(p)
    p, s = opt.apply(p, [np.array([2.0, -2.0], np.float32)], s)
    np.testing.assert_allclose(p[0], [2.0, 1.0])
    p, s = opt.apply(p, [np.array([4.0, 0.0], np.float32)], s)
    np.testing.assert_allclose(p[0], [4.0, 1.0])
    assert p[0].dtype == np.float32


def test_fedavg_is_lr_one():
    p, _ = ServerSGD().apply([np.array([1.0])], [np.array([0.25])], {})
    assert p[0].tolist() == [1.25]


def test_bad_learning_rate():
    with pytest.raises(ValueError, match="got -1"):
        ServerSGD(learning_rate=-1)


from fedray.strategy.server_opt import ServerAdaptive, ServerMomentum  # noqa: E402


def test_fedavgm_two_steps():
    opt = ServerMomentum(learning_rate=0.5, momentum=0.9)
    p, s = opt.apply([np.array([0.0])], [np.array([1.0])], opt.init([np.zeros(1)]))
    # v1 = 1, p1 = 0.5
    np.testing.assert_allclose(p[0], [0.5])
    p, s = opt.apply(p, [np.array([-1.0])], s)
    # v2 = 0.9 - 1 = -0.1, p2 = 0.5 - 0.05 = 0.45
    np.testing.assert_allclose(p[0], [0.45])
    np.testing.assert_allclose(s["velocity"][0], [-0.1])


@pytest.mark.parametrize(
    "adaptivity,expected_v2",
    [
        # v0 = tau^2 = 0.01; d1 = 2 (d1^2 = 4); d2 = -1 (d2^2 = 1); beta2 = 0.5
        ("adagrad", 0.01 + 4 + 1),
        ("adam", 0.5 * (0.5 * 0.01 + 0.5 * 4) + 0.5 * 1),
        # yogi: v1 = 0.01 - 0.5*4*sign(0.01-4) = 2.01; v2 = 2.01 - 0.5*1*sign(2.01-1) = 1.51
        ("yogi", 1.51),
    ],
)
def test_adaptive_two_steps_hand_computed(adaptivity, expected_v2):
    opt = ServerAdaptive(adaptivity, learning_rate=0.1, beta1=0.5, beta2=0.5, tau=0.1)
    s = opt.init([np.zeros(1, np.float32)])
    np.testing.assert_allclose(s["v"][0], [0.01])
    p, s = opt.apply([np.zeros(1, np.float32)], [np.array([2.0], np.float32)], s)
    m1 = 0.5 * 2.0
    v1 = {"adagrad": 0.01 + 4, "adam": 0.5 * 0.01 + 0.5 * 4, "yogi": 2.01}[adaptivity]
    p1 = 0.1 * m1 / (np.sqrt(v1) + 0.1)
    np.testing.assert_allclose(p[0], [p1], rtol=1e-6)
    p, s = opt.apply(p, [np.array([-1.0], np.float32)], s)
    m2 = 0.5 * m1 + 0.5 * -1.0
    np.testing.assert_allclose(s["v"][0], [expected_v2], rtol=1e-12)
    np.testing.assert_allclose(p[0], [p1 + 0.1 * m2 / (np.sqrt(expected_v2) + 0.1)], rtol=1e-6)
    assert p[0].dtype == np.float32


def test_adaptive_bad_values():
    with pytest.raises(
        ValueError, match="adaptivity must be 'adagrad', 'adam' or 'yogi', got 'rms'"
    ):
        ServerAdaptive("rms")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="beta2 must be in \\[0, 1\\), got 1.0"):
        ServerAdaptive(beta2=1.0)
    with pytest.raises(ValueError, match="tau must be >= 0, got -1"):
        ServerAdaptive(tau=-1)
