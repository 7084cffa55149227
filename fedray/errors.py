"""Exceptions that fedray raises for bad input (caught by the CLI, shown in one line)."""

from __future__ import annotations

import re

_ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")
"""A terminal colour or style code (Keras wraps its reasons in bold)."""

_BOILERPLATE = re.compile(
    r"Graph execution error:?|Detected at node .*|File \".*\", line \d+.*"
    r"|Exception encountered when calling .*|Arguments received by .*|[•*] .*|\[\[\{\{node .*"
    r"|Traceback \(most recent call last\):"
)
"""Lines around the reason in TensorFlow's and Keras' messages: headers, frames, arguments."""

_NODE_TAGS = re.compile(
    r"\{\{function_node [^}]*\}\}\s*|\s*\[\[\{\{node .*?\}\}\]\]|\s*\[Op:[^\]]*\](\s*name:\s*$)?"
)
"""TensorFlow's tags of the failing function and op, around the reason."""


def one_line(exc: BaseException, limit: int = 200) -> str:
    r"""``Type: reason`` in one line of at most ``limit`` characters.

    Failures are reported one line each; a Ray error's multi-line text never is. The
    reason is the first line that is not boilerplate: TensorFlow's "Graph execution
    error:" puts it after the frames where the failing op was defined, and Keras' "Exception
    encountered when calling ..." before the call's arguments. Terminal colour codes are
    removed and runs of spaces collapsed.

    >>> one_line(ValueError("bad shape\nTraceback ..."))
    'ValueError: bad shape'
    >>> one_line(ValueError("Exception encountered when calling Dense.call().\n\n"
    ...                     "\x1b[1mexpected axis -1 to be 5\x1b[0m\n\nArguments received by"))
    'ValueError: expected axis -1 to be 5'
    """
    lines = [" ".join(_ANSI.sub("", ln).split()) for ln in str(exc).splitlines()]
    lines = [ln for ln in lines if ln]
    reason = next((ln for ln in lines if not _BOILERPLATE.fullmatch(ln)), None)
    if reason is None:
        reason = lines[0] if lines else ""
    reason = _NODE_TAGS.sub("", reason).strip()
    text = f"{type(exc).__name__}: {reason}" if reason else type(exc).__name__
    return text if len(text) <= limit else text[: limit - 1] + "…"


class FedrayError(Exception):
    """Base class: a problem the user can fix, described in one clear message."""


class ConfigError(FedrayError, ValueError):
    """The configuration is invalid: names the key, the bad value and what is allowed."""


class DataError(FedrayError, ValueError):
    """A dataset is missing or malformed: names the file or column and the expectation."""


class RoundFailedError(FedrayError):
    """Too few clients succeeded in a round (after any retries): the run stopped.

    Everything up to the last committed round is in the checkpoint; fix the cause and
    continue with ``--resume``.

    Attributes:
        step: What the failed round collected (its failures, for ``failures.csv``).
    """

    def __init__(self, message: str, step: object = None) -> None:
        super().__init__(message)
        self.step = step


class HostFaultError(Exception):
    """A simulated host crash or hang in-process (``faults.host_crash_rate``, ``host_hang_rate``).

    On Ray the host process exits or hangs instead. Not a :class:`FedrayError`: the
    executor catches it and runs the host's clients again (a crash) or counts them as
    timed out (a hang).

    Attributes:
        kind: ``"crash"`` or ``"hang"``.
    """

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind
