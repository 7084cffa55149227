"""The user's tables (``data.dataset: csv | parquet``): read and checked into arrays.

Layer 3 (an edge): pandas is imported inside the functions.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from fedray.config import DataConfig
from fedray.errors import DataError


def read_table(path: Path, kind: str) -> Any:
    """The table at ``path`` (``csv`` or ``parquet``), or one line saying why not."""
    import pandas as pd

    try:
        return pd.read_csv(path) if kind == "csv" else pd.read_parquet(path)
    except Exception as exc:  # pandas raises many parser-specific types
        raise DataError(f"cannot read '{path}' as {kind}: {type(exc).__name__}: {exc}") from None


def table_to_arrays(
    df: Any, cfg: DataConfig, path: Path
) -> tuple[np.ndarray, np.ndarray, dict[str, np.ndarray]]:
    """(features, labels, group columns) of a user's table, checked column by column."""
    if cfg.label not in df.columns:
        raise DataError(
            f"'{path}' has no label column '{cfg.label}' (data.label); "
            f"columns are: {', '.join(map(str, df.columns))}"
        )
    groups: dict[str, np.ndarray] = {}
    drop = [cfg.label]
    if cfg.partition == "column" and cfg.column:
        if cfg.column not in df.columns:
            raise DataError(
                f"'{path}' has no partition column '{cfg.column}' (data.column); "
                f"columns are: {', '.join(map(str, df.columns))}"
            )
        groups[cfg.column] = df[cfg.column].to_numpy()
        drop.append(cfg.column)
    features = df.drop(columns=drop)
    from pandas.api.types import is_numeric_dtype

    bad = [str(c) for c in features.columns if not is_numeric_dtype(features[c].dtype)]
    if bad:
        raise DataError(f"'{path}': feature columns must be numeric; not numeric: {', '.join(bad)}")
    missing = features.columns[features.isna().any()].tolist() + (
        [cfg.label] if df[cfg.label].isna().any() else []
    )
    if missing:
        raise DataError(f"'{path}': missing values in columns: {', '.join(map(str, missing))}")
    return features.to_numpy(dtype=np.float32), df[cfg.label].to_numpy(), groups
