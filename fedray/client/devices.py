"""A host's TensorFlow: its thread pools and its share of a GPU.

TensorFlow takes all of a GPU's memory in the first process that touches it, so a
second host on the same GPU would fail to allocate. A host given a fraction of a GPU
(``runtime.gpus_per_host``, Ray's ``num_gpus``: Ray sets ``CUDA_VISIBLE_DEVICES``)
therefore limits its TensorFlow to that share, before TensorFlow's first op: one logical
device whose memory limit is the share of the GPU's total memory, less a reserve for
the CUDA context, or memory growth when ``runtime.gpu_memory_growth`` asks for it. On
a machine where TensorFlow sees no GPU nothing changes and the host runs on the CPU.

Layer 3 (an edge): TensorFlow is imported inside the functions.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import re
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from fedray.tree import ALIGN, aligned_empty

logger = logging.getLogger(__name__)

CUDA_RESERVE_MB = 512
"""Memory a process's CUDA context and kernels take outside TensorFlow's allocator."""

DATA_FRACTION = 0.5
"""The most of a host's GPU memory its data tensors may take; the rest is the model's."""


@dataclass(frozen=True)
class GpuShare:
    """A host's part of one GPU.

    Attributes:
        fraction: Ray's ``num_gpus`` for the host (``runtime.gpus_per_host``); above 1
            the host gets whole GPUs and the first is used.
        memory_growth: Let TensorFlow grow its allocation instead of capping it.
    """

    fraction: float
    memory_growth: bool = False


def memory_limit_mb(total_mb: float, fraction: float, reserve_mb: float = CUDA_RESERVE_MB) -> int:
    """TensorFlow's cap for a host with ``fraction`` of a GPU of ``total_mb``.

    The hosts sharing a GPU each lose their own CUDA context's reserve, so k hosts of
    fraction 1/k fit together: ``k (total / k - reserve) + k reserve = total``.

    >>> memory_limit_mb(81920, 0.25)
    19968
    >>> memory_limit_mb(16384, 1.0)
    15872
    >>> memory_limit_mb(1000, 0.1)  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ValueError: a 0.1 share of a 1000 MB GPU leaves no memory after the 512 MB CUDA ...
    """
    share = min(fraction, 1.0) * total_mb - reserve_mb
    if share < 64:
        raise ValueError(
            f"a {fraction:g} share of a {total_mb:g} MB GPU leaves no memory after the "
            f"{reserve_mb:g} MB CUDA reserve; give each host a larger runtime.gpus_per_host"
        )
    return math.floor(share)


AUTO_HEADROOM = 1.25
"""``runtime.gpus_per_host: auto`` sizes a host for its measured peak times this."""


def hosts_per_gpu(total_mb: float, peak_mb: float, reserve_mb: float = CUDA_RESERVE_MB) -> int:
    """How many hosts of a measured ``peak_mb`` share a GPU of ``total_mb`` safely.

    Each host's cap must hold its model's peak with :data:`AUTO_HEADROOM` to spare, and
    as much again for its data (which stays on the GPU only while it fits in
    :data:`DATA_FRACTION`, half, of the cap), plus its CUDA context's reserve.

    >>> hosts_per_gpu(16384, 3000), hosts_per_gpu(81920, 600), hosts_per_gpu(8192, 9000)
    (2, 40, 1)
    """
    need = peak_mb * AUTO_HEADROOM / (1 - DATA_FRACTION) + reserve_mb
    return max(1, math.floor(total_mb / need))


def auto_share(hosts: int) -> float:
    """A GPU share that lets ``hosts`` hosts fit on one GPU (Ray counts in 1e-4).

    >>> auto_share(1), auto_share(3), auto_share(40)
    (1.0, 0.3333, 0.025)
    """
    return math.floor(10_000 / hosts) / 10_000


def gpu_peak_mb() -> float | None:
    """This process's peak TensorFlow memory on its first GPU, in MB; None without one."""
    tf = sys.modules.get("tensorflow")
    if tf is None or not tf.config.list_physical_devices("GPU"):
        return None
    return float(tf.config.experimental.get_memory_info("GPU:0")["peak"]) / 2**20


def gpu_total_mb(index: int = 0) -> float | None:
    """Total memory of visible GPU ``index`` in MB (``nvidia-smi``), or None if unknown."""
    smi = shutil.which("nvidia-smi")
    if smi is None:
        return None
    visible = os.environ.get("CUDA_VISIBLE_DEVICES", "")
    ids = [v for v in visible.split(",") if v.strip()]
    physical = ids[index] if index < len(ids) else str(index)
    try:
        out = subprocess.run(
            [smi, "--query-gpu=memory.total", "--format=csv,noheader,nounits", "-i", physical],
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout
        return float(out.strip().splitlines()[0])
    except (OSError, subprocess.SubprocessError, ValueError, IndexError):
        return None


def configure_gpu(tf: Any, share: GpuShare) -> dict[str, Any]:
    """Limit this process's TensorFlow to ``share`` of its GPU; returns what it got."""
    gpus = tf.config.list_physical_devices("GPU")
    visible = os.environ.get("CUDA_VISIBLE_DEVICES", "")
    if not gpus:
        logger.info("no GPU visible to TensorFlow (CUDA_VISIBLE_DEVICES=%r): on the CPU", visible)
        return {"gpu": None, "cuda_visible_devices": visible}
    gpu = gpus[0]
    facts: dict[str, Any] = {"gpu": gpu.name, "cuda_visible_devices": visible}
    total = gpu_total_mb(0)
    if total is not None:
        facts["gpu_total_mb"] = total
    if share.memory_growth:
        tf.config.experimental.set_memory_growth(gpu, True)
        facts["gpu_memory"] = "growth"
    else:
        if total is None:
            tf.config.experimental.set_memory_growth(gpu, True)
            facts["gpu_memory"] = "growth (total memory unknown)"
        else:
            limit = memory_limit_mb(total, share.fraction)
            tf.config.set_logical_device_configuration(
                gpu, [tf.config.LogicalDeviceConfiguration(memory_limit=limit)]
            )
            facts["gpu_memory_mb"] = limit
    logger.info("host on %s (CUDA_VISIBLE_DEVICES=%s): %s", gpu.name, visible, facts)
    return facts


def data_device(nbytes: int, facts: Mapping[str, Any]) -> str | None:
    """Where a host's data tensors go: None (TensorFlow's choice), or the CPU.

    None, and so the GPU when there is one, while they fit in :data:`DATA_FRACTION` of
    the host's GPU memory; else ``"/CPU:0"``. The host's memory is its cap
    (``gpu_memory_mb``), or the GPU's total under memory growth; without a GPU, or when
    neither is known, TensorFlow chooses.

    >>> gpu = {"gpu": "/physical_device:GPU:0", "gpu_memory_mb": 4096}
    >>> data_device(3 << 30, gpu), data_device(1 << 30, gpu), data_device(3 << 30, {})
    ('/CPU:0', None, None)
    """
    if not facts.get("gpu"):
        return None
    memory_mb = facts.get("gpu_memory_mb", facts.get("gpu_total_mb"))
    if memory_mb is None or nbytes <= DATA_FRACTION * float(memory_mb) * 2**20:
        return None
    logger.info(
        "the host's data (%.0f MB) would take over %d%% of its %.0f MB of GPU memory: "
        "it stays in host memory and batches are copied to the GPU",
        nbytes / 2**20,
        100 * DATA_FRACTION,
        memory_mb,
    )
    return "/CPU:0"


def aligned(a: np.ndarray) -> np.ndarray:
    """``a`` itself when C-contiguous, writeable and :data:`ALIGN`-aligned, else such a copy.

    >>> x = aligned(np.arange(6, dtype=np.float32).reshape(2, 3))
    >>> x.ctypes.data % ALIGN, x.tolist()
    (0, [[0.0, 1.0, 2.0], [3.0, 4.0, 5.0]])
    """
    if a.flags.c_contiguous and a.flags.writeable and a.ctypes.data % ALIGN == 0:
        return a
    out = aligned_empty(a.shape, a.dtype)
    out[...] = a
    return out


def cpu_tensor(tf: Any, a: np.ndarray) -> Any:
    """``a`` as a CPU tensor that shares its memory (DLPack), or a copy if it cannot.

    ``tf.constant`` of a 614 MB array (CIFAR-10's training images as float32) grew the
    process by 1.2 GB that it kept: a copy, and an intermediate its allocator did not give
    back. Shared, the tensor costs nothing beyond the array (copied once if misaligned),
    and keeps the array alive as long as it lives.
    """
    if a.size and a.dtype.kind in "fiu":
        try:
            return tf.experimental.dlpack.from_dlpack(aligned(a).__dlpack__())
        except (AttributeError, TypeError, ValueError, RuntimeError, BufferError):
            logger.debug("no DLPack for a %s array: copied", a.dtype)
    return tf.constant(a)


def data_tensors(tf: Any, arrays: Sequence[np.ndarray], facts: dict[str, Any]) -> list[Any]:
    """``arrays`` as tensors on :func:`data_device`'s choice (recorded in ``facts``).

    The first call (the training rows) records ``data_device``; every call counts what
    it put on the GPU in ``gpu_data_mb``, and later calls (the server test set) are
    judged with it, so that together they stay within the host's share. Without a GPU,
    or when the data stays in host memory, they share the arrays' memory
    (:func:`cpu_tensor`).
    """
    nbytes = sum(a.nbytes for a in arrays)
    placed = facts.get("gpu_data_mb", 0.0) * 2**20
    where = data_device(int(placed + nbytes), facts)
    if facts.get("gpu"):
        facts.setdefault("data_device", where or "gpu")
    if facts.get("gpu") and where is None:  # on the GPU: copied there
        facts["gpu_data_mb"] = (placed + nbytes) / 2**20
        return [tf.constant(a) for a in arrays]
    with tf.device(where) if where else contextlib.nullcontext():
        return [cpu_tensor(tf, a) for a in arrays]


_ABSL_RECORD = re.compile(
    r"^(?:(?P<a>[IWEF])\d{4} [\d:.]+ +\d+ \S+:\d+\]"  # absl: I0000 00:00:17.5  42 port.cc:153]
    r"|\d{4}-\d\d-\d\d [\d:.]+: (?P<b>[IWEF]) \S+:\d+\])"  # older: 2024-01-11 05:40:05.1: I x.cc:1]
)
_ABSL_PREAMBLE = "WARNING: All log messages before absl::InitializeLog() is called"
_SEVERITY = {"I": 0, "W": 1, "E": 2, "F": 3}


def without_tf_logs(text: str, min_level: int) -> str:
    r"""``text`` without TensorFlow's C++ log records below ``min_level``.

    Levels as ``TF_CPP_MIN_LOG_LEVEL``: 0 info, 1 warning, 2 error, 3 fatal; absl's
    notice that its logging is not initialised yet counts as a warning. Other lines are
    kept (a record's continuation lines too: TensorFlow itself withholds its multi-line
    records below the level).

    >>> noise = ("WARNING: All log messages before absl::InitializeLog() is called are "
    ...          "written to STDERR\nI0000 00:00:1796671267.163245   18909 port.cc:153] "
    ...          "oneDNN custom operations are on.\nmine\n")
    >>> without_tf_logs(noise, 2)
    'mine\n'
    >>> without_tf_logs("2024-01-11 05:40:05.061907: W x/cpu_feature_guard.cc:182] AVX\n"
    ...                 "E0000 00:00:1.5 7 cuda.cc:1] failed call to cuInit\n", 2)
    'E0000 00:00:1.5 7 cuda.cc:1] failed call to cuInit\n'
    """
    kept: list[str] = []
    for line in text.splitlines(keepends=True):
        record = _ABSL_RECORD.match(line)
        if record is not None:
            if _SEVERITY[record.group("a") or record.group("b")] >= min_level:
                kept.append(line)
        elif not (line.startswith(_ABSL_PREAMBLE) and min_level > 1):
            kept.append(line)
    return "".join(kept)


@contextlib.contextmanager
def quiet_tensorflow_start(*, verbose: bool = False) -> Iterator[None]:
    """While the block loads TensorFlow, hide its C++ start-up lines unless ``verbose``.

    TensorFlow's shared libraries log as they load (absl's notice that its logging is not
    initialised, oneDNN's notice, ``cpu_feature_guard``), straight to the process's
    file descriptor 2, and ``TF_CPP_MIN_LOG_LEVEL`` does not stop them all. So the
    first time TensorFlow loads in a process, descriptor 2 goes to a temporary file for
    the block, and what was written there is then copied back to stderr without the
    records below ``TF_CPP_MIN_LOG_LEVEL`` (set to 2, errors only, unless the
    environment sets it): errors and anything else (another thread's lines) still
    arrive, later. ``TF_CPP_MIN_LOG_LEVEL=0`` in the environment, or ``verbose``, shows
    everything as it comes.
    """
    if verbose or "tensorflow" in sys.modules:
        yield
        return
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    level = os.environ["TF_CPP_MIN_LOG_LEVEL"]
    min_level = int(level) if level.isdigit() else 2
    try:
        sys.stderr.flush()
        saved = os.dup(2)
    except (OSError, ValueError):  # no usable descriptor 2 (a closed stderr)
        saved = -1
    if min_level == 0 or saved < 0:
        yield
        return
    with tempfile.TemporaryFile() as sink:
        os.dup2(sink.fileno(), 2)
        try:
            yield
        finally:
            with contextlib.suppress(OSError, ValueError):
                sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            sink.seek(0)
            kept = without_tf_logs(sink.read().decode(errors="replace"), min_level)
            if kept:
                sys.stderr.write(kept)
                sys.stderr.flush()


def import_keras(*, verbose: bool = False) -> Any:
    """Import Keras (and with it TensorFlow), its start-up lines hidden unless ``verbose``.

    For the driver's own uses (a run's model, ``fedray predict``, ``fedray audit``):
    scikit-learn stays importable, unlike in :func:`import_tensorflow`.
    """
    with quiet_tensorflow_start(verbose=verbose):
        import keras
    return keras


def import_tensorflow(*, verbose: bool = False) -> Any:
    """Import TensorFlow (and with it Keras) quietly, without Keras' scikit-learn wrappers.

    Its start-up lines are hidden unless ``verbose`` (:func:`quiet_tensorflow_start`).
    Importing Keras 3 imports ``keras.wrappers``, which imports scikit-learn (and SciPy)
    whenever it is installed: about 1 s of CPU in every host process, for wrappers no
    host uses. So unless this process has imported scikit-learn already (the digits
    loader does), it is hidden while TensorFlow loads, then imported normally by
    whoever asks for it later; only ``keras.wrappers.SKLearn*`` stays unusable here.
    """
    if "tensorflow" in sys.modules or "sklearn" in sys.modules:
        with quiet_tensorflow_start(verbose=verbose):
            import tensorflow as tf

        return tf
    sys.modules["sklearn"] = None  # type: ignore[assignment]  # `import sklearn` fails fast
    try:
        with quiet_tensorflow_start(verbose=verbose):
            import tensorflow as tf
    finally:
        del sys.modules["sklearn"]
    return tf


def configure_tensorflow(
    threads: int, *, verbose: bool, gpu: GpuShare | None = None
) -> dict[str, Any]:
    """Set TF's thread pools, log level and GPU share; must run before TF's first op.

    Returns the device facts for the host's ``ready()`` (empty without a GPU share).
    """
    if not verbose:
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    if "tensorflow" not in sys.modules:
        os.environ["TF_NUM_INTRAOP_THREADS"] = str(threads)
        os.environ["TF_NUM_INTEROP_THREADS"] = str(threads)
    tf = import_tensorflow(verbose=verbose)
    facts: dict[str, Any] = {}
    try:
        tf.config.threading.set_intra_op_parallelism_threads(threads)
        tf.config.threading.set_inter_op_parallelism_threads(threads)
        if gpu is not None:
            facts = configure_gpu(tf, gpu)
    except RuntimeError:
        pass  # TF already running in this process (in-process executor): keep its setup
    if not verbose:
        tf.get_logger().setLevel(logging.ERROR)
        import warnings

        warnings.filterwarnings("ignore", module="keras")
    return facts
