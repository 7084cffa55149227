"""Connecting to Ray: a private local instance, an existing cluster, or a simulated one.

fedray never attaches to a stranger's cluster unless told to (``--address``); an
address where no head answers fails within seconds, never a hang. Inside a Ray job
(``ray job submit -- fedray run ...``) the job's own cluster is the default.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
from collections.abc import Iterator
from typing import Any

from fedray.errors import FedrayError, one_line

logger = logging.getLogger(__name__)


CONNECT_TIMEOUT_S = 3.0
"""Default ``runtime.connect_timeout_s``: how long the head at ``runtime.address`` may take."""

_DEFAULT_GCS_PORT = 6379
_NOT_A_HEAD = (
    "expected host:port of a Ray head's GCS (`ray start --head --port=PORT`, default "
    f"{_DEFAULT_GCS_PORT}), or leave runtime.address unset for a private local instance"
)


def probe_address(address: str, timeout_s: float = CONNECT_TIMEOUT_S) -> None:
    """Fail within ``timeout_s`` unless a Ray head's GCS answers at ``host:port``.

    ``ray.init`` retries an address that does not answer as a GCS for minutes, printing
    Ray's C++ warnings. So first a TCP connection (a refused one fails at once), then one
    gRPC call of the GCS's own (``GetClusterId``, over Ray's channel with its TLS and
    token settings), with ``timeout_s`` as its deadline. Its answer tells a GCS (or one
    that refuses this client's auth token) from a listener that never answers, an HTTP
    server (the dashboard, port 8265) or another gRPC server (Ray's client server, port
    10001). Ray connects to a loopback address as this machine's IP, so when that
    differs, it is asked too. ``auto`` and ``ray://`` addresses are left to Ray, which
    fails fast when no cluster is found.

    Raises:
        FedrayError: The address is malformed, or no Ray head answers there: one line
            naming ``address`` as given.
    """
    if address == "auto" or "://" in address:
        return
    host, sep, port = address.rpartition(":")
    if not sep or not host or not port.isdigit():
        raise FedrayError(
            f"runtime.address = {address!r}: expected 'auto' or host:port, e.g. 10.0.0.5:6379"
        )
    try:
        with socket.create_connection((host.strip("[]"), int(port)), timeout=timeout_s):
            pass
    except OSError as exc:
        raise FedrayError(
            f"runtime.address = {address!r}: no Ray head answers there within {timeout_s:g} s "
            f"({exc.strerror or exc}); start one with `ray start --head --port={port}` "
            "or leave runtime.address unset for a private local instance"
        ) from None
    why = _ask_gcs(address, timeout_s)
    if why is None:
        resolved = _ray_resolved(address)
        if resolved != address and (why := _ask_gcs(resolved, timeout_s)) is not None:
            why = f"at {resolved}, where Ray connects for a loopback address: {why}"
    if why is not None:
        raise FedrayError(f"runtime.address = {address!r}: {why}")


def _ray_resolved(address: str) -> str:
    """The address Ray's client connects to (a loopback host becomes this machine's IP)."""
    from ray._private import services

    try:
        return str(services.canonicalize_bootstrap_address(address) or address)
    except Exception:  # Ray's own checks report a bad address later
        return address


def _ask_gcs(address: str, timeout_s: float) -> str | None:
    """None when a Ray GCS answers at ``address`` within ``timeout_s``, else what answered.

    The answer completes "runtime.address = 'host:port': ...".
    """
    import grpc
    from ray._private.gcs_utils import create_gcs_channel
    from ray.core.generated import gcs_service_pb2, gcs_service_pb2_grpc

    channel = create_gcs_channel(address)
    try:
        stub = gcs_service_pb2_grpc.NodeInfoGcsServiceStub(channel)
        stub.GetClusterId(gcs_service_pb2.GetClusterIdRequest(), timeout=timeout_s)
        return None
    except grpc.RpcError as exc:
        code, details = exc.code(), str(exc.details() or "")
    finally:
        channel.close()
    if code == grpc.StatusCode.UNAUTHENTICATED:
        return (
            "the Ray head there refused this client's auth token; expected its token in "
            'the environment: export RAY_AUTH_MODE=token RAY_AUTH_TOKEN="$(cat TOKEN_FILE)"'
        )
    if code == grpc.StatusCode.DEADLINE_EXCEEDED:
        return (
            f"something accepts connections there but did not answer as a Ray head within "
            f"{timeout_s:g} s (runtime.connect_timeout_s); {_NOT_A_HEAD}"
        )
    if "http1" in details:
        return (
            "an HTTP server answers there, not a Ray head (the dashboard, default port 8265, "
            "takes `ray job submit --address http://HOST:8265`); " + _NOT_A_HEAD
        )
    if code == grpc.StatusCode.UNIMPLEMENTED:
        return (
            "a gRPC server answers there, but not a Ray head's GCS (Ray's client server, "
            "default port 10001, takes ray://HOST:10001); " + _NOT_A_HEAD
        )
    said = details.rpartition("last error: ")[2].strip().partition("\n")[0] or code.name
    if "refused" in said.lower():
        return f"nothing listens there ({said[:160]}); {_NOT_A_HEAD}"
    return f"something answers there, but not as a Ray head ({said[:160]}); {_NOT_A_HEAD}"


def write_token(path: str | os.PathLike[str], *, force: bool = False) -> str:
    """Write a new Ray auth token (64 hex digits) to ``path``, readable by its owner only.

    ``cluster.yaml`` ships it to every node (``~/.ray/auth_token``) and starts Ray with
    ``RAY_AUTH_MODE=token``, so no one without the file can reach the cluster. The file
    is created with mode 0600 before the token is written.

    Raises:
        FedrayError: ``path`` exists and ``force`` is off (a running cluster uses it).
    """
    import secrets

    flags = os.O_WRONLY | os.O_CREAT | (os.O_TRUNC if force else os.O_EXCL)
    try:
        fd = os.open(path, flags, 0o600)
    except FileExistsError:
        raise FedrayError(
            f"cluster-token --out {os.fspath(path)!r}: the file exists (a cluster may use it); "
            "pass --force to replace it"
        ) from None
    except OSError as exc:
        raise FedrayError(
            f"cluster-token --out {os.fspath(path)!r}: cannot write it ({exc.strerror}); "
            "expected a path in an existing, writable directory"
        ) from None
    with os.fdopen(fd, "w") as f:
        os.fchmod(f.fileno(), 0o600)
        f.write(secrets.token_hex(32) + "\n")
    return os.fspath(path)


def route_worker_errors() -> None:
    """Send the notices Ray's driver prints for dead workers to the debug log.

    A Ray driver prints a paragraph to the console whenever a worker dies ("A worker
    died or was killed while executing a task ..."), from a thread no option turns
    off. fedray reports a lost host in its round summary and ``failures.csv``, so
    these notices go to the ``ray.raylet`` logger at debug level instead. Relies on
    Ray's private ``print_to_stdstream`` (Ray 2.60); a Ray without it is left alone.
    """
    import ray._private.worker as ray_worker

    original = getattr(ray_worker, "print_to_stdstream", None)
    if original is None or getattr(original, "fedray_routed", False):
        return
    raylet = logging.getLogger("ray.raylet")

    def route(data: dict[str, Any], ignore_prefix: bool) -> None:
        if data.get("pid") == "raylet":
            for line in data.get("lines", []):
                raylet.debug("%s", line)
            return
        original(data, ignore_prefix)

    route.fedray_routed = True  # type: ignore[attr-defined]
    ray_worker.print_to_stdstream = route


def free_ports(n: int) -> list[int]:
    """``n`` distinct TCP ports no process listens on now (held together while chosen).

    >>> len(set(free_ports(3)))
    3
    """
    socks = [socket.socket() for _ in range(n)]
    try:
        for s in socks:
            s.bind(("", 0))
        return [int(s.getsockname()[1]) for s in socks]
    finally:
        for s in socks:
            s.close()


@contextlib.contextmanager
def own_agent_port() -> Iterator[int | None]:
    """Give the private instance's dashboard agent a free port instead of Ray's fixed 52365.

    ``ray.init`` offers no option for it, and when another Ray instance on the machine
    (``fedray up``, a second run, a parallel test) already listens on 52365, the agent
    retries with backoff for 3.3 s, during which the raylet, and so ``ray.init``, waits.
    This sets the default of Ray's private ``RayParams`` for the duration of the call
    (Ray 2.60); a Ray without that parameter is left alone. Yields the port, or None.
    """
    import inspect

    from ray._private import parameter

    init = parameter.RayParams.__init__
    if "dashboard_agent_listen_port" not in inspect.signature(init).parameters:
        yield None
        return
    port = free_ports(1)[0]

    def with_port(self: Any, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("dashboard_agent_listen_port", port)
        init(self, *args, **kwargs)

    parameter.RayParams.__init__ = with_port
    try:
        yield port
    finally:
        parameter.RayParams.__init__ = init


JOB_ENV = "RAY_JOB_CONFIG_JSON_ENV_VAR"
"""Set by Ray's job supervisor in a submitted job's entrypoint (with ``RAY_ADDRESS``)."""


def job_address() -> str | None:
    """The cluster of the Ray job this process is the entrypoint of, or None outside a job.

    >>> job_address() if JOB_ENV not in os.environ else None
    """
    if JOB_ENV not in os.environ:
        return None
    return os.environ.get("RAY_ADDRESS") or "auto"


def connect(
    address: str | None,
    *,
    num_cpus: int | None,
    verbose: bool,
    num_gpus: float | None = None,
    timeout_s: float = CONNECT_TIMEOUT_S,
) -> bool:
    """Start a private local Ray instance (``address`` None) or join a cluster.

    ``address`` ``"fedray"`` joins the warm instance of ``fedray up``
    (:mod:`fedray.runtime.warm`).

    ``num_gpus`` sets the private instance's GPUs (None: Ray detects them); on a machine
    without GPUs a number simulates them, for scheduling only.

    Inside a Ray job, ``address`` None joins the job's cluster: a private instance
    there would inherit the job's runtime environment, which only the job's cluster
    holds, and fail to start its workers.

    ``timeout_s`` bounds the wait for the head at a ``host:port`` ``address``
    (:func:`probe_address`; ``runtime.connect_timeout_s``).

    Returns:
        True when this call started Ray (so the caller should shut it down).
    """
    if address == "fedray":  # its token must be in the environment before Ray is imported
        from fedray.runtime.warm import join

        warm_address = join()
    import ray

    if ray.is_initialized():
        return False
    if address is None and (address := job_address()) is not None:
        logger.info("inside a Ray job: joining its cluster (%s)", address)
    os.environ.setdefault("RAY_DEDUP_LOGS", "1")
    if not verbose:
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    kwargs: dict[str, Any] = {
        "logging_level": logging.INFO if verbose else logging.ERROR,
        "log_to_driver": verbose,
        "configure_logging": True,
    }
    if address == "fedray":  # `fedray up`'s warm instance
        from fedray.runtime.warm import NAMESPACE

        ray.init(address=warm_address, namespace=NAMESPACE, **kwargs)
    elif address is None:
        with own_agent_port():
            ray.init(
                address="local",
                num_cpus=num_cpus or os.cpu_count() or 1,
                include_dashboard=False,
                **({} if num_gpus is None else {"num_gpus": num_gpus}),
                **kwargs,
            )
    else:
        probe_address(address, timeout_s)
        try:
            ray.init(address=address, **kwargs)
        except (ConnectionError, RuntimeError, ValueError) as exc:
            raise FedrayError(
                f"runtime.address = {address!r}: cannot connect to a Ray cluster "
                f"({one_line(exc)}); expected 'auto' or host:port of a running head "
                "(ray start --head)"
            ) from None
    if not verbose:
        route_worker_errors()
    return True


def shutdown() -> None:
    """Shut down the Ray instance this process started."""
    import ray

    ray.shutdown()


@contextlib.contextmanager
def simulated_cluster(nodes: int, cpus_per_node: int = 1) -> Iterator[dict[str, str]]:
    """A multi-node Ray cluster on this machine (``ray.cluster_utils.Cluster``), connected.

    Yields the node names by node id (``head``, ``node-1``, ...); the cluster and the
    connection are shut down on exit. For scaling runs and tests of spreading.
    """
    import ray
    from ray.cluster_utils import Cluster

    if nodes < 1:
        raise ValueError(f"nodes must be >= 1, got {nodes}")
    cluster = Cluster(
        initialize_head=True,
        head_node_args={"num_cpus": cpus_per_node, "include_dashboard": False},
    )
    try:
        for _ in range(nodes - 1):
            cluster.add_node(num_cpus=cpus_per_node)
        ray.init(address=cluster.address, logging_level="ERROR", log_to_driver=False)
        cluster.wait_for_nodes()
        alive = sorted(
            (n for n in ray.nodes() if n["Alive"]), key=lambda n: not n.get("IsHead", False)
        )
        yield {n["NodeID"]: ("head" if i == 0 else f"node-{i}") for i, n in enumerate(alive)}
    finally:
        ray.shutdown()
        cluster.shutdown()
