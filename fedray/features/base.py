"""The feature protocol: one algorithm's client half and server half, in one object.

A *feature* changes what clients do in a round, or what the server does with their
work, beyond the aggregation rule: FedProx's proximal term, SCAFFOLD's control
variates, top-k's error feedback, or a user's own algorithm (``examples/algorithms/``
has FedDyn, FedNova and q-FFL). A strategy holds its features in order
(``Strategy(features=(...))``). Like a transform in optax's ``chain``, each feature
sees only its own server state, its own downlink, its own clients' state and its own
reports, positionally; it never inspects another feature, and fedray's host, loop and
rules know no feature by name.

Server half (on the driver; pure numpy):

* ``init(params) -> state``: its server state, a dict of arrays and numbers (it is
  checkpointed with the loop);
* ``downlink(state) -> Params | None``: arrays sent to every sampled client with the
  round's weights (Flower's ``configure_fit``; SCAFFOLD's server variate ``c``);
* ``server_update(delta, reports, state, facts) -> (delta, state, measurements)``:
  after the aggregation rule made ``delta``, the feature may change it and its state,
  from what each participant reported (:class:`ClientReport`).

Client half (inside the host that owns the client's data):

* ``local_objective() -> LocalObjective``: what its traced local step adds to the
  model's loss ``f``: a proximal pull ``mu/2 ||w - w_global||^2`` and/or a per-client
  linear term ``<o_k, w>``, whose gradient ``o_k`` the step adds to ``grad f``;
* ``client_init(params) -> Params``: a client's state before its first round; it stays
  in its host, is saved there at checkpoints and restored after a crash or on resume;
* ``offset(down, state, params) -> Params``: this client's ``o_k`` (when declared);
* ``client_update(trained, down, state) -> (delta, report, state)``: after local
  training and before the aggregator's ``encode`` (clip, compress, mask, noise), the
  feature may change the delta, report arrays to its server half and update the
  client's state.

What it declares about itself (:class:`Declaration`): what its reports release, whether
it keeps per-client state, whether its server half needs synchronous rounds, whether
its client half needs the client's loss before training, and the config keys it stands
for. :func:`check_features` judges a run from these declarations, so a configured run
and a hand-composed one are refused or accepted alike, and a new algorithm needs no
rule written for it.

Every method has a neutral default here; a feature overrides what it does.

Layer 1: numpy only.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from fedray.errors import ConfigError
from fedray.records import Metrics, Params

FeatureState = dict[str, Any]
"""A feature's server state: arrays, numbers and lists of arrays, by name."""


@dataclass(frozen=True)
class LocalObjective:
    """Terms a client's local step adds to the model's loss ``f(w)``.

    Attributes:
        proximal: ``mu``: the step minimises ``f(w) + mu/2 ||w - w_global||^2``.
        offset: The step minimises ``f(w) + <o_k, w>``, ``o_k`` the client's
            :meth:`Feature.offset` (so ``o_k`` is added to every gradient).
    """

    proximal: float = 0.0
    offset: bool = False

    def __post_init__(self) -> None:
        if not self.proximal >= 0:
            raise ValueError(f"a proximal coefficient must be >= 0, got {self.proximal}")

    def __add__(self, other: LocalObjective) -> LocalObjective:
        """Two features' terms together: their coefficients add, and their offsets."""
        return LocalObjective(self.proximal + other.proximal, self.offset or other.offset)

    @property
    def custom(self) -> bool:
        """Whether the step differs from the model's own ``train_step``."""
        return self.proximal > 0 or self.offset


@dataclass(frozen=True)
class Declaration:
    """What a feature says about itself; the rules judge a run from it.

    Attributes:
        releases: What its reports carry out of a host in the clear, in words ("the
            client's loss"); empty when it reports nothing. A feature that reports
            needs every participant's update on its own (no host pre-aggregation) and
            is refused under DP and secure aggregation, which release only noised or
            summed updates.
        from_update: Its reports are computed from the client's trained delta, the
            downlink and its own state alone (SCAFFOLD's ``delta_c``). Under DP-SGD,
            whose delta is already private when training ends, they are then
            post-processing and allowed; under the other mechanisms they are not.
        client_state: It keeps per-client state in the hosts (refused with balanced
            hosts, where a client trains in a different host each round, and with
            over-commitment, where a late client updates it for an update the server
            drops).
        sync: Its server half assumes synchronous rounds (refused with FedBuff, as is
            any feature that overrides ``downlink``).
        start_loss: Its client half needs the global model's loss on the client's
            training rows before it trains (:attr:`Trained.start_loss`).
        rescales: Its client half sends a rescaled step, not a model delta (q-FFL's
            loss-weighted one), so a bound on an update's norm bounds no model step
            (refused with ``strategy.norm_bound`` and ``strategy.max_update_norm``).
        mean: Its server half reads the aggregate as the participants' mean (FedDyn's
            ``h``, FedNova's and q-FFL's rescaling): refused with robust rules, with
            FedBuff's staleness weights, and with central or distributed DP, whose
            aggregate is a noised sum over the *expected* count.
        keys: The config keys it stands for, for the rule table and its messages
            (``{"strategy.name": "scaffold"}``).
    """

    releases: tuple[str, ...] = ()
    from_update: bool = False
    client_state: bool = False
    sync: bool = False
    start_loss: bool = False
    rescales: bool = False
    mean: bool = False
    keys: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Trained:
    """What one client's local training produced: the input of a client half.

    Attributes:
        client_id: The client.
        delta: ``local - global`` weights, one array per model weight.
        params: The global weights it trained from.
        steps: Local steps it ran (fewer when it straggled).
        learning_rate: The local optimizer's learning rate.
        num_examples: Its training rows.
        start_loss: The global model's loss on its rows before training, when a
            feature declared ``start_loss``; else None.
    """

    client_id: int
    delta: Params
    params: Params
    steps: int
    learning_rate: float
    num_examples: int
    start_loss: float | None = None


@dataclass(frozen=True)
class ClientReport:
    """What one participant's client half reported to its server half.

    Attributes:
        client_id: The client.
        num_examples: Its training rows (1 when its host withholds them, under DP-SGD).
        value: The arrays its ``client_update`` reported.
    """

    client_id: int
    num_examples: int
    value: Params


@dataclass(frozen=True)
class RoundFacts:
    """What a server half knows about the step it finishes.

    Attributes:
        server_round: The step's number.
        num_clients: ``N``, the registered clients.
        params: The global weights before this step.
        participants: ``|S|``, the clients whose updates the step aggregated; None
            under central or distributed DP, which release a noised sum over the
            *expected* count and never the realised one.
    """

    server_round: int
    num_clients: int
    params: Params
    participants: int | None = 0


class Feature:
    """Base class of a feature: every half is neutral until overridden (module docs)."""

    @property
    def name(self) -> str:
        """How messages name it (its class name)."""
        return type(self).__name__

    def declaration(self) -> Declaration:
        """What it releases, keeps and needs (nothing, by default)."""
        return Declaration()

    # --- server half ---------------------------------------------------------------
    def init(self, params: Params) -> FeatureState:
        """Its server state for a model with ``params`` (none, by default)."""
        return {}

    def downlink(self, state: FeatureState) -> Params | None:
        """Arrays sent to the round's clients with the weights (none, by default)."""
        return None

    def server_update(
        self,
        delta: Params,
        reports: Sequence[ClientReport],
        state: FeatureState,
        facts: RoundFacts,
    ) -> tuple[Params, FeatureState, Metrics]:
        """After the aggregation rule: ``(delta, state, measurements)`` (unchanged, by default)."""
        return delta, state, {}

    def uplink_bytes(self, dim: int) -> int | None:
        """Bytes one client's update of ``dim`` coordinates takes up (None: not its say)."""
        return None

    # --- client half ---------------------------------------------------------------
    def local_objective(self) -> LocalObjective:
        """Terms its local step adds to the loss (none, by default)."""
        return LocalObjective()

    def client_init(self, params: Params) -> Params:
        """A client's state before its first round (none, by default)."""
        return []

    def offset(self, down: Params | None, state: Params, params: Params) -> Params:
        """This client's gradient offset ``o_k`` (declared by ``local_objective``)."""
        raise NotImplementedError(f"{self.name} declares an offset but gives none")

    def client_update(
        self, trained: Trained, down: Params | None, state: Params
    ) -> tuple[Params, Params | None, Params]:
        """``(delta, report, state)`` after training (unchanged, no report, by default)."""
        return trained.delta, None, state


# --- what the host and the loop call: generic over the features -------------------------


def local_objective(features: Sequence[Feature]) -> LocalObjective:
    """The features' local terms together.

    >>> class Pull(Feature):
    ...     def local_objective(self): return LocalObjective(proximal=0.1)
    >>> local_objective([Pull(), Pull()]).proximal
    0.2
    """
    out = LocalObjective()
    for f in features:
        out = out + f.local_objective()
    return out


def client_offset(
    features: Sequence[Feature],
    downs: Sequence[Params | None],
    states: Sequence[Params],
    params: Params,
) -> Params | None:
    """The sum of the features' offsets for one client, in the model's dtypes (None: none)."""
    total: Params | None = None
    for f, down, state in zip(features, downs, states, strict=True):
        if not f.local_objective().offset:
            continue
        o = [
            np.asarray(a, np.asarray(p).dtype)
            for a, p in zip(f.offset(down, state, params), params, strict=True)
        ]
        total = o if total is None else [t + a for t, a in zip(total, o, strict=True)]
    return total


def client_update(
    features: Sequence[Feature],
    trained: Trained,
    downs: Sequence[Params | None],
    states: Sequence[Params],
) -> tuple[Params, tuple[Params | None, ...], list[Params]]:
    """Run the client halves in order: (delta, one report per feature, new states)."""
    reports: list[Params | None] = []
    new_states: list[Params] = []
    delta = trained.delta
    for f, down, state in zip(features, downs, states, strict=True):
        delta, report, state = f.client_update(replace(trained, delta=delta), down, state)
        if report is not None and not f.declaration().releases:
            raise ValueError(  # the rules judged it by a declaration that says otherwise
                f"{f.name}.client_update returned a report, but its declaration releases "
                "nothing; declare what the report carries in Declaration(releases=...)"
            )
        reports.append(report)
        new_states.append(state)
    return delta, tuple(reports), new_states


def downlinks(
    features: Sequence[Feature], states: Sequence[FeatureState]
) -> tuple[Any, ...] | None:
    """Each feature's downlink, positionally; None when no feature sends any."""
    out = tuple(f.downlink(s) for f, s in zip(features, states, strict=True))
    return out if any(d is not None for d in out) else None


def server_update(
    features: Sequence[Feature],
    delta: Params,
    reports: Sequence[tuple[int, int, tuple[Params | None, ...]]],
    states: Sequence[FeatureState],
    facts: RoundFacts,
) -> tuple[Params, list[FeatureState], Metrics]:
    """Run the server halves in order, each on its own clients' reports (by client id).

    ``reports`` holds ``(client id, examples, one report per feature)`` per participant.
    """
    ordered = sorted(reports, key=lambda r: r[0])  # arrival order must not matter
    new_states: list[FeatureState] = []
    measurements: Metrics = {}
    for i, (f, state) in enumerate(zip(features, states, strict=True)):
        own = [
            ClientReport(cid, n, list(value))
            for cid, n, r in ordered
            if (value := r[i]) is not None
        ]
        delta, state, meas = f.server_update(delta, own, state, facts)
        new_states.append(state)
        measurements.update(meas)
    return delta, new_states, measurements


def reports_needed(features: Sequence[Feature]) -> bool:
    """Whether some feature reports: every participant's update must then arrive alone."""
    return any(f.declaration().releases for f in features)


@dataclass(frozen=True)
class RunShape:
    """What the rules need to know of a run besides its features.

    Attributes:
        mechanism: The DP mechanism, as messages name it (``privacy.dp.mode='central'``),
            or None without DP.
        in_training: The mechanism privatizes local training itself (DP-SGD): the
            trained delta is private before any feature's client half sees it.
        secure: Secure aggregation is on.
        buffered: Asynchronous (FedBuff) rounds.
        balanced: Balanced hosts (``runtime.balance``): any host may train any client.
        over_commit: Late clients over the quota are dropped (``strategy.over_commit``).
        norm_bound: A bound on update norms, as messages name it
            (``strategy.max_update_norm=50``), or None.
        mean: The aggregate is the participants' mean (a mean rule, synchronous rounds,
            no DP mechanism that divides a noised sum by the expected count).
        aggregate: What makes it not one, as messages name it.
    """

    mechanism: str | None = None
    in_training: bool = False
    secure: bool = False
    buffered: bool = False
    balanced: bool = False
    over_commit: float = 0
    norm_bound: str | None = None
    mean: bool = True
    aggregate: str = "this aggregate"


def _sends_downlink(feature: Feature) -> bool:
    """Whether ``feature`` overrides :meth:`Feature.downlink` (FedBuff sends none)."""
    return type(feature).downlink is not Feature.downlink


def label(feature: Feature) -> str:
    """How a refusal names ``feature``: its config keys, else its class name.

    >>> label(Feature())
    'Feature'
    """
    keys = feature.declaration().keys
    return ", ".join(f"{k}={v!r}" for k, v in keys.items()) or feature.name


def refusal(feature: Feature, shape: RunShape) -> str | None:
    """Why ``feature``'s declaration cannot work in a run of this shape, or None."""
    d, name = feature.declaration(), label(feature)
    released = " and ".join(d.releases)
    post_processing = d.from_update and shape.in_training
    if d.releases and shape.mechanism is not None and not post_processing:
        return (
            f"{name} does not work with {shape.mechanism}: it releases {released} un-noised, "
            "and under DP every release is noised and charged; drop one of the two"
        )
    if d.start_loss and shape.in_training:
        return (
            f"{name} does not work with {shape.mechanism}: its client half reads the "
            "client's loss on its raw rows after DP-SGD made the update private, and could "
            "carry it out in the update; drop one of the two"
        )
    if d.releases and shape.secure:
        return (
            f"{name} does not work with privacy.secure_aggregation.enabled=True: it releases "
            f"{released} per client, and the server is to learn only sums; drop one of the two"
        )
    if (d.sync or _sends_downlink(feature)) and shape.buffered:
        return (
            f"{name} does not work with strategy.name='fedbuff': its server half needs "
            "synchronous rounds; use a synchronous strategy"
        )
    if d.client_state and shape.balanced:
        return (
            f"{name} does not work with runtime.balance=True: it keeps per-client state in "
            "the host that trained the client, which changes from round to round; set "
            "runtime.balance=false"
        )
    if d.rescales and shape.norm_bound is not None:
        return (
            f"{name} does not work with {shape.norm_bound}: it sends a rescaled step, not a "
            "model delta, so a bound on its norm bounds no model step; unset the bound"
        )
    if d.client_state and shape.over_commit:
        return (
            f"{name} does not work with strategy.over_commit={shape.over_commit!r}: a late "
            "client would update its state for an update the server drops; set "
            "strategy.over_commit=0"
        )
    if d.mean and not shape.mean:
        return (
            f"{name} does not work with {shape.aggregate}: its server half reads the "
            "aggregate as the participants' mean; use a mean rule in synchronous rounds "
            "without central or distributed DP"
        )
    return None


def check_features(features: Sequence[Feature], shape: RunShape) -> None:
    """Refuse the first feature whose declaration cannot work in a run of this shape.

    The rules read only declarations, so a user's algorithm is judged with no rule
    written for it.

    Raises:
        ConfigError: One line naming the feature, the other side, why and what to do.

    >>> class Loss(Feature):
    ...     def declaration(self): return Declaration(releases=("the client's loss",))
    >>> check_features([Loss()], RunShape(mechanism="DP"))  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    fedray.errors.ConfigError: Loss does not work with DP: it releases the client's loss ...
    """
    for f in features:
        why = refusal(f, shape)
        if why is not None:
            raise ConfigError(why)
