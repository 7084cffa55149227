"""The supervisor of a Ray executor's hosts: which are down, which are dead, and restarts.

A host that crashes (or is killed at a round deadline) is restarted by Ray, up to
``runtime.max_restarts`` times, and reloads its shards and model. The supervisor
tracks hosts that are down, waits (boundedly) for them to answer again, gives a
restarted host its clients' last checkpointed state, and says why a host's clients
cannot run. Layer 3: Ray, imported where it is used.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from typing import Any

logger = logging.getLogger(__name__)


class Supervisor:
    """Restart bookkeeping for ``hosts`` (Ray actor handles), grouped as ``groups``.

    Args:
        hosts: The host actors, by index.
        groups: The client ids each host serves.
        restart_timeout_s: How long to wait for a restarting host before its clients fail.
    """

    def __init__(
        self, hosts: Sequence[Any], groups: Sequence[tuple[int, ...]], restart_timeout_s: float
    ) -> None:
        self.hosts = hosts
        self.groups = groups
        self._restart_timeout_s = restart_timeout_s
        self.down: dict[int, float] = {}  # host index -> when it died or was killed
        self.dead: set[int] = set()  # hosts that will never come back (max_restarts used up)
        self.saved_round: int | None = None  # the checkpoint whose client state hosts saved

    def mark_down(self, index: int) -> None:
        """Host ``index`` died or was killed; Ray restarts it if it can."""
        self.down.setdefault(index, time.monotonic())

    def await_restarts(self, only: set[int] | None = None, until: float | None = None) -> None:
        """Wait until hosts that died (and that Ray restarts) answer again.

        A call sent to a restarting actor fails at once with ``ActorUnavailableError``,
        so each down host is pinged until it answers. The wait is bounded: a host that
        is not back ``runtime.restart_timeout_s`` after it went down (e.g. its node is
        gone and no other node has room) is skipped, its clients counted as failed, and
        it is pinged once per round after that. A host whose ``runtime.max_restarts``
        are used up is dead for good.

        Args:
            only: Wait for these hosts only (a re-dispatch waits for the one it needs).
            until: A ``time.monotonic()`` deadline for the whole wait (the round's).
        """
        import ray

        def waiting() -> list[int]:
            return [i for i in self.down if only is None or i in only]

        while waiting():
            pings = {self.hosts[i].ready.remote(): i for i in waiting()}
            left = 1.0 if until is None else max(0.0, min(1.0, until - time.monotonic()))
            ready, _ = ray.wait(list(pings), num_returns=len(pings), timeout=left)
            for ref in ready:
                index = pings[ref]
                try:
                    ray.get(ref)
                except ray.exceptions.ActorDiedError:
                    logger.warning("client host %d is dead for good (runtime.max_restarts)", index)
                    self.dead.add(index)
                except ray.exceptions.RayActorError:
                    continue  # still restarting
                else:
                    logger.debug("client host %d is back", index)
                    self.restore_host_state(index)
                del self.down[index]
            now = time.monotonic()
            if until is not None and now >= until:
                break
            if not any(now < self.down[i] + self._restart_timeout_s for i in waiting()):
                break
            time.sleep(0.25)
        if waiting() and until is None:
            logger.warning(
                "client hosts %s are still restarting after runtime.restart_timeout_s=%g; "
                "their clients fail until they are back",
                sorted(waiting()),
                self._restart_timeout_s,
            )

    def restore_host_state(self, index: int) -> None:
        """A restarted host reloaded its shards; it reloads its clients' last saved state.

        The state never passes through the driver: the host reads what it saved
        (:mod:`fedray.client.state_store`) for the last checkpoint.
        """
        import ray

        if self.saved_round is not None:
            ray.get(self.hosts[index].load_client_state.remote(self.saved_round))

    def unavailable(self, index: int) -> str | None:
        """Why host ``index``'s clients cannot run now, or None when it is up."""
        if index in self.dead:
            return "host is dead for good (runtime.max_restarts used up)"
        if index in self.down:
            return "host is still restarting (crash or node loss)"
        return None
