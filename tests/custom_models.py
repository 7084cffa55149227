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


class SkipsNonFinite(keras.Model):
    """A user's own train_step with Python control flow on a tensor (AutoGraph's job)."""

    def train_step(self, data):
        import tensorflow as tf

        x, y = data
        with tf.GradientTape() as tape:
            y_pred = self(x, training=True)
            loss = self.compute_loss(x=x, y=y, y_pred=y_pred)
        grads = tape.gradient(loss, self.trainable_variables)
        if tf.math.is_finite(loss):  # a tensor as a Python bool: needs AutoGraph
            self.optimizer.apply(grads, self.trainable_variables)
        for metric in self.metrics:
            if metric.name == "loss":
                metric.update_state(loss)
            else:
                metric.update_state(y, y_pred)
        return {m.name: m.result() for m in self.metrics}


def skips_nonfinite(input_shape, num_outputs):
    inputs = keras.Input(shape=input_shape)
    outputs = keras.layers.Dense(num_outputs)(inputs)
    model = SkipsNonFinite(inputs, outputs)
    model.compile(optimizer=keras.optimizers.SGD(0.01), loss="mse")
    return model


# Builders with the mistakes a newcomer makes (tests/test_bad_input.py).


def raises(input_shape, num_outputs):
    raise RuntimeError("my builder is broken")


def wrong_input(input_shape, num_outputs):
    """Built for 4 features, whatever the data has."""
    return keras.Sequential([keras.Input((4,)), keras.layers.Dense(num_outputs)])


def one_output(input_shape, num_outputs):
    """A regression head, whatever the task: Dense(1) on 10 classes."""
    return keras.Sequential([keras.Input(input_shape), keras.layers.Dense(1)])


def three_outputs(input_shape, num_outputs):
    """Three values per input where the labels have one: MSE would broadcast."""
    model = keras.Sequential([keras.Input(input_shape), keras.layers.Dense(3)])
    model.compile(optimizer="sgd", loss="mse")
    return model


class BrokenTrainStep(keras.Model):
    """A user's train_step with a bug that shows only when fedray traces it."""

    def train_step(self, data):
        raise ValueError("my train_step is broken\nsee the line above")


def broken_train_step(input_shape, num_outputs):
    inputs = keras.Input(shape=input_shape)
    model = BrokenTrainStep(inputs, keras.layers.Dense(num_outputs)(inputs))
    model.compile(optimizer="sgd", loss="mse")
    return model


class FailsInTraining(keras.Model):
    """A train_step whose check fails only when it runs, inside the traced loop."""

    def train_step(self, data):
        import tensorflow as tf

        x, _ = data
        tf.debugging.assert_less(tf.reduce_max(x), -1.0, message="my inputs must be negative")
        return {}


def fails_in_training(input_shape, num_outputs):
    inputs = keras.Input(shape=input_shape)
    model = FailsInTraining(inputs, keras.layers.Dense(num_outputs)(inputs))
    model.compile(optimizer="sgd", loss="mse")
    return model
