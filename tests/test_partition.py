import numpy as np
import pytest

from fedray.data import partition


def _covers_once(parts, n):
    allidx = np.concatenate(parts)
    return len(allidx) == n and np.array_equal(np.sort(allidx), np.arange(n))


def test_iid_covers_every_index_once_with_balanced_sizes():
    parts = partition.iid(103, 10, np.random.default_rng(0))
    assert _covers_once(parts, 103)
    sizes = [len(p) for p in parts]
    assert max(sizes) - min(sizes) <= 1


def test_iid_is_seeded():
    a = partition.iid(50, 5, np.random.default_rng(3))
    b = partition.iid(50, 5, np.random.default_rng(3))
    assert all(np.array_equal(x, y) for x, y in zip(a, b))


def _label_entropy(parts, y):
    ent = []
    for p in parts:
        c = np.bincount(y[p], minlength=y.max() + 1) / len(p)
        c = c[c > 0]
        ent.append(-(c * np.log(c)).sum())
    return float(np.mean(ent))


def test_dirichlet_covers_once_and_small_alpha_is_more_skewed():
    y = np.repeat(np.arange(10), 100)
    skewed = partition.dirichlet(y, 10, 0.1, np.random.default_rng(0))
    flat = partition.dirichlet(y, 10, 100.0, np.random.default_rng(0))
    assert _covers_once(skewed, 1000) and _covers_once(flat, 1000)
    assert min(len(p) for p in skewed) > 0
    assert _label_entropy(skewed, y) < 0.6 * _label_entropy(flat, y)
    assert _label_entropy(flat, y) > 0.95 * np.log(10)


def test_shards_give_each_client_few_labels():
    y = np.repeat(np.arange(10), 60)
    parts = partition.shards(y, 10, np.random.default_rng(0), shards_per_client=2)
    assert _covers_once(parts, 600)
    assert all(len(np.unique(y[p])) <= 2 for p in parts)
    assert [len(p) for p in parts] == [60] * 10


def test_column_one_client_per_value():
    parts, keys = partition.column(np.array([3, 1, 3, 2, 1]))
    assert keys == [1, 2, 3]
    assert [p.tolist() for p in parts] == [[1, 4], [3], [0, 2]]


def test_errors_name_the_values():
    with pytest.raises(ValueError, match="cannot split 3 training rows over 5 clients"):
        partition.iid(3, 5, np.random.default_rng(0))
    with pytest.raises(ValueError, match="alpha must be > 0, got 0"):
        partition.dirichlet(np.zeros(10, int), 2, 0.0, np.random.default_rng(0))
    with pytest.raises(ValueError, match="left a client empty"):
        partition.dirichlet(np.zeros(12, int), 10, 0.001, np.random.default_rng(0), max_tries=3)
