"""The sections of a run configuration, one pydantic model each.

Every key has a type, a default, a range and a docstring (the generated reference,
``docs/config.md``, is built from them).
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

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
        "huggingface",
        "memory",
    ] = "linreg"
    """the data source (see [Datasets](datasets.md)); `memory` is arrays passed to `fedray.fit`"""
    path: str | None = None
    """`npz`/`csv`/`parquet` file; for `mnist`/`cifar10` an optional offline `.npz`. A relative
    path is looked up in the config file's folder, then in the working directory
    """
    test_path: str | None = None
    """separate test table for `csv`/`parquet` (relative: as `path`)"""
    name: str | None = None
    """`huggingface`: the dataset (`flwrlabs/femnist`, `flwrlabs/shakespeare`, ...), or a
    builder (`parquet`, `csv`, `json`) for the local files at `data.path`
    """
    split: str = "train"
    """`huggingface`: the split the clients train on"""
    test_split: str | None = None
    """`huggingface`: the server's test split (unset: `test_fraction` of `split`)"""
    feature: str | None = None
    """`huggingface`: the input column (unset: the first of image, img, x, text, features)"""
    vocabulary: str | None = None
    """`huggingface` text: the characters, in id order (unset: every character, sorted)"""
    sequence_length: int | None = Field(None, ge=1)
    """`huggingface` text: characters per input (unset: the longest; raw text: 80-char windows)"""
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
        if self.dataset == "huggingface" and not self.name:
            raise ValueError(
                "data.name is required for dataset 'huggingface' (e.g. flwrlabs/femnist, or "
                "parquet with data.path)"
            )
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
        builtin = (
            "linear",
            "mlp",
            "cnn",
            "simple_cnn",
            "char_lstm",
        )  # fedray.client.models.BUILTIN
        if v not in builtin and ":" not in v:
            raise ValueError(
                f"unknown model {v!r}; expected one of {', '.join(builtin)} or "
                "'package.module:function'"
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
    hosts: Annotated[int, Field(ge=1)] | Literal["auto"] = "auto"
    """actors that share the centralized evaluation, each holding the server test set; `auto`:
    up to 4, one per CPU (see [Speed](performance.md#evaluation-shared-by-the-hosts))
    """


class AttackConfig(_Section):
    """Byzantine clients, simulated (for testing robust aggregators)."""

    fraction: float = Field(0.0, ge=0, le=1)
    """Byzantine clients (a fixed, seeded set) for testing robust aggregators"""
    kind: Literal["sign_flip", "gaussian", "label_flip"] = "sign_flip"
    """send `-scale × update`, noise of norm `scale`, or train on labels `C-1-y`"""
    scale: float = Field(4.0, gt=0)
    """the attack's `scale`"""


class CompressionConfig(_Section):
    """Compression of client updates on the way up (see the README's Compression section)."""

    quantize_bits: int | None = Field(None, ge=1, le=16)
    """b-bit unbiased stochastic rounding of every coordinate (null: off); under secure
    aggregation, its quantization bits
    """
    topk: float | None = Field(None, gt=0, le=1)
    """send only this fraction of the coordinates, the largest (null: off)"""
    error_feedback: bool = True
    """top-k: add what was not sent to the client's next update (kept in its host)"""
    rotate: bool = False
    """randomized Hadamard rotation before quantizing (spreads spikes over all coordinates)"""


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
    """per client and round (seeded): the client's device drops out; it fails alone, and its host
    answers for the others
    """
    hang_rate: float = Field(0.0, ge=0, le=1)
    """per client and round (seeded): the client's device stops answering; it fails alone"""
    nan_rate: float = Field(0.0, ge=0, le=1)
    """per client and round (seeded): the client returns NaN"""
    host_crash_rate: float = Field(0.0, ge=0, le=1)
    """per client and round (seeded): the host process serving the client dies while planning it;
    the driver re-runs the host's clients in the same round (re-executions never draw it again)
    """
    host_hang_rate: float = Field(0.0, ge=0, le=1)
    """per client and round (seeded): the host process serving the client hangs until
    `runtime.round_timeout_s` kills it; its clients in that call time out
    """


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
    """unset: private local Ray instance (or `$FEDRAY_ADDRESS`); `auto` or host:port: a running
    cluster; `fedray`: the warm instance of `fedray up` (see [Warm runs](usage.md#warm-runs))
    """
    connect_timeout_s: float = Field(3.0, gt=0)
    """how long the Ray head at `runtime.address` may take to answer before the run stops with
    one line saying what answered instead (nothing, an HTTP server such as the dashboard, another
    gRPC server such as Ray's client server); raise it for a head across a slow link
    """
    clients_per_actor: Annotated[int, Field(ge=1)] | Literal["auto"] = "auto"
    """clients served by one actor (one model, shards of each); `auto`: one actor per client while
    the cluster's CPUs allow, packed beyond that (see [Speed and scale](performance.md#scale))
    """
    num_cpus: int | None = Field(None, ge=1)
    """CPUs of the private local Ray instance"""
    num_gpus: float | None = Field(None, ge=0)
    """GPUs of the private local Ray instance (unset: Ray detects them; a number on a machine
    without GPUs simulates them, for scheduling only)
    """
    gpus_per_host: Annotated[float, Field(gt=0)] | Literal["auto"] | None = None
    """each host's share of a GPU (Ray's `num_gpus`, e.g. 0.25: four hosts per GPU); its
    TensorFlow is capped to that share of the GPU's memory; `auto`: measure one host's peak GPU
    memory and fit as many hosts on each GPU as it allows (see [GPUs](performance.md#gpus))
    """
    gpu_memory_growth: bool = False
    """with `gpus_per_host`: let TensorFlow grow its GPU memory instead of capping it at the share
    """
    balance: bool = False
    """every host loads every client's data, and each round's clients are dealt evenly over the
    hosts that are up, so no host waits on a busier one; costs the whole training set in each
    host's memory (see [Speed and scale](performance.md#balance))
    """
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
    client_state_dir: str | None = None
    """where each host saves its clients' own state at checkpoints (SCAFFOLD's control variates,
    top-k's residuals: never sent to the driver; owner-only files); default a folder of
    `$FEDRAY_CLIENT_STATE_DIR` (else `~/.cache/fedray/client-state`) named after the run
    directory, never inside it; on a cluster, a folder every node shares keeps host restarts and
    resumes exact
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
