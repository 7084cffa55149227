"""The user's data files, checked in the driver before any host starts.

Hosts read ``data.path`` (and ``data.test_path``) themselves, after Ray and TensorFlow
have started; a folder, an empty or unreadable file, or one in another format would
fail there, seconds later and once per host. :func:`check_file` reads only the
file's first bytes, so the mistake is one line before anything starts.

Layer 3 (an edge): only the standard library.
"""

from __future__ import annotations

import codecs
from pathlib import Path

from fedray.errors import DataError

FILE_KINDS = {"csv": "csv", "parquet": "parquet", "npz": "npz", "mnist": "npz", "cifar10": "npz"}
"""The format of ``data.path`` for each dataset that reads a file (Hugging Face: ``data.name``)."""

_SNIFF_BYTES = 1 << 16


def _unreadable_as(head: bytes, kind: str) -> str | None:
    r"""Why a file starting with ``head`` cannot be a ``kind`` file, or None if it may be.

    >>> _unreadable_as(b"PAR1...", "parquet") is None
    True
    >>> _unreadable_as(b"a,b\n1,2\n", "npz")
    'is not a zip archive of arrays'
    """
    if kind == "parquet" and not head.startswith(b"PAR1"):
        return "is not Parquet (it lacks the PAR1 signature)"
    if kind == "npz" and not head.startswith((b"PK\x03\x04", b"PK\x05\x06")):
        return "is not a zip archive of arrays"
    if kind in ("csv", "json"):
        try:
            codecs.getincrementaldecoder("utf-8")().decode(head, final=False)
        except UnicodeDecodeError:
            return "holds binary data"
        if b"\x00" in head:
            return "holds binary data"
    return None


def check_file(key: str, value: str, kind: str | None) -> None:
    """Fail in one line unless ``value`` (the config's ``key``) is a readable ``kind`` file.

    Run in the driver before any host starts, on the file's first bytes only: a folder,
    an empty file, a file without read permission, or one whose first bytes cannot
    start a ``kind`` file (``csv``/``json``: UTF-8 text; ``parquet``, ``npz``: their
    signatures). ``kind`` None checks only that the file can be read.

    Raises:
        DataError: Naming ``key``, ``value``, the problem and the expected format.
    """
    path = Path(value).expanduser()
    expected = f"expected a .{kind} file" if kind else "expected a file"
    if not path.exists():
        raise DataError(
            f"{key} = '{value}': file not found (a relative path is looked up beside the config "
            f"file, then in the working directory, {Path.cwd()})"
        )
    if path.is_dir():
        raise DataError(f"{key} = '{value}': is a folder; {expected}")
    try:
        with path.open("rb") as f:
            head = f.read(_SNIFF_BYTES)
    except OSError as exc:
        raise DataError(
            f"{key} = '{value}': cannot be read ({exc.strerror or exc}); {expected}"
        ) from None
    if not head:
        raise DataError(f"{key} = '{value}': is empty; {expected}")
    problem = _unreadable_as(head, kind) if kind else None
    if problem is not None:
        raise DataError(
            f"{key} = '{value}': {problem}; {expected}"
            + (" (UTF-8 text)" if kind in ("csv", "json") else "")
        )
