"""The layering rule: layers 0-2 and `import fedray` never load Ray or TensorFlow."""

import subprocess
import sys

import pytest

LIGHT = [
    "fedray",
    "fedray.records",
    "fedray.tree",
    "fedray.aggregators",
    "fedray.strategy.server_opt",
    "fedray.strategy",
    "fedray.data.partition",
    "fedray.callbacks",
    "fedray.loop",
    "fedray.loop.schedulers",
    "fedray.secagg.session",
    "fedray.config.strategy",
    "fedray.data.synthetic",
    "fedray.client.steps",
    "fedray.runtime.ray_host",
    "fedray.loop.validation",
    "fedray.loop.checkpoint",
    "fedray.client.attacks",
    "fedray.privacy",
    "fedray.privacy.audit",
    "fedray.secagg",
    "fedray.cli.audit",
    "fedray.config",
    "fedray.errors",
    # Edge modules import their heavy dependencies lazily, too.
    "fedray.client.host",
    "fedray.client.spec",
    "fedray.client.trainer",
    "fedray.client.behaviours",
    "fedray.strategy.rules",
    "fedray.features",
    "fedray.config.build",
    "fedray.config.build_privacy",
    "fedray.data.arrays",
    "fedray.data",
    "fedray.data.tables",
    "fedray.data.files",
    "fedray.rundirs",
    "fedray.data.huggingface",
    "fedray.client.models",
    "fedray.runtime.local",
    "fedray.runtime.plan",
    "fedray.runtime.connect",
    "fedray.runtime.supervisor",
    "fedray.runtime.ray_executor",
    "fedray.api",
    "fedray.cli",
    "fedray.sweeps",
    "fedray.sweeps.tune",
    "fedray.runtime.warm",
    "fedray.runtime.head",
    "fedray.cli.privacy",
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


def test_only_runtime_and_sweeps_import_ray():
    from pathlib import Path

    import fedray

    pkg = Path(fedray.__file__).parent
    offenders = [
        str(p.relative_to(pkg))
        for p in pkg.rglob("*.py")
        if not {"runtime", "sweeps"} & set(p.relative_to(pkg).parts)
        and ("import ray" in p.read_text() or "from ray" in p.read_text())
    ]
    assert offenders == []


def test_math_layers_import_no_keras_or_tensorflow_text():
    from pathlib import Path

    import fedray

    pkg = Path(fedray.__file__).parent
    folders = ("strategy", "features", "aggregators", "privacy", "secagg", "loop")
    math_files = [
        "records.py",
        "tree.py",
        "callbacks.py",
        "client/attacks.py",
        "data/partition.py",
        *[str(p.relative_to(pkg)) for folder in folders for p in (pkg / folder).glob("*.py")],
    ]
    for name in math_files:
        text = (pkg / name).read_text()
        for mod in ("tensorflow", "keras", "ray"):
            assert f"import {mod}" not in text and f"from {mod}" not in text, (name, mod)


# The layer table of ARCHITECTURE.md: a module imports only from its own layer or lower.
LAYERS = {
    0: ["records", "tree", "errors"],
    1: [
        "aggregators",
        "strategy",
        "privacy",
        "secagg",
        "features",
    ],
    2: ["loop", "callbacks"],
}
EDGE = 3  # everything else: client, runtime, data, models, config, build, api, cli, bench


def _layer(module: str) -> int:
    top = module.split(".")[1] if "." in module else ""
    return next((n for n, names in LAYERS.items() if top in names), EDGE)


def _fedray_imports(path):
    """Every fedray module a file imports, at the top or inside a function."""
    import ast

    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("fedray"):
            if node.module == "fedray":
                yield from (f"fedray.{a.name}" for a in node.names)
            else:
                yield node.module
        elif isinstance(node, ast.Import):
            yield from (a.name for a in node.names if a.name.startswith("fedray."))


def test_no_module_imports_from_a_higher_layer():
    from pathlib import Path

    import fedray

    pkg = Path(fedray.__file__).parent
    offences = []
    for path in sorted(pkg.rglob("*.py")):
        rel = path.relative_to(pkg.parent).with_suffix("")
        module = ".".join(rel.parts).removesuffix(".__init__")
        if module == "fedray":
            continue  # the package's lazy public entry points (fit, run)
        for target in _fedray_imports(path):
            if _layer(target) > _layer(module):
                offences.append(f"{module} (layer {_layer(module)}) imports {target}")
    assert offences == []


def test_the_layer_rule_catches_a_math_module_importing_config(tmp_path):
    bad = tmp_path / "bad.py"
    bad.write_text("def f():\n    from fedray.config import Config\n")
    assert [_layer(t) for t in _fedray_imports(bad)] == [EDGE]
    assert _layer("fedray.aggregators.mean") == 1 and _layer("fedray.client.host") == EDGE


def test_public_names_are_imported_from_their_package():
    """One import path per public name: what a package exports is imported from it."""
    import ast
    import importlib
    from pathlib import Path

    import fedray

    root = Path(fedray.__file__).parent.parent
    home: dict[str, str] = {}
    for init in sorted((root / "fedray").rglob("__init__.py")):
        mod = ".".join(init.parent.relative_to(root).parts)
        for name in getattr(importlib.import_module(mod), "__all__", []):
            home.setdefault(name, mod)
    deep = []
    for path in [*(root / "tests").rglob("*.py"), *(root / "experiments").rglob("*.py")]:
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("fedray."):
                for alias in node.names:
                    pkg = home.get(alias.name)
                    if pkg and node.module != pkg and node.module.startswith(pkg + "."):
                        deep.append(f"{path.name}: {node.module}.{alias.name} (use {pkg})")
    assert deep == []
