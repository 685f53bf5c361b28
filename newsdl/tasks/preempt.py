"""Stop training cleanly when the scheduler says the job is about to end.

SLURM sends SIGUSR1 ahead of the time limit or a preemption (the job scripts ask for
``--signal=B:USR1@120`` and forward it), and SIGTERM when it ends the job. Either one sets a
flag; the training loop (loop.py) reads it at every step and leaves by raising ``Preempted``, a
SystemExit with status defaults.PREEMPTED_EXIT, which the job script reads as "checkpointed,
requeue me". Raising skips the cut epoch's history row and checkpoint: the checkpoint stays that
of the last finished epoch, and the requeued run resumes after it, losing at most the epoch that
was running, never a finished one.
"""

from __future__ import annotations

import logging
import signal
import threading

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
