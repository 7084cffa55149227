"""Run configuration: a YAML file, validated up front as a whole.

Every key has a type, a default and a range. An unknown key, a wrong type or an
out-of-range value raises :class:`~fedray.errors.ConfigError` that lists each bad key
with its value and what is allowed. Validation is done by pydantic.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from fedray.compat import RECIPE_ONLY, check_compatible
from fedray.errors import ConfigError

FILE_DATASETS = ("npz", "csv", "parquet")


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, use_attribute_docstrings=True)


class SyntheticConfig(_Section):
    """Synthetic(alpha, beta) of Li et al. (FedProx): alpha = model skew, beta = data skew."""

    alpha: float = Field(1.0, ge=0)
    """model skew α of Synthetic(α, β)"""
    beta: float = Field(1.0, ge=0)
    """data skew β of Synthetic(α, β)"""
    num_features: int = Field(60, ge=1)
    """features of Synthetic(α, β)"""
    num_classes: int = Field(10, ge=2)
    """classes of Synthetic(α, β)"""


class DataConfig(_Section):
    """Which dataset, where it lives, and how it is split over clients."""

    dataset: Literal[
        "linreg",
        "synthetic",
        "blobs",
        "digits",
        "npz",
        "csv",
        "parquet",
        "mnist",
        "cifar10",
        "memory",
    ] = "linreg"
    """the data source (see [Datasets](datasets.md)); `memory` is arrays passed to `fedray.fit`"""
    path: str | None = None
    """`npz`/`csv`/`parquet` file; for `mnist`/`cifar10` an optional offline `.npz`"""
    test_path: str | None = None
    """separate test table for `csv`/`parquet`"""
    num_clients: int = Field(2, ge=1)
    """registered clients"""
    partition: Literal["iid", "dirichlet", "shards", "column"] = "iid"
    """how rows are split over clients (see [Datasets](datasets.md#partitioners))"""
    alpha: float = Field(0.5, gt=0)
    """Dirichlet concentration (smaller = more label skew)"""
    shards_per_client: int = Field(2, ge=1)
    """for `shards`"""
    column: str | None = None
    """for `column` (`synthetic` uses `client`: its devices)"""
    column_values: list[str | int] | None = None
    """for `column`: client k owns the rows whose value is the k-th; a node may then hold only its
    own clients' rows
    """
    num_classes: int | None = Field(None, ge=2)
    """fix the class count (needed when each node sees only its own clients' labels)"""
    label: str = "label"
    """label column of `csv`/`parquet`"""
    task: Literal["auto", "classification", "regression"] = "auto"
    """`auto`: integer labels are classes"""
    num_samples: int | None = Field(None, ge=1)
    """size of generated datasets (`linreg` 100, `blobs` 20,000; `synthetic`: total rows over all
    devices, lognormal shares; unset = the paper's lognormal(4, 2) + 50 per device)
    """
    test_fraction: float = Field(0.2, ge=0, lt=1)
    """server test split when the data has none"""
    client_test_fraction: float = Field(0.0, ge=0, lt=1)
    """each client's local test split (federated evaluation)"""
    synthetic: SyntheticConfig = SyntheticConfig()
    placement: dict[int, str] | None = None
    """pin a client's actor to the node(s) advertising that resource"""

    @model_validator(mode="after")
    def _cross_checks(self) -> DataConfig:
        if self.dataset in FILE_DATASETS and not self.path:
            raise ValueError(f"data.path is required for dataset {self.dataset!r}")
        if self.partition == "column" and self.dataset not in ("synthetic",) and not self.column:
            raise ValueError("data.column is required when data.partition is 'column'")
        if self.column_values is not None and len(self.column_values) != self.num_clients:
            raise ValueError(
                f"data.column_values has {len(self.column_values)} values but "
                f"data.num_clients={self.num_clients}; give one value per client"
            )
        return self


class ModelConfig(_Section):
    """The Keras model: a built-in name or ``package.module:function``."""

    name: str = "linear"
    """the Keras model (see [Datasets](datasets.md#models))"""
    hidden: list[int] = Field(default_factory=lambda: [64])
    """hidden layer sizes of `mlp`"""

    @field_validator("name")
    @classmethod
    def _known(cls, v: str) -> str:
        if v not in ("linear", "mlp", "cnn") and ":" not in v:
            raise ValueError(
                f"unknown model {v!r}; expected 'linear', 'mlp', 'cnn' or 'package.module:function'"
            )
        return v

    @field_validator("hidden")
    @classmethod
    def _positive(cls, v: list[int]) -> list[int]:
        bad = [h for h in v if h < 1]
        if bad:
            raise ValueError(f"hidden sizes must be >= 1, got {bad}")
        return v


class ClientConfig(_Section):
    """Local training on each client."""

    optimizer: Literal["sgd", "adam", "adamw", "rmsprop", "adagrad"] = "sgd"
    """local optimizer (its state is reset every round; its learning rate never is)"""
    learning_rate: float = Field(0.01, gt=0)
    """local learning rate"""
    local_epochs: int = Field(1, ge=1)
    """local epochs per round"""
    batch_size: int = Field(32, ge=1)
    """local batch size"""
    loss: str = "auto"
    """`auto`: MSE (regression) or sparse categorical cross-entropy"""
    metrics: list[str] | Literal["auto"] = "auto"
    """`auto`: `mae` or `accuracy`"""


class StrategyConfig(_Section):
    """How the server combines client updates."""

    name: Literal[
        "fedavg",
        "fedprox",
        "scaffold",
        "fedbuff",
        "fedavgm",
        "fedadagrad",
        "fedadam",
        "fedyogi",
        "fedmedian",
        "trimmed_mean",
        "krum",
        "multi_krum",
    ] = "fedavg"
    """the federated algorithm: an aggregator + a server optimizer (see
    [Strategies](strategies.md))
    """
    fraction_fit: float = Field(1.0, gt=0, le=1)
    """fraction of clients sampled per round"""
    clients_per_round: int | None = Field(None, ge=1)
    """sample exactly K clients per round instead (the same as `fraction_fit = K / num_clients`;
    set one of the two)
    """
    min_fit_clients: int = Field(1, ge=1)
    """a round commits only if this many clients succeed"""
    proximal_mu: float = Field(0.01, ge=0)
    """FedProx's μ: clients minimise f(w) + μ/2‖w − w_global‖²"""
    server_learning_rate: float | None = Field(None, gt=0)
    """server step size (FedAvg 1, FedAvgM 1, adaptive 0.01)"""
    server_momentum: float = Field(0.9, ge=0, lt=1)
    """FedAvgM momentum"""
    beta1: float = Field(0.9, ge=0, lt=1)
    """first-moment decay of FedAdagrad/FedAdam/FedYogi (Reddi et al. 2021)"""
    beta2: float = Field(0.99, ge=0, lt=1)
    """second-moment decay of FedAdam/FedYogi"""
    tau: float = Field(1e-3, ge=0)
    """adaptivity (the denominator's ε) of FedAdagrad/FedAdam/FedYogi"""
    trim_beta: float = Field(0.1, ge=0, lt=0.5)
    """fraction trimmed per side by `trimmed_mean`"""
    num_byzantine: int = Field(0, ge=0)
    """`f` for `krum`/`multi_krum` (needs `min_fit_clients` ≥ 2f + 3)"""
    krum_selected: int | None = Field(None, ge=1)
    """updates averaged by `multi_krum`"""
    norm_bound: float | None = Field(None, gt=0)
    """clip every update to this L2 norm on the server before any aggregator"""
    concurrency: int = Field(10, ge=1)
    """`fedbuff`: clients training at once"""
    buffer_size: int = Field(5, ge=1)
    """`fedbuff`: arrivals per server step (a logged round is one server step)"""
    weighting: Literal["auto", "examples", "uniform"] = "auto"
    """client weights of mean-based strategies; `auto` is `examples` (FedAvg) without DP and
    `uniform` with it
    """
    over_commit: float = Field(0.0, ge=0)
    """sample `ceil(K × over_commit)` extra clients and aggregate the first K valid updates to
    arrive
    """
    on_too_few: Literal["retry", "stop", "skip"] = "retry"
    """fewer than `min_fit_clients` succeeded: sample again then stop, stop at once, or keep the
    old model and go on
    """
    max_retries: int = Field(2, ge=0)
    """extra attempts per round under `retry`"""
    max_update_norm: float | None = Field(None, gt=0)
    """reject (count as failed, with the norm in the reason) any update longer than this"""


class EvaluationConfig(_Section):
    """Centralized (server test set) and federated (client test splits) evaluation."""

    every: int = Field(1, ge=0)
    """centralized evaluation every N rounds (0: never; the last round always)"""
    federated_every: int = Field(0, ge=0)
    """federated evaluation on clients' test splits every N rounds"""
    train_every: int = Field(0, ge=0)
    """the global model on every client's training data every N rounds (`train/*`)"""
    predict: list[list[float]] | None = None
    """inputs whose predictions are printed and stored at the end"""


class AttackConfig(_Section):
    """Byzantine clients, simulated (for testing robust aggregators)."""

    fraction: float = Field(0.0, ge=0, le=1)
    """Byzantine clients (a fixed, seeded set) for testing robust aggregators"""
    kind: Literal["sign_flip", "gaussian", "label_flip"] = "sign_flip"
    """send `-scale × update`, noise of norm `scale`, or train on labels `C-1-y`"""
    scale: float = Field(4.0, gt=0)
    """the attack's `scale`"""


class FaultsConfig(_Section):
    """Simulated faults."""

    straggler_fraction: float = Field(0.0, ge=0, le=1)
    """each sampled client straggles with this probability and runs only 1…E−1 of its E local
    epochs (FedProx's setting)
    """
    drop_stragglers: bool = False
    """drop stragglers' partial updates (a round deadline) instead of using them"""
    delay_s: float = Field(0.0, ge=0)
    """slow devices: each client waits a fixed `delay_s × u` seconds per fit, `u ~ U(0, 1)` from
    the seed
    """
    crash_rate: float = Field(0.0, ge=0, le=1)
    """per client and round (seeded): the client's device drops out (on Ray its host process exits)
    """
    hang_rate: float = Field(0.0, ge=0, le=1)
    """per client and round (seeded): the client sleeps past the round deadline"""
    nan_rate: float = Field(0.0, ge=0, le=1)
    """per client and round (seeded): the client returns NaN"""


class DPConfig(_Section):
    """Client-level differential privacy (see the README's Privacy section)."""

    mode: Literal["central", "local", "dpsgd"] = "central"
    """`central`: the server clips and noises the mean (DP-FedAvg); `local`: each client noises its
    own update; `dpsgd`: example-level DP-SGD inside each client
    """
    noise_multiplier: float | None = Field(None, ge=0)
    """z: noise std over the clip norm (give this or `target_epsilon`)"""
    target_epsilon: float | None = Field(None, gt=0)
    """calibrate z so that the whole run spends this ε"""
    max_epsilon: float | None = Field(None, gt=0)
    """stop before a round that would spend more than this ε"""
    delta: float | None = Field(None, gt=0, lt=1)
    """δ of the (ε, δ) guarantee; required, well below 1 / num_clients"""
    clip: Annotated[float, Field(gt=0)] | Literal["adaptive"] = 1.0
    """L2 clip norm C of each update, or `adaptive` (Andrew et al. 2021; central DP only)"""
    initial_clip: float = Field(0.1, gt=0)
    """adaptive clipping: the first round's C"""
    target_quantile: float = Field(0.5, gt=0, lt=1)
    """adaptive clipping: the fraction of updates left unclipped"""
    clip_learning_rate: float = Field(0.2, gt=0)
    """adaptive clipping: the geometric step of C per round"""
    count_stddev: float | None = Field(None, gt=0)
    """adaptive clipping: σ_b of the noised unclipped count (default m / 20)"""
    sampling: Literal["poisson", "fixed"] = "poisson"
    """`poisson`: each client joins with probability q (what the accountant assumes); `fixed`:
    exactly K
    """
    noise_seed: int | None = Field(None, ge=0)
    """fix the noise (reproducible tests only: the noise is then predictable)"""

    @model_validator(mode="after")
    def _checks(self) -> DPConfig:
        if self.delta is None:
            raise ValueError(
                "privacy.dp.delta is required: the δ of the (ε, δ) guarantee, well below "
                "1 / number of clients (e.g. 1e-5)"
            )
        if (self.noise_multiplier is None) == (self.target_epsilon is None):
            raise ValueError(
                "privacy.dp needs exactly one of noise_multiplier (z >= 0) or target_epsilon "
                f"(got noise_multiplier={self.noise_multiplier}, "
                f"target_epsilon={self.target_epsilon})"
            )
        if self.mode != "central" and self.clip == "adaptive":
            raise ValueError("privacy.dp.clip = 'adaptive' needs privacy.dp.mode = 'central'")
        if self.mode == "dpsgd" and self.target_epsilon is not None:
            raise ValueError(
                "privacy.dp.target_epsilon is not supported with privacy.dp.mode = 'dpsgd' "
                "(each client's ε depends on its shard size); set privacy.dp.noise_multiplier "
                "and use `fedray privacy` with q = batch_size / examples to choose it"
            )
        return self


class SecureAggregationConfig(_Section):
    """SecAgg / SecAgg+ (see the README's Privacy section).

    ``clip`` defaults to DP's clip under central DP and to 8.0 otherwise (Flower's
    SecAgg+ clipping range); ``bits`` defaults to 22 (Flower's quantization range
    2^22). A round with fewer than ``min_clients`` sampled or surviving clients aborts
    before anything is unmasked.
    """

    enabled: bool = False
    """SecAgg / SecAgg+: the server sees only the sum of masked, quantized updates"""
    bits: int = Field(22, ge=1, le=40)
    """quantization bits per coordinate"""
    clip: float | None = Field(None, gt=0)
    """L2 clip of each update in the host, also the quantization range (default: DP's clip, else
    8.0)
    """
    neighbours: int | Literal["auto", "all"] = "auto"
    """SecAgg+ neighbours per client (`auto`: 2⌈log₂ n⌉ + 2; `all`: plain SecAgg)"""
    threshold: float = Field(0.6, gt=0.5, le=1.0)
    """fraction of a neighbourhood needed to unmask"""
    min_clients: int = Field(3, ge=1)
    """the smallest cohort whose sum is revealed; smaller rounds abort before unmasking"""


class CanaryConfig(_Section):
    """Canary clients for a client-level empirical ε estimate (``summary.json``)."""

    count: int = Field(0, ge=0)
    """canary clients for a client-level empirical ε estimate (`summary.json`); 0: off"""
    held_out: int | None = Field(None, ge=2)
    """canaries never inserted, the null distribution (default: `count`)"""
    norm: float = Field(1.0, gt=0)
    """L2 norm of each canary update (at most the DP clip)"""

    @model_validator(mode="after")
    def _checks(self) -> CanaryConfig:
        if self.count == 1:
            raise ValueError("privacy.canaries.count must be 0 (off) or >= 2, got 1")
        return self


class PrivacyConfig(_Section):
    """Privacy mechanisms; unset means none."""

    dp: DPConfig | None = None
    secure_aggregation: SecureAggregationConfig = SecureAggregationConfig()
    canaries: CanaryConfig = CanaryConfig()


class CheckpointConfig(_Section):
    """Driver checkpoints in the run directory (``checkpoint.npz``), for ``--resume``."""

    every: int = Field(1, ge=0)
    """write the driver's full state to `DIR/checkpoint.npz` every N rounds (atomically; 0: never)
    """


class RuntimeConfig(_Section):
    """Where the clients run."""

    executor: Literal["ray", "local"] = "ray"
    """`local`: in-process, no Ray"""
    address: str | None = None
    """unset: private local Ray instance"""
    clients_per_actor: Annotated[int, Field(ge=1)] | Literal["auto"] = "auto"
    """clients served by one actor (one model, shards of each); `auto`: one actor per client while
    the cluster's CPUs allow, packed beyond that (see [Speed and scale](performance.md#scale))
    """
    num_cpus: int | None = Field(None, ge=1)
    """CPUs of the private local Ray instance"""
    scheduling: Literal["default", "spread"] = "default"
    """`spread`: place actors on as many nodes as possible"""
    round_timeout_s: float | None = Field(None, gt=0)
    """aggregate what arrived by then; late clients count as failed and their hosts are restarted"""
    restart_timeout_s: float = Field(120.0, gt=0)
    """how long the driver waits for a restarting host before counting its clients as failed"""
    max_restarts: int = Field(3, ge=-1)
    """Ray restarts of a crashed client host (−1: unlimited); a restart reloads its shards and
    model
    """
    pre_aggregate: bool = True
    """with a linear rule (FedAvg's mean, DP-FedAvg, local DP) each actor sends one partial sum of
    its clients' validated, encoded updates instead of every update; off for robust rules,
    SCAFFOLD, FedBuff, over-commitment and secure aggregation, which need single updates
    """
    progress: bool = True
    """progress bar (else one log line per round)"""
    verbose: bool = False
    """show TensorFlow and Ray logs"""


class Config(_Section):
    """A whole fedray run."""

    seed: int = Field(0, ge=0)
    """seeds data generation, partitioning, sampling, model init and shuffling"""
    rounds: int = Field(10, ge=1)
    """federated rounds"""
    data: DataConfig = DataConfig()
    model: ModelConfig = ModelConfig()
    client: ClientConfig = ClientConfig()
    strategy: StrategyConfig = StrategyConfig()
    evaluation: EvaluationConfig = EvaluationConfig()
    attack: AttackConfig = AttackConfig()
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
        if s.name in ("krum", "multi_krum") and s.min_fit_clients < 2 * s.num_byzantine + 3:
            raise ValueError(
                f"strategy.name={s.name!r} with strategy.num_byzantine={s.num_byzantine} needs "
                f"strategy.min_fit_clients >= 2f + 3 = {2 * s.num_byzantine + 3}, "
                f"got {s.min_fit_clients}"
            )
        check_compatible(features(self))
        if self.strategy.min_fit_clients > self.data.num_clients:
            raise ValueError(
                f"strategy.min_fit_clients={self.strategy.min_fit_clients} exceeds "
                f"data.num_clients={self.data.num_clients}"
            )
        return self

    def to_dict(self) -> dict[str, Any]:
        """The resolved config as plain YAML/JSON-able values."""
        return self.model_dump(mode="json")


def features(cfg: Config) -> dict[str, Any]:
    """The run's features as config key -> value, for :func:`fedray.compat.check_compatible`.

    Recipe options (``strategy.trim_beta``, ...) appear only when set away from their
    default, so that one the recipe ignores can be refused.
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
        "privacy.canaries.count": cfg.privacy.canaries.count,
        "attack.fraction": cfg.attack.fraction,
        "evaluation.train_every": cfg.evaluation.train_every,
        "evaluation.federated_every": cfg.evaluation.federated_every,
    }
    for option in RECIPE_ONLY:
        value = getattr(s, option)
        if value != StrategyConfig.model_fields[option].default:
            out[f"strategy.{option}"] = value
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


def _format_error(err: Mapping[str, Any]) -> str:
    # Drop pydantic's union-member tags (e.g. "constrained-int", "literal['auto']").
    loc = [p for p in err["loc"] if not _is_type_tag(p)]
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
        for e in exc.errors():
            key, _, text = _format_error(e).partition(": ")
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


def load(source: str | Path | Mapping[str, Any] | Config, overrides: Iterable[str] = ()) -> Config:
    """Load and validate a config from a YAML path, a mapping or a :class:`Config`.

    Raises:
        ConfigError: The file is missing or not YAML, or a key is invalid.
    """
    overrides = list(overrides)
    if isinstance(source, Config):
        if not overrides:
            return source
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
    return validate(apply_overrides(raw, overrides))
