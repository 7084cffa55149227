"""The host as a Ray actor: where it may run, what only a process can do, its shards.

:class:`RayClientHost` is the plain :class:`~fedray.client.host.ClientHost` plus its
node id and a real process crash (for fault injection); :func:`host_options` are its
scheduling options (data placement, spreading); :class:`ShardStore` hands restarted
hosts their in-memory shards again.
"""

from __future__ import annotations

import logging
import math
import os
import time
from collections.abc import Sequence
from dataclasses import replace
from typing import TYPE_CHECKING, Any

from fedray.client.host import ClientHost
from fedray.client.spec import HostSpec
from fedray.config import Config
from fedray.errors import ConfigError

if TYPE_CHECKING:
    from fedray.aggregators import Aggregator
    from fedray.data.arrays import InMemory
    from fedray.features import Feature
    from fedray.strategy import ClientOptions

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
        # The trainer's tensors hold the rows: the host's table itself, or a concatenation
        # of the shards, which then would hold them a second time (about 1.2 GB per host
        # of a million synthetic clients). The in-process leakage audit reads a plain
        # ClientHost's shards, which it keeps.
        self.shards = {}

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


class ProbeHost(ClientHost):
    """A one-client host on a whole GPU, which measures what a host of the run needs."""

    def measure(self) -> dict[str, float | None]:
        """Train the first client once from the initial weights; the peak GPU memory."""
        from fedray.client.devices import gpu_peak_mb
        from fedray.records import RoundInfo

        cid = next(iter(self.spec.client_ids))
        self.fit([cid], self.initial_params(), RoundInfo(server_round=1, seed=self.spec.seed))
        return {"peak_mb": gpu_peak_mb(), "total_mb": self.ready().get("gpu_total_mb")}


def probe_spec(
    config: Config,
    aggregator: Aggregator,
    client: ClientOptions,
    source: InMemory | None,
    features: tuple[Feature, ...] = (),
) -> HostSpec:
    """The probe's spec: client 0 alone, on a whole GPU with memory growth (its real peak)."""
    runtime = config.runtime.model_copy(update={"gpus_per_host": 1.0, "gpu_memory_growth": True})
    one = config.model_copy(update={"runtime": runtime})
    part = None if source is None else source.for_host((0,), with_test_set=False)
    return HostSpec.from_config(
        one, (0,), aggregator, client=client, source=part, features=features
    )


def measure_gpu_share(spec: HostSpec, cpus: float) -> float:
    """``runtime.gpus_per_host: auto``: start one probe host, measure it, pick the share.

    ``spec`` is a one-client host on a whole GPU with memory growth (:func:`probe_spec`).
    """
    import ray

    from fedray.runtime.stream import start_error

    probe = ray.remote(ProbeHost).options(num_gpus=1, num_cpus=cpus, max_restarts=0).remote(spec)
    try:
        ray.get(probe.ready.remote())
        facts = ray.get(probe.measure.remote())
    except ray.exceptions.RayTaskError as exc:  # a bad config or data: its own one line
        raise start_error(exc, "the probe host of runtime.gpus_per_host=auto") from None
    finally:
        ray.kill(probe)
    return share_from(facts)


def share_from(facts: dict[str, float | None]) -> float:
    """The share for a probe's ``peak_mb`` on a GPU of ``total_mb``; 1 when either is unknown.

    >>> share_from({"peak_mb": 3000.0, "total_mb": 16384.0}), share_from({"peak_mb": None})
    (0.5, 1.0)
    """
    from fedray.client.devices import auto_share, hosts_per_gpu

    peak, total = facts.get("peak_mb"), facts.get("total_mb")
    if peak is None or total is None:
        logger.warning("runtime.gpus_per_host=auto: no GPU memory to measure; one host per GPU")
        return 1.0
    share = auto_share(hosts_per_gpu(total, peak))
    logger.info(
        "runtime.gpus_per_host=auto: a host peaked at %.0f MB of a %.0f MB GPU: %d hosts "
        "per GPU (a share of %g each)",
        peak,
        total,
        round(1 / share),
        share,
    )
    return share


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


def current_trial() -> tuple[Any, list[dict[str, float]]] | None:
    """The placement group this driver runs in, and the bundles reserved for its hosts.

    A sweep trial (:mod:`fedray.sweeps.tune`) is a whole run inside one placement
    group: bundle 0 is the trial's driver, the others its hosts. Outside one: None.
    """
    from ray.util import get_current_placement_group

    pg = get_current_placement_group()
    if pg is None or len(pg.bundle_specs) < 2:
        return None
    return pg, [dict(b) for b in pg.bundle_specs[1:]]


def bundle_resources(bundles: Sequence[dict[str, float]]) -> dict[str, float]:
    """What the host bundles hold together (the executor packs its hosts for that).

    >>> bundle_resources([{"CPU": 0.5}, {"CPU": 0.5, "GPU": 0.25}])
    {'CPU': 1.0, 'GPU': 0.25}
    """
    out: dict[str, float] = {}
    for b in bundles:
        for k, v in b.items():
            out[k] = out.get(k, 0.0) + float(v)
    return out


def reservation() -> tuple[dict[str, float], tuple[Any, list[dict[str, float]]] | None]:
    """What this run's hosts may use: the cluster, or a sweep trial's bundles (and them)."""
    import ray

    trial = current_trial()
    return (ray.cluster_resources() if trial is None else bundle_resources(trial[1])), trial


def host_cpus(
    total_cpus: float, hosts: int, trial: tuple[Any, list[dict[str, float]]] | None = None
) -> float:
    """Each host's ``num_cpus``: an even share, at most 1; in a trial, what its bundle holds.

    Hosts go round-robin over a trial's bundles, so a bundle holds up to
    ``ceil(hosts / bundles)`` of them.

    >>> host_cpus(2.0, 4), host_cpus(8.0, 4), host_cpus(2.0, 3, (None, [{"CPU": 1.0}] * 2))
    (0.5, 1.0, 0.5)
    """
    share = min(1.0, total_cpus / hosts)
    if trial is not None:
        fewest = min(b.get("CPU", 0.0) for b in trial[1])
        share = min(share, fewest / math.ceil(hosts / len(trial[1])))
    return share


def host_options(
    config: Config,
    client_ids: Sequence[int],
    trial: tuple[Any, list[dict[str, float]]] | None = None,
    index: int = 0,
) -> dict[str, Any]:
    """Ray scheduling options of one host: data placement, spreading and its GPU share.

    Inside a sweep trial's placement group (``trial``), host ``index`` goes into bundle
    ``1 + index % bundles``, so a trial's hosts never take another trial's CPUs.

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
    if trial is not None:
        from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

        pg, bundles = trial
        options["scheduling_strategy"] = PlacementGroupSchedulingStrategy(
            pg, placement_group_bundle_index=1 + index % len(bundles)
        )
    elif config.runtime.scheduling == "spread":
        options["scheduling_strategy"] = "SPREAD"
    if config.runtime.gpus_per_host is not None:
        options["num_gpus"] = config.runtime.gpus_per_host
    return options


def start_hosts(
    config: Config,
    specs: Sequence[HostSpec],
    store: str,
    cpus_per_host: float,
    trial: tuple[Any, list[dict[str, float]]] | None = None,
) -> list[Any]:
    """One :class:`RayClientHost` actor per spec (cold: each imports TensorFlow)."""
    import ray

    remote_host = ray.remote(RayClientHost)
    return [
        remote_host.options(
            num_cpus=cpus_per_host,
            max_restarts=config.runtime.max_restarts,  # a restart reloads shards and model
            max_task_retries=0,  # a call in flight when the host died fails its clients
            **host_options(config, spec.client_ids, trial, i),
        ).remote(spec, store, i)
        for i, spec in enumerate(specs)
    ]
