"""The ``strategy`` section: one pydantic model per recipe, told apart by ``name``.

Each recipe's model has the options every recipe takes (sampling, the norm bound and
the round policy) plus its own, and nothing else: an option the recipe would ignore
(``strategy.trim_beta`` with ``fedavg``) is refused at load time. ``build()`` makes the
:class:`~fedray.strategy.Strategy` of the recipe (``fedray.strategy.STRATEGIES``).
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import Discriminator, Field, Tag

from fedray.config.sections import _Section
from fedray.strategy import STRATEGIES, Strategy

_PARAMETER = {"proximal_mu": "mu", "trim_beta": "beta", "krum_selected": "num_selected"}
"""Config option -> the recipe function's parameter, where the names differ."""


class _Common(_Section):
    """The options of every recipe."""

    fraction_fit: float = Field(1.0, gt=0, le=1)
    """fraction of clients sampled per round"""
    clients_per_round: int | None = Field(None, ge=1)
    """sample exactly K clients per round instead (the same as `fraction_fit = K / num_clients`;
    set one of the two)
    """
    min_fit_clients: int = Field(1, ge=1)
    """a round commits only if this many clients succeed"""
    norm_bound: float | None = Field(None, gt=0)
    """clip every update to this L2 norm on the server before any aggregator"""
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

    @classmethod
    def options(cls) -> tuple[str, ...]:
        """The options of this recipe beyond those every recipe takes."""
        return tuple(k for k in cls.model_fields if k not in _Common.model_fields and k != "name")

    def build(self, num_clients: int) -> Strategy:
        """The recipe's :class:`~fedray.strategy.Strategy` with these options.

        ``weighting`` is applied by :func:`fedray.config.build.build_strategy`, which knows
        whether the run is private.
        """
        kwargs: dict[str, Any] = {
            "fraction_fit": self.fraction_fit,
            "min_fit_clients": self.min_fit_clients,
        }
        for option in self.options():
            value = getattr(self, option)
            if option != "weighting" and value is not None:
                kwargs[_PARAMETER.get(option, option)] = value
        return STRATEGIES[str(getattr(self, "name"))](**kwargs)  # noqa: B009 - set by subclasses


class _ServerRate(_Section):
    server_learning_rate: float | None = Field(None, gt=0)
    """server step size (FedAvg 1, FedAvgM 1, adaptive 0.01)"""


class _Weighting(_Section):
    weighting: Literal["auto", "examples", "uniform"] = "auto"
    """client weights of mean-based strategies; `auto` is `examples` (FedAvg) without DP and
    `uniform` with it
    """


class _Adaptive(_ServerRate, _Weighting):
    beta1: float = Field(0.9, ge=0, lt=1)
    """first-moment decay of FedAdagrad/FedAdam/FedYogi (Reddi et al. 2021)"""
    beta2: float = Field(0.99, ge=0, lt=1)
    """second-moment decay of FedAdam/FedYogi"""
    tau: float = Field(1e-3, ge=0)
    """adaptivity (the denominator's ε) of FedAdagrad/FedAdam/FedYogi"""


class _Byzantine(_Section):
    num_byzantine: int = Field(0, ge=0)
    """`f` for `krum`/`multi_krum` (needs `min_fit_clients` ≥ 2f + 3)"""


class FedAvgConfig(_Common, _ServerRate, _Weighting):
    """FedAvg (McMahan et al. 2017)."""

    name: Literal["fedavg"] = "fedavg"
    """the federated algorithm: an aggregator + a server optimizer (see
    [Strategies](strategies.md))
    """


class FedProxConfig(_Common, _Weighting):
    """FedProx (Li et al. 2020)."""

    name: Literal["fedprox"] = "fedprox"
    proximal_mu: float = Field(0.01, ge=0)
    """FedProx's μ: clients minimise f(w) + μ/2‖w − w_global‖²"""


class ScaffoldConfig(_Common, _ServerRate):
    """SCAFFOLD (Karimireddy et al. 2020)."""

    name: Literal["scaffold"] = "scaffold"


class FedBuffConfig(_Common, _ServerRate):
    """FedBuff (Nguyen et al. 2022): buffered asynchronous steps."""

    name: Literal["fedbuff"] = "fedbuff"
    concurrency: int = Field(10, ge=1)
    """`fedbuff`: clients training at once"""
    buffer_size: int = Field(5, ge=1)
    """`fedbuff`: arrivals per server step (a logged round is one server step)"""


class FedAvgMConfig(_Common, _ServerRate, _Weighting):
    """FedAvgM (Hsu et al. 2019): server momentum."""

    name: Literal["fedavgm"] = "fedavgm"
    server_momentum: float = Field(0.9, ge=0, lt=1)
    """FedAvgM momentum"""


class AdaptiveConfig(_Common, _Adaptive):
    """FedAdagrad, FedAdam and FedYogi (Reddi et al. 2021): one set of options."""

    name: Literal["fedadagrad", "fedadam", "fedyogi"] = "fedadam"


class FedMedianConfig(_Common):
    """Coordinate-wise median (Yin et al. 2018)."""

    name: Literal["fedmedian"] = "fedmedian"


class TrimmedMeanConfig(_Common):
    """Coordinate-wise trimmed mean (Yin et al. 2018)."""

    name: Literal["trimmed_mean"] = "trimmed_mean"
    trim_beta: float = Field(0.1, ge=0, lt=0.5)
    """fraction trimmed per side by `trimmed_mean`"""


class KrumConfig(_Common, _Byzantine):
    """Krum (Blanchard et al. 2017)."""

    name: Literal["krum"] = "krum"


class MultiKrumConfig(_Common, _Byzantine):
    """Multi-Krum (Blanchard et al. 2017)."""

    name: Literal["multi_krum"] = "multi_krum"
    krum_selected: int | None = Field(None, ge=1)
    """updates averaged by `multi_krum`"""


RECIPES: dict[str, type[_Common]] = {
    "fedavg": FedAvgConfig,
    "fedprox": FedProxConfig,
    "scaffold": ScaffoldConfig,
    "fedbuff": FedBuffConfig,
    "fedavgm": FedAvgMConfig,
    "fedadagrad": AdaptiveConfig,
    "fedadam": AdaptiveConfig,
    "fedyogi": AdaptiveConfig,
    "fedmedian": FedMedianConfig,
    "trimmed_mean": TrimmedMeanConfig,
    "krum": KrumConfig,
    "multi_krum": MultiKrumConfig,
}
"""``strategy.name`` -> the recipe's config model."""


def _recipe_name(value: Any) -> str:
    """``strategy.name`` (``fedavg`` when omitted)."""
    if isinstance(value, dict):
        return str(value.get("name", "fedavg"))
    return str(getattr(value, "name", "fedavg"))


def _tag(value: Any) -> str:
    """The discriminator: the recipe's name, ``adaptive`` for the three adaptive ones."""
    name = _recipe_name(value)
    return "adaptive" if name in ("fedadagrad", "fedadam", "fedyogi") else name


StrategyConfig = Annotated[
    Annotated[FedAvgConfig, Tag("fedavg")]
    | Annotated[FedProxConfig, Tag("fedprox")]
    | Annotated[ScaffoldConfig, Tag("scaffold")]
    | Annotated[FedBuffConfig, Tag("fedbuff")]
    | Annotated[FedAvgMConfig, Tag("fedavgm")]
    | Annotated[AdaptiveConfig, Tag("adaptive")]
    | Annotated[FedMedianConfig, Tag("fedmedian")]
    | Annotated[TrimmedMeanConfig, Tag("trimmed_mean")]
    | Annotated[KrumConfig, Tag("krum")]
    | Annotated[MultiKrumConfig, Tag("multi_krum")],
    Discriminator(_tag),
]
"""How the server combines client updates: the recipe ``name`` and its options."""
