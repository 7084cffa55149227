"""A Ray head of its own on this machine: its temp dir, and stopping exactly it.

``fedray up`` starts one (:mod:`fedray.runtime.warm`), and so does the local-head recipe
of ``docs/cluster.md`` (``ray start --head --temp-dir DIR``). Each is known by its temp
dir, which only it uses: :func:`check_temp_dir` checks one before the head starts,
and :func:`kill_instance` (``fedray down``, ``fedray down --temp-dir DIR``) kills that
head's processes and no other's, never ``ray stop``, which stops every Ray instance on
the machine.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import time
from pathlib import Path
from typing import Any

from fedray.errors import FedrayError

_SOCKET_TAIL = "/session_2026-12-07_19-25-59_957885_4194304/sockets/dash_MetricsHead"
MAX_TEMP_DIR = 107 - len(_SOCKET_TAIL)
"""The longest Ray temp dir whose socket paths fit in AF_UNIX's 108 bytes (Linux)."""


def check_temp_dir(path: str | os.PathLike[str]) -> str:
    """``--temp-dir`` of a Ray head of fedray's own, as an absolute path, or why not.

    It becomes Ray's temp dir and is deleted with the head, so it must be new or empty;
    Ray's sockets live in it, so its path must leave them room.

    Raises:
        FedrayError: It is a file or holds files, its parent is not a writable
            directory, or its path is longer than :data:`MAX_TEMP_DIR` bytes.
    """
    p = Path(os.path.abspath(path))
    why = ""
    if p.exists() and not p.is_dir():
        why = "not a directory"
    elif p.is_dir() and any(p.iterdir()):
        why = "not empty"
    elif not p.parent.is_dir() or not os.access(p.parent, os.W_OK):
        why = f"{p.parent} is not a writable directory"
    elif len(os.fsencode(p)) > MAX_TEMP_DIR:
        why = f"{len(os.fsencode(p))} bytes, too long for Ray's socket paths in it"
    if why:
        raise FedrayError(
            f"--temp-dir {path}: {why}; expected a new or empty directory (it is deleted with "
            f"the head) with a path of at most {MAX_TEMP_DIR} bytes, e.g. /tmp/fedray-ray"
        )
    return str(p)


def _names(args: list[str], temp_dir: str) -> bool:
    """Whether a command line names ``temp_dir``: as an argument, a value, or a path in it."""
    return any(a == temp_dir or a.endswith("=" + temp_dir) or temp_dir + "/" in a for a in args)


def kill_instance(temp_dir: str, client_port: int | None = None) -> int:
    """Kill exactly one Ray instance started with ``ray start --temp-dir``; how many died.

    Its processes name the temp dir in their command line, except the head's client
    server, which names the head's GCS address (``--gcs-address`` of the others) and
    its port; workers and agents rename themselves (``ray::...``), so each match's whole
    process tree goes. Arguments are compared whole, so a neighbour whose temp dir or
    port starts alike stays. Never ``ray stop``, which stops every Ray instance on the
    machine. The temp dir is deleted.
    """
    import psutil

    temp_dir = os.path.abspath(temp_dir)
    procs: list[tuple[Any, list[str]]] = []
    for p in psutil.process_iter(["cmdline"]):
        with contextlib.suppress(psutil.Error):
            if p.pid != os.getpid():
                procs.append((p, list(p.info["cmdline"] or [])))
    owned = [(p, args) for p, args in procs if _names(args, temp_dir)]
    gcs = {a.split("=", 1)[1] for _, args in owned for a in args if a.startswith("--gcs-address=")}
    marks = {f"--address={g}" for g in gcs} | ({f"--port={client_port}"} if client_port else set())
    own = [p for p, _ in owned]
    own += [p for p, args in procs if "ray.util.client.server" in args and marks & set(args)]
    victims: set[Any] = set(own)
    for p in own:
        with contextlib.suppress(psutil.Error):
            victims.update(p.children(recursive=True))
    for p in victims:
        with contextlib.suppress(psutil.Error):
            p.kill()
    psutil.wait_procs(list(victims), timeout=10)
    time.sleep(0.2)
    shutil.rmtree(temp_dir, ignore_errors=True)
    return len(victims)
