"""Text and image features of the articles (`newsdl featurize`).

The public API, for `newsdl demo`, `newsdl predict` and scripts:

- ``run_featurize(workspace, *, text, images, shard, merge, ...) -> dict``: the stage;
- ``merge_shards(workspace) -> dict``: check the image shards cover every image once;
- ``newsdl.features.tokenize.tokenize(text, stopwords=None) -> list[str]``: the one tokenizer;
- ``load_text_featurizer(workspace)`` and ``load_image_featurizer(workspace)``: featurize new
  articles exactly as the corpus was.

Attributes load on first use, so that importing this package (as the CLI does for `--help`)
costs neither TensorFlow's nor gensim's import time.
"""

from __future__ import annotations

import importlib

_EXPORTS = {
    "run_featurize": "newsdl.features.run",
    "merge_shards": "newsdl.features.run",
    "load_text_featurizer": "newsdl.features.run",
    "load_image_featurizer": "newsdl.features.run",
}
__all__ = list(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
