"""The loop (layer 2): one driver, its schedulers and the executor protocol."""

from fedray.loop.driver import Checkpointer, default_scheduler, run_rounds
from fedray.loop.executor import Executor, PrivacyLedger
from fedray.loop.schedulers import Buffered, Context, Scheduler, Step, SyncRounds
from fedray.loop.steps import Evaluation, due, weighted_logs

__all__ = [
    "Buffered",
    "Checkpointer",
    "Context",
    "Evaluation",
    "Executor",
    "PrivacyLedger",
    "Scheduler",
    "Step",
    "SyncRounds",
    "default_scheduler",
    "due",
    "run_rounds",
    "weighted_logs",
]
