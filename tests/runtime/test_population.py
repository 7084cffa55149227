"""Start-up that grows with a host's own clients: Synthetic(α, β) made per device."""

import pickle

import numpy as np

from fedray import config
from fedray.aggregators import Mean
from fedray.client.spec import HostSpec
from fedray.data import load_dataset, load_host_data, partition_indices, synthetic
from tests.conftest import ROOT

SCALE = ROOT / "experiments" / "scale.yaml"


def _cfg(clients, rows):
    return config.load(SCALE, [f"data.num_clients={clients}", f"data.num_samples={rows}"])


def test_a_host_draws_only_the_blocks_of_its_own_clients(monkeypatch):
    drawn = []
    real = synthetic._block
    monkeypatch.setattr(
        synthetic, "_block", lambda seed, block, *a: drawn.append(block) or real(seed, block, *a)
    )
    cfg = _cfg(200_000, 2_000_000)
    ids = range(50_000, 50_100)
    host = load_host_data(cfg.data, cfg.seed, ids, with_test_set=False)
    assert sorted(host.shards) == list(ids)
    assert drawn == [48]  # 50,000 // 1,024: one block of 196, never the whole population
    drawn.clear()
    host0 = load_host_data(cfg.data, cfg.seed, range(10), with_test_set=True)
    assert drawn == list(range(10))  # the server test set: the first 10,000 devices' blocks
    tested = synthetic.SERVER_TEST_DEVICES
    sizes = synthetic.synthetic_sizes(200_000, cfg.seed, 2_000_000)[:tested]
    assert len(host0.x_test) == int((sizes - synthetic.train_test_cut(sizes)).sum())


def test_a_hosts_rows_equal_the_whole_tables_rows():
    cfg = _cfg(2_500, 30_000)  # three blocks, the last one partial
    ds = load_dataset(cfg.data, cfg.seed)
    parts = partition_indices(ds, cfg.data, cfg.seed)
    ids = [0, 1023, 1024, 2047, 2499]
    host = load_host_data(cfg.data, cfg.seed, ids, with_test_set=True)
    for cid in ids:
        np.testing.assert_array_equal(host.shards[cid].x, ds.x_train[parts[cid]])
        np.testing.assert_array_equal(host.shards[cid].y, ds.y_train[parts[cid]])
    np.testing.assert_array_equal(host.x_test, ds.x_test)
    np.testing.assert_array_equal(host.y_test, ds.y_test)
    assert len(ds.x_train) + len(ds.x_test) == 30_000
    assert host.info == ds.info


def test_sizes_share_the_rounding_over_devices_and_keep_the_total():
    sizes = synthetic.synthetic_sizes(1_000_000, 0, total=10_000_000)
    assert int(sizes.sum()) == 10_000_000 and sizes.min() >= 2
    # Before, the whole rounding remainder (~430,000 rows) went to one device.
    assert sizes.max() < 1_000


def test_devices_differ_and_their_labels_follow_their_own_models():
    sizes = synthetic.synthetic_sizes(50, 3, total=5_000)
    rows = list(synthetic.synthetic_devices(range(50), sizes, 1.0, 1.0, 3))
    assert [k for k, _, _ in rows] == list(range(50))
    assert [len(x) for _, x, _ in rows] == sizes.tolist()
    means = [x.mean() for _, x, _ in rows]
    assert np.std(means) > 0.1  # B_k ~ N(0, 1): devices' inputs differ
    # Each device's labels come from its own model: a device's majority class varies.
    majority = {int(np.bincount(y, minlength=10).argmax()) for _, _, y in rows}
    assert len(majority) > 3


def test_a_host_of_half_a_million_clients_travels_in_a_few_bytes():
    cfg = _cfg(1_000_000, 10_000_000)
    spec = HostSpec.from_config(cfg, tuple(range(500_000, 1_000_000)), Mean())
    assert spec.client_ids == range(500_000, 1_000_000)
    assert len(pickle.dumps(spec.client_ids)) < 100  # a tuple was 2.5 MB: Ray warned
    assert HostSpec.from_config(cfg, (1, 3), Mean()).client_ids == (1, 3)
