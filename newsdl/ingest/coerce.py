"""Record-by-record conversion of a parsed record into the canonical row, for inputs that
the column-wise path can't take (JSON arrays, CSV, Parquet, and JSONL blocks with a bad line).

Only types are checked here; values (ranges, empties, duplicates) are checked column-wise
for every path alike in ``validate``.
"""

from __future__ import annotations

import json
import math
from typing import Any

from newsdl.ingest.schema import INPUT_FIELDS


class FieldError(ValueError):
    def __init__(self, field: str, reason: str, code: str = "wrong_type"):
        super().__init__(reason)
        self.field = field
        self.reason = reason
        self.code = code


_STRINGS = ("id", "source", "url", "published", "title", "text", "split")


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


def _maybe_json(value: Any, field: str) -> Any:
    """CSV cells hold nested fields as JSON text."""
    if isinstance(value, str) and value[:1] in "[{":
        try:
            return json.loads(value)
        except json.JSONDecodeError as exc:
            raise FieldError(field, f"unparsable JSON in a nested field: {exc.msg}") from None
    return value


def _images(value: Any) -> list[dict] | None:
    value = _maybe_json(value, "images")
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
    value = _maybe_json(value, "keywords")
    if value is None or value == "":
        return None
    if isinstance(value, str):
        return [k.strip() for k in value.split(";") if k.strip()]
    if not isinstance(value, list):
        raise FieldError("keywords", f"wrong type: expected a list of strings, got {_type_name(value)}")
    return [_string(k, f"keywords[{i}]") for i, k in enumerate(value)]


def canonical_row(record: Any) -> dict:
    """Map a parsed record (already renamed by --map) onto the canonical columns."""
    if not isinstance(record, dict):
        raise FieldError("", f"not a JSON object but {_type_name(record)}", code="not_an_object")
    row: dict[str, Any] = {name: _string(record.get(name), name) for name in _STRINGS}

    geo = _maybe_json(record.get("geo"), "geo")
    lat, lon = record.get("lat"), record.get("lon")
    if geo not in (None, ""):
        if not isinstance(geo, dict):
            raise FieldError("geo", f"wrong type: expected an object {{lat, lon}}, got {_type_name(geo)}")
        lat, lon = geo.get("lat", lat), geo.get("lon", lon)
    row["lat"] = _number(lat, "lat")
    row["lon"] = _number(lon, "lon")

    popularity = _maybe_json(record.get("popularity"), "popularity")
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
    return row
