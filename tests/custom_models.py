"""A user model builder, referenced from configs as tests.custom_models:build."""

import keras


def build(input_shape, num_outputs):
    inputs = keras.Input(shape=input_shape, name="features")
    h = keras.layers.Dense(16, activation="tanh", name="hidden")(inputs)
    skip = keras.layers.Dense(16, name="skip")(inputs)
    h = keras.layers.Add()([h, skip])
    outputs = keras.layers.Dense(num_outputs, name="out")(h)
    model = keras.Model(inputs, outputs, name="custom_functional")
    model.compile(optimizer=keras.optimizers.SGD(0.005), loss="huber", metrics=["mse"])
    return model


def not_a_model(input_shape, num_outputs):
    return "oops"


def batchnorm(input_shape, num_outputs):
    """A classifier with BatchNorm: non-trainable moving statistics move with raw data."""
    inputs = keras.Input(shape=input_shape)
    h = keras.layers.Dense(8)(inputs)
    h = keras.layers.BatchNormalization()(h)
    outputs = keras.layers.Dense(num_outputs, activation="softmax")(h)
    model = keras.Model(inputs, outputs, name="with_batchnorm")
    model.compile(optimizer=keras.optimizers.SGD(0.1), loss="sparse_categorical_crossentropy")
    return model
