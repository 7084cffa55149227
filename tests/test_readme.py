"""The README's promises stay true: its two commands are the ones CI runs."""

import pytest

from tests.conftest import ROOT

RUN = (
    "python3 -m venv .venv && .venv/bin/pip install -e . "
    "&& .venv/bin/fedray run experiments/linreg.yaml"
)
TEST = 'python3 -m venv .venv && .venv/bin/pip install -e ".[dev]" && .venv/bin/python -m pytest'


def test_readme_has_the_two_commands():
    text = (ROOT / "README.md").read_text()
    assert RUN in text and TEST in text


def test_ci_runs_the_readme_test_command():
    ci = (ROOT / ".ci" / "run").read_text()
    assert '-m venv .venv && .venv/bin/pip install -q -e ".[dev]"' in ci
    assert ci.strip().endswith(".venv/bin/python -m pytest")


@pytest.mark.slow
@pytest.mark.ray
def test_readme_python_api_example_runs(tmp_path, monkeypatch):
    import re
    import shutil

    text = (ROOT / "README.md").read_text()
    api = text[text.index("## Python API") :]
    code = re.search(r"```python\n(.*?)```", api, re.S).group(1)
    shutil.copytree(ROOT / "experiments", tmp_path / "experiments")
    monkeypatch.chdir(tmp_path)
    namespace = {}
    exec(compile(code, "README.md", "exec"), namespace)  # the example as a user runs it
    assert (tmp_path / "runs" / "api-demo" / "model.keras").exists()
    assert namespace["history"].final["eval/accuracy"] > 0.5


@pytest.mark.keras
def test_readme_fit_example_prints_what_it_says(tmp_path, monkeypatch):
    import re

    import numpy as np

    import fedray

    text = (ROOT / "README.md").read_text()
    api = text[text.index("**Your own arrays, the Keras way.**") :]
    code = re.search(r"```python\n(.*?)```", api, re.S).group(1)
    real = fedray.fit

    def in_process(*args, **kwargs):  # the same run in-process (it equals the Ray run)
        return real(*args, **kwargs, out=tmp_path, runtime={"executor": "local", "progress": 0})

    monkeypatch.setattr(fedray, "fit", in_process)
    namespace = {}
    exec(compile(code, "README.md", "exec"), namespace)
    pred = namespace["history"].model().predict(np.array([[0.0], [10.0]]), verbose=0).ravel()
    claimed = [float(v) for v in re.findall(r"≈ \[\[([\d.]+)\], \[([\d.]+)\]\]", code)[0]]
    np.testing.assert_allclose(pred, claimed, atol=0.006)


def test_the_published_config_reference_is_current():
    from fedray.config.reference import config_reference

    current = (ROOT / "docs" / "config.md").read_text()
    assert current == config_reference(), "run: python -m fedray.config.reference"


def test_every_config_key_has_a_meaning_in_the_reference():
    from fedray.config.reference import config_reference

    rows = [r for r in config_reference().splitlines() if r.startswith("| `")]
    assert len(rows) > 80
    assert [r for r in rows if r.rstrip().endswith("|  |")] == []


@pytest.mark.keras
def test_readme_sweep_example_converges_in_every_combination(tmp_path):
    # Each combination of the README's grid, run in-process with the first seed (the same
    # weights as on Ray): the hello-world's eval/loss ends near its noise floor (1.0).
    import itertools
    import re

    import fedray
    from fedray.sweeps import parse_grid

    text = (ROOT / "README.md").read_text()
    block = re.search(r"```bash\n(fedray sweep .*?)```", text, re.S).group(1)
    grid = parse_grid(re.findall(r"--grid (\S+)", block))
    assert len(grid) == 2
    ends = {}
    for i, combo in enumerate(itertools.product(*grid.values())):
        sets = [f"{k}={v}" for k, v in zip(grid, combo, strict=True)]
        local = ["runtime.executor=local", "runtime.progress=false"]
        config = ROOT / "experiments" / "linreg.yaml"
        history = fedray.run(config, out=tmp_path / str(i), overrides=[*sets, *local])
        ends[", ".join(sets)] = history.final["eval/loss"]
    assert all(loss < 3.0 for loss in ends.values()), ends
