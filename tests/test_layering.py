"""The layering rule: layers 0-2 and `import fedray` never load Ray or TensorFlow."""

import subprocess
import sys

import pytest

LIGHT = [
    "fedray",
    "fedray.records",
    "fedray.tree",
    "fedray.aggregators",
    "fedray.server_opt",
    "fedray.strategy",
    "fedray.partition",
    "fedray.callbacks",
    "fedray.driver",
    "fedray.validation",
    "fedray.async_driver",
    "fedray.checkpoint",
    "fedray.attacks",
    "fedray.privacy",
    "fedray.privacy.audit",
    "fedray.secagg",
    "fedray.leakage",
    "fedray.config",
    "fedray.errors",
    # Edge modules import their heavy dependencies lazily, too.
    "fedray.client.host",
    "fedray.client.spec",
    "fedray.client.trainer",
    "fedray.client.behaviours",
    "fedray.compat",
    "fedray.build",
    "fedray.memory",
    "fedray.data",
    "fedray.models",
    "fedray.runtime.local",
    "fedray.runtime.plan",
    "fedray.runtime.connect",
    "fedray.runtime.supervisor",
    "fedray.runtime.ray_executor",
    "fedray.api",
    "fedray.cli",
]


@pytest.mark.slow
def test_light_modules_import_neither_ray_nor_tensorflow():
    code = (
        "import sys\n"
        f"for m in {LIGHT!r}: __import__(m)\n"
        "heavy = sorted(m for m in ('ray', 'tensorflow', 'keras') if m in sys.modules)\n"
        "print(','.join(heavy))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "", f"heavy modules imported: {out.stdout.strip()}"


def test_only_runtime_imports_ray():
    from pathlib import Path

    import fedray

    pkg = Path(fedray.__file__).parent
    offenders = [
        str(p.relative_to(pkg))
        for p in pkg.rglob("*.py")
        if "runtime" not in p.relative_to(pkg).parts
        and ("import ray" in p.read_text() or "from ray" in p.read_text())
    ]
    assert offenders == []


def test_math_layers_import_no_keras_or_tensorflow_text():
    from pathlib import Path

    import fedray

    pkg = Path(fedray.__file__).parent
    math_files = [
        "records.py",
        "tree.py",
        "server_opt.py",
        "strategy.py",
        "partition.py",
        "callbacks.py",
        "driver.py",
        "validation.py",
        "async_driver.py",
        "checkpoint.py",
        "attacks.py",
        *[str(p.relative_to(pkg)) for p in (pkg / "aggregators").glob("*.py")],
        *[str(p.relative_to(pkg)) for p in (pkg / "privacy").glob("*.py")],
        *[str(p.relative_to(pkg)) for p in (pkg / "secagg").glob("*.py")],
    ]
    for name in math_files:
        text = (pkg / name).read_text()
        for mod in ("tensorflow", "keras", "ray"):
            assert f"import {mod}" not in text and f"from {mod}" not in text, (name, mod)
