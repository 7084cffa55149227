"""Keras models: built-in ``linear``, ``mlp`` and ``cnn``, or a user builder.

A user builder is named ``package.module:function`` and is called as
``function(input_shape=..., num_outputs=...)``. If it returns a compiled model, its
optimizer, loss and metrics are kept unchanged; otherwise fedray compiles it with the
``client`` settings. Keras is imported lazily.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any

from fedray.config import ClientConfig, ModelConfig
from fedray.data import DatasetInfo
from fedray.errors import ConfigError


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


BUILTIN = ("linear", "mlp", "cnn", "simple_cnn", "char_lstm")
"""The built-in models (``model.name``)."""


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
) -> Any:
    """Build and compile the model described by ``cfg`` for a dataset with ``info``.

    ``builder`` (``fedray.fit``'s ``model_fn``), when given, builds it instead, with
    no arguments. A model that comes back uncompiled is compiled with ``client.*``.
    """
    import keras

    if builder is not None:
        model = builder()
        if not isinstance(model, keras.Model):
            raise ConfigError(f"model_fn returned {type(model).__name__}; expected a keras.Model")
    elif cfg.name in BUILTIN:
        model = _builtin(cfg, info)
    else:
        model = resolve_builder(cfg.name)(
            input_shape=info.input_shape, num_outputs=info.num_outputs
        )
        if not isinstance(model, keras.Model):
            raise ConfigError(
                f"model.name = {cfg.name!r} returned {type(model).__name__}; expected a keras.Model"
            )
    if not getattr(model, "compiled", False):
        optimizer = keras.optimizers.get(
            {"class_name": client.optimizer, "config": {"learning_rate": client.learning_rate}}
        )
        loss = default_loss(info) if client.loss == "auto" else client.loss
        metrics = default_metrics(info) if client.metrics == "auto" else list(client.metrics)
        model.compile(optimizer=optimizer, loss=loss, metrics=metrics)
    return model
