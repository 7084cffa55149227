"""Exceptions that fedray raises for bad input (caught by the CLI, shown in one line)."""

from __future__ import annotations


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
    """
