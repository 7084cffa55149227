"""Where a cold start's seconds go: the hello-world on Ray against the naive loop (issue 19).

Each part is measured in a fresh process, side by side in one run, ``--repeats`` times:

* ``naive``: the naive sequential loop's start: import TensorFlow, build and compile
  the hello-world's ``Dense(1)``, train one client once (what it needs before its
  first round);
* ``fedray``: ``fedray run experiments/linreg.yaml`` on a private local Ray, its
  reported startup (``summary.json``: until the hosts are ready);
* its parts: the driver's imports (``import fedray.api``), ``ray.init`` as fedray calls
  it (and how many processes it starts), one bare Ray actor, ``import tensorflow``
  inside an actor, and the hosts' own set-up (data, model, traced loops: ``setup_s``);
* whether the driver ever imported TensorFlow;
* warm runs: ``fedray up`` once (its own time), then the same hello-world with
  ``--address fedray`` ``--repeats`` times: its startup (the hosts load the run's spec)
  and the command's whole wall time, against the naive loop's start.

Writes results/startup.csv and .md.

    python experiments/startup.py [--repeats 3]      # ~3 min on 2 cores
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd

HERE = Path(__file__).parent
RESULTS = HERE / "results"

NAIVE = """
import time; t0 = time.perf_counter()
import numpy as np, keras
x = np.random.default_rng(0).uniform(0, 10, (50, 1)).astype("float32"); y = 3 * x + 1
model = keras.Sequential([keras.Input((1,)), keras.layers.Dense(1)])
model.compile(optimizer=keras.optimizers.SGD(0.01), loss="mse")
model.fit(x, y, batch_size=32, epochs=1, verbose=0)
print(time.perf_counter() - t0)
"""
DRIVER_IMPORTS = """
import time; t0 = time.perf_counter()
import fedray.api, sys
print(time.perf_counter() - t0, "tensorflow" in sys.modules)
"""
RAY_PARTS = """
import time, psutil
from fedray.runtime.connect import connect
t0 = time.perf_counter()
connect(None, num_cpus=2, verbose=False)
t_init = time.perf_counter() - t0
import ray
session = ray._private.worker.global_worker.node.get_session_dir_path()
procs = sum(1 for p in psutil.process_iter(["cmdline"])
            if any(session in a for a in (p.info["cmdline"] or [])))
@ray.remote(num_cpus=0)
class Bare:
    def ready(self):
        return 1
    def import_tf(self):
        t = time.perf_counter()
        from fedray.client.devices import import_tensorflow
        import_tensorflow()
        return time.perf_counter() - t
t0 = time.perf_counter()
a = Bare.remote()
ray.get(a.ready.remote())
t_actor = time.perf_counter() - t0
t_tf = ray.get(a.import_tf.remote())
print(t_init, procs, t_actor, t_tf)
ray.shutdown()
"""


def _python(code: str) -> list[str]:
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=300, check=True
    )
    return out.stdout.strip().splitlines()[-1].split()


def _fedray_run(*extra: str) -> tuple[float, float, float, float]:
    """Startup, the slowest host's set-up, the total and the command's wall time."""
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [
            sys.executable,
            "-m",
            "fedray",
            "run",
            str(HERE / "linreg.yaml"),
            "--out",
            tmp,
            "--no-progress",
            *extra,
        ]
        t0 = time.perf_counter()
        subprocess.run(cmd, capture_output=True, text=True, timeout=300, check=True)
        wall = time.perf_counter() - t0
        summary = json.loads((Path(tmp) / "summary.json").read_text())
    setup = max(h.get("setup_s", 0.0) for h in summary["hosts"])
    return summary["time"]["startup_s"], setup, summary["time"]["total_s"], wall


def _fedray(*args: str) -> float:
    t0 = time.perf_counter()
    subprocess.run(
        [sys.executable, "-m", "fedray", *args],
        capture_output=True,
        text=True,
        timeout=300,
        check=True,
    )
    return time.perf_counter() - t0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    rows = []
    for repeat in range(args.repeats):
        t0 = time.perf_counter()
        naive = float(_python(NAIVE)[0])
        rows.append(("naive loop: start (TF import, model, first fit)", naive, repeat))
        startup, setup, total, wall = _fedray_run()
        rows.append(("fedray run: startup", startup, repeat))
        rows.append(("fedray run: total", total, repeat))
        rows.append(("fedray run: the command's wall time", wall, repeat))
        rows.append(("  host set-up (data, model, traced loops), slowest host", setup, repeat))
        imports, driver_tf = _python(DRIVER_IMPORTS)
        rows.append(("  driver imports (import fedray.api)", float(imports), repeat))
        t_init, procs, t_actor, t_tf = _python(RAY_PARTS)
        rows.append(("  ray.init (private local instance)", float(t_init), repeat))
        rows.append(("  processes ray.init starts", float(procs), repeat))
        rows.append(("  one bare Ray actor, ready", float(t_actor), repeat))
        rows.append(("  import tensorflow inside an actor", float(t_tf), repeat))
        print(f"repeat {repeat + 1}: {time.perf_counter() - t0:.0f} s", flush=True)
    with tempfile.TemporaryDirectory() as up_dir:  # warm runs, after every cold measurement
        os.environ["FEDRAY_UP_DIR"] = up_dir
        rows.append(("fedray up (once)", _fedray("up"), 0))
        try:
            for repeat in range(args.repeats):
                startup, setup, total, wall = _fedray_run("--address", "fedray")
                rows.append(("warm fedray run: startup", startup, repeat))
                rows.append(("warm fedray run: total", total, repeat))
                rows.append(("warm fedray run: the command's wall time", wall, repeat))
                rows.append(("  warm host set-up (data, model, traced loops)", setup, repeat))
        finally:
            _fedray("down")
    table = pd.DataFrame(rows, columns=["part", "seconds", "repeat"])
    RESULTS.mkdir(exist_ok=True)
    table.to_csv(RESULTS / "startup.csv", index=False)
    med = table.groupby("part", sort=False)["seconds"].agg(["median", "min", "max"])
    naive_s = med.loc["naive loop: start (TF import, model, first fit)", "median"]
    fedray_s = med.loc["fedray run: startup", "median"]
    md = ["| part | median | min | max |", "|---|---:|---:|---:|"]
    for part, r in med.iterrows():
        fmt = "{:.0f}" if "processes" in part else "{:.2f} s"
        md.append(
            f"| {part} | {fmt.format(r['median'])} | {fmt.format(r['min'])} | "
            f"{fmt.format(r['max'])} |"
        )
    ratio = fedray_s / naive_s
    warm_s = med.loc["warm fedray run: startup", "median"]
    md += [
        "",
        f"fedray startup / naive start = {ratio:.2f}; warm: {warm_s / naive_s:.2f} "
        f"(medians of {args.repeats}); the driver imported TensorFlow: {driver_tf}.",
    ]
    (RESULTS / "startup.md").write_text("\n".join(md) + "\n")
    print("\n".join(md))


if __name__ == "__main__":
    main()
