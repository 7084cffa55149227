"""Checkpoints of the driver's whole state, written atomically, for exact resumption.

A checkpoint holds everything the round loop needs to continue as if never stopped:
the round number, global weights, aggregator and server-optimizer state, the driver's
RNG state and the history so far. The per-client state kept in client hosts
(SCAFFOLD's control variates, top-k's residuals) is not in it: the hosts saved it for
this round on their side (:mod:`fedray.client.state_store`), and the checkpoint
records only the round and how many clients have some. Client randomness is derived
from ``(seed, round, client id)``, so a resumed run is bit-for-bit the uninterrupted
run.
The file is written to a temporary name and renamed, so a crash never leaves a torn
checkpoint.

The format executes nothing when loaded: ``checkpoint.npz`` is a numpy archive read
with ``allow_pickle=False``, holding the arrays and one JSON document (the state's
structure, with references to the arrays). A tampered file can at worst fail to load.
Under DP the checkpoint holds no noise generator: the noise of every round comes from
a fresh secret generator, so a checkpoint can neither regenerate past noise nor
predict future noise. Layer 2: numpy and the standard library only.
"""

from __future__ import annotations

import hashlib
import io
import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from fedray.errors import FedrayError
from fedray.records import AggState, Params

FORMAT = "fedray-checkpoint-4"  # 4: features' server state by name (loop_state["features"])
FILENAME = "checkpoint.npz"
_JSON = "__state__"


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
    client_state: dict[str, int] = field(default_factory=dict)  # {"round": r, "clients": n}
    loop_state: dict[str, Any] = field(default_factory=dict)  # e.g. FedBuff's dispatch count


def fingerprint(config: dict[str, Any], *, ignore: tuple[str, ...] = ("runtime", "rounds")) -> str:
    """A hash of the settings that must not change across a resume.

    ``runtime`` (where clients run) and ``rounds`` (so a run can be extended) may change,
    and so may the folder of a data file: the config holds it absolute, and a checkout
    moved or cloned elsewhere (a retried job's new working directory) still resumes.

    >>> fingerprint({"seed": 0, "rounds": 5}) == fingerprint({"seed": 0, "rounds": 9})
    True
    >>> fingerprint({"seed": 0}) == fingerprint({"seed": 1})
    False
    >>> a, b = ({"data": {"path": f"/{d}/x/h.csv"}} for d in ("home", "tmp"))
    >>> fingerprint(a) == fingerprint(b)
    True
    """
    kept = {k: v for k, v in config.items() if k not in ignore}
    data = kept.get("data")
    if isinstance(data, dict):
        files = {k: Path(str(data[k])).name for k in ("path", "test_path") if data.get(k)}
        kept["data"] = {**data, **files}
    return hashlib.sha256(json.dumps(kept, sort_keys=True).encode()).hexdigest()[:16]


def _encode(value: Any, arrays: dict[str, np.ndarray]) -> Any:
    """``value`` as JSON-able data; arrays (and numpy scalars) go to ``arrays``."""
    if isinstance(value, (np.ndarray, np.generic)):
        key = f"a{len(arrays)}"
        arrays[key] = np.asarray(value)
        return {"__nd__": key, "scalar": isinstance(value, np.generic)}
    if isinstance(value, float) and not math.isfinite(value):
        return {"__float__": repr(value)}
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, tuple):
        return {"__tuple__": [_encode(v, arrays) for v in value]}
    if isinstance(value, list):
        return [_encode(v, arrays) for v in value]
    if isinstance(value, dict):
        if all(isinstance(k, str) and not k.startswith("__") for k in value):
            return {k: _encode(v, arrays) for k, v in value.items()}
        return {"__map__": [[_encode(k, arrays), _encode(v, arrays)] for k, v in value.items()]}
    raise TypeError(f"cannot checkpoint a value of type {type(value).__name__}")


def _decode(data: Any, arrays: Any) -> Any:
    """The inverse of :func:`_encode`."""
    if isinstance(data, list):
        return [_decode(v, arrays) for v in data]
    if not isinstance(data, dict):
        return data
    if "__nd__" in data:
        arr = arrays[str(data["__nd__"])]
        return arr[()] if data.get("scalar") else arr
    if "__float__" in data:
        return float(data["__float__"])
    if "__tuple__" in data:
        return tuple(_decode(v, arrays) for v in data["__tuple__"])
    if "__map__" in data:
        return {_decode(k, arrays): _decode(v, arrays) for k, v in data["__map__"]}
    return {k: _decode(v, arrays) for k, v in data.items()}


def save(directory: str | Path, state: DriverState, *, config_fingerprint: str) -> Path:
    """Write ``state`` atomically to ``directory/checkpoint.npz``."""
    path = Path(directory) / FILENAME
    tmp = path.with_name(FILENAME + ".tmp")
    arrays: dict[str, np.ndarray] = {}
    doc = {
        "format": FORMAT,
        "fingerprint": config_fingerprint,
        "state": _encode(
            {
                "server_round": state.server_round,
                "params": state.params,
                "agg_state": state.agg_state,
                "opt_state": state.opt_state,
                "rng_state": state.rng_state,
                "rows": state.rows,
                "client_state": state.client_state,
                "loop_state": state.loop_state,
            },
            arrays,
        ),
    }
    arrays[_JSON] = np.frombuffer(json.dumps(doc).encode(), np.uint8)
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)  # type: ignore[arg-type]
    with open(tmp, "wb") as f:
        f.write(buffer.getvalue())
        f.flush()
        os.fsync(f.fileno())
    tmp.replace(path)
    return path


def load(directory: str | Path, *, config_fingerprint: str) -> DriverState:
    """Read the checkpoint in ``directory``; nothing in the file is ever executed.

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
        with np.load(path, allow_pickle=False) as archive:
            arrays = {k: archive[k] for k in archive.files}
        doc = json.loads(bytes(arrays.pop(_JSON)).decode())
        if not isinstance(doc, dict) or doc.get("format") != FORMAT:
            raise CheckpointError(f"--resume: '{path}' is not a {FORMAT} file")
        if doc.get("fingerprint") != config_fingerprint:
            raise CheckpointError(
                f"--resume: checkpoint '{path}' was written for a different configuration "
                f"(fingerprint {doc.get('fingerprint')}, this config {config_fingerprint}); "
                "only 'rounds' and 'runtime.*' may change when resuming"
            )
        raw = _decode(doc["state"], arrays)
        return DriverState(
            server_round=int(raw["server_round"]),
            params=list(raw["params"]),
            agg_state=dict(raw["agg_state"]),
            opt_state=dict(raw["opt_state"]),
            rng_state=dict(raw["rng_state"]),
            rows=list(raw["rows"]),
            client_state=dict(raw["client_state"]),
            loop_state=dict(raw["loop_state"]),
        )
    except CheckpointError:
        raise
    except Exception as exc:
        raise CheckpointError(
            f"--resume: checkpoint '{path}' is corrupt or unreadable ({type(exc).__name__}: "
            f"{exc}); delete it to start over"
        ) from None
