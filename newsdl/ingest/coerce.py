"""Record-by-record conversion of a parsed record into the canonical row, for inputs that
the column-wise path can't take (JSON arrays, CSV, Parquet, and JSONL blocks with a bad line).

Types are checked here, and what would break a writer or a parser: invalid UTF-8 (lone
surrogates) and nesting past MAX_JSON_DEPTH. Values (ranges, empties, lengths, duplicates) are
checked column-wise for every path alike in ``validate``.
"""

from __future__ import annotations

import json
import math
import re
from typing import Any

import numpy as np

from newsdl import defaults
from newsdl.ingest.schema import INPUT_FIELDS


class FieldError(ValueError):
    def __init__(self, field: str, reason: str, code: str = "wrong_type"):
        super().__init__(reason)
        self.field = field
        self.reason = reason
        self.code = code


_STRINGS = ("id", "source", "url", "published", "title", "text", "split")

# Readers decode bytes with errors="surrogateescape", so invalid UTF-8 shows up here as lone
# surrogates (as do JSON escapes like "\ud800"); neither can be written to Parquet.
_SURROGATE = re.compile("[\ud800-\udfff]")
_ESCAPE = re.compile(rb"\\.", re.DOTALL)


def has_surrogates(text: str) -> bool:
    """True if ``text`` holds a lone surrogate: invalid UTF-8 in the input, or a "\\ud800"-style escape."""
    return not text.isascii() and _SURROGATE.search(text) is not None


def printable(text: str) -> str:
    """``text`` with its lone surrogates shown as the bytes they stand for (or U+FFFD), so it can be written."""
    if not has_surrogates(text):
        return text
    try:
        return text.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
    except UnicodeEncodeError:  # a surrogate from a JSON escape, not from undecodable bytes
        return text.encode("utf-8", "surrogatepass").decode("utf-8", "replace")


def json_depth(data: bytes | str) -> int:
    """The deepest nesting of arrays and objects in JSON text, brackets inside strings aside.

    Vectorised, so an 8 MiB line of brackets costs milliseconds; text that is not valid JSON gets
    an estimate, which is enough: such text is rejected as unparsable anyway.
    """
    if isinstance(data, str):
        data = data.encode("utf-8", "surrogatepass")
    if b"\\" in data:  # an escaped quote does not end its string
        data = _ESCAPE.sub(b"", data)
    arr = np.frombuffer(data, np.uint8)
    folded = arr | 0x20  # "[" and "{" both fold to 0x7B, "]" and "}" to 0x7D
    pos = np.flatnonzero((folded == 0x7B) | (folded == 0x7D) | (arr == 0x22))
    if not len(pos):
        return 0
    kind = arr[pos]
    quote = kind == 0x22
    inside = (np.cumsum(quote, dtype=np.int64) - quote) % 2 == 1
    step = np.where(folded[pos] == 0x7B, 1, -1).astype(np.int32)
    step[quote | inside] = 0
    return int(np.cumsum(step, dtype=np.int32).max(initial=0))


def deeper_than(data: bytes | str, limit: int = defaults.MAX_JSON_DEPTH) -> bool:
    """True if JSON ``data`` nests deeper than ``limit``; exact, and cheap for the usual record."""
    # Each level opens with a bracket, so few brackets settle it without looking at strings.
    square, curly = (b"[", b"{") if isinstance(data, bytes) else ("[", "{")
    if data.count(square) + data.count(curly) <= limit:
        return False
    return json_depth(data) > limit


def _type_name(value: Any) -> str:
    return "null" if value is None else type(value).__name__


def _string(value: Any, field: str) -> str | None:
    if value is None or isinstance(value, str):
        return value
    raise FieldError(field, f"wrong type: expected a string, got {_type_name(value)}")


def _number(value: Any, field: str) -> float | None:
    if value is None or value == "":
        return None
    if isinstance(value, bool):
        raise FieldError(field, "wrong type: expected a number, got bool")
    if isinstance(value, (int, float)):
        return float(value)
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            raise FieldError(field, f"wrong type: expected a number, got {value!r}") from None
    raise FieldError(field, f"wrong type: expected a number, got {_type_name(value)}")


def _count(value: Any, field: str) -> int | None:
    if isinstance(value, int) and not isinstance(value, bool):
        count = value
    else:
        number = _number(value, field)
        if number is None:
            return None
        if math.isnan(number) or math.isinf(number) or number != int(number):
            raise FieldError(field, f"wrong type: expected a whole number, got {value!r}")
        count = int(number)
    if not -2**63 <= count < 2**63:
        raise FieldError(field, f"{count} does not fit a 64-bit count", code="out_of_range")
    return count


def maybe_json(value: Any, field: str) -> Any:
    """CSV cells hold nested fields as JSON text: ``value`` parsed when it is such text, else as is."""
    if isinstance(value, str) and value[:1] in ("[", "{"):
        if deeper_than(value):
            raise FieldError(field, f"nested deeper than {defaults.MAX_JSON_DEPTH} levels", code="too_deep")
        try:
            return json.loads(value)
        except json.JSONDecodeError as exc:
            raise FieldError(field, f"unparsable JSON in a nested field: {exc.msg}") from None
    return value


def _images(value: Any) -> list[dict] | None:
    value = maybe_json(value, "images")
    if value is None or value == "":
        return None
    if not isinstance(value, list):
        raise FieldError("images", f"wrong type: expected a list, got {_type_name(value)}")
    images = []
    for k, item in enumerate(value):
        if isinstance(item, str):
            item = {"path": item}
        if not isinstance(item, dict):
            raise FieldError(f"images[{k}]", f"wrong type: expected an object, got {_type_name(item)}")
        images.append({key: _string(item.get(key), f"images[{k}].{key}") for key in ("path", "url", "caption")})
    return images


def _keywords(value: Any) -> list[str] | None:
    value = maybe_json(value, "keywords")
    if value is None or value == "":
        return None
    if isinstance(value, str):
        return [k.strip() for k in value.split(";") if k.strip()]
    if not isinstance(value, list):
        raise FieldError("keywords", f"wrong type: expected a list of strings, got {_type_name(value)}")
    return [_string(k, f"keywords[{i}]") for i, k in enumerate(value)]


def holds_surrogates(value: Any) -> bool:
    """True if a string anywhere in a parsed record holds a lone surrogate (a key of a null aside:
    it holds no data, and is not kept)."""
    if isinstance(value, str):
        return has_surrogates(value)
    if isinstance(value, dict):
        return any(v is not None and (holds_surrogates(k) or holds_surrogates(v)) for k, v in value.items())
    if isinstance(value, list):
        return any(holds_surrogates(v) for v in value)
    return False


def _surrogate_field(row: dict, extra: dict) -> str | None:
    """The first field of a canonical row with a lone surrogate, named as in the input."""
    for name in _STRINGS:
        if row[name] is not None and has_surrogates(row[name]):
            return name
    for k, image in enumerate(row["images"] or ()):
        for key, value in image.items():
            if value is not None and has_surrogates(value):
                return f"images[{k}].{key}"
    for k, keyword in enumerate(row["keywords"] or ()):
        if keyword is not None and has_surrogates(keyword):
            return f"keywords[{k}]"
    if row["extra"] is not None and has_surrogates(row["extra"]):
        return printable(next((str(k) for k, v in extra.items() if holds_surrogates(k) or holds_surrogates(v)),
                              "extra"))
    return None


def canonical_row(record: Any, *, check_utf8: bool = False) -> dict:
    """Map a parsed record (already renamed by --map) onto the canonical columns.

    ``check_utf8``: the reader saw invalid UTF-8 or a surrogate escape in the record, so its
    strings may hold lone surrogates; the first field that does is rejected (bad_utf8).
    """
    if not isinstance(record, dict):
        raise FieldError("", f"not a JSON object but {_type_name(record)}", code="not_an_object")
    row: dict[str, Any] = {name: _string(record.get(name), name) for name in _STRINGS}

    geo = maybe_json(record.get("geo"), "geo")
    lat, lon = record.get("lat"), record.get("lon")
    if geo not in (None, ""):
        if not isinstance(geo, dict):
            raise FieldError("geo", f"wrong type: expected an object {{lat, lon}}, got {_type_name(geo)}")
        lat, lon = geo.get("lat", lat), geo.get("lon", lon)
    row["lat"] = _number(lat, "lat")
    row["lon"] = _number(lon, "lon")

    popularity = maybe_json(record.get("popularity"), "popularity")
    comments, shares = record.get("comments"), record.get("shares")
    if popularity not in (None, ""):
        if not isinstance(popularity, dict):
            raise FieldError("popularity", f"wrong type: expected an object, got {_type_name(popularity)}")
        comments, shares = popularity.get("comments", comments), popularity.get("shares", shares)
    row["comments"] = _count(comments, "popularity.comments")
    row["shares"] = _count(shares, "popularity.shares")

    row["images"] = _images(record.get("images"))
    row["keywords"] = _keywords(record.get("keywords"))
    known = set(INPUT_FIELDS) | {"comments", "shares"}
    extra = {k: v for k, v in record.items() if k not in known and v is not None}
    row["extra"] = json.dumps(extra, ensure_ascii=False, default=str) if extra else None
    if check_utf8:
        bad = _surrogate_field(row, extra)
        if bad is not None:
            raise FieldError(bad, "invalid UTF-8 (or a lone surrogate escape)", code="bad_utf8")
    return row
