"""``fedray privacy`` plans adaptive-clipping runs: the same ε the run then reports."""

import re

import pytest

from fedray import cli


def _plan(capsys, *args):
    assert cli.main(["privacy", *args]) == 0
    out = capsys.readouterr().out
    return out, {k: float(v) for k, v in re.findall(r"ε \((RDP|PLD)\) = ([0-9.]+)", out)}


@pytest.mark.keras
def test_adaptive_plan_equals_the_runs_own_figures(capsys, tmp_path):
    pytest.importorskip("tensorflow")
    from fedray import api

    out, plan = _plan(
        capsys,
        "-z",
        "1.0",
        "-q",
        "0.1",
        "-T",
        "3",
        "-d",
        "1e-5",
        "--expected-clients",
        "4",
        "--count-stddev",
        "1.0",
    )
    assert "z_Δ = 1.1547" in out and "2σ_b = 2" in out  # (1 - 1/4)^-1/2
    hist = api.run(
        {
            "rounds": 3,
            "data": {"dataset": "blobs", "num_clients": 40, "num_samples": 400},
            "model": {"name": "linear"},
            "strategy": {"fraction_fit": 0.1},
            "privacy": {
                "dp": {
                    "noise_multiplier": 1.0,
                    "delta": 1e-5,
                    "clip": "adaptive",
                    "count_stddev": 1.0,
                    "noise_seed": 0,
                }
            },
            "runtime": {"executor": "local", "progress": False, "clients_per_actor": 40},
            "checkpoint": {"every": 0},
        },
        out=tmp_path,
    )
    p = hist.summary["privacy"]
    assert round(p["epsilon_rdp"], 4) == plan["RDP"]
    assert round(p["epsilon_pld"], 4) == plan["PLD"]


def test_adaptive_plan_refuses_a_count_that_eats_the_budget(capsys):
    assert (
        cli.main(
            [
                "privacy",
                "-z",
                "1.0",
                "-q",
                "0.1",
                "-T",
                "3",
                "-d",
                "1e-5",
                "--expected-clients",
                "4",
            ]
        )
        == 2
    )
    err = capsys.readouterr().err
    assert "--count-stddev = 0.2" in err and "noise_multiplier < 2 * count_stddev" in err
