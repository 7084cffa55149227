"""Run configuration: a YAML file, validated up front as a whole.

Every key has a type, a default and a range. An unknown key, a wrong type or an
out-of-range value raises :class:`~fedray.errors.ConfigError` that lists each bad key
with its value and what is allowed. Validation is done by pydantic.
"""

from __future__ import annotations

import difflib
import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, Field, ValidationError, model_validator

from fedray.config.privacy import CanaryConfig, DPConfig, PrivacyConfig, SecureAggregationConfig
from fedray.config.sections import (
    FILE_DATASETS,
    AttackConfig,
    CheckpointConfig,
    ClientConfig,
    CompressionConfig,
    DataConfig,
    EvaluationConfig,
    FaultsConfig,
    ModelConfig,
    RuntimeConfig,
    SyntheticConfig,
    _Section,
)
from fedray.config.strategy import RECIPES, FedAvgConfig, StrategyConfig, _recipe_name
from fedray.errors import ConfigError
from fedray.features import Feature, TopK
from fedray.strategy.rules import check_compatible, check_declared

__all__ = [
    "FILE_DATASETS",
    "AttackConfig",
    "CanaryConfig",
    "CheckpointConfig",
    "ClientConfig",
    "Config",
    "ConfigError",
    "DPConfig",
    "DataConfig",
    "EvaluationConfig",
    "FaultsConfig",
    "ModelConfig",
    "PrivacyConfig",
    "RuntimeConfig",
    "SecureAggregationConfig",
    "StrategyConfig",
    "SyntheticConfig",
    "apply_overrides",
    "features",
    "load",
    "validate",
]


class Config(_Section):
    """A whole fedray run."""

    seed: int = Field(0, ge=0)
    """seeds data generation, partitioning, sampling, model init and shuffling"""
    rounds: int = Field(10, ge=1)
    """federated rounds"""
    data: DataConfig = DataConfig()
    model: ModelConfig = ModelConfig()
    client: ClientConfig = ClientConfig()
    strategy: StrategyConfig = Field(default_factory=FedAvgConfig)
    evaluation: EvaluationConfig = EvaluationConfig()
    attack: AttackConfig = AttackConfig()
    compression: CompressionConfig = CompressionConfig()
    faults: FaultsConfig = FaultsConfig()
    checkpoint: CheckpointConfig = CheckpointConfig()
    privacy: PrivacyConfig = PrivacyConfig()
    runtime: RuntimeConfig = RuntimeConfig()

    @model_validator(mode="after")
    def _cross_checks(self) -> Config:
        placement = self.data.placement or {}
        bad = sorted(c for c in placement if not 0 <= c < self.data.num_clients)
        if bad:
            raise ValueError(
                f"data.placement names clients {bad}; client ids run from 0 to "
                f"{self.data.num_clients - 1} (data.num_clients={self.data.num_clients})"
            )
        s = self.strategy
        if s.clients_per_round is not None:  # the same as fraction_fit = K / N
            if s.fraction_fit != 1.0:
                raise ValueError(
                    f"set strategy.clients_per_round={s.clients_per_round} or "
                    f"strategy.fraction_fit={s.fraction_fit}, not both"
                )
            if s.clients_per_round > self.data.num_clients:
                raise ValueError(
                    f"strategy.clients_per_round={s.clients_per_round} exceeds "
                    f"data.num_clients={self.data.num_clients}"
                )
            s = s.model_copy(update={"fraction_fit": s.clients_per_round / self.data.num_clients})
            object.__setattr__(self, "strategy", s)  # frozen: resolved once, here
        f = getattr(s, "num_byzantine", None)
        if f is not None and s.min_fit_clients < 2 * f + 3:
            raise ValueError(
                f"strategy.name={s.name!r} with strategy.num_byzantine={f} needs "
                f"strategy.min_fit_clients >= 2f + 3 = {2 * f + 3}, got {s.min_fit_clients}"
            )
        check_compatible(features(self))
        check_declared(recipe_features(self), features(self))
        if self.strategy.min_fit_clients > self.data.num_clients:
            raise ValueError(
                f"strategy.min_fit_clients={self.strategy.min_fit_clients} exceeds "
                f"data.num_clients={self.data.num_clients}"
            )
        return self

    def to_dict(self) -> dict[str, Any]:
        """The resolved config as plain YAML/JSON-able values."""
        return self.model_dump(mode="json")


def recipe_features(cfg: Config) -> tuple[Feature, ...]:
    """The features a config's recipe and ``compression.topk`` build (judged at load)."""
    out = cfg.strategy.build(cfg.data.num_clients).features
    if cfg.compression.topk is not None:
        out = (*out, TopK(cfg.compression.topk, cfg.compression.error_feedback))
    return out


def features(cfg: Config) -> dict[str, Any]:
    """The run's features as config key -> value, for the rules (:mod:`fedray.strategy.rules`).

    ``strategy.weighting`` appears only when set (``auto`` adapts to the run).
    """
    s, dp, sa = cfg.strategy, cfg.privacy.dp, cfg.privacy.secure_aggregation
    out: dict[str, Any] = {
        "strategy.name": s.name,
        "strategy.norm_bound": s.norm_bound,
        "strategy.max_update_norm": s.max_update_norm,
        "strategy.over_commit": s.over_commit,
        "strategy.min_fit_clients": s.min_fit_clients,
        "privacy.dp.mode": dp.mode if dp is not None else None,
        "privacy.dp.clip": dp.clip if dp is not None else None,
        "privacy.secure_aggregation.enabled": sa.enabled,
        "privacy.secure_aggregation.clip": sa.clip,
        "privacy.canaries.count": cfg.privacy.canaries.count,
        "attack.fraction": cfg.attack.fraction,
        "compression.quantize_bits": cfg.compression.quantize_bits,
        "compression.topk": cfg.compression.topk,
        "compression.rotate": cfg.compression.rotate,
        "evaluation.train_every": cfg.evaluation.train_every,
        "evaluation.federated_every": cfg.evaluation.federated_every,
        "evaluation.hosts": cfg.evaluation.hosts,
        "faults.host_hang_rate": cfg.faults.host_hang_rate,
        "runtime.round_timeout_s": cfg.runtime.round_timeout_s,
        "runtime.gpus_per_host": cfg.runtime.gpus_per_host,
        "runtime.gpu_memory_growth": cfg.runtime.gpu_memory_growth,
        "runtime.executor": cfg.runtime.executor,
        "runtime.address": cfg.runtime.address,
        "runtime.balance": cfg.runtime.balance,
        "data.placement": cfg.data.placement,
    }
    weighting = getattr(s, "weighting", "auto")
    if weighting != "auto":
        out["strategy.weighting"] = weighting
    if "bits" in sa.model_fields_set:  # only when set: compression.quantize_bits may set it
        out["privacy.secure_aggregation.bits"] = sa.bits
    return out


def _allowed_keys(model: type[BaseModel], loc: Iterable[Any]) -> list[str]:
    """Keys allowed at ``loc`` (the parent of an unknown key)."""
    current: type[BaseModel] = model
    for part in loc:
        field = current.model_fields.get(part) if isinstance(part, str) else None
        annotation = field.annotation if field is not None else None
        if not (isinstance(annotation, type) and issubclass(annotation, BaseModel)):
            return []
        current = annotation
    return list(current.model_fields)


_TYPE_TAGS = ("literal[", "constrained-", "list[", "dict[")
_TYPE_NAMES = ("int", "str", "float", "bool", "none")


def _is_type_tag(part: object) -> bool:
    return isinstance(part, str) and (part.startswith(_TYPE_TAGS) or part in _TYPE_NAMES)


def _strategy_error(err: Mapping[str, Any], loc: list[Any], name: str) -> str | None:
    """The message of an error inside ``strategy`` (recipe ``name``), by ``strategy.name``."""
    if err["type"] == "union_tag_invalid":
        hint = difflib.get_close_matches(name, list(RECIPES), n=1)
        also = f" (did you mean {hint[0]!r}?)" if hint else ""
        return f"strategy.name = {name!r}: expected one of {', '.join(RECIPES)}{also}"
    if len(loc) < 2 or (loc[1] not in RECIPES and loc[1] != "adaptive"):
        return None
    loc.pop(1)  # pydantic's tag of the recipe model
    if err["type"] != "extra_forbidden":
        return None
    option = str(loc[-1])
    own = RECIPES[name].options()
    takes = ", ".join(f"strategy.{o}" for o in own) or "none"
    if any(option in model.options() for model in RECIPES.values()):
        return (
            f"strategy.{option}={err.get('input')!r} does not apply to strategy.name={name!r}, "
            f"which would ignore it (its own options: {takes}); remove it or change strategy.name"
        )
    allowed = list(RECIPES[name].model_fields)
    hint = difflib.get_close_matches(option, allowed, n=1)
    also = f" (did you mean 'strategy.{hint[0]}'?)" if hint else ""
    return f"unknown key 'strategy.{option}'{also}; allowed keys for {name}: {', '.join(allowed)}"


def _format_error(err: Mapping[str, Any], recipe: str = "fedavg") -> str:
    # Drop pydantic's union-member tags (e.g. "constrained-int", "literal['auto']").
    loc = [p for p in err["loc"] if not _is_type_tag(p)]
    if loc and loc[0] == "strategy":
        special = _strategy_error(err, loc, recipe)
        if special is not None:
            return special
    key = ".".join(str(p) for p in loc) or "config"
    value = err.get("input")
    if err["type"] == "extra_forbidden":
        allowed = _allowed_keys(Config, loc[:-1])
        hint = difflib.get_close_matches(str(loc[-1]), allowed, n=1)
        msg = f"unknown key '{key}'"
        if hint:
            msg += f" (did you mean '{'.'.join([*map(str, loc[:-1]), hint[0]])}'?)"
        return msg + f"; allowed keys here: {', '.join(allowed)}"
    text = str(err["msg"]).removeprefix("Value error, ")
    if err["type"] == "value_error" and (not loc or isinstance(value, Mapping)):
        return text  # a cross-field check: its message names the keys itself
    return f"{key} = {value!r}: {text}"


def validate(raw: Mapping[str, Any]) -> Config:
    """Validate a nested mapping into a :class:`Config`.

    Raises:
        ConfigError: One line per problem, each naming the key, the value and
            what is allowed.
    """
    if not isinstance(raw, Mapping):
        raise ConfigError(f"a config must be a mapping of keys to values, got {type(raw).__name__}")
    try:
        return Config.model_validate(dict(raw))
    except ValidationError as exc:
        merged: dict[str, list[str]] = {}
        recipe = _recipe_name(raw.get("strategy", {}))
        for e in exc.errors():
            key, _, text = _format_error(e, recipe).partition(": ")
            merged.setdefault(key, []).append(text)
        lines = [
            f"{k}: {' or '.join(dict.fromkeys(v))}" if v != [""] else k for k, v in merged.items()
        ]
        raise ConfigError("invalid config: " + "; ".join(lines)) from None


def apply_overrides(raw: dict[str, Any], overrides: Iterable[str]) -> dict[str, Any]:
    """Apply ``dotted.key=value`` strings to a nested dict (values parsed as YAML).

    >>> apply_overrides({"data": {"num_clients": 2}}, ["data.num_clients=4", "rounds=3"])
    {'data': {'num_clients': 4}, 'rounds': 3}
    """
    out = {k: (dict(v) if isinstance(v, dict) else v) for k, v in raw.items()}
    for item in overrides:
        key, sep, text = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"--set expects dotted.key=value, got {item!r}")
        parts = key.strip().split(".")
        node = out
        for p in parts[:-1]:
            child = node.get(p)
            child = dict(child) if isinstance(child, dict) else {}
            node[p] = child
            node = child
        node[parts[-1]] = yaml.safe_load(text)
    return out


DATA_PATHS = ("path", "test_path")
"""The keys of ``data`` that name files (resolved by :func:`load`)."""


def _found(value: Any, folders: Iterable[Path]) -> Any:
    """``value`` as an absolute path in the first of ``folders`` that has it, else as is.

    Absolute paths and ``~`` paths are kept: each node expands ``~`` itself.
    """
    if not isinstance(value, str) or not value or value.startswith("~"):
        return value
    if Path(value).is_absolute():
        return value
    for folder in folders:
        if (folder / value).exists():
            return os.path.abspath(folder / value)
    return value


def _with_data_paths(raw: Any, folders: Iterable[Path]) -> Any:
    """``raw`` with the relative ``data.path`` and ``data.test_path`` found in ``folders``."""
    data = raw.get("data") if isinstance(raw, dict) else None
    if not isinstance(data, dict) or not any(k in data for k in DATA_PATHS):
        return raw
    folders = list(folders)
    found = {k: _found(data[k], folders) for k in DATA_PATHS if k in data}
    return {**raw, "data": {**data, **found}}


def load(source: str | Path | Mapping[str, Any] | Config, overrides: Iterable[str] = ()) -> Config:
    """Load and validate a config from a YAML path, a mapping or a :class:`Config`.

    A relative ``data.path`` or ``data.test_path`` of a YAML file's config (``overrides``
    included) is looked up in the file's folder, then in the working directory; one of a
    mapping or a :class:`Config`, in the working directory. The config holds the
    absolute path found, so every host reads the same file whatever its own working
    directory (a path found nowhere is kept as written, for the run to report).

    Raises:
        ConfigError: The file is missing or not YAML, or a key is invalid.
    """
    overrides = list(overrides)
    if isinstance(source, Config):
        if not overrides:
            return _paths_from_cwd(source)
        raw: Any = source.to_dict()
    elif isinstance(source, Mapping):
        raw = dict(source)
    else:
        path = Path(source)
        if not path.is_file():
            raise ConfigError(f"config file not found: '{path}' (expected a YAML file)")
        try:
            raw = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as exc:
            raise ConfigError(f"config file '{path}' is not valid YAML: {exc}") from None
        if not isinstance(raw, dict):
            raise ConfigError(
                f"config file '{path}' must hold a mapping of keys, got {type(raw).__name__}"
            )
        raw = _with_data_paths(apply_overrides(raw, overrides), [path.parent, Path.cwd()])
        return validate(raw)
    return _paths_from_cwd(validate(apply_overrides(raw, overrides)))


def _paths_from_cwd(cfg: Config) -> Config:
    """``cfg`` with its relative data paths that the working directory has made absolute."""
    found = {k: _found(getattr(cfg.data, k), [Path.cwd()]) for k in DATA_PATHS}
    if all(found[k] == getattr(cfg.data, k) for k in DATA_PATHS):
        return cfg
    return cfg.model_copy(update={"data": cfg.data.model_copy(update=found)})
