"""How clients are packed into hosts, shared by the local and the Ray executor.

``runtime.clients_per_actor: auto`` keeps one host per client while the CPUs allow and
packs evenly beyond that; hosts get contiguous blocks of client ids, so a client's host
is known from its id alone.
"""

from __future__ import annotations

import math


def clients_per_host(setting: int | str, num_clients: int, cpu_slots: float) -> int:
    """Resolve ``runtime.clients_per_actor``; ``"auto"`` packs only beyond the CPU slots.

    ``auto`` keeps one host per client while ``num_clients <= cpu_slots`` and otherwise
    spreads the clients evenly over ``floor(cpu_slots)`` hosts.

    >>> [clients_per_host("auto", n, 2.0) for n in (2, 3, 8)], clients_per_host(3, 8, 2.0)
    ([1, 2, 4], 3)
    """
    if setting != "auto":
        return int(setting)
    hosts = max(1, min(num_clients, math.floor(cpu_slots)))
    return math.ceil(num_clients / hosts)


def group_clients(num_clients: int, clients_per_host: int) -> list[tuple[int, ...]]:
    """Assign client ids to hosts in contiguous blocks of ``clients_per_host``.

    >>> group_clients(5, 2)
    [(0, 1), (2, 3), (4,)]
    """
    if clients_per_host < 1:
        raise ValueError(f"clients_per_host must be >= 1, got {clients_per_host}")
    return [
        tuple(range(s, min(s + clients_per_host, num_clients)))
        for s in range(0, num_clients, clients_per_host)
    ]
