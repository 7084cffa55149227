"""GPU shares: the memory arithmetic, the TensorFlow calls (against a fake ``tf``), Ray
scheduling of fractional GPUs on a simulated cluster, and a host on a machine without
a GPU."""

import subprocess
import sys
from types import SimpleNamespace

import numpy as np
import pytest

from fedray import config
from fedray.client import devices
from fedray.client.devices import CUDA_RESERVE_MB, GpuShare, configure_gpu, memory_limit_mb
from fedray.client.spec import HostSpec
from fedray.errors import ConfigError
from fedray.runtime.plan import clients_per_host, host_slots


@pytest.mark.parametrize("total", [16384, 81920, 143771])
@pytest.mark.parametrize("k", [1, 2, 4, 8])
def test_k_hosts_of_a_one_kth_share_fit_on_one_gpu(total, k):
    limit = memory_limit_mb(total, 1 / k)
    assert k * (limit + CUDA_RESERVE_MB) <= total  # caps plus each host's CUDA context
    assert limit >= total / k - CUDA_RESERVE_MB - 1  # and nothing more is held back


def test_a_share_too_small_for_its_cuda_context_is_refused():
    with pytest.raises(ValueError, match="runtime.gpus_per_host"):
        memory_limit_mb(4096, 0.1)
    assert memory_limit_mb(4096, 2.0) == 4096 - CUDA_RESERVE_MB  # whole GPUs: the first


def test_gpus_bound_the_hosts_and_auto_packs_beyond():
    resources = {"CPU": 16.0, "GPU": 2.0}
    assert host_slots(resources, None) == 16.0
    assert host_slots(resources, 0.5) == 4.0
    assert clients_per_host("auto", 6, host_slots(resources, 0.5)) == 2  # 3 hosts of 2
    assert clients_per_host("auto", 3, host_slots(resources, 0.5)) == 1
    with pytest.raises(ConfigError, match="runtime.gpus_per_host=0.5: the cluster has 0 GPUs"):
        host_slots({"CPU": 2.0}, 0.5)


class FakeTF:
    """The slice of ``tf.config`` that :func:`configure_gpu` uses, recording calls."""

    def __init__(self, gpus):
        self.calls = []
        gpu_list = [SimpleNamespace(name=f"/physical_device:GPU:{i}") for i in range(gpus)]
        experimental = SimpleNamespace(
            set_memory_growth=lambda d, on: self.calls.append(("growth", d.name, on))
        )
        self.config = SimpleNamespace(
            list_physical_devices=lambda kind: gpu_list if kind == "GPU" else [],
            experimental=experimental,
            set_logical_device_configuration=lambda d, c: self.calls.append(
                ("limit", d.name, c[0].memory_limit)
            ),
            LogicalDeviceConfiguration=lambda memory_limit: SimpleNamespace(
                memory_limit=memory_limit
            ),
        )


def test_configure_gpu_caps_grows_or_leaves_the_cpu_alone(monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "3")
    monkeypatch.setattr(devices, "gpu_total_mb", lambda index=0: 81920.0)
    tf = FakeTF(1)
    facts = configure_gpu(tf, GpuShare(0.25))
    assert tf.calls == [("limit", "/physical_device:GPU:0", 19968)]
    assert facts == {
        "gpu": "/physical_device:GPU:0",
        "cuda_visible_devices": "3",
        "gpu_total_mb": 81920.0,
        "gpu_memory_mb": 19968,
    }
    tf = FakeTF(1)
    assert configure_gpu(tf, GpuShare(0.25, memory_growth=True))["gpu_memory"] == "growth"
    assert tf.calls == [("growth", "/physical_device:GPU:0", True)]
    monkeypatch.setattr(devices, "gpu_total_mb", lambda index=0: None)  # no nvidia-smi
    tf = FakeTF(1)
    assert configure_gpu(tf, GpuShare(0.5))["gpu_memory"].startswith("growth")
    tf = FakeTF(0)
    assert configure_gpu(tf, GpuShare(0.5)) == {"gpu": None, "cuda_visible_devices": "3"}
    assert tf.calls == []


def test_a_hosts_data_stays_on_its_gpu_while_it_fits_in_half_the_hosts_memory():
    import contextlib

    where = ["default"]

    @contextlib.contextmanager
    def device(name):
        where.append(name)
        yield
        where.pop()

    tf = SimpleNamespace(device=device, constant=lambda a: (where[-1], a.nbytes))
    capped = {"gpu": "/physical_device:GPU:0", "gpu_memory_mb": 1000}  # a 1000 MB share
    rows = [np.zeros(400 << 20, np.uint8), np.zeros(50 << 20, np.uint8)]  # 450 MB: fits
    assert devices.data_tensors(tf, rows, capped) == [("default", 400 << 20), ("default", 50 << 20)]
    assert capped["data_device"] == "gpu"
    assert capped["gpu_data_mb"] == 450
    # The server test set comes second: 100 MB more would make 550 MB > 500 MB, so it
    # stays in host memory, and the training rows' record is kept.
    test = [np.zeros(100 << 20, np.uint8)]
    assert [d for d, _ in devices.data_tensors(tf, test, capped)] == ["/CPU:0"]
    assert capped["data_device"] == "gpu" and capped["gpu_data_mb"] == 450
    assert devices.data_tensors(tf, [np.zeros(40 << 20, np.uint8)], capped)[0][0] == "default"
    assert capped["gpu_data_mb"] == 490  # a 40 MB test set fits beside them
    alone = {"gpu": "/physical_device:GPU:0", "gpu_memory_mb": 1000}
    rows.append(np.zeros(100 << 20, np.uint8))  # 550 MB > 500 MB: the CPU keeps it
    assert [d for d, _ in devices.data_tensors(tf, rows, alone)] == ["/CPU:0"] * 3
    assert alone["data_device"] == "/CPU:0" and "gpu_data_mb" not in alone
    growth = {"gpu": "/physical_device:GPU:0", "gpu_memory": "growth", "gpu_total_mb": 1000.0}
    assert devices.data_device(550 << 20, growth) == "/CPU:0"  # half of the whole GPU
    for no_gpu in ({}, {"gpu": None, "cuda_visible_devices": ""}):
        facts = dict(no_gpu)
        assert [d for d, _ in devices.data_tensors(tf, rows, facts)] == ["default"] * 3
        assert "data_device" not in facts  # a CPU host says nothing of a GPU
    unknown = {"gpu": "/physical_device:GPU:0", "gpu_memory": "growth (total memory unknown)"}
    assert devices.data_device(10 << 30, unknown) is None  # no size to judge by: TF chooses


def test_auto_fits_as_many_measured_hosts_as_leave_room_for_their_data(monkeypatch):
    # A host that peaked at 3000 MB needs 3000 x 1.25 for its model, as much again for
    # its data (kept on the GPU only within half its cap) and 512 MB of CUDA context:
    # 8012 MB, so two fit on a 16 GB GPU and a share of 0.5 each.
    assert devices.hosts_per_gpu(16384, 3000) == 2 and devices.auto_share(2) == 0.5
    share = devices.auto_share(devices.hosts_per_gpu(81920, 600))
    assert devices.memory_limit_mb(81920, share) >= 2 * 600 * devices.AUTO_HEADROOM
    assert devices.hosts_per_gpu(8192, 9000) == 1  # never fewer than one host per GPU
    for k in (1, 3, 7, 40):  # k hosts of the share always fit: Ray counts in 1e-4
        assert k * devices.auto_share(k) <= 1.0
    tf = FakeTF(1)
    tf.config.experimental.get_memory_info = lambda name: {"current": 1, "peak": 3 << 30}
    monkeypatch.setitem(sys.modules, "tensorflow", tf)
    assert devices.gpu_peak_mb() == 3072.0
    monkeypatch.setitem(sys.modules, "tensorflow", FakeTF(0))
    assert devices.gpu_peak_mb() is None  # no GPU: nothing to measure


def test_auto_is_a_value_of_gpus_per_host_that_hosts_never_see_unresolved():
    cfg = config.load({}, ["runtime.gpus_per_host=auto"])
    assert cfg.runtime.gpus_per_host == "auto"
    with pytest.raises(ValueError, match="resolved"):
        HostSpec.from_config(cfg, (0,), aggregator=None)
    with pytest.raises(ConfigError, match="runtime.gpus_per_host"):
        config.load({}, ["runtime.gpus_per_host=most"])


def test_nvidia_smi_absent_means_unknown(monkeypatch):
    monkeypatch.setattr(devices.shutil, "which", lambda name: None)
    assert devices.gpu_total_mb() is None


def test_the_share_reaches_the_host_spec_and_is_refused_in_process():
    cfg = config.load({}, ["runtime.gpus_per_host=0.25", "runtime.gpu_memory_growth=true"])
    spec = HostSpec.from_config(cfg, (0, 1), aggregator=None)
    assert spec.gpu == GpuShare(0.25, memory_growth=True)
    assert HostSpec.from_config(config.load({}), (0,), aggregator=None).gpu is None
    with pytest.raises(ConfigError, match="runtime.executor='local'"):
        config.load({}, ["runtime.gpus_per_host=0.5", "runtime.executor=local"])
    with pytest.raises(ConfigError, match="runtime.gpus_per_host=None"):
        config.load({}, ["runtime.gpu_memory_growth=true"])


@pytest.mark.keras
def test_a_host_with_a_gpu_share_runs_on_a_machine_without_a_gpu():
    code = (
        "from fedray.client.devices import GpuShare, configure_tensorflow\n"
        "facts = configure_tensorflow(1, verbose=False, gpu=GpuShare(0.5))\n"
        "import tensorflow as tf\n"
        "print(facts['gpu'], float(tf.reduce_sum(tf.ones(3))))\n"
    )
    env = {**__import__("os").environ, "CUDA_VISIBLE_DEVICES": ""}
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, env=env
    )
    assert out.stdout.split() == ["None", "3.0"]


@pytest.mark.keras
def test_a_cpu_hosts_data_tensor_shares_the_arrays_memory():
    """``tf.constant`` copied a host's training rows (and kept 2x their size)."""
    from fedray.tree import ALIGN, aligned_empty

    tf = devices.import_tensorflow()
    x = aligned_empty((1000, 8), np.float32)
    x[...] = np.arange(8000, dtype=np.float32).reshape(1000, 8)
    y = np.arange(1000) % 3
    tx, ty = devices.data_tensors(tf, [x, y], {})
    x[7, 1] = -1.0  # the tensor is the array: no copy was made
    assert float(tx[7, 1]) == -1.0 and tx.dtype == tf.float32
    assert ty.numpy().tolist() == y.tolist()
    odd = np.arange(10, dtype=np.float64)[1:]  # misaligned, read-only, strided: copied
    odd.setflags(write=False)
    assert devices.cpu_tensor(tf, odd).numpy().tolist() == odd.tolist()
    assert devices.cpu_tensor(tf, np.arange(12.0)[::3]).numpy().tolist() == [0.0, 3.0, 6.0, 9.0]
    assert devices.cpu_tensor(tf, np.array([True, False])).numpy().tolist() == [True, False]
    assert devices.cpu_tensor(tf, np.zeros((0, 3), np.float32)).shape == (0, 3)
    assert devices.aligned(x) is x and devices.aligned(odd).ctypes.data % ALIGN == 0
