import numpy as np
import pytest

from fedray.server_opt import ServerOptimizer, ServerSGD


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
