"""Secure aggregation: exact cancellation, dropouts, thresholds, authentication."""

import numpy as np
import pytest

from fedray.secagg import (
    Quantizer,
    SecAggAbortError,
    SecAggClient,
    SecAggError,
    SecAggServer,
    harary_neighbours,
    run_protocol,
    shamir_combine,
    shamir_split,
)
from fedray.secagg.protocol import _hkdf, _info, prg

pytest.importorskip("cryptography")
R = 24
MASK = (1 << R) - 1


def _inputs(n, d, seed=0):
    rng = np.random.default_rng(seed)
    return {u: rng.integers(0, 1 << 16, d, dtype=np.uint64) for u in range(n)}


def _plain(inputs, ids):
    return np.sum([inputs[u] for u in ids], axis=0, dtype=np.uint64) & np.uint64(MASK)


def _keyed(n, degree, threshold, bits=R):
    """Clients and server after the key exchange: (clients, server, inbox)."""
    graph = harary_neighbours(range(n), degree, np.random.default_rng(0))
    clients = {u: SecAggClient(u, 1, graph[u], threshold, bits) for u in range(n)}
    server = SecAggServer(1, graph, threshold, bits)
    keys = server.collect_keys({u: c.advertise() for u, c in clients.items()})
    inbox = server.route_shares({u: c.share_keys(keys[u]) for u, c in clients.items()})
    return clients, server, inbox


def test_shamir_any_t_shares_recover_the_secret_and_fewer_do_not():
    secret = bytes(range(32))
    shares = shamir_split(secret, 3, [1, 2, 3, 4, 5])
    for subset in ([1, 2, 3], [2, 4, 5], [1, 3, 5, 4]):
        assert shamir_combine({x: shares[x] for x in subset}, 3, 32) == secret
    with pytest.raises(ValueError, match="need 3 shares"):
        shamir_combine({x: shares[x] for x in (1, 2)}, 3, 32)
    # Two shares are consistent with any secret: a forged third share gives another one.
    forged = {1: shares[1], 2: shares[2], 3: tuple((v + 1) for v in shares[3])}
    assert shamir_combine(forged, 3, 32) != secret


@pytest.mark.parametrize("degree", [None, 99])  # SecAgg+ (k = O(log n)) and full SecAgg
@pytest.mark.parametrize(
    "drops",
    [
        {},
        {"drop_after_shares": [3, 17]},
        {"drop_after_masking": [5, 6]},
        {"drop_before_shares": [0], "drop_after_shares": [9], "drop_after_masking": [12]},
    ],
)
def test_masked_sum_equals_the_plain_sum_bit_for_bit(degree, drops):
    n, d = 20, 1000
    inputs = _inputs(n, d)
    total, stats = run_protocol(inputs, round_id=7, modulus_bits=R, degree=degree, **drops)
    gone = set(drops.get("drop_before_shares", [])) | set(drops.get("drop_after_shares", []))
    survivors = [u for u in range(n) if u not in gone]
    assert stats["survivors"] == survivors  # clients that sent y (late unmaskers included)
    np.testing.assert_array_equal(total, _plain(inputs, survivors))


def test_a_single_masked_vector_looks_uniform():
    from scipy.stats import chisquare

    clients, _, inbox = _keyed(5, 4, 3, bits=16)
    y = clients[0].masked_input(np.zeros(200_000, np.uint64), inbox[0])  # an all-zero input
    counts = np.bincount((y >> np.uint64(8)).astype(np.int64), minlength=256)
    assert chisquare(counts).pvalue > 1e-4
    assert y.max() < (1 << 16)


def test_seeds_differ_across_rounds_and_pairs_and_agree_within_a_pair():
    from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

    a, b, c = (X25519PrivateKey.generate() for _ in range(3))
    ab = a.exchange(b.public_key())
    assert ab == b.exchange(a.public_key())
    s_ab_1 = _hkdf(ab, _info("mask", 1, 0, 1))
    assert s_ab_1 == _hkdf(b.exchange(a.public_key()), _info("mask", 1, 1, 0))  # both sides
    assert s_ab_1 != _hkdf(ab, _info("mask", 2, 0, 1))  # another round
    assert s_ab_1 != _hkdf(a.exchange(c.public_key()), _info("mask", 1, 0, 2))  # another pair
    assert not np.array_equal(prg(s_ab_1, 100, R), prg(_hkdf(ab, _info("mask", 2, 0, 1)), 100, R))
    # Fresh keys every round: the same input masks differently in two rounds.
    x = np.zeros(50, np.uint64)
    ys = [run_protocol({0: x, 1: x, 2: x}, round_id=r, modulus_bits=R)[0] for r in (1, 2)]
    np.testing.assert_array_equal(ys[0], ys[1])  # both sums are 0 ...
    c1, c2 = SecAggClient(0, 1, [1], 1, R), SecAggClient(0, 1, [1], 1, R)
    assert c1.advertise() != c2.advertise()  # ... but every client's keys are new


def test_fewer_than_t_survivors_aborts_before_anything_is_revealed():
    with pytest.raises(SecAggAbortError, match="fewer than the threshold"):
        run_protocol(
            _inputs(6, 10),
            round_id=1,
            modulus_bits=R,
            degree=5,
            threshold=4,
            drop_after_shares=[0, 1, 2],
        )


def test_a_tampered_share_fails_authentication_with_a_clear_error():
    clients, server, inbox = _keyed(4, 3, 2)
    ct = bytearray(inbox[0][1])
    ct[30] ^= 1
    inbox[0][1] = bytes(ct)
    masked = {u: c.masked_input(np.zeros(4, np.uint64), inbox[u]) for u, c in clients.items()}
    dropped, survivors = server.collect_masked(masked)
    with pytest.raises(SecAggError, match="share from client 1 failed authentication"):
        clients[0].unmask(dropped, survivors)


def test_a_client_never_reveals_both_shares_of_one_peer():
    clients, _, inbox = _keyed(3, 2, 2)
    for u, c in clients.items():
        c.masked_input(np.zeros(4, np.uint64), inbox[u])
    with pytest.raises(SecAggError, match="refusing to reveal both shares of clients \\[1\\]"):
        clients[0].unmask([1], [0, 1, 2])
    clients[0].unmask([], [0, 1, 2])  # b-shares of 1 revealed ...
    with pytest.raises(SecAggError, match="already revealed the other share of 1"):
        clients[0].unmask([1], [0, 2])  # ... so never its s-share afterwards


def test_quantization_is_unbiased_and_the_sum_decodes_within_n_steps():
    q = Quantizer(clip=1.0, bits=8)
    rng = np.random.default_rng(0)
    x = rng.uniform(-1, 1, 1000)
    mean = np.mean([q.encode(x, rng).astype(np.float64) for _ in range(2000)], axis=0)
    np.testing.assert_allclose(mean * q.step - 1.0, x, atol=4 * q.step / np.sqrt(2000))
    n = 30
    xs = [rng.uniform(-1, 1, 500) for _ in range(n)]
    r = q.modulus_bits(n)
    total = np.sum([q.encode(v, rng) for v in xs], axis=0) & np.uint64((1 << r) - 1)
    err = np.abs(q.decode_sum(total, n) - np.sum(xs, axis=0))
    assert err.max() <= n * q.step
    assert r == 8 + 5  # 30 * 255 < 2^13: the sum cannot wrap


@pytest.mark.slow
def test_the_cost_benchmark_decodes_within_its_bound_on_a_tiny_grid(tmp_path):
    from fedray.bench import secagg

    for scheme in ("secagg+", "secagg"):
        row = secagg.measure(8, 200, scheme, dropout=0.25)
        assert row["dropped"] == 2 and row["max_abs_error"] <= row["error_bound"]
        assert row["client_kib_sent"] > row["plain_bytes_per_client_kib"]  # + the shares
    assert secagg.main(["--clients", "4", "--dims", "50", "--out", str(tmp_path)]) == 0
    assert (tmp_path / "secagg.csv").is_file() and (tmp_path / "secagg.png").is_file()


class _SetupRecorder:
    """An executor that records the set-up each client is sent, and answers nothing."""

    def __init__(self):
        self.setups = {}

    def call(self, ids, step, payload, info):
        if step == "advertise":
            self.setups.update(payload)
        return {}


@pytest.mark.parametrize("clients,threshold,t", [(4, 0.6, 3), (6, 0.6, 4), (4, 1.0, 4)])
def test_the_threshold_counts_the_client_itself(clients, threshold, t):
    from fedray.aggregators import SecureAggregation
    from fedray.records import RoundInfo
    from fedray.secagg.session import SecureSession

    ex = _SetupRecorder()
    secure = SecureAggregation(threshold=threshold, degree=None, min_clients=1)
    SecureSession(secure).start(ex, list(range(clients)), RoundInfo(1, 0), np.random.default_rng(0))
    assert {setup[1] for setup in ex.setups.values()} == {t}  # t of |N(u)| + 1 holders
    assert all(len(setup[0]) == clients - 1 for setup in ex.setups.values())


def test_a_client_refuses_an_unmask_request_that_leaves_it_out():
    clients, _, inbox = _keyed(5, 4, 3)
    for u, c in clients.items():
        c.masked_input(np.zeros(4, np.uint64), inbox[u])
    with pytest.raises(SecAggError, match="lists this client as dropped"):
        clients[0].unmask([], [1, 2, 3, 4])
