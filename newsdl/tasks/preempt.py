"""Stop training cleanly when the scheduler says the job is about to end.

SLURM sends SIGUSR1 ahead of the time limit or a preemption (the job scripts ask for
``--signal=B:USR1@120`` and forward it), and SIGTERM when it ends the job. Either one sets a
flag; the ``StopOnSignal`` callback then leaves ``fit`` at the next batch, by raising
``Preempted``, a SystemExit with status defaults.PREEMPTED_EXIT, which the job script reads as
"checkpointed, requeue me".

Why raise instead of ``model.stop_training = True``: Keras then still runs validation and
``on_epoch_end`` for the cut epoch, so BackupAndRestore would save a half epoch as finished (and
CSVLogger would log it), and ``on_train_end`` would delete the backup. Raising skips both: the
backup stays that of the last finished epoch, and the requeued run resumes after it, losing at
most the epoch that was running, never a finished one.

The callback goes after BackupAndRestore in the list, so a signal that arrives during an
epoch's end is acted on after that epoch's backup is written.
"""

from __future__ import annotations

import logging
import signal
import threading

import keras

from newsdl import defaults

log = logging.getLogger("newsdl.tasks")
SIGNALS = ("SIGUSR1", "SIGTERM")
_state = {"signal": None, "installed": False}


class Preempted(SystemExit):
    """Training stopped on a signal after its last checkpoint; the process exits with its code."""

    def __init__(self, signame: str):
        super().__init__(defaults.PREEMPTED_EXIT)
        self.signame = signame


def _handler(signum, frame) -> None:
    _state["signal"] = signal.Signals(signum).name


def install() -> bool:
    """Catch SIGUSR1 and SIGTERM from now on (main thread only); True if installed."""
    if _state["installed"]:
        return True
    if threading.current_thread() is not threading.main_thread():
        return False
    for name in SIGNALS:
        signal.signal(getattr(signal, name), _handler)
    _state["installed"] = True
    return True


def requested() -> str | None:
    """The signal that asked training to stop, if one came (for custom training loops too)."""
    return _state["signal"]


def check() -> None:
    """Raise Preempted if a stop signal came."""
    name = requested()
    if name is not None:
        log.warning("%s received: leaving training after the last finished epoch's backup; "
                    "exit %d (a requeued job resumes from there)", name, defaults.PREEMPTED_EXIT)
        raise Preempted(name)


class StopOnSignal(keras.callbacks.Callback):
    """Leave `fit` at the first batch (train or validation) after SIGUSR1/SIGTERM."""

    def __init__(self):
        super().__init__()
        install()

    def on_train_begin(self, logs=None):
        check()

    def on_train_batch_end(self, batch, logs=None):
        check()

    def on_test_batch_end(self, batch, logs=None):
        check()

    def on_epoch_end(self, epoch, logs=None):
        check()  # after BackupAndRestore (earlier in the list) has saved this epoch
