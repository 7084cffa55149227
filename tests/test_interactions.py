"""The interaction matrix: every pair of features (and a seeded sample of triples) either
runs with its invariants checked, or is refused at config time in one line naming both.

Cells run in-process through the real config, build, loop, executor, hosts and
aggregators, with a numpy trainer in the hosts (:class:`tests.fakes.NumpyTrainer`)
instead of Keras. The invariants of a cell that runs:

* the weights are finite;
* under DP, the ledger charged every release that left a host;
* with ``resume``, a run stopped after round 1 and resumed equals the uninterrupted one;
* with secure aggregation (and no DP noise), the run equals the same run without it
  within the quantization bound;
* with ``runtime.balance``, the run equals the same run with every client in its home
  host (float rounding apart: the partial sums group the clients differently), except
  under over-commitment, whose first arrivals depend on the hosts' order.

``python -m tests.test_interactions`` regenerates ``docs/interactions.md`` from the
same table; a test checks that the published file is current.
"""

import importlib.util
import itertools
import random
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from fedray import api, config
from fedray.aggregators import Mean
from fedray.config import build
from fedray.errors import ConfigError
from tests.privacy.harness import assert_charged, spy_runs

ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "interactions.md"

_DP = ["privacy.dp.delta=1e-5", "privacy.dp.noise_multiplier=0.5", "privacy.dp.noise_seed=3"]
FEATURES: dict[str, tuple[str, list[str]]] = {
    # strategies
    "fedavg": ("strategy", ["strategy.name=fedavg"]),
    "fedprox": ("strategy", ["strategy.name=fedprox", "strategy.proximal_mu=0.1"]),
    "scaffold": ("strategy", ["strategy.name=scaffold"]),
    "fedadam": ("strategy", ["strategy.name=fedadam", "strategy.server_learning_rate=0.05"]),
    "median": ("strategy", ["strategy.name=fedmedian"]),
    "krum": ("strategy", ["strategy.name=krum", "strategy.min_fit_clients=3"]),
    "fedbuff": (
        "strategy",
        ["strategy.name=fedbuff", "strategy.concurrency=3", "strategy.buffer_size=2"],
    ),
    # privacy
    "no privacy": ("privacy", []),
    "central": ("privacy", ["privacy.dp.mode=central", "privacy.dp.clip=1.0", *_DP]),
    "central adaptive": ("privacy", ["privacy.dp.mode=central", "privacy.dp.clip=adaptive", *_DP]),
    "local": ("privacy", ["privacy.dp.mode=local", "privacy.dp.clip=1.0", *_DP]),
    "dpsgd": ("privacy", ["privacy.dp.mode=dpsgd", "privacy.dp.clip=1.0", *_DP]),
    "secagg": ("privacy", ["privacy.secure_aggregation.enabled=true"]),
    "secagg + central": (
        "privacy",
        [
            "privacy.secure_aggregation.enabled=true",
            "privacy.dp.mode=central",
            "privacy.dp.clip=1.0",
            *_DP,
        ],
    ),
    "secagg + distributed": (
        "privacy",
        [
            "privacy.secure_aggregation.enabled=true",
            "privacy.dp.mode=distributed",
            "privacy.dp.clip=1.0",
            *_DP,
        ],
    ),
    # wrappers
    "norm_bound": ("wrapper", ["strategy.norm_bound=1.0"]),
    "max_update_norm": ("wrapper", ["strategy.max_update_norm=50"]),
    # compression
    "quantize": ("compression", ["compression.quantize_bits=8"]),
    "topk": ("compression", ["compression.topk=0.3"]),
    "rotate + quantize": (
        "compression",
        ["compression.rotate=true", "compression.quantize_bits=4"],
    ),
    # runtime
    "packed": ("runtime", ["runtime.clients_per_actor=3"]),
    "dedicated": ("runtime", ["runtime.clients_per_actor=1"]),
    "balanced": ("runtime", ["runtime.clients_per_actor=3", "runtime.balance=true"]),
    # faults and over-commitment
    "faults": ("faults", ["faults.crash_rate=0.2"]),
    "host crash": ("faults", ["faults.host_crash_rate=0.3"]),
    "over_commit": ("faults", ["strategy.over_commit=0.5", "strategy.fraction_fit=0.5"]),
    # federated evaluation (on the clients' own test splits)
    "fed_eval": ("evaluation", ["evaluation.federated_every=1", "data.client_test_fraction=0.2"]),
    # resume
    "resume": ("resume", []),
}
BUILT_IN = list(FEATURES)

# Algorithms written as a user would (examples/algorithms/), composed by hand: each is
# judged by its own declaration, with no rule written for it.
ALGORITHMS = {"FedDyn": ("feddyn", "FedDyn"), "FedNova": ("fednova", "FedNova")}
ALGORITHMS["q-FFL"] = ("qffl", "QFFL")
FEATURES.update({name: ("algorithm", []) for name in ALGORITHMS})


def _algorithm(name):
    """The example's feature object (the module loaded from its file, as a user's)."""
    module_name, cls = ALGORITHMS[name]
    qualified = f"example_{module_name}"
    if qualified not in sys.modules:
        path = ROOT / "examples" / "algorithms" / f"{module_name}.py"
        spec = importlib.util.spec_from_file_location(qualified, path)
        module = importlib.util.module_from_spec(spec)
        sys.modules[qualified] = module  # a dataclass looks its module up there
        spec.loader.exec_module(module)
    return getattr(sys.modules[qualified], cls)()


def hand_strategy(cell):
    """The cell's recipe with its example algorithm added, or None without one."""
    names = [f for f in cell if f in ALGORITHMS]
    if not names:
        return None
    cfg = config.load({}, overrides(cell))
    base = cfg.strategy.build(cfg.data.num_clients)
    if isinstance(base.aggregator, Mean):
        base = replace(base, aggregator=Mean(weighting="uniform"))
    return replace(base, features=(*base.features, _algorithm(names[0])))


BASE = [
    "rounds=2",
    "data.dataset=linreg",
    "data.num_clients=6",
    "client.batch_size=16",
    "runtime.executor=local",
    "runtime.progress=false",
    "checkpoint.every=1",
]

PAIRS = [
    (a, b)
    for a, b in itertools.combinations(FEATURES, 2)
    if FEATURES[a][0] != FEATURES[b][0] or FEATURES[a][0] in ("wrapper", "faults", "compression")
]
TRIPLES = random.Random(15).sample(
    [
        c
        for c in itertools.combinations(BUILT_IN, 3)
        if len({FEATURES[f][0] for f in c}) == 3 and "no privacy" not in c
    ],
    40,
)


def overrides(cell):
    return [*BASE, *(o for f in cell for o in FEATURES[f][1])]


def keys(feature):
    if feature in ALGORITHMS:
        return {ALGORITHMS[feature][1]}
    return {o.partition("=")[0] for o in FEATURES[feature][1]}


def decide(cell):
    """None if the cell's config is accepted, else the one-line refusal."""
    try:
        cfg = config.load({}, overrides(cell))
        if (strategy := hand_strategy(cell)) is not None:  # judged as fedray.run judges it
            build.build_strategy(cfg, strategy=strategy)
    except ConfigError as exc:
        return str(exc).removeprefix("invalid config: ")
    return None


@pytest.fixture
def numpy_hosts(monkeypatch):
    """Hosts train with numpy; every executor is wrapped to count releases."""
    import fedray.client.trainer as trainer_mod
    from tests.fakes import NumpyTrainer

    monkeypatch.setattr(trainer_mod, "KerasTrainer", NumpyTrainer)
    return spy_runs(monkeypatch)


def _run(tmp_path, cell, extra=(), resume=False, name="run"):
    return api.run(
        {},
        out=tmp_path / name,
        overrides=[*overrides(cell), *extra],
        resume=resume,
        strategy=hand_strategy(cell),
    )


def check_cell(cell, tmp_path, seen):
    refusal = decide(cell)
    if refusal is not None:
        assert "\n" not in refusal and len(refusal) < 400
        assert "does not work with" in refusal or "does not apply to" in refusal, refusal
        named = [f for f in cell if any(k in refusal for k in keys(f))]
        assert len(named) >= 2, f"{cell}: the refusal must name two features' keys: {refusal}"
        return
    hist = _run(tmp_path, cell)
    assert all(np.all(np.isfinite(p)) for p in hist.params), cell
    assert len(hist.rows) == 2
    if "fed_eval" in cell:
        assert all(np.isfinite(r["fed_eval/loss"]) and r["fed_eval/clients"] > 0 for r in hist.rows)
    dp = any(
        f in cell
        for f in (
            "central",
            "central adaptive",
            "local",
            "dpsgd",
            "secagg + central",
            "secagg + distributed",
        )
    )
    if dp:
        ledger = seen["ledgers"][-1] if "fedbuff" not in cell else None
        assert ledger is not None and np.isfinite(hist.summary["privacy"]["epsilon"])
        assert_charged(seen["counters"][-1], ledger)
    secure = any(f.startswith("secagg") for f in cell)
    # SecAgg's rounding coins are secret (never the run seed), so a secure run repeats
    # itself only within the quantization bound: each round's decoded mean is within
    # one step per coordinate of the exact one, and two rounds of the linear model's
    # SGD keep the gap within 4x that.
    bound = 4 * 2 * max(r["agg/secagg/quantization_step"] for r in hist.rows) if secure else 0
    if "resume" in cell:
        _run(tmp_path, cell, ["rounds=1"], name="resumed")
        again = _run(tmp_path, cell, resume=True, name="resumed")
        assert [r["round"] for r in again.rows] == [1, 2]
        for p, q in zip(hist.params, again.params, strict=True):
            assert np.max(np.abs(p - q)) <= bound, (cell, np.max(np.abs(p - q)), bound)
    compressed = any(FEATURES[f][0] == "compression" for f in cell)
    if compressed:  # what left the hosts was counted (linreg's 2 weights do not shrink)
        assert all(r["comm/bytes_up"] > 0 and r["comm/compression"] > 0 for r in hist.rows)
    if "balanced" in cell and "over_commit" not in cell:  # the same run, clients at home
        home = _run(tmp_path, tuple("packed" if f == "balanced" else f for f in cell), name="home")
        for p, q in zip(hist.params, home.params, strict=True):
            np.testing.assert_allclose(p, q, rtol=1e-6, atol=1e-9, err_msg=str(cell))
    if "secagg" in cell and not compressed:  # the same run without secure aggregation
        plain_cell = tuple(f for f in cell if f != "secagg")
        plain = _run(tmp_path, plain_cell, ["strategy.weighting=uniform"], name="plain")
        for p, q in zip(hist.params, plain.params, strict=True):
            assert np.max(np.abs(p - q)) <= bound, (cell, np.max(np.abs(p - q)), bound)


@pytest.mark.slow
@pytest.mark.parametrize("cell", PAIRS, ids=" x ".join)
def test_every_pair_runs_or_is_refused_naming_both(cell, tmp_path, numpy_hosts):
    check_cell(cell, tmp_path, numpy_hosts)


@pytest.mark.slow
@pytest.mark.parametrize("cell", TRIPLES, ids=" x ".join)
def test_a_sample_of_triples_runs_or_is_refused(cell, tmp_path, numpy_hosts):
    check_cell(cell, tmp_path, numpy_hosts)


def test_norm_bound_with_secure_aggregation_is_refused_not_a_run_where_every_client_fails():
    # Before check_compatible, this cell validated and every client failed at run time.
    refusal = decide(("secagg", "norm_bound"))
    assert refusal is not None and "strategy.norm_bound" in refusal


def render():
    """The published matrix: which pairs run and which are refused (and why)."""
    names = list(FEATURES)
    lines = [
        "# Feature interactions",
        "",
        "Generated by `python -m tests.test_interactions` from `tests/test_interactions.py`;",
        "do not edit. Every pair of features either runs in the interaction test with its",
        "invariants checked (finite weights, every release charged under DP, resume equals",
        "the uninterrupted run, secure equals plain within the quantization bound), or is",
        "refused at config time by `fedray.strategy.rules.check_compatible` with one line naming",
        "both keys. ✓ runs; ✗ refused (reasons below); · same group.",
        "",
        "| | " + " | ".join(f"{i + 1}" for i in range(len(names))) + " |",
        "|---|" + "---|" * len(names),
    ]
    reasons: dict[str, list[str]] = {}
    for i, a in enumerate(names):
        row = []
        for b in names:
            cell = tuple(sorted((a, b), key=names.index))
            if a == b or ((a, b) not in PAIRS and (b, a) not in PAIRS):
                row.append("·")
                continue
            refusal = decide(cell)
            row.append("✓" if refusal is None else "✗")
            if refusal is not None:
                reasons.setdefault(refusal, []).append(" × ".join(cell))
        lines.append(f"| {i + 1}. {a} | " + " | ".join(row) + " |")
    lines += ["", "## Refusals", ""]
    for reason, cells in sorted(reasons.items()):
        unique = sorted(set(cells), key=cells.index)
        lines.append(f"- `{reason}`: {', '.join(unique)}")
    return "\n".join(lines) + "\n"


def test_the_published_matrix_is_current():
    assert DOC.read_text() == render(), "run: python -m tests.test_interactions"


if __name__ == "__main__":
    DOC.parent.mkdir(exist_ok=True)
    DOC.write_text(render())
    print(f"wrote {DOC}")
