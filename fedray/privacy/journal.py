"""The privacy journal: every charge made durable before its release, and replayed on resume.

A privacy ledger lives in the driver's memory; a checkpoint copies it only every
``checkpoint.every`` rounds. Releases made after the last checkpoint (the updates of a
round in flight, a noised model already broadcast) would be forgotten by a crash and
charged only once when ``--resume`` runs those rounds again. So every charge is first
appended to ``privacy-journal.jsonl`` in the run directory, flushed and fsynced, and
only then does the attempt start. A resumed run (or a new run in the same directory)
rebuilds its ledger from the journal, never from the checkpoint, and the attempts a
crash lost stay charged.

The file is JSON lines:

* ``{"kind": "session", "session": s, "ledger": header}``: a process opened the
  journal; ``header`` is its ledger's fixed parameters (:meth:`header` of the ledger
  classes), so the file alone rebuilds the ledger (:func:`replay`, used by sweeps);
* ``{"kind": "charge", "session": s, "round": r, "attempt": a, "charge": {...}}``: one
  attempt's charge (the ledger's :meth:`charge`), written before the attempt starts.

A torn last line (a crash while it was written) is dropped: its ``fsync`` had not
returned, so its attempt never started. Layer 1: the standard library only.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fedray.errors import FedrayError
from fedray.privacy.dpsgd import DPSGDAccountant
from fedray.privacy.ledgers import DistributedDPAccountant, DPFedAvgAccountant, LocalDPAccountant

logger = logging.getLogger(__name__)

FILENAME = "privacy-journal.jsonl"

LEDGERS: dict[str, Any] = {
    "central": DPFedAvgAccountant,
    "local": LocalDPAccountant,
    "distributed": DistributedDPAccountant,
    "dpsgd": DPSGDAccountant,
}
"""Ledger class by ``mode`` (its header's), to rebuild a ledger from a journal alone."""


class JournalError(FedrayError):
    """A privacy journal that cannot be trusted to hold every charge."""


def read(path: str | Path) -> list[dict[str, Any]]:
    """The journal's entries, in order ([] when there is none; a torn last line dropped).

    Raises:
        JournalError: A line other than the last is not JSON (the file was edited).
    """
    path = Path(path)
    if not path.is_file():
        return []
    lines = path.read_text().splitlines()
    out: list[dict[str, Any]] = []
    for i, line in enumerate(lines):
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:
            if i == len(lines) - 1:  # a crash while it was written: its attempt never ran
                logger.warning("%s: dropped a torn last line (its attempt never started)", path)
                break
            raise JournalError(f"{path}: line {i + 1} is not JSON; the file was altered") from None
    return out


def replay(entries: Sequence[Mapping[str, Any]]) -> Any:
    """The ledger a journal's entries describe: its last session's, with every charge.

    Raises:
        JournalError: No session line, or one of an unknown mode.
    """
    sessions = [e for e in entries if e.get("kind") == "session"]
    if not sessions:
        raise JournalError("the privacy journal has no session line")
    header = sessions[-1]["ledger"]
    kind = LEDGERS.get(str(header.get("mode")))
    if kind is None:
        raise JournalError(f"the privacy journal names an unknown mode {header.get('mode')!r}")
    ledger = kind.from_header(header)
    for e in entries:
        if e.get("kind") == "charge":
            ledger.apply(e["charge"])
    return ledger


def _heal(path: Path) -> None:
    """Cut a torn last line (a crash while it was written), so the next line starts clean.

    Its ``fsync`` never returned, so its attempt never started: dropping it loses nothing.
    """
    if not path.is_file():
        return
    data = path.read_bytes()
    if not data or data.endswith(b"\n"):
        return
    logger.warning("%s: cut a torn last line (its attempt never started)", path)
    with open(path, "r+b") as f:
        f.truncate(data.rfind(b"\n") + 1)
        f.flush()
        os.fsync(f.fileno())


def _append(path: Path, entry: Mapping[str, Any]) -> None:
    """Append one line and make it durable (the file and, when new, its directory)."""
    new = not path.exists()
    with open(path, "a", encoding="utf-8") as f:
        f.write(json.dumps(entry, separators=(",", ":")) + "\n")
        f.flush()
        os.fsync(f.fileno())
    if new:  # the new name must survive a crash too
        fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


@dataclass
class Journaled:
    """A privacy ledger whose every charge is durable before its release.

    Implements the loop's :class:`~fedray.loop.PrivacyLedger` by delegation: ``record``
    appends the charge to the journal (fsynced) and only then applies it.

    Attributes:
        ledger: The accountant (``charge``/``apply``/``epsilon``/...).
        path: The journal file, or None to journal in memory only (tests).
        entries: What the journal held when it was opened, then every new line.
        session: This process's session number.
        resumed_after: The checkpoint's round when resuming (its later charges were
            lost attempts), else None.
    """

    ledger: Any
    path: Path | None = None
    entries: list[dict[str, Any]] = field(default_factory=list)
    session: int = 0
    resumed_after: int | None = None

    @classmethod
    def open(
        cls, ledger: Any, path: str | Path | None, *, resumed_after: int | None = None
    ) -> Journaled:
        """Open (or start) the journal at ``path`` and replay its charges into ``ledger``.

        A journal left by an earlier run in the same directory is continued: its charges
        were releases of the same clients' data, so they stay on the ledger.

        Raises:
            JournalError: The journal belongs to another mechanism, or a resumed run's
                checkpoint has a ledger but its journal is missing.
        """
        file = None if path is None else Path(path)
        if file is not None:
            _heal(file)
        entries = [] if file is None else read(file)
        sessions = [e for e in entries if e.get("kind") == "session"]
        mode = ledger.header()["mode"]
        if sessions and sessions[-1]["ledger"].get("mode") != mode:
            raise JournalError(
                f"{file}: the privacy journal of a {sessions[-1]['ledger'].get('mode')!r} "
                f"mechanism; this run's is {mode!r}: use another run directory"
            )
        charges = [e for e in entries if e.get("kind") == "charge"]
        header = ledger.header()
        priced = [s["ledger"] for s in sessions]
        if charges and not _joint([*priced, header]):
            free = _FREE.get(str(header.get("mode")), set())
            changed = sorted(
                {k for h in priced for k in h if k not in free and h.get(k) != header.get(k)}
            )
            raise JournalError(
                f"{file}: its privacy charges were priced at other settings than this run's "
                f"({', '.join(changed)}), and this run's ledger would price them at its own; "
                "use a new run directory"
            )
        if charges and resumed_after is None:
            logger.warning(
                "%s holds %d charges of an earlier run on these clients; this run's ε "
                "includes them (use a new run directory for a fresh budget)",
                file,
                len(charges),
            )
        for e in charges:
            ledger.apply(e["charge"])
        out = cls(ledger, file, entries, len(sessions), resumed_after)
        out._write({"kind": "session", "session": out.session, "ledger": ledger.header()})
        return out

    def _write(self, entry: dict[str, Any]) -> None:
        if self.path is not None:
            _append(self.path, entry)
        self.entries.append(entry)

    def record(
        self, participants: Sequence[int], *, server_round: int = 0, attempt: int = 0
    ) -> float:
        """Journal the attempt's charge durably, then spend it; returns ε."""
        charge = self.ledger.charge(participants)
        self._write(
            {
                "kind": "charge",
                "session": self.session,
                "round": server_round,
                "attempt": attempt,
                "charge": charge,
            }
        )
        self.ledger.apply(charge)
        return float(self.ledger.epsilon())

    def lost_attempts(self, server_round: int) -> int:
        """Attempts of ``server_round`` that earlier sessions charged and a crash lost."""
        if self.resumed_after is None or server_round <= self.resumed_after:
            return 0
        return sum(
            1
            for e in self.entries
            if e.get("kind") == "charge"
            and e["session"] < self.session
            and e["round"] == server_round
        )

    @property
    def charges(self) -> int:
        """Charges the journal holds (every session's)."""
        return self._count()

    def _count(self, session: int | None = None) -> int:
        """Charges of ``session`` (of every session when None)."""
        return sum(
            1 for e in self.entries if e.get("kind") == "charge" and session in (None, e["session"])
        )

    def allows_next_round(self) -> bool:
        """The ledger's."""
        return bool(self.ledger.allows_next_round())

    def epsilon(self, *args: Any, **kwargs: Any) -> float:
        """The ledger's ε (with its own arguments), every journaled charge included."""
        return float(self.ledger.epsilon(*args, **kwargs))

    def state(self) -> dict[str, Any]:
        """The ledger's state and how many charges the journal held (for the checkpoint)."""
        return {**self.ledger.state(), "charges": self.charges}

    def restore(self, state: dict[str, Any]) -> None:
        """Check the journal against a checkpoint's ledger (the journal is the truth).

        Raises:
            JournalError: The journal holds fewer charges than the checkpoint's ledger
                had: it was truncated or replaced, and resuming would forget releases.
        """
        saved = int(state.get("charges", 0))
        if self.charges - self._count(self.session) < saved:
            raise JournalError(
                f"{self.path}: the privacy journal holds fewer charges than the checkpoint's "
                f"ledger ({saved}); resuming would forget releases: start a new run"
            )

    def report(self) -> dict[str, Any]:
        """The ledger's report (``summary.json``)."""
        out: dict[str, Any] = self.ledger.report()
        return out

    def __getattr__(self, name: str) -> Any:
        """Anything else is the ledger's (``participations``, ``rounds``, ...)."""
        if name == "ledger":  # not yet set (copy, pickle): no recursion
            raise AttributeError(name)
        return getattr(self.ledger, name)


# Header keys that do not change what a charge costs (the charges carry the rest).
_SETTINGS = {"max_epsilon", "planned_rounds", "delta"}
_FREE = {
    "central": _SETTINGS
    | {"noise_multiplier", "sampling_rate", "population", "sampling"}
    | {"count_noise_multiplier"},
    "local": _SETTINGS | {"noise_multiplier"},
    "distributed": _SETTINGS,
    "dpsgd": _SETTINGS,
}


def _joint(headers: Sequence[Mapping[str, Any]]) -> bool:
    """Whether charges of ledgers with these headers can be spent on one ledger."""
    modes = {h.get("mode") for h in headers}
    if len(modes) != 1:
        return False
    free = _FREE[str(modes.pop())]
    kept = [{k: v for k, v in h.items() if k not in free} for h in headers]
    return all(k == kept[0] for k in kept)


def compose_runs(journals: Sequence[Sequence[Mapping[str, Any]]]) -> dict[str, Any] | None:
    """The privacy cost of several runs on the same clients (a sweep's trials), composed.

    A sweep that picks the best of K trials releases a model chosen by looking at all K,
    so the pick costs the composition of every trial's releases (at most; Papernot &
    Steinke, ICLR 2022, bound random-length searches more tightly), not the picked
    trial's own ε. Runs of one mechanism whose charges price alike are spent on one
    ledger (their rounds, or each client's releases, compose exactly as in one run, at
    the smallest δ); otherwise their ε and δ add up (basic composition). None when no
    run was charged anything.
    """
    ledgers = [(replay(entries), entries) for entries in journals if entries]
    if not ledgers:
        return None
    headers = [ledger.header() for ledger, _ in ledgers]
    delta = min(float(h["delta"]) for h in headers)
    mode = str(headers[0]["mode"])
    if _joint(headers):
        joint = LEDGERS[mode].from_header({**headers[-1], "delta": delta})
        try:
            for _, entries in ledgers:
                for e in entries:
                    if e.get("kind") == "charge":
                        joint.apply(e["charge"])
            report: dict[str, Any] = joint.report()
        except ValueError:  # e.g. central rounds of Poisson and fixed-size sampling
            report = {}
        if report:
            return {
                "epsilon": report["epsilon"],
                "delta": delta,
                "mode": mode,
                "runs": len(ledgers),
                "composition": "joint",
                "accountant": report["accountant"],
                **({"epsilon_pld": report["epsilon_pld"]} if "epsilon_pld" in report else {}),
            }
    each = [ledger.report() for ledger, _ in ledgers]
    return {
        "epsilon": float(sum(r["epsilon"] for r in each)),
        "delta": float(sum(float(r["delta"]) for r in each)),
        "mode": mode if len({h["mode"] for h in headers}) == 1 else "mixed",
        "runs": len(ledgers),
        "composition": "basic (the runs' mechanisms differ)",
        "accountant": "sum of each run's ε",
    }
