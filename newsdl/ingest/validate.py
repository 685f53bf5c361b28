"""Value checks on canonical batches, column-wise, and the shaping of the output tables.

Every check yields a mask over the batch; a row is rejected for the first check it fails,
so each rejected record carries exactly one reason.
"""

from __future__ import annotations

import datetime as _dt
import re
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from newsdl import defaults
from newsdl.ingest.images import ImageInfo, ImageRejected, check_image
from newsdl.ingest.readers import Batch, reject
from newsdl.ingest.schema import ARTICLES, IMAGE_OUT, IMAGES, SPLITS
from newsdl.ingest.split import split_of

# Image checks are file-system bound; threads overlap their waits.
_IMAGE_THREADS = 8

# Years a news article's date can have: digitised archives reach back into the 1800s, and past
# 2100 are placeholders (9999-12-31) or typos, which would skew every time-based split or plot.
_YEARS = (1800, 2100)

# Text of only these is empty to a reader: whitespace, and invisible format characters (zero-width
# space and joiners, word joiner, byte order mark, soft hyphen: Unicode category Cf). RE2 syntax.
_BLANK = r"^[\s\x{0B}\x{85}\p{Z}\p{Cf}]*$"

# ISO 8601 dates of reduced precision, "2014" and "2014-05", which fromisoformat refuses.
_REDUCED_DATE = re.compile(r"(\d{4})(?:-(\d{2}))?")


@dataclass
class Seen:
    """State that spans batches: ids already accepted, and images already checked."""
    ids: dict[str, str] = field(default_factory=dict)  # id -> "file:line N" of its first record
    images: dict[str, ImageInfo | ImageRejected] = field(default_factory=dict)


def _mask(array) -> np.ndarray:
    return np.asarray(pc.fill_null(array, False).to_numpy(zero_copy_only=False), dtype=bool)


def _value(table: pa.Table, name: str, i: int):
    return table.column(name)[i].as_py()


def _parse_date(text: str) -> _dt.datetime:
    value = text.strip()
    reduced = _REDUCED_DATE.fullmatch(value)
    if reduced:  # the start of that year or month
        return _dt.datetime(int(reduced[1]), int(reduced[2] or 1), 1, tzinfo=_dt.timezone.utc)
    if value.endswith(("Z", "z")):
        value = value[:-1] + "+00:00"
    parsed = _dt.datetime.fromisoformat(value)
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=_dt.timezone.utc)
    return parsed


def _published(column: pa.ChunkedArray) -> tuple[pa.Array, dict[int, str]]:
    """Timestamps in UTC; a date with no zone is taken as UTC. Returns the bad rows' reasons."""
    stamp = pa.timestamp("ms", tz="UTC")
    bad = {}
    try:
        stamps = pc.cast(column, stamp)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
        values = []
        for i, text in enumerate(column.to_pylist()):
            if text is None or not text.strip():
                values.append(None)
                continue
            try:
                values.append(_parse_date(text))
            except (ValueError, OverflowError):
                values.append(None)
                bad[i] = f"unparsable date {text!r}; expected ISO-8601"
        stamps = pa.array(values, stamp)
    first, last = _YEARS
    low = pa.scalar(_dt.datetime(first, 1, 1, tzinfo=_dt.timezone.utc), stamp)
    high = pa.scalar(_dt.datetime(last + 1, 1, 1, tzinfo=_dt.timezone.utc), stamp)
    implausible = _mask(pc.or_(pc.less(stamps, low), pc.greater_equal(stamps, high)))
    for i in np.flatnonzero(implausible):
        bad[int(i)] = f"implausible date {column[int(i)].as_py()!r}: the year is outside {first}-{last}"
    return stamps, bad


def _too_long(column) -> np.ndarray:
    """Rows whose string has more than MAX_TEXT_CHARS characters."""
    limit = defaults.MAX_TEXT_CHARS
    # A character is at least a byte, so the byte lengths (from the offsets alone) settle most batches.
    if not len(column) or (pc.max(pc.binary_length(column)).as_py() or 0) <= limit:
        return np.zeros(len(column), dtype=bool)
    return _mask(pc.greater(pc.utf8_length(column), limit))


def _too_long_in_lists(column, child: str | None = None) -> np.ndarray:
    """Rows with a string in their list (or in field ``child`` of its structs) over MAX_TEXT_CHARS."""
    values = pc.list_flatten(column)
    if child is not None:
        values = pc.struct_field(values, child)
    rows = np.zeros(len(column), dtype=bool)
    long = _too_long(values)
    if long.any():
        lengths = pc.fill_null(pc.list_value_length(column), 0).to_numpy(zero_copy_only=False)
        rows[np.repeat(np.arange(len(column)), lengths)[long]] = True
    return rows


def _length(table: pa.Table, name: str, i: int) -> str:
    return f"{len(_value(table, name, i)):,} characters"


def _value_checks(table: pa.Table) -> list[tuple[str, str, np.ndarray, callable]]:
    """(code, field, mask of failing rows, reason of row i) in the order they are applied."""
    ids, text = table.column("id"), table.column("text")
    lat, lon = table.column("lat"), table.column("lon")
    split = pc.utf8_lower(pc.utf8_trim_whitespace(table.column("split")))
    known_split = pc.is_in(split, value_set=pa.array(SPLITS))
    checks = [
        ("missing_id", "id", _mask(pc.is_null(ids)), lambda i: "missing id"),
        ("empty_id", "id", _mask(pc.equal(pc.utf8_trim_whitespace(ids), "")), lambda i: "empty id"),
        ("missing_text", "text", _mask(pc.is_null(text)), lambda i: "missing text"),
        ("empty_text", "text", _mask(pc.match_substring_regex(text, _BLANK)),
         lambda i: "empty text (only whitespace or invisible characters)"),
        ("text_too_long", "text", _too_long(text),
         lambda i: f"text of {_length(table, 'text', i)}; the limit is {defaults.MAX_TEXT_CHARS:,}"),
        ("geo_incomplete", "geo", _mask(pc.xor(pc.is_null(lat), pc.is_null(lon))),
         lambda i: "geo needs both lat and lon"),
    ]
    for name in ("id", "source", "url", "published", "title", "split", "extra"):
        checks.append(("string_too_long", name, _too_long(table.column(name)),
                       lambda i, n=name: f"{n} of {_length(table, n, i)}; the limit is {defaults.MAX_TEXT_CHARS:,}"))
    for name in ("path", "url", "caption"):
        checks.append(("string_too_long", f"images.{name}", _too_long_in_lists(table.column("images"), name),
                       lambda i, n=name: f"an image {n} over {defaults.MAX_TEXT_CHARS:,} characters"))
    checks.append(("string_too_long", "keywords", _too_long_in_lists(table.column("keywords")),
                   lambda i: f"a keyword over {defaults.MAX_TEXT_CHARS:,} characters"))
    for name, limit in (("lat", 90.0), ("lon", 180.0)):
        values = table.column(name)
        checks.append(("geo_nan", name, _mask(pc.is_nan(values)), lambda i, n=name: f"{n} is NaN"))
        checks.append(("geo_out_of_range", name, _mask(pc.greater(pc.abs(values), limit)),
                       lambda i, n=name, l=limit: f"{n} {_value(table, n, i)} is out of range [-{l:g}, {l:g}]"))
    for name in ("comments", "shares"):
        checks.append(("negative_popularity", f"popularity.{name}", _mask(pc.less(table.column(name), 0)),
                       lambda i, n=name: f"{n} is negative ({_value(table, n, i)})"))
    checks.append(("unknown_split", "split", _mask(pc.invert(pc.or_kleene(known_split, pc.is_null(split)))),
                   lambda i: f"unknown split {_value(table, 'split', i)!r}; expected train, val or test"))
    return checks


def check_batch(batch: Batch, seen: Seen, images_root: Path) -> tuple[pa.Table, pa.Table, list[dict]]:
    """Return (articles, images, rejects) for one batch; rejects include those of parsing."""
    table, n = batch.table, batch.table.num_rows
    # Ids are compared and kept stripped and NFC-normalised: " a", "a " and "a", or "é" composed
    # and decomposed, are one id to a reader, so the second of them is a duplicate.
    table = table.set_column(table.schema.get_field_index("id"), "id",
                             pc.utf8_normalize(pc.utf8_trim_whitespace(table.column("id")), form="NFC"))
    rejects = list(batch.rejects)
    bad = np.zeros(n, dtype=bool)

    def drop(rows, code, field, reason_of):
        for i in np.flatnonzero(rows & ~bad):
            rid = _value(table, "id", i)
            rejects.append(reject(batch.file, batch.kind, batch.locators[i], reason_of(i), code=code,
                                  field=field, record=batch.raw(i), id=rid))
            bad[i] = True

    for code, field_name, rows, reason_of in _value_checks(table):
        drop(rows, code, field_name, reason_of)

    published, bad_dates = _published(table.column("published"))
    if bad_dates:
        rows = np.zeros(n, dtype=bool)
        rows[list(bad_dates)] = True
        drop(rows, "bad_date", "published", lambda i: bad_dates[i])

    ids = table.column("id").to_pylist()
    dupes = np.zeros(n, dtype=bool)
    first_seen = {}
    for i in np.flatnonzero(~bad):
        where = seen.ids.get(ids[i])
        if where is not None:
            dupes[i] = True
            first_seen[i] = where
        else:
            seen.ids[ids[i]] = f"{batch.file}:{batch.kind} {batch.locators[i]}"
    drop(dupes, "duplicate_id", "id", lambda i: f"duplicate id {ids[i]!r}; the first, at {first_seen[i]}, is kept")

    keep = ~bad
    kept = pa.array(keep)
    table = table.filter(kept)
    published = published.filter(kept)
    locators = [loc for loc, k in zip(batch.locators, keep) if k]
    kept_ids = [i for i, k in zip(ids, keep) if k]
    splits = [s.strip().lower() if s else split_of(i)
              for i, s in zip(kept_ids, table.column("split").to_pylist())]
    split = pa.array(splits, pa.string())

    images_col, images, image_rejects = _images(table, split, batch, locators, seen, images_root)
    rejects.extend(image_rejects)

    articles = pa.Table.from_arrays([
        table.column("id"),
        pc.utf8_lower(pc.utf8_trim_whitespace(table.column("source"))),
        table.column("url"),
        published,
        table.column("title"),
        table.column("text"),
        images_col,
        table.column("lat"),
        table.column("lon"),
        table.column("comments"),
        table.column("shares"),
        table.column("keywords"),
        split,
        table.column("extra"),
        pa.array([batch.file] * table.num_rows, pa.string()),
        pa.array(locators, pa.int64()),
    ], schema=ARTICLES)
    return articles, images, rejects


def _check_all(paths: list[str], root: Path, seen: Seen) -> None:
    todo = [p for p in dict.fromkeys(paths) if p not in seen.images]
    if not todo:
        return

    def one(path):
        try:
            return path, check_image(root, path)
        except ImageRejected as exc:
            return path, exc

    with ThreadPoolExecutor(_IMAGE_THREADS) as pool:
        for path, result in pool.map(one, todo):
            seen.images[path] = result


def _images(table, split, batch, locators, seen, root):
    """The checked images: the articles' list column, the images table and the rejects."""
    column = table.column("images").combine_chunks() if table.num_rows else pa.array([], table.schema.field("images").type)
    column = pc.fill_null(column, pa.scalar([], column.type)) if column.null_count else column
    values = pc.list_flatten(column)
    parents = pc.list_parent_indices(column).to_numpy()
    offsets = column.offsets.to_numpy()
    index_in_article = np.arange(len(values)) - offsets[parents] if len(values) else np.zeros(0, np.int64)
    paths = values.field("path").to_pylist()
    ids = table.column("id").to_pylist()

    present = [p for p in paths if p]
    _check_all(present, root, seen)

    keep = np.zeros(len(values), dtype=bool)
    infos: list[ImageInfo | None] = []
    rejects = []
    for j, path in enumerate(paths):
        parent = parents[j]
        result = seen.images.get(path) if path else ImageRejected("image_no_path", "image has no path")
        if isinstance(result, ImageInfo):
            keep[j] = True
            infos.append(result)
            continue
        infos.append(None)
        rejects.append({**reject(batch.file, batch.kind, locators[parent], str(result), code=result.code,
                                 field=f"images[{index_in_article[j]}].path", id=ids[parent],
                                 record=values[j].as_py()), "image": path})

    kept_rows = np.flatnonzero(keep)
    image_ids = [f"{ids[parents[j]]}#{index_in_article[j]}" for j in kept_rows]
    kept_values = values.filter(pa.array(keep))
    kept_infos = [infos[j] for j in kept_rows]
    out_values = pa.StructArray.from_arrays(
        [pa.array(image_ids, pa.string()), pa.array([i.path for i in kept_infos], pa.string()),
         kept_values.field("url"), kept_values.field("caption")],
        fields=list(IMAGE_OUT))
    counts = np.bincount(parents[kept_rows], minlength=table.num_rows) if len(kept_rows) else np.zeros(table.num_rows, np.int64)
    new_offsets = np.concatenate([[0], np.cumsum(counts)]).astype(np.int32)
    images_col = pa.ListArray.from_arrays(pa.array(new_offsets), out_values, type=pa.list_(IMAGE_OUT))

    parent_of_kept = parents[kept_rows]
    images = pa.Table.from_arrays([
        pa.array(image_ids, pa.string()),
        pa.array([ids[p] for p in parent_of_kept], pa.string()),
        pa.array([i.path for i in kept_infos], pa.string()),
        kept_values.field("url"),
        kept_values.field("caption"),
        split.take(pa.array(parent_of_kept, pa.int64())) if len(parent_of_kept) else pa.array([], pa.string()),
        pa.array([i.width for i in kept_infos], pa.int32()),
        pa.array([i.height for i in kept_infos], pa.int32()),
        pa.array([i.format for i in kept_infos], pa.string()),
        pa.array([i.bytes for i in kept_infos], pa.int64()),
        pa.array([i.mtime_ns for i in kept_infos], pa.int64()),
    ], schema=IMAGES)
    return images_col, images, rejects
