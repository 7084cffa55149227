"""Bad input, everywhere: every config key and every CLI flag, with a bad value.

Table-driven from the config schema itself: each leaf key gets a value its type or bounds
forbid (a word where a number or a flag belongs, a number past its bound, a choice that
is not offered). Each must be refused with one line that names the key, the bad value
and what is allowed. The CLI cases run ``fedray`` in-process: exit status 2, one line
on stderr, no traceback.
"""

import concurrent.futures
import contextlib
import os
import socket
import sys
import threading
import time
import types
import typing

import numpy as np
import pytest
from pydantic import BaseModel

import fedray
from fedray import config
from fedray.cli import main
from fedray.config import Config
from fedray.config.strategy import RECIPES
from fedray.errors import ConfigError, DataError
from tests.conftest import ROOT

BOUNDS = ("ge", "gt", "le", "lt")


def _bounds(field):
    found = {}
    parts = list(field.metadata)
    for arg in typing.get_args(field.annotation):
        parts += [m for a in typing.get_args(arg) for m in getattr(a, "metadata", [])]
        parts += list(getattr(arg, "__metadata__", []))
    for meta in parts:
        for attr in BOUNDS:
            if getattr(meta, attr, None) is not None:
                found[attr] = getattr(meta, attr)
    return found


def _kinds(annotation):
    """The basic types a field accepts: int, float, bool, str, Literal values, list, dict."""
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin is typing.Literal:
        return {("literal", a) for a in args}
    if origin is typing.Annotated:
        return _kinds(args[0])
    if origin in (typing.Union, types.UnionType):
        return set().union(*(_kinds(a) for a in args))
    if origin in (list, tuple, dict):
        return {origin.__name__}
    if _is_model(annotation):
        return {"model"}
    return {getattr(annotation, "__name__", str(annotation))}


def _bad(field):
    """A value the field refuses, or None when every string is acceptable."""
    kinds = _kinds(field.annotation)
    bounds = _bounds(field)
    numeric = kinds & {"int", "float"}
    if "str" in kinds or "Path" in kinds or "model" in kinds:
        return None
    if numeric and bounds:
        if "ge" in bounds:
            return str(bounds["ge"] - 1)
        if "gt" in bounds:
            return str(bounds["gt"] - 1 if "int" in kinds else bounds["gt"])
        return str(bounds.get("le", bounds.get("lt")) + 1)
    return "not-a-valid-value"  # a word: not a number, a flag, a list or one of the choices


def _members(annotation):
    """The alternatives of a union (``Annotated`` tags removed), else the type itself."""
    if typing.get_origin(annotation) not in (typing.Union, types.UnionType):
        return [annotation]
    strip = lambda a: typing.get_args(a)[0] if typing.get_origin(a) is typing.Annotated else a  # noqa: E731
    return [strip(a) for a in typing.get_args(annotation)]


def _is_model(annotation):
    return isinstance(annotation, type) and issubclass(annotation, BaseModel)


def _leaves(model, prefix=""):
    """Every leaf key of ``model``: sections and optional sections are walked into."""
    for name, field in model.model_fields.items():
        key = f"{prefix}{name}"
        members = [m for m in _members(field.annotation) if m is not type(None)]
        if members and all(_is_model(m) for m in members):
            for member in members:
                yield from _leaves(member, key + ".")
        else:
            yield key, field


def _cases():
    seen = {}
    for key, field in _leaves(Config):
        if key.startswith("strategy."):
            continue
        bad = _bad(field)
        if bad is not None:
            seen[key] = ([], bad)
    for name, recipe in RECIPES.items():
        for key, field in _leaves(recipe, "strategy."):
            bad = _bad(field)
            if key != "strategy.name" and bad is not None and key not in seen:
                seen[key] = ([f"strategy.name={name}"], bad)
    seen["strategy.name"] = ([], "not-a-strategy")
    return sorted((k, pre, bad) for k, (pre, bad) in seen.items())


CASES = _cases()


def test_the_sweep_covers_every_section():
    sections = {k.split(".")[0] for k, _, _ in CASES}
    assert sections >= {
        "seed",
        "rounds",
        "data",
        "model",
        "client",
        "strategy",
        "evaluation",
        "attack",
        "faults",
        "checkpoint",
        "privacy",
        "runtime",
    }
    assert len(CASES) > 60


@pytest.mark.parametrize(("key", "pre", "bad"), CASES, ids=[c[0] for c in CASES])
def test_every_config_key_refuses_a_bad_value_in_one_line_naming_it(key, pre, bad):
    with pytest.raises(config.ConfigError) as err:
        config.load({}, [*pre, f"{key}={bad}"])
    line = str(err.value)
    assert "\n" not in line and len(line) < 400, line
    assert key in line and bad in line, line
    assert any(
        w in line for w in ("expected", "allowed", "must", "should", "one of", "≥", ">", "<")
    ), line


CLI = [
    (["run", "experiments/nope.yaml"], "experiments/nope.yaml"),
    (["run", "experiments/linreg.yaml", "--set", "rounds"], "rounds"),
    (["run", "experiments/linreg.yaml", "--set", "nope.key=1"], "nope"),
    (["run", "experiments/linreg.yaml", "--set", "rounds=-3"], "rounds"),
    (["run", "experiments/linreg.yaml", "--resume", "/nonexistent/run"], "/nonexistent/run"),
    (["run", "experiments/linreg.yaml", "--resume-if-exists"], "--resume-if-exists"),
    (["run", "experiments/linreg.yaml", "--address", "no-port-here"], "no-port-here"),
    (["run", "experiments/linreg.yaml", "--address", "127.0.0.1:1"], "127.0.0.1:1"),
    (
        [
            "run",
            "experiments/linreg.yaml",
            "--local",
            "--set",
            "data.dataset=csv",
            "--set",
            "data.path=/nonexistent.csv",
        ],
        "/nonexistent.csv",
    ),
    (
        [
            "run",
            "experiments/linreg.yaml",
            "--local",
            "--set",
            "data.partition=column",
            "--set",
            "data.column=nope",
        ],
        "data.column='nope'",
    ),
    (
        ["run", "experiments/linreg.yaml", "--local", "--set", "data.num_clients=1000"],
        "data.num_clients=1000",
    ),
    (["run", "experiments/linreg.yaml", "--set", "model.name=nope"], "model.name = 'nope'"),
    (["report", "/nonexistent/run"], "/nonexistent/run"),
    (["plot", "/nonexistent/run"], "/nonexistent/run"),
    (["predict", "/nonexistent/run", "--input", "x.csv"], "/nonexistent/run"),
    (["audit", "/nonexistent/run"], "/nonexistent/run"),
    (
        [
            "privacy",
            "--noise-multiplier",
            "-1",
            "--sampling-rate",
            "0.1",
            "--rounds",
            "10",
            "--delta",
            "1e-5",
        ],
        "-1",
    ),
    (
        [
            "privacy",
            "--noise-multiplier",
            "1",
            "--sampling-rate",
            "2",
            "--rounds",
            "10",
            "--delta",
            "1e-5",
        ],
        "2",
    ),
    (["bench", "scale", "--grid", "many:clients"], "many:clients"),
    (["cluster-token", "--out", "/nonexistent/dir/token"], "/nonexistent/dir/token"),
]


@pytest.mark.parametrize(("argv", "named"), CLI, ids=[" ".join(a[:3]) for a, _ in CLI])
def test_every_cli_mistake_is_one_line_with_exit_status_2(argv, named, capsys, elsewhere):
    code = main(argv)
    err = capsys.readouterr().err.strip()
    assert code == 2, (code, err)
    assert "Traceback" not in err and len(err.splitlines()) == 1, err
    assert err.startswith("fedray: error: ") and named in err, err
    assert sorted(p.name for p in elsewhere.iterdir()) == ["experiments"]  # no run directory


# --- addresses that accept a connection but do not speak Ray -----------------------------
# Each is a listener on a free loopback port, as a newcomer meets them: a firewall or a
# stuck service that accepts and never answers, the dashboard's HTTP port (8265), Ray's
# client server (a gRPC server without the GCS's services, 10001), a web server, a service
# that hangs up. `ray.init` retries each for minutes; fedray must say what answered, in one
# line naming the address as given, within runtime.connect_timeout_s.
def _silent(conn):
    conn.recv(65536)  # holds the connection open and never answers
    time.sleep(60)


def _http_400(conn):
    conn.recv(65536)  # an HTTP/1.1 server's answer to anything it cannot parse (the dashboard)
    conn.sendall(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")


def _hang_up(conn):
    conn.close()


def _web_page(conn):
    conn.recv(65536)  # an old-style web server: a page without a status line
    conn.sendall(b"<!DOCTYPE html><html><body>hello</body></html>\n")


@contextlib.contextmanager
def _listener(serve):
    sock = socket.create_server(("127.0.0.1", 0))
    done = threading.Event()

    def accept():
        while not done.is_set():
            try:
                conn, _ = sock.accept()
            except OSError:
                return
            threading.Thread(target=serve, args=(conn,), daemon=True).start()

    threading.Thread(target=accept, daemon=True).start()
    try:
        yield f"127.0.0.1:{sock.getsockname()[1]}"
    finally:
        done.set()
        sock.close()


@contextlib.contextmanager
def _grpc_server():
    import grpc

    server = grpc.server(concurrent.futures.ThreadPoolExecutor(max_workers=1))
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        yield f"127.0.0.1:{port}"
    finally:
        server.stop(0)


LISTENERS = {
    "accepts and stays silent": (lambda: _listener(_silent), "did not answer as a Ray head"),
    "HTTP server (dashboard)": (lambda: _listener(_http_400), "an HTTP server answers there"),
    "gRPC server (client server)": (_grpc_server, "a gRPC server answers there, but not"),
    "hangs up": (lambda: _listener(_hang_up), "but not as a Ray head"),
    "web page": (lambda: _listener(_web_page), "but not as a Ray head"),
}


@pytest.mark.parametrize("kind", list(LISTENERS))
def test_an_address_that_accepts_but_does_not_speak_ray_is_one_line(kind, tmp_path, capsys):
    start, says = LISTENERS[kind]
    result: dict[str, int] = {}
    with start() as address:
        argv = ["run", str(ROOT / "experiments" / "linreg.yaml"), "--address", address]
        argv += ["--set", "runtime.connect_timeout_s=0.5", "--out", str(tmp_path / "run")]
        runner = threading.Thread(target=lambda: result.update(code=main(argv)), daemon=True)
        runner.start()
        runner.join(timeout=30)  # the hang guard: the probe gives up after 0.5 s
    assert not runner.is_alive(), f"fedray run --address {address} ({kind}) hangs"
    err = capsys.readouterr().err.strip()
    assert result["code"] == 2, (result, err)
    assert "Traceback" not in err and len(err.splitlines()) == 1, err
    assert err.startswith(f"fedray: error: runtime.address = '{address}': "), err
    assert says in err and "expected host:port of a Ray head's GCS" in err, err


def test_a_sweep_at_a_silent_address_is_one_line_within_its_timeout(tmp_path, capsys):
    result: dict[str, int] = {}
    with _listener(_silent) as address:
        argv = ["sweep", str(ROOT / "experiments" / "linreg.yaml"), "--grid", "rounds=[1,2]"]
        argv += ["--address", address, "--set", "runtime.connect_timeout_s=0.5"]
        argv += ["--out", str(tmp_path / "sweep")]
        runner = threading.Thread(target=lambda: result.update(code=main(argv)), daemon=True)
        runner.start()
        runner.join(timeout=30)
    assert not runner.is_alive(), f"fedray sweep --address {address} hangs"
    err = capsys.readouterr().err.strip()
    assert result["code"] == 2 and len(err.splitlines()) == 1, (result, err)
    assert err.startswith(f"fedray: error: runtime.address = '{address}': something accepts")


# --- What the schema cannot see: the data files, the user's code, fedray.fit's arguments ---
# Each is refused in one line naming the key or argument, the bad value and what is
# expected, with exit status 2 from the CLI, before any host starts where the driver can
# tell, and with no run directory left behind.

HOSPITALS = str(ROOT / "experiments" / "hospitals.yaml")


@pytest.fixture
def no_hosts(monkeypatch, tmp_path):
    """Fail the test if a host would start; run from an empty folder (never the checkout)."""

    def refuse(*args, **kwargs):
        raise AssertionError("a host started: the mistake was not caught in the driver")

    monkeypatch.setattr("fedray.config.build.make_executor", refuse)
    monkeypatch.chdir(tmp_path)
    return tmp_path


def _refused_in_one_line(argv, capsys, *named):
    code = main(argv)
    err = capsys.readouterr().err.strip()
    assert code == 2, (code, err)
    assert "Traceback" not in err and len(err.splitlines()) == 1, err
    assert err.startswith("fedray: error: "), err
    for word in named:
        assert word in err, err
    return err


def _data_files(folder):
    """A file that is not what ``data.dataset`` reads, for each way it can be wrong."""
    (folder / "a-folder.csv").mkdir()
    (folder / "binary.csv").write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR" * 4)
    (folder / "text.parquet").write_text("age,label\n1,0\n")
    (folder / "empty.csv").write_text("")
    (folder / "text.npz").write_text("x_train,y_train\n")
    return {
        "a-folder.csv": ("csv", "is a folder; expected a .csv file"),
        "binary.csv": ("csv", "expected a .csv file (UTF-8 text)"),
        "text.parquet": ("parquet", "expected a .parquet file"),
        "empty.csv": ("csv", "is empty; expected a .csv file"),
        "text.npz": ("npz", "expected a .npz file"),
    }


@pytest.mark.parametrize(
    "name", ["a-folder.csv", "binary.csv", "text.parquet", "empty.csv", "text.npz"]
)
def test_a_data_file_that_cannot_be_read_is_one_line_before_any_host(name, no_hosts, capsys):
    dataset, expected = _data_files(no_hosts)[name]
    path = no_hosts / name
    argv = ["run", HOSPITALS, "--out", str(no_hosts / "o"), "--set", f"data.dataset={dataset}"]
    err = _refused_in_one_line([*argv, "--set", f"data.path={path}"], capsys, f"'{path}'", expected)
    assert f"data.path = '{path}'" in err
    assert not (no_hosts / "o").exists(), err


def test_a_test_table_that_is_a_folder_is_named_as_data_test_path(no_hosts, capsys):
    (no_hosts / "tables").mkdir()
    tables = no_hosts / "tables"
    argv = ["run", HOSPITALS, "--set", f"data.path={ROOT / 'experiments/data/hospitals.csv'}"]
    expected = f"data.test_path = '{tables}': is a folder; expected a .csv file"
    _refused_in_one_line([*argv, "--set", f"data.test_path={tables}"], capsys, expected)
    assert not (no_hosts / "runs").exists()


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads every file")
def test_a_data_file_without_read_permission_is_one_line(no_hosts, capsys):
    path = no_hosts / "locked.csv"
    path.write_text("age,label\n1,0\n")
    path.chmod(0)
    expected = f"data.path = '{path}': cannot be read (Permission denied)"
    _refused_in_one_line(["run", HOSPITALS, "--set", f"data.path={path}"], capsys, expected)


# The user's own code: fedray.fit's model_fn and clients, and config builders
# (model.name = 'package.module:function'). fedray.fit's model is built once in the driver
# and run on two rows of the data, so each mistake is one line before any host starts.


def _regression():
    rng = np.random.default_rng(0)
    x = rng.uniform(0, 10, (40, 1)).astype("float32")
    return [(x[:20], 3 * x[:20] + 1), (x[20:], 3 * x[20:] + 1)]


def _classes():
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(60, 5)).astype("float32"), np.arange(60) % 10
    return [(x[:30], y[:30]), (x[30:], y[30:])]


def _fit_refused(no_hosts, model_fn, clients, error=ConfigError, **arguments):
    out = no_hosts / "o"
    with pytest.raises(error) as err:  # on Ray: refused before Ray or any host starts
        fedray.fit(model_fn, clients, rounds=1, out=out, runtime={"progress": False}, **arguments)
    line = str(err.value)
    assert "\n" not in line and "\x1b" not in line and len(line) < 400, line
    assert not out.exists()
    return line


def needs_arguments(input_shape, num_outputs):
    return None


def test_fit_refuses_a_model_fn_that_is_not_a_function_of_no_arguments(no_hosts):
    line = _fit_refused(no_hosts, "create_model", _regression())
    assert line.startswith("model_fn = 'create_model': a str; expected a function"), line
    line = _fit_refused(no_hosts, needs_arguments, _regression())
    assert line.startswith("model_fn = needs_arguments(input_shape, num_outputs): it needs"), line
    assert "fedray.fit calls model_fn() with no arguments" in line


def test_fit_leaves_the_model_check_to_the_hosts_when_the_driver_has_no_tensorflow(
    no_hosts, monkeypatch
):
    from fedray.client.models import check_fit_model
    from fedray.config import ClientConfig
    from fedray.data.arrays import from_clients

    for name in ("keras", "tensorflow"):  # as in a script that never imported them
        monkeypatch.delitem(sys.modules, name, raising=False)
    source = from_clients(_regression())
    check_fit_model(_builder_raises, source, ClientConfig(), in_process=False)  # not built
    with pytest.raises(ConfigError, match="model_fn = 'x': a str"):  # no TensorFlow needed
        check_fit_model("x", source, ClientConfig(), in_process=False)


def _create(head=1, inputs=1, compiled=True):
    import keras

    model = keras.Sequential([keras.Input((inputs,)), keras.layers.Dense(head)])
    if compiled:
        model.compile(optimizer="sgd", loss="mse")
    return model


def _builder_raises():
    raise RuntimeError("my builder is broken")


FIT_MISTAKES = {  # what makes model_fn, the clients, what the one line says
    "a built model": (
        lambda: _create(),
        _regression,
        "model_fn = <Sequential model>: a built model; expected a function that builds one",
    ),
    "raises": (
        lambda: _builder_raises,
        _regression,
        "model_fn raised RuntimeError: my builder is broken",
    ),
    "returns no model": (
        lambda: lambda: "oops",
        _regression,
        "model_fn returned str; expected a keras.Model",
    ),
    "wrong input shape": (
        lambda: lambda: _create(inputs=4),
        _regression,
        "model_fn's model cannot take the data's inputs (rows of shape (1,)): ValueError: Input 0",
    ),
    "3 outputs for 1 target": (
        lambda: lambda: _create(head=3),
        _regression,
        "model_fn's model outputs shape (None, 3); the labels have 1 column: expected (None, 1)",
    ),
    "1 output for 10 classes": (
        lambda: lambda: _create(head=1, inputs=5, compiled=False),
        _classes,
        "model_fn's model outputs shape (None, 1); the labels are 10 classes (0 to 9): "
        "expected (None, 10)",
    ),
}


@pytest.mark.keras
@pytest.mark.parametrize("mistake", list(FIT_MISTAKES))
def test_fit_refuses_a_model_that_does_not_fit_the_data_before_any_host(mistake, no_hosts):
    import keras  # noqa: F401 - as a user's script does: the driver then checks the model

    make, clients, expected = FIT_MISTAKES[mistake]
    model_fn = make()  # a built model, or a function that builds one
    line = _fit_refused(no_hosts, model_fn, clients())
    assert line.startswith(expected), line


@pytest.mark.keras
def test_fit_refuses_clients_whose_datasets_cannot_be_read(no_hosts):
    import tensorflow as tf

    x, y = np.ones((4, 1), "float32"), np.ones((4, 1), "float32")
    broken = tf.data.Dataset.from_tensor_slices((x, y)).map(
        lambda x, y: (tf.strings.to_number("oops"), y)
    )
    line = _fit_refused(no_hosts, lambda: _create(), [(x, y), broken], DataError)
    assert line.startswith("clients[1]: reading the dataset raised InvalidArgumentError: "), line
    only_x = tf.data.Dataset.from_tensor_slices(x)
    line = _fit_refused(no_hosts, lambda: _create(), [only_x], DataError)
    assert line.startswith("clients[0]: the dataset's elements are not (x, y) pairs"), line


def test_a_config_builder_that_cannot_be_imported_is_one_line_before_any_host(no_hosts, capsys):
    _refused_in_one_line(
        ["run", HOSPITALS, "--set", "model.name=no_such_module:build"],
        capsys,
        "model.name = 'no_such_module:build': cannot import module 'no_such_module'",
    )


BUILDER_MISTAKES = {  # builder: config, what the one line says after "model.name = '...'"
    "raises": ("linreg", " raised RuntimeError: my builder is broken"),
    "not_a_model": ("linreg", " returned str; expected a keras.Model"),
    "wrong_input": ("linreg", ": its model cannot take the data's inputs (rows of shape (1,))"),
    "three_outputs": ("linreg", ": its model outputs shape (None, 3); the labels have 1 column"),
    "one_output": ("blobs", ": its model outputs shape (None, 1); the labels are 10 classes"),
}
SMALL = ["data.num_samples=200", "data.num_clients=2", "strategy.min_fit_clients=1"]
SMALL += ["evaluation.predict=null"]


@pytest.mark.keras
@pytest.mark.parametrize("builder", list(BUILDER_MISTAKES))
def test_a_config_builder_whose_model_does_not_fit_is_one_line_and_exit_2(
    builder, elsewhere, capsys
):
    config, expected = BUILDER_MISTAKES[builder]
    name = f"tests.custom_models:{builder}"
    argv = ["run", f"experiments/{config}.yaml", "--local", "--no-progress"]
    argv += ["--set", f"model.name={name}", *(a for s in SMALL for a in ("--set", s))]
    err = _refused_in_one_line(argv, capsys, f"model.name = '{name}'{expected}")
    assert "--resume" not in err and "\x1b" not in err
    assert sorted(p.name for p in elsewhere.iterdir()) == ["experiments"]


# fedray.run's and fedray.fit's other arguments, and where the outputs go.


class EarlyStopping:
    """Stands in for keras.callbacks.EarlyStopping: a Keras habit, not a fedray callback."""


@pytest.mark.parametrize(
    ("arguments", "expected"),
    [
        ({"strategy": "fedprox"}, "strategy = 'fedprox': a str; expected a fedray.strategy."),
        (
            {"callbacks": [EarlyStopping()]},
            "callbacks[0] = <EarlyStopping>: not a fedray.callbacks",
        ),
        ({"callbacks": EarlyStopping()}, "callbacks = <EarlyStopping>: expected a list of"),
    ],
)
def test_run_refuses_arguments_of_the_wrong_type_in_one_line(arguments, expected, no_hosts):
    with pytest.raises(ConfigError) as err:
        fedray.run({}, out=no_hosts / "o", **arguments)
    assert str(err.value).startswith(expected) and "\n" not in str(err.value), err.value
    assert not (no_hosts / "o").exists()


def test_an_out_directory_that_is_a_file_is_one_line(no_hosts, capsys):
    (no_hosts / "taken").write_text("not a directory")
    _refused_in_one_line(
        ["run", HOSPITALS, "--out", str(no_hosts / "taken")],
        capsys,
        f"run directory '{no_hosts / 'taken'}': cannot be made (",
    )
    _refused_in_one_line(
        ["run", HOSPITALS, "--out", str(no_hosts / "taken" / "run")],
        capsys,
        f"run directory '{no_hosts / 'taken' / 'run'}': cannot be made (",
    )


def test_fit_names_its_test_argument_when_it_is_not_a_pair(no_hosts):
    line = _fit_refused(no_hosts, lambda: None, _regression(), DataError, test="test.csv")
    assert line.startswith("test is a str; expected an (x, y) pair of arrays"), line


def test_predict_inputs_the_model_cannot_take_are_one_line_before_round_1(
    elsewhere, capsys, monkeypatch
):
    import fedray.client.trainer as trainer_mod
    from tests.fakes import NumpyTrainer

    monkeypatch.setattr(trainer_mod, "KerasTrainer", NumpyTrainer)  # hosts without TensorFlow
    argv = ["run", "experiments/linreg.yaml", "--local", "--no-progress"]
    err = _refused_in_one_line(
        [*argv, "--set", "evaluation.predict=[[1.0, 2.0]]"],
        capsys,
        "evaluation.predict = [[1.0, 2.0]]: the model cannot take these inputs (",
    )
    assert "round 1" not in err
    assert sorted(p.name for p in elsewhere.iterdir()) == ["experiments"]
