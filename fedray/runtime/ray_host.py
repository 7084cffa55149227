"""The host as a Ray actor: where it may run, what only a process can do, its shards.

:class:`RayClientHost` is the plain :class:`~fedray.client.host.ClientHost` plus its
node id and a real process crash (for fault injection); :func:`host_options` are its
scheduling options (data placement, spreading); :class:`ShardStore` hands restarted
hosts their in-memory shards again.
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import replace
from typing import Any

from fedray.client.host import ClientHost
from fedray.client.spec import HostSpec
from fedray.config import Config
from fedray.errors import ConfigError

logger = logging.getLogger(__name__)


class RayClientHost(ClientHost):
    """The plain host plus what only a Ray actor can do: know its node, really crash.

    With in-memory shards (``fedray.fit``), ``store`` names a :class:`ShardStore`
    that hands host ``index`` its shards' object-store refs; the host reads the shards
    itself, at start and after every restart. (A name, not a handle: Ray warns about
    any handle or ref among a restartable actor's constructor arguments.)
    """

    def __init__(self, spec: HostSpec, store: str = "", index: int = 0) -> None:
        if spec.source is not None:
            import ray

            refs = ray.get(ray.get_actor(store).refs.remote(index))
            spec = replace(spec, source=spec.source.filled(ray.get(refs)))
        super().__init__(spec)

    def ready(self) -> dict[str, Any]:
        """The plain host's facts plus the Ray node it runs on (and its GPUs, if any)."""
        import ray

        context = ray.get_runtime_context()
        facts = {**super().ready(), "node_id": context.get_node_id()}
        if self.spec.gpu is not None:
            facts["gpu_ids"] = [str(g) for g in context.get_accelerator_ids().get("GPU", [])]
        return facts

    def _host_fault(self, kind: str, cid: int) -> None:
        logger.debug("simulated host %s while planning client %d", kind, cid)
        if kind == "hang":
            time.sleep(10**6)  # until the driver's round deadline kills and restarts it
        os._exit(1)  # the whole host process dies; Ray restarts it (runtime.max_restarts)


class ShardStore:
    """Keeps the object-store refs of ``fedray.fit``'s shards, per host.

    The refs travel inside a list, so Ray leaves them unresolved; a host asks for its
    own when it starts. Hosts then take no object-store constructor arguments, which
    Ray could not give back to a restarted host once they went out of scope.
    """

    def __init__(self, refs: list[list[Any]]) -> None:
        self._refs = refs

    def refs(self, index: int) -> list[Any]:
        """Host ``index``'s shard refs (then the test set's, for host 0)."""
        return self._refs[index]


def host_options(config: Config, client_ids: tuple[int, ...]) -> dict[str, Any]:
    """Ray scheduling options of one host: data placement, spreading and its GPU share.

    ``data.placement`` maps a client id to a custom resource that only the node(s)
    holding that client's data advertise (``ray start --resources='{"site_a": 1}'``);
    the host asks for a sliver of it, so Ray can only place it there. Clients packed
    into one host must share one placement.
    """
    placement = config.data.placement or {}
    wanted = {placement.get(c, "<unplaced>") for c in client_ids}
    if placement and len(wanted) > 1:
        raise ConfigError(
            f"clients {list(client_ids)} share one actor but data.placement puts them on "
            f"{sorted(wanted)}; set runtime.clients_per_actor=1 or place them together"
        )
    wanted.discard("<unplaced>")
    options: dict[str, Any] = {}
    if wanted:
        options["resources"] = {wanted.pop(): 0.001}
    if config.runtime.scheduling == "spread":
        options["scheduling_strategy"] = "SPREAD"
    if config.runtime.gpus_per_host is not None:
        options["num_gpus"] = config.runtime.gpus_per_host
    return options
