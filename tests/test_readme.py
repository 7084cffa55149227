"""The README's promises stay true: its two commands are the ones CI runs."""

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
