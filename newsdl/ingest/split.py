"""The deterministic train/val/test split of records that don't name their own."""

from __future__ import annotations

import hashlib

from newsdl import defaults


def split_of(article_id: str, fractions=defaults.SPLIT_FRACTIONS) -> str:
    """Split from a SHA-1 of the id: the same on every machine, Python version and run
    (unlike ``hash()``, which is salted per process)."""
    point = int.from_bytes(hashlib.sha1(article_id.encode("utf-8")).digest()[:8], "big") / 2**64
    edge = 0.0
    for name, fraction in fractions:
        edge += fraction
        if point < edge:
            return name
    return fractions[-1][0]
