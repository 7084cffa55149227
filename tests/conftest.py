import builtins
import os
import shutil
import tempfile
from pathlib import Path

import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

# Runs keep their clients' state outside their run directory (by default in ~/.cache):
# the suite's goes to one folder of its own, removed at the end (the controller made it;
# xdist's workers and every subprocess inherit it).
if "FEDRAY_CLIENT_STATE_DIR" not in os.environ:
    os.environ["FEDRAY_CLIENT_STATE_DIR"] = tempfile.mkdtemp(prefix="fedray-test-client-state-")
_CLIENT_STATE = os.environ["FEDRAY_CLIENT_STATE_DIR"]

ROOT = Path(__file__).resolve().parents[1]


def pytest_xdist_auto_num_workers(config) -> int:
    """``-n auto``: one worker per core, at most 4 (each Ray test starts its own hosts)."""
    return max(1, min(os.cpu_count() or 1, 4))


_HEAVIEST_FIRST = ("chaos", "ray", "slow", "keras")


def pytest_collection_modifyitems(config, items) -> None:
    """Heaviest tests first (chaos, then Ray, slow and TensorFlow ones), order kept within.

    Started first, and handed out one at a time (``--maxschedchunk 1``), the
    minutes-long tests overlap with everything else on the other workers instead of
    running alone at the end: longest-first scheduling.
    """

    def weight(item) -> int:
        names = {m.name for m in item.iter_markers()}
        return next((i for i, m in enumerate(_HEAVIEST_FIRST) if m in names), len(_HEAVIEST_FIRST))

    items.sort(key=weight)


# --- tests never write into the checkout -----------------------------------------------
# Every test writes to its tmp_path. A run without --out would make runs/<config>-<time>/
# in the working directory: the session fails if the checkout has gained one (or any
# other new top-level entry) by its end.
_TOOLS = {".pytest_cache", "__pycache__", ".mypy_cache", ".ruff_cache", "site", "build", "dist"}


def _checkout() -> set[str]:
    found = {p.name for p in ROOT.iterdir() if p.name not in _TOOLS}
    runs = ROOT / "runs"
    return found | ({f"runs/{p.name}" for p in runs.iterdir()} if runs.is_dir() else set())


def pytest_sessionstart(session) -> None:
    if not hasattr(session.config, "workerinput"):  # the controller (or -n 0)
        session.config.stash[_CHECKOUT] = _checkout()


def pytest_sessionfinish(session, exitstatus) -> None:
    before = session.config.stash.get(_CHECKOUT, None)
    if before is None:
        return
    if Path(_CLIENT_STATE).name.startswith("fedray-test-client-state-"):
        shutil.rmtree(_CLIENT_STATE, ignore_errors=True)
    new = sorted(_checkout() - before)
    if new:
        reporter = session.config.pluginmanager.get_plugin("terminalreporter")
        if reporter is not None:
            reporter.ensure_newline()
            reporter.write_line(f"tests wrote into the checkout {ROOT}: {', '.join(new)}", red=True)
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


_CHECKOUT = pytest.StashKey[set]()


@pytest.fixture
def elsewhere(tmp_path, monkeypatch) -> Path:
    """An empty working directory (never the checkout) that sees ``experiments/``."""
    (tmp_path / "experiments").symlink_to(ROOT / "experiments")
    monkeypatch.chdir(tmp_path)
    return tmp_path


@pytest.fixture
def linreg_config() -> dict:
    import yaml

    return yaml.safe_load((ROOT / "experiments" / "linreg.yaml").read_text())


# --- the pure tier never imports TensorFlow -------------------------------------------
# A test that imports TensorFlow or Keras (directly, or through a host or a run) must be
# marked `keras` (or `ray`, `slow`, `chaos`), so that `pytest -m "not keras and not ray
# and not slow"` stays the fast inner loop. Every import statement is watched while an
# unmarked test runs; the first heavy one fails that test, naming the mark it needs.
_HEAVY = ("tensorflow", "keras")
_TIERS = {"keras", "ray", "slow", "chaos"}
_current: dict[str, object] = {"item": None, "heavy": None}
_real_import = builtins.__import__


def _watching_import(name, *args, **kwargs):
    if _current["item"] is not None and _current["heavy"] is None and name.startswith(_HEAVY):
        _current["heavy"] = name
    return _real_import(name, *args, **kwargs)


builtins.__import__ = _watching_import


def _watch(item):
    pure = not (_TIERS & {m.name for m in item.iter_markers()})
    _current.update(item=item if pure else None, heavy=None)
    try:
        result = yield
    finally:
        heavy, _current["item"] = _current["heavy"], None
    if pure and heavy is not None:
        pytest.fail(f"{item.nodeid} imports {heavy}; mark it @pytest.mark.keras", pytrace=False)
    return result


pytest_runtest_setup = pytest.hookimpl(wrapper=True)(_watch)
pytest_runtest_call = pytest.hookimpl(wrapper=True)(_watch)


@pytest.fixture
def numpy_hosts(monkeypatch):
    """In-process hosts train with numpy (:class:`tests.fakes.NumpyTrainer`): no TensorFlow."""
    import fedray.client.trainer as trainer_mod
    from tests.fakes import NumpyTrainer

    monkeypatch.setattr(trainer_mod, "KerasTrainer", NumpyTrainer)


@pytest.fixture(scope="module")
def ray_instance():
    """A private local Ray instance for a module's tests (never a neighbour's)."""
    import ray

    ray.init(
        address="local",
        num_cpus=2,
        include_dashboard=False,
        log_to_driver=False,
        logging_level="ERROR",
    )
    yield
    ray.shutdown()


@pytest.fixture
def numpy_ray_hosts(monkeypatch):
    """Every host trains with numpy (:class:`tests.fakes.NumpyTrainer`), on Ray too.

    The trainer travels to the Ray workers inside the host spec, by value (the workers
    cannot import ``tests``). A host then starts without TensorFlow, so a restart costs
    about a second instead of ten, and the test is about re-execution alone.
    """
    import ray.cloudpickle

    import fedray.client.trainer as trainer_mod
    import tests.fakes
    from fedray.client.spec import HostSpec
    from tests.fakes import NumpyTrainer

    ray.cloudpickle.register_pickle_by_value(tests.fakes)
    real = HostSpec.from_config

    def with_numpy(*args, **kwargs):
        from dataclasses import replace

        return replace(real(*args, **kwargs), trainer=NumpyTrainer)

    monkeypatch.setattr(HostSpec, "from_config", staticmethod(with_numpy))
    monkeypatch.setattr(trainer_mod, "KerasTrainer", NumpyTrainer)
    yield
    ray.cloudpickle.unregister_pickle_by_value(tests.fakes)
