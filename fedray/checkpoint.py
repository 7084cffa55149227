"""Checkpoints of the driver's whole state, written atomically, for exact resumption.

A checkpoint holds everything the round loop needs to continue as if never stopped:
the round number, global weights, aggregator and server-optimizer state, the driver's
RNG state, the history so far, and the per-client state kept in client hosts
(SCAFFOLD's control variates). Client randomness is derived from
``(seed, round, client id)``, so a resumed run is bit-for-bit the uninterrupted run.
The file is written to a temporary name and renamed, so a crash never leaves a torn
checkpoint. Layer 2: numpy and the standard library only.
"""

from __future__ import annotations

import hashlib
import json
import os
import pickle
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fedray.errors import FedrayError
from fedray.records import AggState, Params

FORMAT = "fedray-checkpoint-1"
FILENAME = "checkpoint.pkl"


class CheckpointError(FedrayError):
    """A checkpoint is missing, corrupt, or belongs to another configuration."""


@dataclass
class DriverState:
    """The round loop's state after ``server_round`` rounds."""

    server_round: int
    params: Params
    agg_state: AggState
    opt_state: AggState
    rng_state: dict[str, Any]
    rows: list[dict[str, Any]] = field(default_factory=list)
    client_state: dict[int, dict[str, Params]] = field(default_factory=dict)
    loop_state: dict[str, Any] = field(default_factory=dict)  # e.g. FedBuff's dispatch count


def fingerprint(config: dict[str, Any], *, ignore: tuple[str, ...] = ("runtime", "rounds")) -> str:
    """A hash of the settings that must not change across a resume.

    ``runtime`` (where clients run) and ``rounds`` (so a run can be extended) may change.

    >>> fingerprint({"seed": 0, "rounds": 5}) == fingerprint({"seed": 0, "rounds": 9})
    True
    >>> fingerprint({"seed": 0}) == fingerprint({"seed": 1})
    False
    """
    kept = {k: v for k, v in config.items() if k not in ignore}
    return hashlib.sha256(json.dumps(kept, sort_keys=True).encode()).hexdigest()[:16]


def save(directory: str | Path, state: DriverState, *, config_fingerprint: str) -> Path:
    """Write ``state`` atomically to ``directory/checkpoint.pkl``."""
    path = Path(directory) / FILENAME
    tmp = path.with_suffix(".pkl.tmp")
    payload = {"format": FORMAT, "fingerprint": config_fingerprint, "state": state}
    with open(tmp, "wb") as f:
        pickle.dump(payload, f, protocol=pickle.HIGHEST_PROTOCOL)
        f.flush()
        os.fsync(f.fileno())
    tmp.replace(path)
    return path


def load(directory: str | Path, *, config_fingerprint: str) -> DriverState:
    """Read the checkpoint in ``directory``.

    Raises:
        CheckpointError: No checkpoint, an unreadable or corrupt one, or one written
            for a different configuration. Never a silent restart from scratch.
    """
    path = Path(directory) / FILENAME
    if not path.is_file():
        raise CheckpointError(
            f"--resume: no checkpoint at '{path}' (expected the --out directory of a run "
            "with checkpoint.every > 0)"
        )
    try:
        with open(path, "rb") as f:
            payload = pickle.load(f)  # the user's own run directory, not untrusted input
    except Exception as exc:
        raise CheckpointError(
            f"--resume: checkpoint '{path}' is corrupt or unreadable ({type(exc).__name__}: "
            f"{exc}); delete it to start over"
        ) from None
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise CheckpointError(f"--resume: '{path}' is not a {FORMAT} file")
    if payload["fingerprint"] != config_fingerprint:
        raise CheckpointError(
            f"--resume: checkpoint '{path}' was written for a different configuration "
            f"(fingerprint {payload['fingerprint']}, this config {config_fingerprint}); only "
            "'rounds' and 'runtime.*' may change when resuming"
        )
    state = payload["state"]
    if not isinstance(state, DriverState):
        raise CheckpointError(f"--resume: '{path}' holds no driver state")
    return state
