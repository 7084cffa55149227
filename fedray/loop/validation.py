"""Checks on what a client sends, shared by the driver and (for pre-aggregation) the hosts.

Layer 0: only numpy.
"""

from __future__ import annotations

import math

from fedray import tree
from fedray.records import ClientFailure, ClientUpdate, Params


def validate_update(
    update: ClientUpdate, reference: Params, max_norm: float | None = None
) -> str | None:
    """Why ``update`` is unusable against the global ``reference`` params, or None.

    ``max_norm`` rejects an update whose L2 norm (over all arrays) exceeds it.
    """
    problem = diagnose(update, reference, max_norm)
    return None if problem is None else problem[1]


def diagnose(
    update: ClientUpdate, reference: Params, max_norm: float | None = None
) -> tuple[str, str] | None:
    """``(cause, reason)`` when ``update`` is unusable (cause ``"nan"`` or ``"invalid"``)."""
    bad = sorted(k for k, v in update.protocol.items() if not math.isfinite(v))
    if bad:
        return "nan", f"protocol values {bad} are not finite"
    if update.masked is not None:  # secure aggregation: only the masked integers travel
        return _masked(update)
    problem = tree.structure_mismatch(update.delta, reference)
    if problem is not None:
        return "invalid", f"wrong update structure: {problem}"
    if not tree.all_finite(update.delta):
        return "nan", "update contains NaN or Inf"
    if update.num_examples <= 0:
        return "invalid", f"num_examples must be > 0, got {update.num_examples}"
    if max_norm is not None:
        norm = tree.global_norm(update.delta)
        if norm > max_norm:
            return (
                "invalid",
                f"update norm {norm:.4g} exceeds strategy.max_update_norm={max_norm:g}",
            )
    return _reports(update)


def _masked(update: ClientUpdate) -> tuple[str, str] | None:
    """A secure-aggregation update: one flat unsigned vector, and no delta beside it."""
    if update.delta:
        return "invalid", "a masked update must not also carry its delta"
    masked = update.masked
    if masked is not None and (masked.ndim != 1 or masked.dtype.kind != "u"):
        return "invalid", f"masked update must be a flat unsigned vector, got {masked.dtype}"
    return None


def _reports(update: ClientUpdate) -> tuple[str, str] | None:
    """What the update's features reported (SCAFFOLD's delta_c): finite."""
    for i, report in enumerate(update.reports):
        if report is not None and not tree.all_finite(report):
            return "nan", f"feature {i}'s report contains NaN or Inf"
    return None


def screen(
    result: ClientUpdate | ClientFailure, reference: Params, max_norm: float | None = None
) -> ClientUpdate | ClientFailure:
    """The update if usable, else a :class:`ClientFailure` with the reason (failures pass).

    >>> import numpy as np
    >>> screen(ClientUpdate(3, [np.array([np.nan])], 1), [np.zeros(1)]).reason
    'update contains NaN or Inf'
    """
    if isinstance(result, ClientFailure):
        return result
    problem = diagnose(result, reference, max_norm)
    if problem is None:
        return result
    return ClientFailure(result.client_id, problem[1], cause=problem[0])
