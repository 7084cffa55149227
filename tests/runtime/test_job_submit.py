"""`ray job submit` of the hello-world against a private, throw-away local Ray head.

The head gets its own temp dir and ports and token auth with a token of its own (as
`cluster.yaml` starts its nodes): a job submitted with the token runs, a client without
it is refused. A job stopped mid-run (as a preempted one) and submitted again with the same
command continues from its checkpoint. Cleanup kills only the processes it started: never
`ray stop`, which would kill every Ray instance on the machine.
"""

import contextlib
import json
import os
import re
import secrets
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from fedray.runtime.connect import free_ports
from fedray.runtime.head import kill_instance
from tests.conftest import ROOT

pytestmark = [pytest.mark.slow, pytest.mark.ray]

FEDRAY_RUN = [sys.executable, "-m", "fedray", "run", str(ROOT / "experiments" / "linreg.yaml")]


@pytest.fixture
def ray_head():
    ray_cli = str(Path(sys.executable).parent / "ray")
    temp_dir = tempfile.mkdtemp(prefix="frt", dir="/tmp")
    gcs, dash, client, agent, nm, om, metrics, rte, agrpc = free_ports(9)
    token = secrets.token_hex(32)
    env = {
        **os.environ,
        "RAY_AUTH_MODE": "token",
        "RAY_AUTH_TOKEN": token,
        "RAY_USAGE_STATS_ENABLED": "0",
    }
    cmd = [
        ray_cli,
        "start",
        "--head",
        f"--port={gcs}",
        "--num-cpus=2",
        f"--temp-dir={temp_dir}",
        "--include-dashboard=true",
        "--dashboard-host=127.0.0.1",
        f"--dashboard-port={dash}",
        f"--ray-client-server-port={client}",
        f"--dashboard-agent-listen-port={agent}",
        f"--node-manager-port={nm}",
        f"--object-manager-port={om}",
        f"--metrics-export-port={metrics}",
        f"--runtime-env-agent-port={rte}",
        f"--dashboard-agent-grpc-port={agrpc}",
        "--object-store-memory=200000000",
        "--disable-usage-stats",
    ]
    try:
        res = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120)
        assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-2000:]
        ports = {"gcs": gcs, "dashboard": dash, "client": client}
        yield {"env": env, "ray": ray_cli, "dashboard": f"http://127.0.0.1:{dash}", "ports": ports}
    finally:
        kill_instance(temp_dir, client)


def test_jobs_with_the_token_join_their_cluster_and_a_killed_job_resubmitted_continues(
    ray_head, tmp_path
):
    # Without the token (or with a wrong one) the head refuses the client.
    for auth in ({"RAY_AUTH_MODE": "disabled"}, {"RAY_AUTH_TOKEN": "0" * 64}):
        res = subprocess.run(
            [ray_head["ray"], "job", "list", "--address", ray_head["dashboard"]],
            env={**ray_head["env"], **auth},
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert res.returncode != 0, auth
        assert re.search(r"(?i)auth|token|401|unauthenticated", res.stdout + res.stderr), auth
    # With it, `fedray run` inside the job joins the job's cluster by itself.
    out = tmp_path / "job-run"
    cmd = [
        ray_head["ray"],
        "job",
        "submit",
        "--address",
        ray_head["dashboard"],
        "--working-dir",
        str(ROOT),
        "--",
        sys.executable,
        "-m",
        "fedray",
        "run",
        "experiments/linreg.yaml",
        "--no-progress",
        "--out",
        str(out),
    ]
    res = subprocess.run(
        cmd, env=ray_head["env"], capture_output=True, text=True, cwd=ROOT, timeout=400
    )
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    assert "succeeded" in res.stdout + res.stderr
    preds = dict(re.findall(r"prediction at x=\[(\d+)\]: ([-\d.]+)", res.stdout))
    assert abs(float(preds["0"]) - 1) < 1.5 and abs(float(preds["10"]) - 31) < 1.5
    summary = json.loads((out / "summary.json").read_text())
    assert summary["config"]["runtime"]["address"] is None  # no --address: the job's cluster
    assert (out / "model.keras").stat().st_size > 0
    # On the same head (one start less): a job killed mid-run, then submitted again.
    _killed_job_resubmitted_equals_an_uninterrupted_run(ray_head, tmp_path)
    _run_address_is_the_gcs_and_any_other_port_is_one_line(ray_head, tmp_path)


def _run_address_is_the_gcs_and_any_other_port_is_one_line(ray_head, tmp_path):
    """`fedray run --address`: the head's GCS port joins; its other ports are one line, exit 2."""
    ports, env = ray_head["ports"], ray_head["env"]
    cases = [
        ("dashboard", env, "an HTTP server answers there, not a Ray head"),
        ("client", env, "a gRPC server answers there, but not a Ray head's GCS"),
        ("gcs", {**env, "RAY_AUTH_MODE": "disabled"}, "refused this client's auth token"),
    ]
    for port, run_env, says in cases:
        address = f"127.0.0.1:{ports[port]}"
        argv = [*FEDRAY_RUN, "--address", address, "--set", "runtime.connect_timeout_s=2"]
        argv += ["--out", str(tmp_path / port)]
        res = subprocess.run(argv, env=run_env, capture_output=True, text=True, timeout=60)
        lines = res.stderr.strip().splitlines()
        assert res.returncode == 2 and len(lines) == 1, (port, res.stderr[-2000:])
        assert lines[0].startswith(f"fedray: error: runtime.address = '{address}': "), lines
        assert says in lines[0], lines
    address = f"127.0.0.1:{ports['gcs']}"
    argv = [*FEDRAY_RUN, "--address", address, "--no-progress", "--set", "rounds=2"]
    argv += ["--out", str(tmp_path / "joined")]
    res = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-2000:]
    summary = json.loads((tmp_path / "joined" / "summary.json").read_text())
    assert summary["config"]["runtime"]["address"] == address


def _killed_job_resubmitted_equals_an_uninterrupted_run(ray_head, tmp_path):
    """A preempted job: `ray job stop` kills its driver mid-run; the same command continues."""
    import numpy as np

    from fedray import api, config
    from fedray.loop import checkpoint

    out = tmp_path / "job"
    sets = ["--set", "rounds=300", "--set", "evaluation.every=0"]
    job = [
        sys.executable,
        "-m",
        "fedray",
        "run",
        "experiments/linreg.yaml",
        "--no-progress",
        "--out",
        str(out),
        "--resume-if-exists",
        *sets,
    ]
    submit = [
        ray_head["ray"],
        "job",
        "submit",
        "--address",
        ray_head["dashboard"],
        "--working-dir",
        str(ROOT),
    ]
    env = ray_head["env"]
    res = subprocess.run(
        [*submit, "--no-wait", "--submission-id", "fedray-cut", "--", *job],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-2000:]
    cfg = config.load(ROOT / "experiments" / "linreg.yaml", [s for s in sets if s != "--set"])
    fp = checkpoint.fingerprint(cfg.to_dict())
    deadline, done = time.monotonic() + 240, 0
    while time.monotonic() < deadline and done < 20:
        time.sleep(0.2)
        with contextlib.suppress(Exception):  # not written yet, or being replaced
            done = checkpoint.load(out, config_fingerprint=fp).server_round
    assert 20 <= done < 300, done
    stop = [ray_head["ray"], "job", "stop", "--address", ray_head["dashboard"], "fedray-cut"]
    assert subprocess.run(stop, env=env, capture_output=True, timeout=120).returncode == 0
    before = checkpoint.load(out, config_fingerprint=fp)
    assert before.server_round < 300  # stopped mid-run
    again = subprocess.run(
        [*submit, "--", *job], env=env, capture_output=True, text=True, timeout=400
    )
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
    after = checkpoint.load(out, config_fingerprint=fp)
    assert after.server_round == 300 and after.rows[: before.server_round] == before.rows
    full = api.run(
        ROOT / "experiments" / "linreg.yaml",
        out=tmp_path / "full",
        overrides=[
            *(s for s in sets if s != "--set"),
            "runtime.executor=local",
            "runtime.progress=false",
        ],
    )
    for a, b in zip(full.params, after.params, strict=True):
        np.testing.assert_array_equal(a, b)
