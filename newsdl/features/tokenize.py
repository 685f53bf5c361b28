"""The one tokenizer. word2vec training, the per-article features and `newsdl predict` all call
`tokenize`, so a word is the same token everywhere."""

from __future__ import annotations

import re
import unicodedata
from pathlib import Path

from newsdl.errors import UserError

# Apostrophe look-alikes fold to ASCII, so "don’t" and "don't" are one token.
_QUOTES = str.maketrans({"\u2019": "'", "\u2018": "'", "\u02bc": "'", "\uff07": "'"})
# A possessive 's would give every name a second, rarer vocabulary entry.
_POSSESSIVE = re.compile(r"'s\b")
# Every decimal digit, in any script, becomes '#': "2016" and "1999" share the token "####", and
# the result matches the GoogleNews-300 vocabulary, which was built the same way.
_DIGIT = re.compile(r"\d")
# A number with separators ("#,###.#"), or a run of letters, digits and '#' with inner apostrophes.
_TOKEN = re.compile(r"#+(?:[.,]#+)+|(?:[^\W_]|#)+(?:'(?:[^\W_]|#)+)*")


def normalize(text: str) -> str:
    """Unicode NFKC, lower case, ASCII apostrophes, digits as '#': what both a text and a
    pretrained vector's key go through before they are compared."""
    text = unicodedata.normalize("NFKC", text).lower().translate(_QUOTES)
    return _DIGIT.sub("#", text)


def tokenize(text: str | None, stopwords: frozenset[str] | None = None) -> list[str]:
    """Lower-case, Unicode-aware word tokens of ``text``, numbers normalised, stop words dropped."""
    if not text:
        return []
    tokens = _TOKEN.findall(_POSSESSIVE.sub("", normalize(text)))
    if stopwords:
        return [t for t in tokens if t not in stopwords]
    return tokens


def article_text(title: str | None, text: str | None) -> str:
    """The text an article is featurized from: the headline is part of what it says."""
    return f"{title}\n{text or ''}" if title else (text or "")


def load_stopwords(spec: str | None) -> frozenset[str] | None:
    """``None``/"none": no stop words; "english": gensim's list; else a file, one word a line."""
    if spec is None or spec == "none":
        return None
    if spec == "english":
        from gensim.parsing.preprocessing import STOPWORDS
        words = STOPWORDS
    else:
        path = Path(spec).expanduser()
        try:
            words = path.read_text(encoding="utf-8").splitlines()
        except (OSError, UnicodeDecodeError) as exc:
            raise UserError(f"--stopwords {spec}: cannot read the stop-word file ({exc})") from None
    # Stop words go through the same tokenizer, so "Don’t" in the list still matches "don't".
    return frozenset(t for w in words for t in tokenize(w))
