"""Warm runs: ``fedray up`` keeps a local Ray instance with hosts that have TensorFlow loaded.

``fedray up`` starts a Ray head of its own (its own temp dir, ports and auth token) and
one detached :class:`WarmHost` per CPU, each of which imports TensorFlow and Keras and
runs one tiny traced step, so the expensive parts of a host's start are paid once.
``fedray run CONFIG --address fedray`` (or ``FEDRAY_ADDRESS=fedray``) joins that instance
and loads its hosts with the run's spec; at the end it unloads them.

Isolation: a host is loaded by calling the same constructor a cold host runs, after
dropping every attribute the previous run left and clearing Keras's global state, so a
warm run equals a cold one bit for bit (same seeds, same host layout). The hosts serve
one run at a time: a :class:`WarmRegistry` records which driver holds them (a dead
driver's hold lapses) and each host's current spec, so a warm host that crashes is
restarted by Ray and reloads the same spec, as a cold one would.

``fedray down`` kills exactly the processes of that instance (its temp dir, its client
server's port), never ``ray stop``, which would stop every Ray instance on the machine.
"""

from __future__ import annotations

import contextlib
import gc
import json
import logging
import os
import socket
import subprocess
import sys
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from fedray.client.spec import HostSpec
from fedray.errors import FedrayError
from fedray.runtime.connect import free_ports, write_token
from fedray.runtime.head import check_temp_dir, kill_instance
from fedray.runtime.ray_host import RayClientHost

logger = logging.getLogger(__name__)

ADDRESS = "fedray"
"""``runtime.address`` (``--address``) of the warm instance."""
ENV = "FEDRAY_ADDRESS"
"""Set to ``fedray`` to use the warm instance when ``runtime.address`` is unset."""
DIR_ENV = "FEDRAY_UP_DIR"
"""Where ``fedray up`` keeps its state (default ``~/.cache/fedray/up``)."""
NAMESPACE = "fedray-warm"
REGISTRY = "registry"


def state_dir() -> Path:
    """The warm instance's state directory (``$FEDRAY_UP_DIR``, else ``~/.cache/fedray/up``).

    ``--state-dir`` of ``fedray up``, ``down`` and ``run`` sets it (:func:`use_state_dir`).
    """
    default = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "fedray" / "up"
    return Path(os.environ.get(DIR_ENV) or default)


def use_state_dir(path: str | os.PathLike[str]) -> None:
    """Make ``path`` this process's :func:`state_dir` (``--state-dir``): one instance per folder."""
    os.environ[DIR_ENV] = os.path.abspath(path)


@dataclass(frozen=True)
class UpState:
    """What ``fedray up`` started: enough to join it and to stop exactly it."""

    address: str
    temp_dir: str
    client_port: int
    cpus: float
    hosts: int
    threads: int

    def save(self) -> None:
        """Write ``up.json`` into :func:`state_dir`."""
        (state_dir() / "up.json").write_text(json.dumps(asdict(self), indent=2))

    @classmethod
    def load(cls) -> UpState | None:
        """The running instance's state, or None when none was started."""
        path = state_dir() / "up.json"
        if not path.is_file():
            return None
        return cls(**json.loads(path.read_text()))


def resolve_address(address: str | None) -> str | None:
    """``runtime.address``, or ``$FEDRAY_ADDRESS`` when it is unset.

    >>> resolve_address("auto"), resolve_address(None) if ENV not in os.environ else None
    ('auto', None)
    """
    return address if address is not None else os.environ.get(ENV) or None


def auth_env(token: str) -> dict[str, str]:
    """The environment that lets a Ray client into the warm instance (token auth)."""
    return {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": token, "RAY_USAGE_STATS_ENABLED": "0"}


def _token() -> str:
    return (state_dir() / "token").read_text().strip()


def join() -> str:
    """Point this process's Ray client at the warm instance; its GCS address.

    Raises:
        FedrayError: No warm instance is up.
    """
    state = UpState.load()
    if state is None:
        raise FedrayError(
            f"runtime.address = {ADDRESS!r}: no warm instance is up; start one with "
            "`fedray up` (or unset runtime.address / FEDRAY_ADDRESS for a private instance)"
        )
    os.environ.update(auth_env(_token()))
    return state.address


class WarmRegistry:
    """Which driver holds the warm hosts, and each host's current spec (for restarts)."""

    def __init__(self) -> None:
        self.owner: tuple[str, int] | None = None
        self.loaded: dict[int, tuple[HostSpec, str, int]] = {}

    def acquire(self, owner: tuple[str, int]) -> str | None:
        """Hold the hosts for ``owner`` (host name, pid); else why they are busy."""
        if self.owner is not None and self.owner != owner and _alive(self.owner):
            return f"the warm hosts are busy with another run (pid {self.owner[1]})"
        self.owner, self.loaded = owner, {}
        return None

    def put(self, index: int, spec: HostSpec, store: str) -> None:
        """Host ``index`` now serves ``spec`` (a restart reloads it)."""
        self.loaded[index] = (spec, store, index)

    def current(self, index: int) -> tuple[HostSpec, str, int] | None:
        """What host ``index`` serves, or None."""
        return self.loaded.get(index)

    def release(self, owner: tuple[str, int]) -> None:
        """``owner``'s run is over."""
        if self.owner == owner:
            self.owner, self.loaded = None, {}


def _alive(owner: tuple[str, int]) -> bool:
    """Whether the driver ``owner`` still runs (a different machine's is assumed alive)."""
    import psutil

    host, pid = owner
    return host != socket.gethostname() or psutil.pid_exists(pid)


def _warm_up_spec(threads: int) -> HostSpec:
    """A one-client hello-world host: loading it runs every code path a run's host will.

    The data, the model, the traced loops, and AutoGraph's first conversion (~0.5 s: its
    parser and transformers load) are paid at ``fedray up``, not by the first run.
    """
    from fedray import config
    from fedray.aggregators import Mean

    cfg = config.load({"data": {"dataset": "linreg", "num_clients": 1}, "rounds": 1})
    return HostSpec.from_config(cfg, (0,), Mean(), threads=threads, with_test_set=True)


class WarmHost(RayClientHost):
    """A client host that imports TensorFlow once and then serves run after run.

    It starts by loading and unloading a one-client hello-world (:func:`_warm_up_spec`);
    :meth:`load` runs the cold host's constructor with a run's spec, and :meth:`unload`
    drops everything that run left.
    """

    def __init__(self, index: int, threads: int) -> None:
        from fedray.client.devices import configure_tensorflow

        self._index, self._threads = index, threads
        configure_tensorflow(threads, verbose=False)
        self.load(_warm_up_spec(threads))
        self._check()
        self.unload()
        import ray

        loaded = ray.get(ray.get_actor(REGISTRY, namespace=NAMESPACE).current.remote(index))
        if loaded is not None:  # restarted by Ray while a run held it
            self.load(*loaded)

    def warm(self) -> dict[str, Any]:
        """Facts of the empty host."""
        return {"pid": os.getpid(), "index": self._index, "threads": self._threads}

    def load(self, spec: HostSpec, store: str = "", index: int = 0) -> None:
        """Become a host of ``spec``: exactly what a cold host's constructor does."""
        self.unload()
        RayClientHost.__init__(self, spec, store, index)

    def unload(self) -> None:
        """Drop the run: its data, model, client state and Keras's global state."""
        keep = {"_index": self._index, "_threads": self._threads}
        self.__dict__.clear()
        self.__dict__.update(keep)
        import keras

        keras.backend.clear_session()
        gc.collect()


def acquire(specs: list[HostSpec], store: str) -> list[Any]:
    """Hold the warm hosts for this driver and load ``specs`` into them; their handles.

    Raises:
        FedrayError: Busy with another run, or the run needs more hosts than are warm
            (``runtime.gpus_per_host`` is refused by the rules, :mod:`fedray.strategy.rules`).
    """
    import ray

    state = UpState.load()
    warm = state.hosts if state is not None else 0
    if len(specs) > warm:
        raise FedrayError(
            f"runtime.address = {ADDRESS!r}: the run needs {len(specs)} hosts but `fedray up` "
            f"started {warm}; pack more clients per host (runtime.clients_per_actor) or "
            f"restart it with `fedray up --hosts {len(specs)}`"
        )
    registry = ray.get_actor(REGISTRY, namespace=NAMESPACE)
    busy = ray.get(registry.acquire.remote(owner()))
    if busy:
        raise FedrayError(f"runtime.address = {ADDRESS!r}: {busy}; wait for it to finish")
    hosts = [ray.get_actor(f"host-{i}", namespace=NAMESPACE) for i in range(len(specs))]
    ray.get([registry.put.remote(i, spec, store) for i, spec in enumerate(specs)])
    ray.get(
        [
            h.load.remote(spec, store, i)
            for i, (h, spec) in enumerate(zip(hosts, specs, strict=True))
        ]
    )
    return hosts


def release(hosts: list[Any]) -> None:
    """Unload the hosts and give them back."""
    import ray

    with contextlib.suppress(ray.exceptions.RayError):  # a host that fails to unload
        ray.get([h.unload.remote() for h in hosts], timeout=60)  # is unloaded by the next load
    with contextlib.suppress(ray.exceptions.RayError, ValueError):
        ray.get(ray.get_actor(REGISTRY, namespace=NAMESPACE).release.remote(owner()))


def owner() -> tuple[str, int]:
    """This driver, as the registry knows it."""
    return socket.gethostname(), os.getpid()


def up(
    num_cpus: int | None = None,
    hosts: int | None = None,
    timeout_s: float = 180,
    *,
    temp_dir: str | os.PathLike[str] | None = None,
) -> UpState:
    """Start the warm instance: a Ray head of its own and ``hosts`` warm hosts.

    Its state goes to :func:`state_dir`; Ray's temp dir is ``temp_dir`` (checked by
    :func:`check_temp_dir`; default a new ``/tmp/fedray-up-*``).

    Raises:
        FedrayError: One is up already, ``temp_dir`` is unusable, or Ray did not start.
    """
    if (state := UpState.load()) is not None and Path(state.temp_dir).is_dir():
        raise FedrayError(
            f"a warm instance is up already ({state.address}, {state.hosts} hosts); "
            "`fedray down` stops it"
        )
    temp = check_temp_dir(temp_dir) if temp_dir is not None else None
    cpus = num_cpus or os.cpu_count() or 1
    count = hosts or cpus
    if count < 1:
        raise FedrayError(f"--hosts {hosts}: expected an integer >= 1")
    try:
        state_dir().mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise FedrayError(
            f"--state-dir {state_dir()}: cannot create it ({exc.strerror}); expected a "
            "writable directory"
        ) from None
    write_token(state_dir() / "token", force=True)  # a fresh one, mode 0600
    token = _token()
    temp_dir = temp or tempfile.mkdtemp(prefix="fedray-up-", dir="/tmp")  # short: socket paths
    Path(temp_dir).mkdir(exist_ok=True)
    gcs, client, agent, nm, om, metrics, rte, agrpc, dash = free_ports(9)
    ray_cli = str(Path(sys.executable).parent / "ray")
    cmd = [
        ray_cli,
        "start",
        "--head",
        f"--port={gcs}",
        f"--num-cpus={cpus}",
        f"--temp-dir={temp_dir}",
        "--include-dashboard=false",
        f"--dashboard-port={dash}",
        f"--ray-client-server-port={client}",
        f"--dashboard-agent-listen-port={agent}",
        f"--node-manager-port={nm}",
        f"--object-manager-port={om}",
        f"--metrics-export-port={metrics}",
        f"--runtime-env-agent-port={rte}",
        f"--dashboard-agent-grpc-port={agrpc}",
        "--disable-usage-stats",
    ]
    env = {**os.environ, **auth_env(token)}
    state = UpState(f"127.0.0.1:{gcs}", temp_dir, client, float(cpus), count, max(1, cpus // count))
    state.save()
    res = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout_s)
    if res.returncode != 0:
        down()
        raise FedrayError(f"fedray up: `ray start` failed: {(res.stderr or res.stdout)[-500:]}")
    try:
        _start_hosts(state, token)
    except BaseException:
        down()
        raise
    return state


def _start_hosts(state: UpState, token: str) -> None:
    os.environ.update(auth_env(token))  # before Ray is imported: it reads them then
    import ray

    ray.init(
        address=state.address, namespace=NAMESPACE, logging_level=logging.ERROR, log_to_driver=False
    )
    try:
        ray.remote(WarmRegistry).options(name=REGISTRY, lifetime="detached", num_cpus=0).remote()
        warm = ray.remote(WarmHost)
        share = min(1.0, state.cpus / state.hosts)
        hosts = [
            warm.options(
                name=f"host-{i}",
                lifetime="detached",
                num_cpus=share,
                max_restarts=-1,
                max_task_retries=0,
            ).remote(i, state.threads)
            for i in range(state.hosts)
        ]
        ray.get([h.warm.remote() for h in hosts])
    finally:
        ray.shutdown()


STATE_FILES = ("up.json", "token")
"""What ``fedray up`` writes into :func:`state_dir`, and all that ``fedray down`` deletes."""


def down(temp_dir: str | None = None) -> int:
    """Stop the warm instance, or the Ray head of ``temp_dir``: exactly its processes.

    ``temp_dir`` names a head by its ``--temp-dir`` (``fedray up``'s or one started with
    ``ray start --head --temp-dir``). The warm instance's files go from :func:`state_dir`,
    and the folder too when nothing else is in it (a ``--state-dir`` may be a folder of
    the user's). Returns how many processes were killed.

    Raises:
        FedrayError: ``temp_dir`` is no Ray temp dir (it holds no ``session_*``).
    """
    state = UpState.load()
    if temp_dir is not None:
        temp = os.path.abspath(temp_dir)
        if not any(Path(temp).glob("session_*")):
            raise FedrayError(
                f"--temp-dir {temp_dir}: no Ray head's temp dir (no session_* in it); expected "
                "the --temp-dir of a head started with `ray start --head --temp-dir DIR` or "
                "`fedray up`"
            )
        if state is None or os.path.abspath(state.temp_dir) != temp:
            return kill_instance(temp)
    if state is None:
        return 0
    killed = kill_instance(state.temp_dir, state.client_port)
    for name in STATE_FILES:
        (state_dir() / name).unlink(missing_ok=True)
    with contextlib.suppress(OSError):  # not empty: someone else's files stay
        state_dir().rmdir()
    return killed
