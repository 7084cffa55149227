"""Exceptions that fedray raises for bad input (caught by the CLI, shown in one line)."""

from __future__ import annotations


def one_line(exc: BaseException, limit: int = 200) -> str:
    r"""``Type: message``, first line only and at most ``limit`` characters.

    Failures are reported one line each; a Ray error's multi-line text never is.

    >>> one_line(ValueError("bad shape\nTraceback ..."))
    'ValueError: bad shape'
    """
    lines = str(exc).strip().splitlines()
    text = f"{type(exc).__name__}: {lines[0].strip()}" if lines else type(exc).__name__
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
