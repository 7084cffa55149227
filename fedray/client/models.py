"""Keras models: built-in ``linear``, ``mlp`` and ``cnn``, or a user builder.

A user builder is named ``package.module:function`` and is called as
``function(input_shape=..., num_outputs=...)``. If it returns a compiled model, its
optimizer, loss and metrics are kept unchanged; otherwise fedray compiles it with the
``client`` settings. Keras is imported lazily.

The user's code is checked where it can be, in one line each: :func:`check_model_fn`
(``fedray.fit``'s ``model_fn`` is a function of no arguments, not a built model) and
:func:`check_importable` run in the driver without TensorFlow; :func:`build_model`
turns a builder that raises or returns no model into a :class:`ConfigError`, and, given
a few rows of the data, runs the model on them (:func:`check_fits`): inputs it cannot
take, or outputs that do not match the labels (a loss that would broadcast them, or
fewer scores than classes), are refused before any training.
"""

from __future__ import annotations

import importlib
import importlib.util
import inspect
import sys
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

from fedray.config import ClientConfig, ModelConfig
from fedray.data import DatasetInfo, Shard
from fedray.errors import ConfigError, FedrayError, one_line


def resolve_builder(name: str) -> Any:
    """Import ``package.module:function`` and return the function."""
    module_name, _, func_name = name.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ConfigError(
            f"model.name = {name!r}: cannot import module {module_name!r} ({exc}); "
            "expected 'package.module:function' importable on every node"
        ) from None
    fn = getattr(module, func_name, None)
    if not callable(fn):
        raise ConfigError(
            f"model.name = {name!r}: module {module_name!r} has no function {func_name!r}"
        )
    return fn


def check_importable(name: str) -> None:
    """Fail in one line when ``model.name``'s module cannot be found (without importing it).

    >>> check_importable("linear")
    >>> try:
    ...     check_importable("no_such_module:build")
    ... except ConfigError as exc:
    ...     print(str(exc).partition(" (")[0])
    model.name = 'no_such_module:build': cannot import module 'no_such_module'
    """
    if name in BUILTIN:
        return
    module_name = name.partition(":")[0]
    try:
        found = importlib.util.find_spec(module_name) is not None
    except (ImportError, ValueError):  # a parent package is missing, or an empty name
        found = False
    if not found:
        raise ConfigError(
            f"model.name = {name!r}: cannot import module {module_name!r} (it is not on this "
            "machine's Python path); expected 'package.module:function' importable on every node"
        )


def _is_keras_model(value: Any) -> bool:
    """Whether ``value`` is a Keras model instance (told without importing Keras)."""
    return any(
        c.__name__ == "Model" and c.__module__.split(".")[0] in ("keras", "tf_keras")
        for c in type(value).__mro__
    )


def check_model_fn(model_fn: Any) -> None:
    """Fail in one line unless ``model_fn`` is a function that takes no arguments.

    ``fedray.fit`` calls ``model_fn()`` in every host (and once in the driver, to check
    it); a built model, which a Keras user may pass out of habit, cannot be called so.

    >>> def build(input_shape, num_outputs): ...
    >>> try:
    ...     check_model_fn(build)
    ... except ConfigError as exc:
    ...     print(str(exc).partition(";")[0])
    model_fn = build(input_shape, num_outputs): it needs arguments
    """
    if _is_keras_model(model_fn):
        raise ConfigError(
            f"model_fn = <{type(model_fn).__name__} model>: a built model; expected a function "
            "that builds one, so that each host builds its own: def create_model(): ... "
            "return model; then fedray.fit(create_model, ...)"
        )
    if not callable(model_fn):
        raise ConfigError(
            f"model_fn = {model_fn!r}: a {type(model_fn).__name__}; expected a function that "
            "builds a Keras model"
        )
    try:
        signature = inspect.signature(model_fn)
    except (TypeError, ValueError):  # a builtin or extension callable: nothing to read
        return
    try:
        signature.bind()
    except TypeError:
        needed = [
            n
            for n, p in signature.parameters.items()
            if p.default is p.empty and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)
        ]
        name = getattr(model_fn, "__name__", type(model_fn).__name__)
        raise ConfigError(
            f"model_fn = {name}({', '.join(needed)}): it needs arguments; expected a function "
            "of none (fedray.fit calls model_fn() with no arguments; a builder of input_shape "
            "and num_outputs is for model.name)"
        ) from None


BUILTIN = ("linear", "mlp", "cnn", "simple_cnn", "char_lstm")
"""The built-in models (``model.name``)."""

ELEMENTWISE_LOSSES = frozenset(
    {
        "mse",
        "mae",
        "mape",
        "msle",
        "mean_squared_error",
        "mean_absolute_error",
        "mean_absolute_percentage_error",
        "mean_squared_logarithmic_error",
        "huber",
        "huber_loss",
        "log_cosh",
        "logcosh",
    }
)
"""Losses that broadcast outputs against labels of another width, silently."""

SPARSE_CATEGORICAL = "sparse_categorical_crossentropy"


def _loss_name(loss: Any) -> str:
    """The name of a compiled loss: a string, a Keras loss object or a function."""
    if isinstance(loss, str):
        return loss.lower()
    return str(getattr(loss, "name", None) or getattr(loss, "__name__", "")).lower()


def sample_rows(shards: Mapping[int, Shard], n: int = 2) -> tuple[np.ndarray, np.ndarray]:
    """The first ``n`` training rows of the first shard: what :func:`check_fits` runs on."""
    shard = next(iter(shards.values()))
    return shard.x[:n], shard.y[:n]


def check_fits(
    model: Any, sample: tuple[np.ndarray, np.ndarray], info: DatasetInfo, what: str
) -> None:
    """Run ``model`` on a few rows of the data and refuse outputs the labels cannot use.

    Refused: inputs the model cannot take; under a loss that broadcasts
    (:data:`ELEMENTWISE_LOSSES`) an output width other than the labels' columns (a
    ``Dense(3)`` on one target would train "successfully" and predict three values);
    under sparse categorical cross-entropy fewer scores than classes (TensorFlow would
    fail every client with "label value outside the valid range"). Other losses may
    mean other shapes (a mean and a variance per target), so they are not judged.

    Raises:
        ConfigError: One line naming ``what`` (``model_fn`` or ``model.name``), the
            model's shape and the expected one.
    """
    x, y = sample
    subject = f"{what}'s model" if what == "model_fn" else f"{what}: its model"
    try:
        out = model(np.asarray(x, np.float32), training=False)
    except Exception as exc:
        raise ConfigError(
            f"{subject} cannot take the data's inputs (rows of shape {tuple(x.shape[1:])}): "
            f"{one_line(exc)}"
        ) from None
    if not hasattr(out, "shape"):  # several outputs: not a shape fedray trains
        return
    dims = tuple(int(d) for d in out.shape[1:])
    shape = (None, *dims)
    loss = _loss_name(getattr(model, "loss", None))
    if info.task == "classification" and loss == SPARSE_CATEGORICAL:
        classes = int(info.num_classes or 2)
        if len(dims) != 1 or dims[0] < classes:
            raise ConfigError(
                f"{subject} outputs shape {shape}; the labels are {classes} classes (0 to "
                f"{classes - 1}): expected (None, {classes}), one score per class for {loss}"
            )
    elif info.task != "classification" and loss in ELEMENTWISE_LOSSES:
        width = int(np.prod(y.shape[1:], dtype=np.int64)) if y.ndim > 1 else 1
        if int(np.prod(dims, dtype=np.int64)) != width:
            s = "" if width == 1 else "s"
            raise ConfigError(
                f"{subject} outputs shape {shape}; the labels have {width} column{s}: expected "
                f"(None, {width}) ({loss} would broadcast one against the other)"
            )


def _built(build: Callable[[], Any], what: str) -> Any:
    """``build()``: the user's builder, whose failure becomes one line naming ``what``."""
    import keras

    try:
        model = build()
    except FedrayError:
        raise
    except Exception as exc:
        raise ConfigError(f"{what} raised {one_line(exc)}") from None
    if not isinstance(model, keras.Model):
        raise ConfigError(f"{what} returned {type(model).__name__}; expected a keras.Model")
    return model


def default_loss(info: DatasetInfo) -> str:
    """MSE for regression, sparse categorical cross-entropy for classification."""
    return "mse" if info.task == "regression" else "sparse_categorical_crossentropy"


def default_metrics(info: DatasetInfo) -> list[str]:
    """``mae`` for regression, ``accuracy`` for classification."""
    return ["mae"] if info.task == "regression" else ["accuracy"]


def _builtin(cfg: ModelConfig, info: DatasetInfo) -> Any:
    import keras

    layers = keras.layers
    head_activation = "softmax" if info.task == "classification" else None
    inputs = keras.Input(shape=info.input_shape)
    if cfg.name == "char_lstm":  # LEAF's Shakespeare model (Caldas et al. 2018)
        if len(info.input_shape) != 1 or info.num_classes is None:
            raise ConfigError(
                f"model.name = 'char_lstm' needs character-id sequences with a vocabulary; "
                f"this dataset has input shape {info.input_shape}"
            )
        h = layers.Embedding(info.num_classes, 8)(inputs)
        h = layers.LSTM(256, return_sequences=True)(h)
        h = layers.LSTM(256)(h)
    elif cfg.name == "simple_cnn":  # pfl-research's CIFAR-10 model (arXiv:2404.06430)
        h = layers.Conv2D(32, 3, activation="relu")(inputs)
        h = layers.Conv2D(64, 3, activation="relu")(h)
        h = layers.MaxPooling2D(2)(h)
        h = layers.Dropout(0.25)(h)
        h = layers.Flatten()(h)
        h = layers.Dense(128, activation="relu")(h)
        h = layers.Dropout(0.5)(h)
    elif cfg.name == "cnn":
        if len(info.input_shape) != 3:
            raise ConfigError(
                f"model.name = 'cnn' needs image inputs of shape (height, width, channels); "
                f"this dataset has input shape {info.input_shape}; use 'mlp' or 'linear'"
            )
        h = layers.Conv2D(32, 3, padding="same", activation="relu")(inputs)
        h = layers.MaxPooling2D()(h)
        h = layers.Conv2D(64, 3, padding="same", activation="relu")(h)
        h = layers.MaxPooling2D()(h)
        h = layers.Flatten()(h)
        h = layers.Dense(128, activation="relu")(h)
    else:
        h = layers.Flatten()(inputs) if len(info.input_shape) > 1 else inputs
        if cfg.name == "mlp":
            for width in cfg.hidden:
                h = layers.Dense(width, activation="relu")(h)
    outputs = layers.Dense(info.num_outputs, activation=head_activation)(h)
    return keras.Model(inputs, outputs, name=f"fedray_{cfg.name}")


def build_model(
    cfg: ModelConfig,
    client: ClientConfig,
    info: DatasetInfo,
    *,
    builder: Callable[[], Any] | None = None,
    sample: tuple[np.ndarray, np.ndarray] | None = None,
) -> Any:
    """Build and compile the model described by ``cfg`` for a dataset with ``info``.

    ``builder`` (``fedray.fit``'s ``model_fn``), when given, builds it instead, with
    no arguments. A model that comes back uncompiled is compiled with ``client.*``.
    With ``sample`` (a few rows of the data), a user's model is run on them first
    (:func:`check_fits`); the built-in ones fit by construction.

    Raises:
        ConfigError: The user's builder raised, returned no Keras model, or built one
            that does not fit the data; one line naming ``model_fn`` or ``model.name``.
    """
    import keras

    if builder is not None:
        what = "model_fn"
        model = _built(builder, what)
    elif cfg.name in BUILTIN:
        what = ""
        model = _builtin(cfg, info)
    else:
        what = f"model.name = {cfg.name!r}"
        fn = resolve_builder(cfg.name)
        model = _built(lambda: fn(input_shape=info.input_shape, num_outputs=info.num_outputs), what)
    if not getattr(model, "compiled", False):
        optimizer = keras.optimizers.get(
            {"class_name": client.optimizer, "config": {"learning_rate": client.learning_rate}}
        )
        loss = default_loss(info) if client.loss == "auto" else client.loss
        metrics = default_metrics(info) if client.metrics == "auto" else list(client.metrics)
        model.compile(optimizer=optimizer, loss=loss, metrics=metrics)
    if sample is not None and what:
        check_fits(model, sample, info, what)
    return model


def check_fit_model(model_fn: Any, source: Any, client: ClientConfig, *, in_process: bool) -> None:
    """``fedray.fit``'s ``model_fn``, checked in the driver before any host starts.

    :func:`check_model_fn` always (no TensorFlow). Then the model is built once and run
    on two rows (:func:`build_model` with a sample: a builder that raises, returns no
    model, or builds one whose inputs or outputs do not fit the clients' arrays) when
    that costs the driver little: TensorFlow is loaded there already (a script that
    imports Keras) or the hosts run ``in_process``, which load it anyway. Otherwise the
    driver would pay TensorFlow's whole import for the check, and each host runs the
    same check as it starts instead, with the same one line. ``source`` is ``fedray.fit``'s
    :class:`~fedray.data.arrays.InMemory`.

    Raises:
        ConfigError: One line naming ``model_fn``, the problem and what was expected.
    """
    check_model_fn(model_fn)
    if not in_process and not {"keras", "tensorflow"} & set(sys.modules):
        return
    sample = next(xy for xy in source.shards.values() if xy is not None)
    build_model(
        ModelConfig(), client, source.info, builder=model_fn, sample=(sample[0][:2], sample[1][:2])
    )
