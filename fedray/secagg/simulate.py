"""One whole SecAgg(+) round in-process, for tests and benchmarks.

Bonawitz et al., "Practical Secure Aggregation for Privacy-Preserving Machine
Learning", CCS 2017 (ePrint 2017/281), with SecAgg+ neighbourhoods (Bell et al., CCS
2020, ePrint 2020/704): every client's and the server's state machine from
:mod:`fedray.secagg.protocol`, run in one process, with drop-outs at each stage.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from fedray.secagg.graph import default_degree, harary_neighbours
from fedray.secagg.protocol import SecAggClient, SecAggServer
from fedray.secagg.shamir import PRIME


def run_protocol(  # noqa: PLR0913 - a simulation: its protocol parameters and faults
    inputs: Mapping[int, np.ndarray],
    *,
    round_id: int,
    modulus_bits: int,
    degree: int | None = None,
    threshold: int | None = None,
    rng: np.random.Generator | None = None,
    drop_before_shares: Sequence[int] = (),
    drop_after_shares: Sequence[int] = (),
    drop_after_masking: Sequence[int] = (),
) -> tuple[np.ndarray, dict[str, object]]:
    """Run one whole round in-process (tests, benchmarks); returns (sum, stats).

    The ``drop_*`` clients disappear at the named stage. ``stats`` has the graph
    degree, the threshold, the bytes each client sent, each client's compute seconds
    (``client_s``) and the server's (``server_s``).
    """
    ids = sorted(inputs)
    n = len(ids)
    k = default_degree(n) if degree is None else min(degree, n - 1)
    t = threshold if threshold is not None else (k + 1) // 2 + 1
    graph = harary_neighbours(ids, k, rng or np.random.default_rng(secrets.randbits(64)))
    client_s = dict.fromkeys(ids, 0.0)
    server_s = 0.0

    def timed(who: int | None, fn: Any, *args: Any) -> Any:
        nonlocal server_s
        t0 = time.perf_counter()
        out = fn(*args)
        if who is None:
            server_s += time.perf_counter() - t0
        else:
            client_s[who] += time.perf_counter() - t0
        return out

    clients = {}
    for u in ids:
        clients[u] = timed(u, SecAggClient, u, round_id, graph[u], t, modulus_bits)
    server = SecAggServer(round_id, graph, t, modulus_bits)
    sent = dict.fromkeys(ids, 0)
    keys = {u: timed(u, c.advertise) for u, c in clients.items()}
    for u in keys:
        sent[u] += 64
    peer_keys = timed(None, server.collect_keys, keys)
    shares = {}
    for u in ids:
        if u in drop_before_shares:
            continue
        shares[u] = timed(u, clients[u].share_keys, peer_keys[u])
        sent[u] += sum(len(ct) for ct in shares[u].values())
    inbox = timed(None, server.route_shares, shares)
    masked = {}
    for u in inbox:
        if u in drop_after_shares:
            continue
        masked[u] = timed(u, clients[u].masked_input, inputs[u], inbox[u])
        sent[u] += masked[u].nbytes
    dropped, survivors = timed(None, server.collect_masked, masked)
    responses = {}
    for u in survivors:
        if u in drop_after_masking:
            continue
        responses[u] = timed(u, clients[u].unmask, dropped, survivors)
        sent[u] += sum(16 * len(s) + 9 for _, s in responses[u].values())
    total = timed(None, server.unmask, responses)
    stats = {
        "degree": k,
        "threshold": t,
        "bytes_sent": sent,
        "client_s": client_s,
        "server_s": server_s,
        "survivors": survivors,
        "dropped": dropped,
        "prime": PRIME,
    }
    return total, stats
