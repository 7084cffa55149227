"""Results of host calls as they finish: a client's failure stays its own.

Layer 3: the Ray executor's ``ray.wait`` loop over in-flight host calls, with the
round's deadline and the re-execution of a dead host's clients (Spark's lost task,
not a lost job).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any

from fedray.errors import FedrayError, one_line
from fedray.records import HostRecovery, Metrics, merge_means
from fedray.runtime.plan import MAX_RERUNS, fail_all, tag
from fedray.runtime.supervisor import Supervisor

logger = logging.getLogger(__name__)


def unwrap(exc: BaseException) -> BaseException:
    """The user-facing cause of a Ray task error."""
    cause = getattr(exc, "cause", None)
    return cause if isinstance(cause, BaseException) else exc


def start_error(exc: BaseException, what: str) -> FedrayError:
    """The error to raise when ``what`` failed to start.

    A fedray error as it is (its own one line: a bad config, missing data); anything
    else named after ``what``.
    """
    cause = unwrap(exc)
    if isinstance(cause, FedrayError):
        return cause
    return FedrayError(f"{what} failed to start: {one_line(cause)}")


def stream(
    ray: Any,
    hosts: Sequence[Any],
    supervisor: Supervisor,
    calls: dict[Any, tuple[int, list[int]]],
    what: str,
    timeout_s: float | None = None,
    rerun: Callable[[int, list[int], float | None], tuple[Any, int] | None] | None = None,
) -> Iterator[Any]:
    """Yield results as they finish; a client's failure stays its own.

    ``calls`` maps each call's ref to (the host it runs on, its clients). A host that
    dies under a call has its clients run again by ``rerun(host, ids, deadline)``
    (which returns the new call's ref and host, or None when it cannot): the round
    loses nothing but time. Without ``rerun``, or when it gives up, those clients fail.
    With ``timeout_s``, whatever has not arrived by the deadline is dropped and counted
    as failed, and its host is killed so Ray restarts it: a hung client can never block
    the run. When the consumer stops early (over-commitment), calls still running are
    left to finish unseen.
    """
    pending = list(calls)
    deadline = None if timeout_s is None else time.monotonic() + timeout_s
    while pending:
        left = None if deadline is None else max(0.0, deadline - time.monotonic())
        ready, pending = ray.wait(pending, num_returns=1, timeout=left)
        if not ready:  # the deadline passed
            for ref in pending:
                index, ids = calls[ref]
                ray.kill(hosts[index], no_restart=False)
                supervisor.mark_down(index)
                reason = f"no result within runtime.round_timeout_s={timeout_s:g}"
                yield from fail_all(ids, reason, "timeout", index)
            return
        for ref in ready:
            index, ids = calls.pop(ref)
            try:
                results = ray.get(ref)
            except (ray.exceptions.RayActorError, ray.exceptions.OutOfMemoryError) as exc:
                # The process is gone: it crashed, its node died, or Ray's memory
                # monitor killed it near OOM. Ray restarts it; its clients run again.
                supervisor.mark_down(index)
                reason = f"host {index} died during {what} ({type(exc).__name__})"
                logger.debug("%s: %s", reason, exc)
                again = None if rerun is None else rerun(index, ids, deadline)
                if again is not None:
                    yield HostRecovery(index, tuple(ids), reason)
                    calls[again[0]] = (again[1], ids)
                    pending.append(again[0])
                    continue
                results = fail_all(ids, reason, "host", index)
            except ray.exceptions.RayError as exc:
                reason = f"host {index} failed during {what}: {one_line(unwrap(exc))}"
                logger.debug("%s", reason, exc_info=exc)
                results = fail_all(ids, reason, "error", index)
            yield from tag(results, index)


def evaluate_server(
    ray: Any,
    hosts: Sequence[Any],
    supervisor: Supervisor,
    params: Any,
    evaluators: int,
    batches: int,
) -> Metrics:
    """The server test set's metrics, from hosts ``0 .. evaluators - 1`` ({} when down).

    ``batches`` is how many batches host 0 can share out (0: its metrics are not all
    means). With more than one batch and evaluator, each host up takes parts of the set
    side by side (``evaluate_part``, added by :func:`~fedray.records.merge_means`); a
    part whose host fails goes to another. Otherwise host 0 evaluates all of it.
    """
    of = max(1, min(evaluators, batches))
    parts = of > 1
    done: dict[int, Any] = {}
    for _ in range(MAX_RERUNS + 1):
        up = [h for h in range(of) if supervisor.unavailable(h) is None]
        if not up:
            break
        calls = {p: up[k % len(up)] for k, p in enumerate(p for p in range(of) if p not in done)}
        refs = {
            p: hosts[h].evaluate_part.remote(params, p, of)
            if parts
            else hosts[h].evaluate.remote(params)
            for p, h in calls.items()
        }
        for p, ref in refs.items():
            try:
                done[p] = ray.get(ref)
            except ray.exceptions.RayActorError as exc:
                logger.warning("evaluation: host %d failed (%s)", calls[p], type(exc).__name__)
                supervisor.mark_down(calls[p])
        if len(done) == of:  # every part: host 0's metrics, or the parts' batches merged
            if not parts:
                return dict(done[0])
            states = [done[p] for p in range(of)]
            return merge_means(states) if all(s is not None for s in states) else {}
    logger.warning("evaluation skipped: the hosts holding the test set are down")
    return {}
