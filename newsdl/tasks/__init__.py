"""The tasks: geolocation, source, popularity (per article), caption and illustrate (per image),
trained, evaluated and used by `newsdl train / evaluate / predict TASK`.

Each task is one module holding one `newsdl.tasks.task.Task` subclass, instantiated as ``TASK``
and named in REGISTRY. The drivers (train.py, evaluate.py, predict.py) and the one training loop
(loop.py) read only that shape, so adding a sixth task is:

1. a module ``newsdl/tasks/NAME.py`` with ``class Name(Task)`` (or ``ArticleTask``, which brings
   the article features, the split and the linear start of articles.py) that sets the settings'
   defaults and implements load, build, losses, evaluate and predict (validate and save when it
   has val values beyond its losses or fitted files), and ``TASK = Name()``;
2. one line in REGISTRY below.

The Python API, for `newsdl demo`, HPC jobs and scripts:
- ``train_task(ws, task, *, features=None, force=False, **settings) -> dict``;
- ``evaluate_task(ws, task, *, force=False, **options) -> dict``: metrics.json's content;
- ``predict_task(ws, task, input_path, *, out=None, images_root=None, **options) -> dict``;
- ``format_table(metrics) -> str``; ``get(name) -> Task``; ``TASKS``: the names.

Attributes load on first use: importing this package costs neither TensorFlow's nor sklearn's
import time.
"""

from __future__ import annotations

import importlib

from newsdl.errors import UserError

REGISTRY = {
    "geoloc": "newsdl.tasks.geoloc",
    "source": "newsdl.tasks.source",
    "popularity": "newsdl.tasks.popularity",
    "caption": "newsdl.tasks.caption",
    "illustrate": "newsdl.tasks.illustrate",
}
TASKS = tuple(REGISTRY)

_EXPORTS = {
    "train_task": "newsdl.tasks.train",
    "evaluate_task": "newsdl.tasks.evaluate",
    "format_table": "newsdl.tasks.evaluate",
    "predict_task": "newsdl.tasks.predict",
}
__all__ = ["TASKS", "REGISTRY", "get", *_EXPORTS]


def get(name: str):
    """The Task named ``name`` (UserError for an unknown name)."""
    if name not in REGISTRY:
        raise UserError(f"TASK {name!r}: unknown; choose one of {', '.join(TASKS)}")
    return importlib.import_module(REGISTRY[name]).TASK


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
