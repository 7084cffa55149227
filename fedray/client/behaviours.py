"""Simulated client behaviours: faults drawn from the run's seed, so tests can predict them."""

from __future__ import annotations

import numpy as np

from fedray.config import FaultsConfig


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
