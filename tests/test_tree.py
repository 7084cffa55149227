import numpy as np

from fedray import tree


def test_arithmetic_matches_hand_values():
    a = [np.array([1.0, -2.0]), np.array([[0.5]])]
    b = [np.array([3.0, 4.0]), np.array([[1.5]])]
    assert [x.tolist() for x in tree.add(a, b)] == [[4.0, 2.0], [[2.0]]]
    assert [x.tolist() for x in tree.sub(a, b)] == [[-2.0, -6.0], [[-1.0]]]
    assert [x.tolist() for x in tree.scale(a, -2.0)] == [[-2.0, 4.0], [[-1.0]]]
    assert tree.global_norm([np.array([3.0]), np.array([[4.0]])]) == 5.0


def test_inputs_are_not_mutated_and_read_only_inputs_work():
    a = [np.array([1.0, 2.0])]
    a[0].setflags(write=False)
    out = tree.add(a, a)
    assert out[0].tolist() == [2.0, 4.0]
    assert a[0].tolist() == [1.0, 2.0]


def test_structure_mismatch_reports_first_difference():
    ref = [np.zeros((2, 3), np.float32), np.zeros(3, np.float32)]
    assert tree.structure_mismatch([np.zeros((2, 3), np.float32)], ref) == (
        "got 1 arrays, expected 2"
    )
    assert tree.structure_mismatch(
        [np.zeros((2, 3), np.float32), np.zeros(3, np.float64)], ref
    ) == ("array 1 has dtype float64, expected float32")
    assert (
        tree.structure_mismatch([np.zeros((2, 3), np.float32), np.zeros(3, np.float32)], ref)
        is None
    )


def test_all_finite():
    assert tree.all_finite([np.ones(3)])
    assert not tree.all_finite([np.ones(3), np.array([np.nan])])
    assert not tree.all_finite([np.array([np.inf])])
