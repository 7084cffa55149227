"""Per-client state kept on the hosts' side: saved, restored and pruned there, never sent.

Some features keep state per client across rounds: SCAFFOLD's control variate c_i,
top-k's error-feedback residual (the client's raw, unclipped update on the coordinates
it did not send). It is derived from the client's data, so it must stay where the
client's data is: in its host. The driver's checkpoint therefore holds none of it; at
a checkpoint the driver only asks the hosts to save their clients' state for that round
(:meth:`ClientStateStore.save`), and on a resume or a host restart a host reloads its
clients' newest state saved at or before the checkpoint's round (:meth:`load`).

Files are ``<root>/round-<r>/host-<first client>.npz`` (numpy archives read with
``allow_pickle=False``; written to a temporary name, fsynced, then renamed), one per
host and checkpoint, readable by their owner only (folders 0700, files 0600). ``root``
is ``runtime.client_state_dir``: by default a folder of ``$FEDRAY_CLIENT_STATE_DIR``
(else ``~/.cache/fedray/client-state``) named after the run directory, never inside
it, so the clients' state is not published with the run's outputs. On one machine, or
on a cluster whose nodes share that path, a restarted or resumed host finds its
clients' state; a host that finds none (a node-local path on another node) starts its
clients afresh, as new clients.

Layer 3 (inside a host): numpy and the standard library.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import re
from collections.abc import Iterable
from pathlib import Path

import numpy as np

from fedray.records import Params

logger = logging.getLogger(__name__)

ENV = "FEDRAY_CLIENT_STATE_DIR"
"""Where the client-state folders of runs go (default ``~/.cache/fedray/client-state``)."""

ClientState = dict[int, dict[str, Params]]
"""Client id -> a feature's key (``"<position>-<name>"``, the host's) -> its arrays."""

_ROUND = re.compile(r"^round-(\d+)$")


def default_root() -> Path:
    """``$FEDRAY_CLIENT_STATE_DIR``, else ``~/.cache/fedray/client-state``."""
    return Path(os.environ.get(ENV) or Path.home() / ".cache" / "fedray" / "client-state")


def name_for(run_dir: str | Path) -> str:
    """The folder name of a run directory's client state: a hash of its absolute path.

    >>> name_for("/tmp/run") == name_for("/tmp/../tmp/run"), len(name_for("/tmp/run"))
    (True, 16)
    """
    path = str(Path(run_dir).resolve())
    return hashlib.sha256(path.encode()).hexdigest()[:16]


class ClientStateStore:
    """One host's view of the per-client state files under ``root``.

    Args:
        root: The store's directory (``runtime.client_state_dir``).
        name: This host's file name (its first client id), the same after a restart.
    """

    def __init__(self, root: str | Path, name: str) -> None:
        self.root = Path(root)
        self.name = name

    def _rounds(self) -> list[tuple[int, Path]]:
        """The round directories, oldest first."""
        if not self.root.is_dir():
            return []
        found = [(int(m[1]), p) for p in self.root.iterdir() if (m := _ROUND.match(p.name))]
        return sorted(found)

    def save(self, server_round: int, state: ClientState) -> Path | None:
        """Write ``state`` as this host's file of ``server_round``, atomically and durably.

        Returns the file, or None when there is no state to keep.

        >>> import tempfile
        >>> scratch = tempfile.TemporaryDirectory()
        >>> store = ClientStateStore(scratch.name, "0")
        >>> _ = store.save(2, {0: {"control": [np.ones(2)]}})
        >>> _ = store.save(4, {0: {"control": [np.zeros(2)]}, 1: {"control": [np.ones(1)]}})
        >>> [store.load(r, [0, 1])[0]["control"][0].tolist() for r in (2, 3, 4)]
        [[1.0, 1.0], [1.0, 1.0], [0.0, 0.0]]
        >>> sorted(store.load(3, [0, 1])), store.prune(4), store.load(3, [0, 1])
        ([0], None, {})
        >>> scratch.cleanup()
        """
        if not state:
            return None
        folder = self.root / f"round-{server_round:06d}"
        folder.mkdir(mode=0o700, parents=True, exist_ok=True)
        self.root.chmod(0o700)
        arrays = {
            f"{cid}/{name}/{i}": np.asarray(a)
            for cid, entry in state.items()
            for name, params in entry.items()
            for i, a in enumerate(params)
        }
        path = folder / f"host-{self.name}.npz"
        tmp = folder / f"host-{self.name}.npz.tmp"
        with os.fdopen(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), "wb") as f:
            np.savez(f, **arrays)  # type: ignore[arg-type]
            f.flush()
            os.fsync(f.fileno())
        tmp.replace(path)
        return path

    def load(self, server_round: int, client_ids: Iterable[int]) -> ClientState:
        """Each of ``client_ids``' newest state saved at or before ``server_round``.

        Files of later rounds (saved before a crash whose checkpoint never came) are
        ignored. Clients with no saved state are left out.
        """
        wanted = set(client_ids)
        out: ClientState = {}
        for r, folder in reversed(self._rounds()):
            if r > server_round:
                continue
            for path in sorted(folder.glob("host-*.npz")):
                for cid, entry in _read(path).items():
                    if cid in wanted and cid not in out:
                        out[cid] = entry
            if wanted <= set(out):
                break
        return out

    def prune(self, server_round: int) -> None:
        """Delete this host's files of rounds before ``server_round`` (its newer one holds all)."""
        for r, folder in self._rounds():
            if r >= server_round:
                break
            (folder / f"host-{self.name}.npz").unlink(missing_ok=True)
            with contextlib.suppress(OSError):  # another host's file is still there, or
                folder.rmdir()  # another host removed the folder first


def _read(path: Path) -> ClientState:
    """The client state in one file (nothing in it is executed)."""
    out: dict[int, dict[str, dict[int, np.ndarray]]] = {}
    with np.load(path, allow_pickle=False) as archive:
        for key in archive.files:
            cid, rest = key.split("/", 1)  # a feature's name may hold "/" itself
            name, index = rest.rsplit("/", 1)
            out.setdefault(int(cid), {}).setdefault(name, {})[int(index)] = archive[key]
    return {
        cid: {name: [arrays[i] for i in sorted(arrays)] for name, arrays in entry.items()}
        for cid, entry in out.items()
    }
