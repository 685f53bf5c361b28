"""Task heads: geolocation, source and popularity, and the image-and-text tasks caption and
illustrate (newsdl.tasks.caption, newsdl.tasks.illustrate) (`newsdl train / evaluate / predict`).

The Python API, for `newsdl demo`, HPC jobs and scripts:

- ``train_task(ws, task, *, features=None, force=False, head=None, epochs=None, batch_size=None,
  lr=None, seed=None, patience=None) -> dict``: train (or resume, or skip when up to date);
- ``evaluate_task(ws, task, *, force=False) -> dict``: metrics.json's content (model and baselines);
- ``predict_task(ws, task, input_path, *, out=None, images_root=None) -> dict``;
- ``format_table(metrics) -> str``: the comparison table `newsdl evaluate` prints;
- ``TASKS``: the task names.

Attributes load on first use: importing this package costs neither TensorFlow's nor sklearn's
import time.
"""

from __future__ import annotations

import importlib

from newsdl.defaults import TASKS

_EXPORTS = {
    "train_task": "newsdl.tasks.train",
    "evaluate_task": "newsdl.tasks.evaluate",
    "format_table": "newsdl.tasks.evaluate",
    "predict_task": "newsdl.tasks.predict",
}
__all__ = ["TASKS", *_EXPORTS]


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
