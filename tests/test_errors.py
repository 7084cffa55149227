"""``one_line``: a failure in one line that still says why (failures.csv, round summaries)."""

import pytest

from fedray.errors import one_line

# TensorFlow's text for a classifier with too few outputs (Dense(1) on 4 classes), as a
# traced training step raises it: the reason comes after the frames where it was defined.
GRAPH_ERROR = (
    "Graph execution error:\n\nDetected at node compile_loss/sparse_categorical_crossentropy/"
    "SparseSoftmaxCrossEntropyWithLogits/SparseSoftmaxCrossEntropyWithLogits defined at (most "
    'recent call last):\n  File "/tmp/f3.py", line 9, in <module>\n\n  File "/tmp/f3.py", line 7, '
    'in f\n\n  File "/x/keras/src/backend/tensorflow/nn.py", line 1438, in sparse_categorical_'
    "crossentropy\n\nReceived a label value of 3 which is outside the valid range of [0, 1).  "
    "Label values: 0 1 2 3 0 1 2 3\n\t [[{{node compile_loss/sparse_categorical_crossentropy/"
    "SparseSoftmaxCrossEntropyWithLogits/SparseSoftmaxCrossEntropyWithLogits}}]] "
    "[Op:__inference_f_147]"
)

# Keras' text for a model called on inputs of the wrong width, with terminal colour codes.
KERAS_CALL_ERROR = (
    "Exception encountered when calling Sequential.call().\n\n\x1b[1mInput 0 with name 'None' "
    "of layer 'dense' is incompatible with the layer: expected axis -1 of input shape to have "
    "value 5, but received input with shape (2, 3)\x1b[0m\n\nArguments received by "
    "Sequential.call():\n  • inputs=tf.Tensor(shape=(2, 3), dtype=float32)\n  • training=False"
)


class InvalidArgumentError(Exception):
    """Stands in for tf.errors.InvalidArgumentError (only the name is shown)."""


def test_a_graph_execution_error_keeps_tensorflows_reason():
    assert one_line(InvalidArgumentError(GRAPH_ERROR)) == (
        "InvalidArgumentError: Received a label value of 3 which is outside the valid range "
        "of [0, 1). Label values: 0 1 2 3 0 1 2 3"
    )


def test_a_keras_call_error_keeps_its_reason_without_colour_codes():
    assert one_line(ValueError(KERAS_CALL_ERROR)) == (
        "ValueError: Input 0 with name 'None' of layer 'dense' is incompatible with the layer: "
        "expected axis -1 of input shape to have value 5, but received input with shape (2, 3)"
    )


def test_an_ordinary_message_keeps_its_first_line_and_the_limit():
    assert one_line(ValueError("bad shape\nmore detail")) == "ValueError: bad shape"
    assert one_line(KeyError()) == "KeyError"
    long = one_line(ValueError("x" * 500), limit=50)
    assert len(long) == 50 and long.endswith("…")
    # Nothing but boilerplate: the first line is still better than nothing.
    assert one_line(RuntimeError("Graph execution error:")) == (
        "RuntimeError: Graph execution error:"
    )


@pytest.mark.keras
def test_real_tensorflow_and_keras_errors_give_their_reason_in_one_line():
    import keras
    import numpy as np
    import tensorflow as tf

    model = keras.Sequential([keras.Input((5,)), keras.layers.Dense(1)])
    model.compile(optimizer="sgd", loss="sparse_categorical_crossentropy")
    x, y = np.ones((8, 5), "float32"), np.arange(8) % 4
    step = tf.function(lambda x, y: model.train_step((x, y)))
    with pytest.raises(tf.errors.InvalidArgumentError) as graph:
        step(x, y)
    line = one_line(graph.value)
    assert line.startswith("InvalidArgumentError: Received a label value of 3 which is outside")
    with pytest.raises(ValueError) as call:
        model.predict(np.ones((2, 3), "float32"), verbose=0)
    line = one_line(call.value)
    assert "\x1b" not in line and "\n" not in line
    assert line.startswith("ValueError: Input 0 ") and "received input with shape (2, 3)" in line


def test_a_hosts_start_up_error_is_one_line_naming_the_host():
    from fedray.errors import ConfigError
    from fedray.runtime.stream import start_error

    error = start_error(ValueError("my train_step is broken\nsee the line above"), "host 0")
    assert str(error) == "host 0 failed to start: ValueError: my train_step is broken"
    assert start_error(ConfigError("model.name = 'x': bad"), "host 0").args == (
        "model.name = 'x': bad",
    )


@pytest.mark.keras
def test_an_in_process_hosts_start_up_error_is_one_line_with_exit_status_2(elsewhere, capsys):
    from fedray.cli import main

    argv = ["run", "experiments/linreg.yaml", "--local", "--no-progress", "--set"]
    code = main([*argv, "model.name=tests.custom_models:broken_train_step"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and err == (
        "fedray: error: a client host failed to start: ValueError: my train_step is broken"
    ), err
    assert sorted(p.name for p in elsewhere.iterdir()) == ["experiments"]


def test_an_eager_op_error_loses_its_op_tag_and_empty_name():
    text = (
        "{{function_node __wrapped__SparseSoftmaxCrossEntropyWithLogits_device_/job:localhost/"
        "replica:0/task:0/device:CPU:0}} Received a label value of 2 which is outside the valid "
        "range of [0, 1).  Label values: 2 [Op:SparseSoftmaxCrossEntropyWithLogits] name: "
    )
    assert one_line(InvalidArgumentError(text)) == (
        "InvalidArgumentError: Received a label value of 2 which is outside the valid range "
        "of [0, 1). Label values: 2"
    )
