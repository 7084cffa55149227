"""Top-k with error feedback: the client half by hand, conservation, and its wire size."""

import numpy as np

from fedray.aggregators import Mean
from fedray.features import TopK, Trained
from fedray.loop.steps import comm_logs


def _trained(arrays):
    delta = [np.asarray(a, np.float32) for a in arrays]
    return Trained(3, delta, [np.zeros_like(d) for d in delta], 1, 0.1, 5)


def test_topk_keeps_the_largest_magnitudes_and_the_rest_as_residual():
    f = TopK(fraction=0.25)
    sent, report, residual = f.client_update(_trained([[-5.0, 0.1, 0.2, 0.3]]), None, [])
    np.testing.assert_array_equal(sent[0], [-5.0, 0.0, 0.0, 0.0])
    np.testing.assert_allclose(residual[0], [0.0, 0.1, 0.2, 0.3])
    assert report is None  # nothing reaches the server but the sparse update


def test_topk_keeps_k_coordinates_and_error_feedback_loses_nothing():
    f = TopK(fraction=0.1)
    rng = np.random.default_rng(2)
    inputs = [[rng.normal(size=(4, 5)), rng.normal(size=20)] for _ in range(6)]
    sent, state = [], f.client_init([np.zeros((4, 5)), np.zeros(20)])
    for arrays in inputs:
        out, _, state = f.client_update(_trained(arrays), None, state)
        assert sum(int(np.count_nonzero(d)) for d in out) == 4  # ceil(0.1 * 40)
        sent.append(out)
    # Conservation: everything sent plus what is still kept equals everything trained.
    for i in range(2):
        total_in = sum(np.asarray(a[i], np.float32) for a in inputs)
        total_out = sum(s[i] for s in sent) + state[i]
        np.testing.assert_allclose(total_out, total_in, atol=1e-5)
    plain = TopK(fraction=0.1, error_feedback=False)
    assert plain.client_update(_trained(inputs[0]), None, [])[2] == []
    assert not plain.declaration().client_state and f.declaration().client_state


def test_topk_states_its_wire_size_and_the_loop_logs_it():
    params = [np.zeros((100, 9), np.float32), np.zeros(100, np.float32)]  # d = 1000
    assert TopK(fraction=0.01).uplink_bytes(1000) == 10 * 8
    assert TopK(fraction=1.0).uplink_bytes(1000) == 4000  # never more than dense
    logs = comm_logs(Mean(), params, 4, 3, (TopK(fraction=0.01),))
    assert logs["comm/bytes_up"] == 3 * 80 and logs["comm/compression"] == 4000 / 80
    assert comm_logs(Mean(), params, 4, 3)["comm/bytes_up"] == 3 * 4000
