"""Simulated client behaviours: faults drawn from the run's seed, so tests can predict them."""

from __future__ import annotations

import numpy as np

from fedray.config import FaultsConfig
from fedray.records import RoundInfo


def simulated_fault(
    faults: FaultsConfig, seed: int, server_round: int, cid: int, attempt: int = 0
) -> str | None:
    """``"crash"``, ``"hang"``, ``"nan"`` or None for one client in one round.

    Drawn from (seed, round, client id, retry attempt) with ``faults.crash_rate``, ``hang_rate`` and
    ``nan_rate``, so a test can predict every injected fault.
    """
    f = faults
    if not (f.crash_rate or f.hang_rate or f.nan_rate):
        return None
    key = [seed, server_round, cid, 7] + ([attempt] if attempt else [])  # a retry draws anew
    u = float(np.random.default_rng(key).random())
    for kind, rate in (("crash", f.crash_rate), ("hang", f.hang_rate), ("nan", f.nan_rate)):
        if u < rate:
            return kind
        u -= rate
    return None


def simulated_host_fault(
    faults: FaultsConfig, seed: int, server_round: int, cid: int, attempt: int = 0
) -> str | None:
    """``"crash"``, ``"hang"`` or None: what the host does while planning this client.

    Drawn from (seed, round, client id, attempt) with ``faults.host_crash_rate`` and
    ``host_hang_rate``, apart from :func:`simulated_fault`. The driver re-runs a dead
    host's clients, and a re-execution never draws it.
    """
    if not (faults.host_crash_rate or faults.host_hang_rate):
        return None
    u = float(np.random.default_rng([seed, server_round, cid, 8, attempt]).random())
    if u < faults.host_crash_rate:
        return "crash"
    return "hang" if u < faults.host_crash_rate + faults.host_hang_rate else None


def simulated_delay(faults: FaultsConfig, seed: int, cid: int) -> float:
    """Simulated extra seconds per fit: ``faults.delay_s * u``, ``u ~ U(0, 1)`` per client."""
    if faults.delay_s <= 0:
        return 0.0
    return faults.delay_s * float(np.random.default_rng([seed, 6, cid]).random())


def straggler_steps(
    faults: FaultsConfig, local_epochs: int, info: RoundInfo, cid: int, total: int
) -> int:
    """Local steps this client runs this round (fewer when it straggles).

    With ``faults.straggler_fraction = p``, each sampled client straggles with
    probability ``p`` (randomness from (seed, round, id)); a straggler runs a uniform
    number of whole epochs in [1, E - 1] as in the FedProx paper (Li et al., MLSys
    2020, arXiv:1812.06127), or, with E = 1, a uniform number of steps in [1, steps - 1].
    """
    p = faults.straggler_fraction
    if p <= 0 or total <= 1:
        return total
    rng = np.random.default_rng([info.seed, info.server_round, cid, 5])
    if rng.random() >= p:
        return total
    per_epoch = total // local_epochs
    if local_epochs > 1:
        return int(rng.integers(1, local_epochs)) * per_epoch
    return int(rng.integers(1, total))
