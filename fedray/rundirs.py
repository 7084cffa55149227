"""Run directories: made for a run, and left behind only when they hold something.

:func:`fedray.run` makes its run directory through :func:`make` (or
:func:`temporary`, when no ``out`` was given and the config is not a file), inside
:func:`removed_on_failure`. When the run raises, every directory it made is removed,
unless :func:`kept_for` names a file that must outlive the run: a checkpoint (for
``--resume``), the privacy journal when it holds a charge (releases already made) or,
after a failure, a ``failures.csv`` with rows (which the error message points to). A
directory that existed before the run is never removed, nor the rounds of a run
interrupted with Ctrl-C.

A temporary directory of a run that finished lives as long as the returned history:
it is removed when the history is garbage-collected, or at interpreter exit (nothing
could resume or continue it: its name is random). Its run writes no checkpoint unless
``checkpoint.every`` was set, since nothing could resume it.

Layer 3 (an edge): only the standard library.
"""

from __future__ import annotations

import contextvars
import functools
import logging
import shutil
import tempfile
import weakref
from collections.abc import Callable
from pathlib import Path
from typing import Any, ParamSpec, TypeVar

from fedray.errors import FedrayError
from fedray.loop.checkpoint import FILENAME as CHECKPOINT
from fedray.privacy.journal import FILENAME as JOURNAL

logger = logging.getLogger(__name__)

KEEP = (CHECKPOINT, JOURNAL)
"""Files that outlive the run that wrote them: its resume state, its privacy charges."""

FAILURES = "failures.csv"
"""After a failure, also the failed clients' reasons (rows below its header), which the
error message names."""


def kept_for(path: Path, *, failed: bool = False, temporary: bool = False) -> str | None:
    """The file that keeps the run directory ``path``, or None when it may be removed.

    The one rule for removing a run directory, whoever asks: a run that ``failed``, or
    the end of a temporary directory's life. A journal keeps a directory only when it
    holds a charge. A ``temporary`` directory (a random name, no checkpoint) can never
    be resumed, so neither its checkpoint nor its journal keeps it; only a failure's
    rows do, which the error message points to.

    >>> import tempfile
    >>> d = Path(tempfile.mkdtemp())
    >>> _ = (d / "metrics.csv").write_text("round")
    >>> kept_for(d) is None
    True
    >>> _ = (d / "privacy-journal.jsonl").write_text('{"kind":"session"}')
    >>> kept_for(d) is None  # no charge: nothing was released
    True
    >>> _ = (d / "privacy-journal.jsonl").write_text('{"kind":"charge"}')
    >>> kept_for(d), kept_for(d, temporary=True)
    ('privacy-journal.jsonl', None)
    >>> shutil.rmtree(d)
    """
    if not temporary:
        if (path / CHECKPOINT).exists():
            return CHECKPOINT
        if _charged(path / JOURNAL):
            return JOURNAL
    if failed and _rows(path / FAILURES) > 0:
        return FAILURES
    return None


def _charged(journal: Path) -> bool:
    """Whether a privacy journal holds at least one charge (a release happened)."""
    if not journal.is_file():
        return False
    with journal.open() as f:
        return any('"kind":"charge"' in line for line in f)


def _rows(csv_file: Path) -> int:
    """The lines below the header of ``csv_file`` (0 when it does not exist)."""
    if not csv_file.is_file():
        return 0
    with csv_file.open() as f:
        return max(0, sum(1 for _ in f) - 1)


class _Made:
    """The directories one run made (its run directory and any missing parents)."""

    def __init__(self) -> None:
        self.dirs: list[Path] = []  # parents first
        self.temporary: Path | None = None

    def remove(self, *, failed: bool) -> None:
        """Remove what was made, innermost first, unless :func:`kept_for` says not to."""
        for path in reversed(self.dirs):
            if not path.is_dir():
                continue
            kept = kept_for(path, failed=failed, temporary=path == self.temporary)
            if kept is not None:
                logger.info("kept %s: it holds %s", path, kept)
                return  # and its parents with it
            if path is self.dirs[-1]:
                shutil.rmtree(path, ignore_errors=True)
            elif not any(path.iterdir()):
                path.rmdir()  # a parent it made (runs/), once empty


_current: contextvars.ContextVar[_Made | None] = contextvars.ContextVar("rundirs", default=None)


def make(path: Path) -> Path:
    """``path.mkdir(parents=True, exist_ok=True)``, recording what did not exist yet."""
    made = _current.get()
    missing = [p for p in (path, *path.parents) if not p.exists()]
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:  # a file there, no permission, a read-only disk
        raise FedrayError(
            f"run directory '{path}': cannot be made ({exc.strerror or exc}); expected a new "
            "directory or a run's (--out, out=)"
        ) from None
    if made is not None and missing:
        made.dirs.extend(reversed(missing))
    return path


def temporary() -> Path:
    """A new ``fedray-XXXXXXXX`` directory under :func:`tempfile.gettempdir`."""
    path = Path(tempfile.mkdtemp(prefix="fedray-"))
    made = _current.get()
    if made is not None:
        made.dirs.append(path)
        made.temporary = path
    return path


def is_temporary() -> bool:
    """Whether the run in progress writes to a directory from :func:`temporary`."""
    made = _current.get()
    return made is not None and made.temporary is not None


def next_step(path: Path) -> str:
    """What to do after a round failed in the run directory ``path``: look, then resume or rerun.

    >>> next_step(Path("/nonexistent"))
    'Details: /nonexistent/failures.csv; no round was committed: fix the cause and run again'
    """
    details = f"Details: {path / 'failures.csv'}"
    if (path / CHECKPOINT).is_file():
        return f"{details}; continue with --resume {path}"
    return f"{details}; no round was committed: fix the cause and run again"


def _remove_temporary(path: Path) -> None:
    if path.is_dir() and kept_for(path, temporary=True) is None:
        shutil.rmtree(path, ignore_errors=True)


P = ParamSpec("P")
R = TypeVar("R")


def removed_on_failure(run: Callable[P, R]) -> Callable[P, R]:
    """Wrap ``run`` so the directories it makes go when it raises (see the module).

    A temporary directory of a run that returns is tied to the returned object (its
    history): removed when that is garbage-collected, or at exit.
    """

    @functools.wraps(run)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        made = _Made()
        token = _current.set(made)
        try:
            result = run(*args, **kwargs)
        except Exception:  # not Ctrl-C: an interrupted run keeps the rounds it ran
            made.remove(failed=True)
            raise
        finally:
            _current.reset(token)
        if made.temporary is not None:
            _tie(result, made.temporary)
        return result

    return wrapper


def _tie(owner: Any, path: Path) -> None:
    """Remove ``path`` with ``owner`` (or at exit), unless it must outlive the run."""
    logger.info(
        "outputs in %s (temporary: removed with the returned history; pass out= to keep them)",
        path,
    )
    weakref.finalize(owner, _remove_temporary, path)
