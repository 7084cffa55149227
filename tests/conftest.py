import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def linreg_config() -> dict:
    import yaml

    return yaml.safe_load((ROOT / "experiments" / "linreg.yaml").read_text())
