"""The round loop on a pure-numpy fake executor: FedAvg math, failures, rollback."""

import logging

import numpy as np
import pytest

from fedray.callbacks import Callback, History
from fedray.errors import RoundFailedError
from fedray.loop import Checkpointer, Evaluation, SyncRounds, run_rounds
from fedray.loop.validation import validate_update
from fedray.records import ClientUpdate, RoundPolicy
from fedray.strategy import Strategy, fedavg
from fedray.strategy.server_opt import ServerSGD
from tests.fakes import QuadraticExecutor


def _run(executor, strategy=None, rounds=3, **kw):
    rec = History()
    params = run_rounds(
        strategy=strategy or fedavg(),
        executor=executor,
        rounds=rounds,
        seed=0,
        callback=Callback(),
        history=rec,
        **kw,
    )
    return params, rec.rows


def test_fedavg_rounds_match_hand_computation():
    ex = QuadraticExecutor(targets=[[2.0], [8.0]], sizes=[1, 3])
    params, rows = _run(ex, rounds=2)
    # Weighted target = (1*2 + 3*8)/4 = 6.5. Each round w <- w + 0.5 (6.5 - w).
    # Round 1: 3.25. Round 2: 4.875.
    assert rows[0]["eval/w"] == pytest.approx(3.25)
    assert rows[1]["eval/w"] == pytest.approx(4.875)
    np.testing.assert_allclose(params[0], [4.875])
    assert rows[0]["fit/loss"] == pytest.approx((0 * 1 + 1 * 3) / 4)
    assert rows[0]["clients/ok"] == 2 and rows[0]["clients/failed"] == 0
    # One broadcast for the initial model, then one per committed round.
    assert ex.broadcasts == 3


def test_failed_client_is_recorded_and_round_goes_on():
    ex = QuadraticExecutor([[2.0], [8.0], [4.0]], [1, 1, 1], behaviour={1: "fail"})
    params, rows = _run(ex, strategy=fedavg(min_fit_clients=2), rounds=1)
    assert rows[0]["clients/ok"] == 2 and rows[0]["clients/failed"] == 1
    np.testing.assert_allclose(params[0], [0.5 * 3.0])  # mean target of clients 0, 2


@pytest.mark.parametrize(
    ("kind", "cause", "words"), [("nan", "nan", "NaN"), ("shape", "invalid", "invalid")]
)
def test_invalid_updates_are_rejected(kind, cause, words, caplog):
    ex = QuadraticExecutor([[2.0], [8.0]], [1, 1], behaviour={1: kind})
    with caplog.at_level(logging.DEBUG, logger="fedray.loop"):
        params, rows = _run(ex, rounds=1)
    assert rows[0]["clients/failed"] == 1 and rows[0][f"failed/{cause}"] == 1
    np.testing.assert_allclose(params[0], [1.0])
    summary = [r.message for r in caplog.records if r.levelno == logging.WARNING]
    assert summary == [f"round 1: 1/2 ok; failed: 1 {words}"]  # one line per round
    assert any(
        r.levelno == logging.DEBUG and "client 1 failed" in r.message for r in caplog.records
    )


def test_too_few_clients_with_skip_leaves_the_model_unchanged(caplog):
    ex = QuadraticExecutor([[2.0], [8.0]], [1, 1], behaviour={0: "fail", 1: "fail"})
    params, rows = _run(ex, rounds=2, scheduler=SyncRounds(RoundPolicy(on_too_few="skip")))
    np.testing.assert_allclose(params[0], [0.0])
    assert [r["round/committed"] for r in rows] == [0, 0]
    assert "fewer than min_fit_clients=1" in caplog.text


def test_too_few_clients_retries_then_stops_with_a_clear_error():
    ex = QuadraticExecutor([[2.0], [8.0]], [1, 1], behaviour={0: "fail", 1: "fail"})
    saved = []
    with pytest.raises(
        RoundFailedError,
        match=r"round 1: 0/6 ok in 3 attempts; failed: 6 raised; fewer than strategy.min_fit",
    ):
        _run(ex, rounds=2, checkpoint=Checkpointer(saved.append))
    assert [info for _, info in ex.fit_calls] == [1, 1, 1]  # 1 try + max_retries=2
    assert saved == []  # nothing was committed, nothing half-written


def test_stop_policy_stops_at_once_after_checkpointing_earlier_rounds():
    ex = QuadraticExecutor([[2.0], [8.0]], [1, 1])
    saved = []

    class BreakAfterRound1(Callback):
        def on_round_end(self, server_round, logs):
            ex.behaviour = {0: "fail", 1: "fail"}

    with pytest.raises(RoundFailedError, match="round 2: 0/2 ok; .*on_too_few='stop'"):
        run_rounds(
            strategy=fedavg(),
            executor=ex,
            rounds=3,
            seed=0,
            callback=BreakAfterRound1(),
            checkpoint=Checkpointer(saved.append),
            scheduler=SyncRounds(RoundPolicy(on_too_few="stop")),
        )
    assert len(ex.fit_calls) == 2
    assert [st.server_round for st in saved] == [1]
    np.testing.assert_allclose(saved[0].params[0], [2.5])  # round 1 is kept: 0.5 * 5


def test_retry_draws_fresh_faults_and_recovers():
    ex = QuadraticExecutor([[2.0], [8.0]], [1, 1], behaviour={0: "flaky", 1: "flaky"})
    params, rows = _run(ex, rounds=1)
    assert rows[0]["round/attempts"] == 2
    assert rows[0]["clients/failed"] == 2 and rows[0]["clients/ok"] == 2
    assert rows[0]["clients/sampled"] == 4
    np.testing.assert_allclose(params[0], [2.5])


def test_over_commitment_aggregates_the_first_k_valid_arrivals():
    ex = QuadraticExecutor([[float(i)] for i in range(10)], [1] * 10, behaviour={9: "nan"})
    policy = RoundPolicy(over_commit=0.5)
    params, rows = _run(
        ex, strategy=fedavg(fraction_fit=0.4), rounds=1, scheduler=SyncRounds(policy)
    )
    ((ids, _),) = ex.fit_calls
    assert len(ids) == 6  # K = 4 wanted, ceil(4 * 0.5) = 2 extra
    arrived = [c for c in reversed(ids) if c != 9][:4]  # the fake answers in reverse id order
    assert rows[0]["clients/ok"] == 4
    np.testing.assert_allclose(params[0], [0.5 * np.mean(arrived)], rtol=1e-6)
    # Without over-commitment the RNG stream, and so the sample, is the strategy's own.
    ex2 = QuadraticExecutor([[float(i)] for i in range(10)], [1] * 10)
    _run(ex2, strategy=fedavg(fraction_fit=0.4), rounds=1)
    assert len(ex2.fit_calls[0][0]) == 4


def test_non_finite_aggregate_is_rolled_back():
    ex = QuadraticExecutor([[2.0], [8.0]], [1, 1], behaviour={0: "huge", 1: "huge"})
    strategy = Strategy(server_optimizer=ServerSGD(learning_rate=10.0))
    with np.errstate(over="ignore"):
        params, rows = _run(ex, strategy=strategy, rounds=1)
    # Each delta is finite (3e38), but 10 x 3e38 overflows float32 -> inf -> rolled back.
    assert rows[0]["round/committed"] == 0
    np.testing.assert_array_equal(params[0], [0.0])


def test_sampling_uses_fraction_and_seed():
    ex = QuadraticExecutor([[float(i)] for i in range(10)], [1] * 10)
    _run(ex, strategy=fedavg(fraction_fit=0.3), rounds=4)
    assert all(len(ids) == 3 for ids, _ in ex.fit_calls)
    ex2 = QuadraticExecutor([[float(i)] for i in range(10)], [1] * 10)
    _run(ex2, strategy=fedavg(fraction_fit=0.3), rounds=4)
    assert ex.fit_calls == ex2.fit_calls
    assert len({tuple(ids) for ids, _ in ex.fit_calls}) > 1


def test_callbacks_see_every_hook_in_order():
    events = []

    class Spy(Callback):
        def on_run_begin(self, logs):
            events.append("begin")

        def on_round_begin(self, server_round):
            events.append(f"r{server_round}")

        def on_round_end(self, server_round, logs):
            events.append(f"e{server_round}")

        def on_run_end(self, logs):
            events.append("end")

    run_rounds(
        strategy=fedavg(),
        executor=QuadraticExecutor([[1.0]], [1]),
        rounds=2,
        seed=0,
        callback=Spy(),
    )
    assert events == ["begin", "r1", "e1", "r2", "e2", "end"]


def test_federated_evaluation_is_logged():
    _, rows = _run(
        QuadraticExecutor([[2.0], [8.0]], [1, 1]),
        rounds=2,
        evaluation=Evaluation(federated_every=2),
    )
    assert "fed_eval/w" not in rows[0]
    assert rows[1]["fed_eval/w"] == pytest.approx(rows[1]["eval/w"])
    assert rows[1]["fed_eval/clients"] == 2


def test_training_data_evaluation_is_logged_under_train():
    _, rows = _run(
        QuadraticExecutor([[2.0], [8.0]], [1, 1]), rounds=2, evaluation=Evaluation(train_every=1)
    )
    assert rows[0]["train/w"] == pytest.approx(rows[0]["eval/w"] + 100.0)


def test_validate_update_messages():
    ref = [np.zeros(2, np.float32)]
    assert validate_update(ClientUpdate(0, [np.zeros(2, np.float32)], 1), ref) is None
    assert "NaN or Inf" in validate_update(
        ClientUpdate(0, [np.array([np.inf, 0], np.float32)], 1), ref
    )
    assert "shape (3,), expected (2,)" in validate_update(
        ClientUpdate(0, [np.zeros(3, np.float32)], 1), ref
    )
    assert "num_examples must be > 0, got 0" in validate_update(
        ClientUpdate(0, [np.zeros(2, np.float32)], 0), ref
    )


def test_absurd_norms_are_rejected_with_the_reason(caplog):
    ex = QuadraticExecutor([[2.0], [8.0], [1000.0]], [1, 1, 1])
    with caplog.at_level(logging.DEBUG, logger="fedray.loop"):
        params, rows = _run(ex, rounds=1, scheduler=SyncRounds(RoundPolicy(max_update_norm=100.0)))
    assert (
        "client 2 failed (invalid): update norm 500 exceeds strategy.max_update_norm=100"
        in caplog.text
    )
    assert rows[0]["clients/failed"] == 1 and rows[0]["clients/ok"] == 2
    np.testing.assert_allclose(params[0], [0.5 * 5.0])  # the mean of clients 0 and 1 only
    assert "round 1: 2/3 ok; failed: 1 invalid" in caplog.text


def test_every_failure_of_a_retried_round_carries_its_attempt_whoever_reported_it():
    from dataclasses import replace

    from fedray.aggregators import Mean
    from fedray.records import ClientFailure

    class DropsClient0:
        """A secure-aggregation-like session: client 0 drops out of every key exchange."""

        def start(self, executor, ids, info, rng):
            dropped = [ClientFailure(0, "dropped during key exchange", "secagg")]
            return [c for c in ids if c != 0], dropped, object()

    class WithSession(Mean):
        def session(self):
            return DropsClient0()

    ex = QuadraticExecutor([[2.0], [8.0], [4.0]], [1, 1, 1], behaviour={1: "fail", 2: "fail"})
    strategy = replace(fedavg(min_fit_clients=1), aggregator=WithSession())
    with pytest.raises(RoundFailedError) as err:
        _run(ex, strategy=strategy, rounds=1)
    step = err.value.step
    assert sorted((f.attempt, f.client_id, f.cause) for f in step.failures) == [
        (a, c, cause) for a in range(3) for c, cause in ((0, "secagg"), (1, "error"), (2, "error"))
    ]


def test_a_round_with_fewer_participants_than_min_fit_clients_does_not_commit():
    # Only the zero-participant case was tested: 2 of 3 clients answer, 3 are needed.
    ex = QuadraticExecutor([[2.0], [8.0], [4.0]], [1, 1, 1], behaviour={2: "fail"})
    strategy = fedavg(min_fit_clients=3)
    params, rows = _run(
        ex, strategy, rounds=2, scheduler=SyncRounds(RoundPolicy(on_too_few="skip"))
    )
    np.testing.assert_allclose(params[0], [0.0])
    assert [(r["clients/ok"], r["round/committed"]) for r in rows] == [(2, 0), (2, 0)]
