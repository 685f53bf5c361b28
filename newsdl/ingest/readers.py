"""Readers: every input format becomes a stream of canonical batches.

JSONL goes through pyarrow's parser a block at a time (column-wise, the fast path). A block
that pyarrow refuses, and every other format, goes record by record through ``coerce``.
Either way a batch carries the canonical table, the record locators (1-based line or row)
and the records rejected while parsing, so nothing is lost between the two paths.

Input is untrusted. Each reader first splits its file into records at the byte level, so a bad
record (invalid UTF-8, nested past MAX_JSON_DEPTH, longer than MAX_LINE_BYTES, unparsable) is
rejected on its own while the records around it are kept, and no record holds more than about
MAX_LINE_BYTES in memory. Gzip input is decompressed under a budget (MAX_GZIP_RATIO); damage to it
is a UserError naming the file, except a stream cut short, whose complete records are kept.
"""

from __future__ import annotations

import csv
import datetime as _dt
import io
import json
import os
import re
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.json as pj
import pyarrow.parquet as pq

from newsdl import defaults
from newsdl.errors import UserError
from newsdl.ingest.coerce import FieldError, canonical_row, deeper_than, holds_surrogates, maybe_json, printable
from newsdl.ingest.schema import CANONICAL, IMAGE_IN, INPUT_SCHEMA

FORMATS = {".jsonl": "jsonl", ".ndjson": "jsonl", ".json": "json", ".csv": "csv", ".parquet": "parquet",
           ".pq": "parquet"}
_FLAT_ALIASES = pa.schema([("comments", pa.int64()), ("shares", pa.int64())])
_BOM = b"\xef\xbb\xbf"
_SURROGATE_ESCAPE = re.compile(rb"\\u[dD][89a-fA-F]")
# Bytes of a record too long or too deep to keep that rejected.jsonl shows, to identify it.
_PREVIEW_BYTES = 200
# Bytes read at a time by the JSON-array and CSV splitters: their numpy scans make a few
# temporaries of this size, so it stays well under INGEST_BLOCK_BYTES.
_SCAN_BLOCK = 4 << 20
# Compressed bytes handed to zlib at a time; output per call is capped by the caller's request.
_GZIP_CHUNK = 1 << 16


@dataclass
class Batch:
    file: str
    kind: str  # "line" or "row": what the locators count
    table: pa.Table  # CANONICAL
    locators: list[int]
    raw: Callable[[int], Any]  # the record as read, for rejected.jsonl
    rejects: list[dict] = field(default_factory=list)
    read: int = 0  # records read, rejected ones included


def _clean(value: Any) -> Any:
    if isinstance(value, str):
        return printable(value)
    if isinstance(value, dict):
        return {_clean(k): _clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_clean(v) for v in value]
    return value


def reject(file: str, kind: str, locator: int, reason: str, *, code: str, field: str = "", record: Any = None,
           id: Any = None) -> dict:
    """One line of rejected.jsonl; ``code`` is the reason's name, counted in the manifest."""
    # Invalid UTF-8 reaches here as lone surrogates, which no UTF-8 writer accepts.
    return {"file": _clean(file), kind: locator, "id": _clean(id), "field": _clean(field), "code": code,
            "reason": _clean(reason), "record": _clean(record)}


class _Rejected(Exception):
    """A record refused before it became a row: raised by a parse function, or yielded in its place."""

    def __init__(self, code: str, reason: str, *, field: str = "", record: Any = None):
        super().__init__(reason)
        self.code, self.reason, self.field, self.record = code, reason, field, record

    def as_reject(self, file: str, kind: str, locator: int) -> dict:
        return reject(file, kind, locator, self.reason, code=self.code, field=self.field, record=self.record)


def _preview(data: bytes) -> str:
    head = data[:_PREVIEW_BYTES].decode("utf-8", "replace")
    return head + "…" if len(data) > _PREVIEW_BYTES else head


def _lost_tail(kind: str, exc: Exception) -> _Rejected:
    return _Rejected("truncated", f"the rest of the file from this {kind} on is lost: {exc}")


def detect_format(path: Path) -> str:
    suffixes = [s.lower() for s in path.suffixes]
    if suffixes and suffixes[-1] == ".gz":
        suffixes = suffixes[:-1]
    fmt = FORMATS.get(suffixes[-1]) if suffixes else None
    if fmt is None:
        raise UserError(f"{path}: unknown input format; expected .jsonl, .jsonl.gz, .json, .csv or .parquet")
    return fmt


# ---------------------------------------------------------------- opening a file

class TruncatedInput(UserError):
    """A compressed file that ends mid-stream. Everything before the cut has been read; readers
    reject the rest as one record, and a caller that does not catch this exits 2 with its message."""


class _GzipInput:
    """A .gz file through zlib: ``read(n)`` like a binary file, with the output bounded.

    gzip.GzipFile raises EOFError (which click turns into "Aborted.") on a cut stream, loses the
    bytes decompressed in the same call, and has no bound against a bomb; this reader gives every
    byte before a cut, then raises TruncatedInput, and refuses output past the budget.
    """

    def __init__(self, path: Path):
        self._path = path
        self._fh = open(path, "rb")
        self._size = os.fstat(self._fh.fileno()).st_size
        self._budget = max(defaults.MAX_GZIP_FLOOR_BYTES, defaults.MAX_GZIP_RATIO * self._size)
        self._out = 0
        self._z = None  # the decompressor of the current member; None between members
        self._input = b""  # compressed bytes read, not yet through zlib
        self._flushed = False
        self._error: Exception | None = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self._fh.close()

    def read(self, n: int) -> bytes:
        parts, have = [], 0
        while have < n and self._error is None:
            try:
                piece = self._decompress(n - have)
            except TruncatedInput as exc:
                self._error = exc  # raised once the bytes before the cut are handed out
                break
            if piece is None:
                break
            parts.append(piece)
            have += len(piece)
        if not parts and self._error is not None:
            raise self._error
        return b"".join(parts)

    def _decompress(self, limit: int) -> bytes | None:
        """Up to ``limit`` bytes (maybe none, between members), or None at the end of the file."""
        if self._z is None:
            self._input = self._input.lstrip(b"\0")  # zero padding between members, as gzip allows
            while not self._input:
                raw = self._fh.read(_GZIP_CHUNK)
                if not raw:
                    return None
                self._input = raw.lstrip(b"\0")
            self._z = zlib.decompressobj(16 + zlib.MAX_WBITS)
            self._flushed = False
        if not self._input:
            self._input = self._fh.read(_GZIP_CHUNK)
        try:
            if self._input:
                out = self._z.decompress(self._input, limit)
            elif not self._flushed:
                self._flushed = True
                out = self._z.flush()
            else:
                raise TruncatedInput(f"{self._path}: the gzip stream ends early after {self._out:,} bytes "
                                     "(a truncated file?)")
        except zlib.error as exc:
            raise UserError(f"{self._path}: not gzip data, or damaged ({exc})") from None
        if self._z.eof:
            self._input, self._z = self._z.unused_data, None
        else:
            self._input = self._z.unconsumed_tail
        self._out += len(out)
        if self._out > self._budget:
            raise UserError(f"{self._path}: decompresses to more than {self._budget:,} bytes, the most allowed "
                            f"for {self._size:,} compressed bytes ({defaults.MAX_GZIP_RATIO}x, at least "
                            f"{defaults.MAX_GZIP_FLOOR_BYTES:,}): refused as a likely decompression bomb")
        return out


def _open(path: Path):
    return _GzipInput(path) if path.suffix.lower() == ".gz" else open(path, "rb")


class Renamer:
    """Applies ``--map NEW=OLD``. A field shadowed by a mapping keeps its value in ``extra``.

    NEW and OLD may be dotted paths: OLD into the input record's nested objects (a CSV cell's JSON
    text included; a key that itself holds the dots is taken first), NEW into the article's
    (``geo.lat``, ``popularity.comments``). A mapped value leaves its old place, so it is not kept
    twice in ``extra``; an OLD path a record lacks leaves the field absent.
    """

    def __init__(self, mapping: dict[str, str]):
        self.mapping = dict(mapping)
        self.old_to_new = {old: new for new, old in mapping.items()}
        self.shadowed = set(mapping) - set(mapping.values())
        # pyarrow's column-wise parse renames top-level columns only: dotted paths go record by record.
        self.nested = any("." in path for pair in mapping.items() for path in pair)

    def record(self, record: Any) -> Any:
        """The record renamed; raises FieldError for a path through a CSV cell that is not JSON."""
        if not isinstance(record, dict) or not self.old_to_new:
            return record
        if self.nested:
            return self._record_paths(record)
        renamed, shadowed = {}, {}
        for key, value in record.items():
            if key in self.old_to_new:
                renamed[self.old_to_new[key]] = value
            elif key in self.shadowed:
                shadowed[key] = value
            else:
                renamed[key] = value
        for key, value in shadowed.items():
            renamed[f"{key} (unmapped)"] = value
        return renamed

    def _record_paths(self, record: dict) -> dict:
        found = {new: value for new, old in self.mapping.items()
                 if (value := _get_path(record, old)) is not _MISSING}
        out = record
        for old in self.mapping.values():
            out = _without_path(out, old)
        for new in self.shadowed:
            value = _get_path(out, new)
            if value is not _MISSING:
                out = {**_without_path(out, new), f"{new} (unmapped)": value}
        for new, value in found.items():
            out = _with_path(out, new, value)
        return out

    def parse_schema(self) -> pa.Schema:
        fields = [pa.field(self._old(f.name), f.type) for f in list(INPUT_SCHEMA) + list(_FLAT_ALIASES)]
        return pa.schema(fields)

    def _old(self, new: str) -> str:
        return next((old for old, n in self.old_to_new.items() if n == new), new)

    def table(self, table: pa.Table) -> pa.Table:
        names = []
        for name in table.column_names:
            if name in self.old_to_new:
                names.append(self.old_to_new[name])
            elif name in self.shadowed:
                names.append(f"{name} (unmapped)")
            else:
                names.append(name)
        return table.rename_columns(names)


_MISSING = object()


def _get_path(record: dict, path: str) -> Any:
    """The value at a dotted ``path`` of ``record``, or _MISSING."""
    if path in record:
        return record[path]
    node: Any = record
    for key in path.split("."):
        node = maybe_json(node, path)
        if not isinstance(node, dict) or key not in node:
            return _MISSING
        node = node[key]
    return node


def _without_path(record: dict, path: str) -> dict:
    """``record`` without the value at ``path`` (a copy; the parents it empties go too)."""
    if path in record:
        return {k: v for k, v in record.items() if k != path}
    head, _, rest = path.partition(".")
    if not rest or head not in record:
        return record
    child = maybe_json(record[head], path)
    if not isinstance(child, dict) or _get_path(child, rest) is _MISSING:
        return record
    child = _without_path(child, rest)
    return {k: v for k, v in record.items() if k != head} if not child else {**record, head: child}


def _with_path(record: dict, path: str, value: Any) -> dict:
    """``record`` with ``value`` at ``path`` (a copy). A parent that is not an object keeps its
    value under "NAME (unmapped)", as a shadowed field does."""
    head, _, rest = path.partition(".")
    if not rest:
        return {**record, head: value}
    parent = maybe_json(record.get(head), head)
    out = dict(record)
    if parent is None:
        parent = {}
    elif not isinstance(parent, dict):
        out[f"{head} (unmapped)"] = parent
        parent = {}
    out[head] = _with_path(parent, rest, value)
    return out


# ---------------------------------------------------------------- the column-wise path

def _coalesce(*arrays):
    present = [a for a in arrays if a is not None]
    if not present:
        return None
    return pc.coalesce(*present) if len(present) > 1 else present[0]


def canonical_from_arrow(table: pa.Table) -> pa.Table:
    """The canonical table from one parsed (and renamed) JSONL block."""
    n = table.num_rows
    names = set(table.column_names)

    def col(name):
        return table.column(name) if name in names else None

    def nested(name, child):
        return pc.struct_field(table.column(name), child) if name in names else None

    columns = {}
    for name in ("id", "source", "url", "published", "title", "text"):
        columns[name] = col(name)
    columns["images"] = pc.cast(col("images"), pa.list_(IMAGE_IN)) if "images" in names else None
    columns["lat"] = _coalesce(nested("geo", "lat"), col("lat"))
    columns["lon"] = _coalesce(nested("geo", "lon"), col("lon"))
    columns["comments"] = _coalesce(nested("popularity", "comments"), col("comments"))
    columns["shares"] = _coalesce(nested("popularity", "shares"), col("shares"))
    columns["keywords"] = col("keywords")
    columns["split"] = col("split")

    known = set(INPUT_SCHEMA.names) | set(_FLAT_ALIASES.names)
    unknown = [c for c in table.column_names if c not in known]
    extra = None
    if unknown:
        rows = table.select(unknown).to_pylist()
        extra = pa.array([_extra_json(r) for r in rows], pa.string())
    columns["extra"] = extra

    arrays = []
    for f in CANONICAL:
        value = columns[f.name]
        arrays.append(pa.nulls(n, f.type) if value is None else value.cast(f.type))
    return pa.Table.from_arrays(arrays, schema=CANONICAL)


def _extra_json(row: dict) -> str | None:
    kept = {k: v for k, v in row.items() if v is not None}
    return json.dumps(kept, ensure_ascii=False, default=str) if kept else None


def _arrow_row(table: pa.Table, i: int) -> dict:
    return {k: v for k, v in table.slice(i, 1).to_pylist()[0].items() if v is not None}


def _one_reject(name: str, kind: str, locator: int, rejected: _Rejected) -> Batch:
    return Batch(name, kind, CANONICAL.empty_table(), [], lambda i: None, [rejected.as_reject(name, kind, locator)],
                 read=1)


def read_jsonl(path: Path, renamer: Renamer, block_bytes: int = defaults.INGEST_BLOCK_BYTES) -> Iterator[Batch]:
    name = str(path)
    limit = defaults.MAX_LINE_BYTES
    parse_options = pj.ParseOptions(explicit_schema=renamer.parse_schema(), unexpected_field_behavior="infer")
    read_options = pj.ReadOptions(use_threads=True, block_size=4 << 20)
    lines_before = 0
    carry = b""
    long_head, long_size = None, 0  # a line over the limit, being read past without keeping it
    first = True
    with _open(path) as fh:
        while True:
            try:
                data = fh.read(block_bytes)
            except TruncatedInput as exc:
                yield _one_reject(name, "line", lines_before + 1, _lost_tail("line", exc))
                return
            if first:
                data, first = data.removeprefix(_BOM), False
            eof = not data
            if long_head is not None:
                nl = data.find(b"\n")
                if nl < 0 and not eof:
                    long_size += len(data)
                    continue
                long_size += len(data) if eof else nl
                yield _one_reject(name, "line", lines_before + 1, _Rejected(
                    "line_too_long", f"the line has {long_size:,} bytes; the limit is {limit:,}",
                    record=_preview(long_head)))
                lines_before += 1
                long_head = None
                if eof:
                    break
                data = data[nl + 1:]
            buffer = carry + data if carry else data
            if eof:
                chunk, carry = buffer, b""
            else:
                cut = buffer.rfind(b"\n")
                chunk, carry = buffer[:cut + 1], buffer[cut + 1:]
            if chunk:
                batch, newlines = _jsonl_block(name, chunk, lines_before, renamer, parse_options, read_options)
                yield batch
                lines_before += newlines
            if len(carry) > limit:
                long_head, long_size, carry = carry[:_PREVIEW_BYTES], len(carry), b""
            if eof:
                break


def _valid_utf8(data: bytes) -> bool:
    # Arrow's validator is SIMD: about 20 times faster than bytes.decode, and allocates nothing.
    offsets = pa.array([0, len(data)], pa.int64()).buffers()[1]
    array = pa.Array.from_buffers(pa.large_string(), 1, [None, offsets, pa.py_buffer(data)])
    try:
        array.validate(full=True)
    except pa.ArrowInvalid:
        return False
    return True


def _bracket_heavy_lines(chunk: bytes, arr: np.ndarray, starts: np.ndarray, ends: np.ndarray) -> np.ndarray:
    """Lines with more "[" and "{" than MAX_JSON_DEPTH: the only ones that could nest past it."""
    limit = defaults.MAX_JSON_DEPTH
    opens = (arr | 0x20) == 0x7B  # "[" is 0x5B, "{" 0x7B
    total = int(np.count_nonzero(opens))
    if total <= limit:
        return np.zeros(0, np.int64)
    if total <= len(chunk) // 16:  # the usual: few brackets, so their positions are a small array
        counts = np.bincount(np.searchsorted(ends, np.flatnonzero(opens)), minlength=len(ends))
    else:
        counts = np.array([chunk.count(b"[", s, e) + chunk.count(b"{", s, e) for s, e in zip(starts, ends)])
    return np.flatnonzero(counts > limit)


def _jsonl_block(name, chunk, lines_before, renamer, parse_options, read_options) -> tuple[Batch, int]:
    """The batch of one block of whole lines, and the count of newlines in it."""
    arr = np.frombuffer(chunk, np.uint8)
    ends = np.flatnonzero(arr == 0x0A)
    newlines = len(ends)
    if not chunk.endswith(b"\n"):
        ends = np.append(ends, len(chunk))
    starts = np.concatenate([[0], ends[:-1] + 1])
    lengths = ends - starts
    record = lengths > 0
    for i in np.flatnonzero(record & (lengths <= 16)):  # only a short line can be blank but for "\r" or spaces
        if not chunk[starts[i]:ends[i]].strip():
            record[i] = False

    # Checks before pyarrow sees a line: it crashes on deep nesting and passes invalid UTF-8 through.
    limit, depth = defaults.MAX_LINE_BYTES, defaults.MAX_JSON_DEPTH
    refused: dict[int, _Rejected] = {}
    for i in np.flatnonzero(record & (lengths > limit)):
        refused[int(i)] = _Rejected("line_too_long", f"the line has {lengths[i]:,} bytes; the limit is {limit:,}",
                                    record=_preview(chunk[starts[i]:ends[i]]))
    for i in _bracket_heavy_lines(chunk, arr, starts, ends):
        line = chunk[starts[i]:ends[i]]
        if record[i] and int(i) not in refused and deeper_than(line):
            refused[int(i)] = _Rejected("too_deep", f"JSON nested deeper than {depth} levels",
                                        record=_preview(line))
    records = np.flatnonzero(record).tolist()

    def items():
        for i in records:
            if i in refused:
                yield lines_before + i + 1, refused[i]
                continue
            line = chunk[starts[i]:ends[i]]
            if line.strip():
                yield lines_before + i + 1, line

    # The record path names the field that holds bad bytes, and follows dotted --map paths.
    if renamer.nested or not _valid_utf8(chunk):
        return _records_batch(name, "line", items(), renamer, _json_bytes), newlines
    rows = [i for i in records if i not in refused]
    lines = b"".join(chunk[starts[i]:ends[i] + 1] for i in rows) if refused else chunk
    locators = [lines_before + i + 1 for i in rows]
    rejects = [r.as_reject(name, "line", lines_before + i + 1) for i, r in sorted(refused.items())]
    read = len(records)
    if not rows:
        return Batch(name, "line", CANONICAL.empty_table(), [], lambda i: None, rejects, read), newlines
    try:
        parsed = pj.read_json(io.BytesIO(lines), read_options=read_options, parse_options=parse_options)
        if parsed.num_rows != len(locators):
            raise pa.ArrowInvalid("row count differs from the count of non-blank lines")
        table = canonical_from_arrow(renamer.table(parsed))
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError, pa.ArrowTypeError):
        return _records_batch(name, "line", items(), renamer, _json_bytes), newlines
    return Batch(name, "line", table, locators, lambda i: _arrow_row(parsed, i), rejects, read), newlines


def _json_bytes(raw: bytes) -> tuple[Any, bool]:
    """The record in ``raw``, and whether its strings may hold lone surrogates: invalid UTF-8,
    decoded so that ``canonical_row`` can name the field that holds it, or a "\\ud800"-style escape."""
    try:
        text, bad = raw.decode("utf-8"), False
    except UnicodeDecodeError:
        text, bad = raw.decode("utf-8", "surrogateescape"), True
    try:
        record = json.loads(text)
    except ValueError as exc:
        if bad:
            raise _Rejected("bad_utf8", f"invalid UTF-8, and unparsable: {exc}", record=text) from None
        raise
    return record, bad or (b"\\u" in raw and _SURROGATE_ESCAPE.search(raw) is not None)


# ---------------------------------------------------------------- the record-by-record path

def _records_batch(name: str, kind: str, items, renamer: Renamer, parse: Callable[[Any], tuple[Any, bool]]) -> Batch:
    """``items`` yields (locator, raw), raw being a _Rejected for a record refused while splitting;
    ``parse`` turns raw into (record, whether its strings may hold lone surrogates) or raises."""
    rows, locators, raws, rejects = [], [], [], []
    read = 0
    for locator, raw in items:
        read += 1
        try:
            if isinstance(raw, _Rejected):
                raise raw
            record, suspect = parse(raw)
        except _Rejected as exc:
            rejects.append(exc.as_reject(name, kind, locator))
            continue
        except (ValueError, UnicodeDecodeError, RecursionError) as exc:
            text = raw.decode("utf-8", "replace") if isinstance(raw, bytes) else raw
            rejects.append(reject(name, kind, locator, f"unparsable record: {exc}", code="unparsable", record=text))
            continue
        try:
            record = renamer.record(record)
            row = canonical_row(record, check_utf8=suspect)
            if suspect and holds_surrogates(record):  # in a part that is not kept: still not UTF-8
                raise FieldError("", "invalid UTF-8 (or a lone surrogate escape) in the record", code="bad_utf8")
        except FieldError as exc:
            rid = record.get("id") if isinstance(record, dict) else None
            rejects.append(reject(name, kind, locator, exc.reason, code=exc.code, field=exc.field, record=record,
                                  id=rid if isinstance(rid, (str, int)) else None))
            continue
        rows.append(row)
        locators.append(locator)
        raws.append(record)
    table = pa.Table.from_pylist(rows, schema=CANONICAL)
    return Batch(name, kind, table, locators, raws.__getitem__, rejects, read)


def _plain(record: Any) -> tuple[Any, bool]:
    return record, False


def _as_parsed(parsed: tuple[Any, bool]) -> tuple[Any, bool]:
    return parsed


def _chunked(items: Iterable, size: int, weight: Callable[[Any], int] = lambda item: 0):
    """Lists of up to ``size`` items and about INGEST_BLOCK_BYTES, so that a batch of long
    records stays as small in memory as a JSONL block."""
    batch, total = [], 0
    for item in items:
        batch.append(item)
        total += weight(item)
        if len(batch) >= size or total >= defaults.INGEST_BLOCK_BYTES:
            yield batch
            batch, total = [], 0
    if batch:
        yield batch


def _weight(item: tuple[int, Any]) -> int:
    raw = item[1]
    if isinstance(raw, bytes):
        return len(raw)
    if isinstance(raw, tuple):
        return sum(len(v) for v in raw[0].values() if isinstance(v, str))
    return 0


# ---------------------------------------------------------------- JSON array

class _Pending:
    """The bytes of the record being split out; past MAX_LINE_BYTES only a preview is kept."""

    def __init__(self):
        self.reset()

    def reset(self):
        self.parts, self.size, self.head, self.too_deep = [], 0, b"", False

    def add(self, piece: bytes) -> None:
        if len(self.head) < _PREVIEW_BYTES:
            self.head += piece[:_PREVIEW_BYTES + 1 - len(self.head)]
        self.size += len(piece)
        if self.size > defaults.MAX_LINE_BYTES:
            self.parts = []
        else:
            self.parts.append(piece)

    def take(self) -> bytes | _Rejected | None:
        """The record (None if it is only blanks), or why it is refused; then starts the next."""
        if self.size > defaults.MAX_LINE_BYTES:
            taken = _Rejected("record_too_long", f"the record has {self.size:,} bytes; the limit is "
                                                 f"{defaults.MAX_LINE_BYTES:,}", record=_preview(self.head.lstrip()))
        elif self.too_deep:
            taken = _Rejected("too_deep", f"JSON nested deeper than {defaults.MAX_JSON_DEPTH} levels",
                              record=_preview(self.head.lstrip()))
        else:
            data = b"".join(self.parts)
            taken = data if data.strip() else None
        self.reset()
        return taken


@dataclass
class _StringState:
    in_string: bool = False
    backslashes: int = 0  # the run of them that ended the previous block


def _structure(data: bytes, start: int, state: _StringState) -> tuple[list[int], list[int]]:
    """The positions and bytes of the brackets and commas of ``data[start:]`` outside strings,
    and of each newline that ends a string left open.

    Vectorised: a few numpy passes over the block, then only these characters, a few dozen per
    article, are left for Python. A raw newline cannot be inside a valid JSON string, so one ends
    any string still open: an unterminated string costs its own record, not the rest of the file.
    """
    arr = np.frombuffer(data, np.uint8)[start:]
    quotes = arr == 0x22
    if state.backslashes % 2 and len(arr) and arr[0] == 0x22:
        quotes[0] = False
    slashes = np.flatnonzero(arr == 0x5C)
    if len(slashes):  # a quote after an odd run of backslashes is escaped
        run_start = np.ones(len(slashes), dtype=bool)
        run_start[1:] = np.diff(slashes) != 1
        run_last = np.ones(len(slashes), dtype=bool)
        run_last[:-1] = run_start[1:]
        starts, ends = slashes[run_start], slashes[run_last] + 1
        runs = ends - starts
        if starts[0] == 0:
            runs[0] += state.backslashes
        quotes[ends[(runs % 2 == 1) & (ends < len(arr))]] = False
        state.backslashes = int(runs[-1]) if ends[-1] == len(arr) else 0
    elif len(arr):
        state.backslashes = 0

    folded = arr | 0x20  # "[" and "{" fold to 0x7B, "]" and "}" to 0x7D
    pos = np.flatnonzero((folded == 0x7B) | (folded == 0x7D) | (arr == 0x2C) | (arr == 0x0A) | quotes)
    chars = arr[pos]
    is_quote = quotes[pos]
    is_newline = chars == 0x0A
    seen = np.cumsum(is_quote, dtype=np.int64)
    before = seen - is_quote
    newlines = np.flatnonzero(is_newline)
    if len(newlines):
        at_newline = np.zeros(len(pos), dtype=np.int64)
        at_newline[newlines] = seen[newlines]
        at_newline = np.maximum.accumulate(at_newline)
        since = before.copy()  # quotes since the last newline before each character
        since[1:] -= at_newline[:-1]
        since[:newlines[0] + 1] += state.in_string
        state.in_string = bool((seen[-1] - seen[newlines[-1]]) % 2)
    else:
        since = before + state.in_string
        if len(pos):
            state.in_string = bool((seen[-1] + state.in_string) % 2)
    odd = since % 2 == 1
    keep = (~is_quote & ~is_newline & ~odd) | (is_newline & odd)
    return (pos[keep] + start).tolist(), chars[keep].tolist()


def _array_elements(name: str, stream, block: int) -> Iterator[tuple[int, bytes | _Rejected]]:
    """(row, the element's bytes or why it is refused) for each element of the file's JSON array.

    Splits on the commas between elements without parsing them, so an element that is not valid
    JSON costs only itself (NaN is valid to json and left to validation). Closing brackets that do
    not match are taken to close through their opener, or the innermost one, which finds the end
    of a mangled element in most cases; where the file ends inside the array, the rest of it is
    one rejected record.
    """
    max_depth = defaults.MAX_JSON_DEPTH
    row = 0
    pending = _Pending()
    state = _StringState()
    stack = [0x5B]  # the open brackets: the array's, then its element's
    overflow = 0  # brackets opened past max_depth, counted but not kept
    started = ended = trailing = False
    first = True
    while True:
        try:
            data = stream.read(block)
        except TruncatedInput as exc:
            yield row + 1, _lost_tail("row", exc)
            return
        if first:
            data, first = data.removeprefix(_BOM), False
        if not data:
            break
        if ended:
            trailing = trailing or bool(data.strip())
            continue
        start = 0
        if not started:
            body = data.lstrip()
            if not body:
                continue
            if not body.startswith(b"["):
                raise UserError(f"{name}: a .json input must hold one JSON array of articles "
                                "(use .jsonl for one article per line)")
            start, started = len(data) - len(body) + 1, True
        positions, chars = _structure(data, start, state)
        seg = start
        for p, c in zip(positions, chars):
            if c == 0x5B or c == 0x7B:  # "[" or "{"
                if len(stack) > max_depth:
                    overflow += 1
                    pending.too_deep = True
                else:
                    stack.append(c)
                continue
            if c == 0x5D or c == 0x7D:  # "]" or "}"
                if overflow:
                    overflow -= 1
                    continue
                if len(stack) > 1:
                    want = c - 2  # "]" is 0x5D and "[" 0x5B; "}" 0x7D and "{" 0x7B
                    if stack[-1] != want and want in stack[1:]:
                        del stack[len(stack) - 1 - stack[::-1].index(want):]
                    else:
                        stack.pop()
                    continue
                if c == 0x7D:  # a stray "}" between elements: json refuses the element that holds it
                    continue
            elif c == 0x2C:  # ","
                if len(stack) > 1 or overflow:
                    continue
            else:  # a newline in a string: the element that holds it is broken, and ends here
                del stack[1:]
                overflow = 0
            pending.add(data[seg:p])
            taken = pending.take()
            if taken is not None:
                row += 1
                yield row, taken
            seg = p + 1
            if c == 0x5D:  # the array's "]"
                ended = True
                trailing = bool(data[seg:].strip())
                break
        if not ended:
            pending.add(data[seg:])
    if not started:
        raise UserError(f"{name}: a .json input must hold one JSON array of articles "
                        "(use .jsonl for one article per line)")
    if not ended:
        record = _preview(pending.head) if pending.size else None
        yield row + 1, _Rejected("unparsable", "the JSON array is still open where the file ends: the file is "
                                               "truncated, or a record from this row on has unbalanced brackets; "
                                               "the rest of the file is lost", record=record)
    elif trailing:
        yield row + 1, _Rejected("unparsable", "data after the end of the JSON array")


def read_json_array(path: Path, renamer: Renamer, block_bytes: int = _SCAN_BLOCK) -> Iterator[Batch]:
    name = str(path)
    with _open(path) as fh:
        for chunk in _chunked(_array_elements(name, fh, block_bytes), defaults.INGEST_BATCH_RECORDS, _weight):
            yield _records_batch(name, "row", chunk, renamer, _json_bytes)


# ---------------------------------------------------------------- CSV

@dataclass
class _LongLine:
    size: int
    quotes: int
    head: bytes


def _byte_lines(stream, limit: int, block: int) -> Iterator[bytes | _LongLine]:
    """The lines of a byte stream, each with its newline; a line over ``limit`` bytes is read past,
    keeping only its length, quote count and start."""
    buffer = b""
    long = None
    first = True
    while True:
        data = stream.read(block)
        if first:
            data, first = data.removeprefix(_BOM), False
        if not data:
            if long is not None:
                yield long
            elif buffer:
                yield buffer
            return
        if long is not None:
            nl = data.find(b"\n")
            if nl < 0:
                long.size += len(data)
                long.quotes += data.count(b'"')
                continue
            long.size += nl
            long.quotes += data.count(b'"', 0, nl)
            yield long
            long = None
            data = data[nl + 1:]
        buffer = buffer + data if buffer else data
        lines = buffer.split(b"\n")
        buffer = lines.pop()
        for line in lines:
            if len(line) > limit:
                yield _LongLine(len(line), line.count(b'"'), line[:_PREVIEW_BYTES + 1])
            else:
                yield line + b"\n"
        if len(buffer) > limit:
            long, buffer = _LongLine(len(buffer), buffer.count(b'"'), buffer[:_PREVIEW_BYTES + 1]), b""


class _RecordTooLong(Exception):
    pass


class _CsvLines:
    """Feeds csv.reader decoded lines, and keeps count of the record being read: its lines, bytes
    and quotes, so that one too long or unparsable can be skipped to its end and reading go on."""

    def __init__(self, lines: Iterator[bytes | _LongLine]):
        self._lines = lines
        self.number = 0  # physical lines read
        self.start_record()

    def start_record(self) -> None:
        self.first, self.size, self.quotes, self.head, self.bad = self.number + 1, 0, 0, b"", False

    def __iter__(self):
        return self

    def __next__(self) -> str:
        line = next(self._lines)
        self.number += 1
        if not self.head:
            self.head = line.head if isinstance(line, _LongLine) else line
        self.size += line.size if isinstance(line, _LongLine) else len(line)
        self.quotes += line.quotes if isinstance(line, _LongLine) else line.count(b'"')
        if isinstance(line, _LongLine) or self.size > defaults.MAX_LINE_BYTES:
            raise _RecordTooLong()
        # Decoded line by line, so that invalid UTF-8 costs only its own record: canonical_row
        # rejects the field that holds the surrogates standing for the bad bytes.
        try:
            return line.decode("utf-8")
        except UnicodeDecodeError:
            self.bad = True
            return line.decode("utf-8", "surrogateescape")

    def skip_record(self) -> None:
        """Read past the rest of a record that csv gave up on: to where its quotes balance."""
        while self.quotes % 2:
            line = next(self._lines, None)
            if line is None:
                return
            self.number += 1
            self.quotes += line.quotes if isinstance(line, _LongLine) else line.count(b'"')


def _csv_rows(name: str, stream, block: int) -> Iterator[tuple[int, tuple[dict, bool] | _Rejected]]:
    """(row, (its cells by column, whether they hold invalid UTF-8) or why it is refused)."""
    lines = _CsvLines(_byte_lines(stream, defaults.MAX_LINE_BYTES, block))
    reader = csv.reader(lines)
    header, header_bad = None, False
    row = 0
    while True:
        lines.start_record()
        lost = None
        try:
            cells = next(reader)
        except StopIteration:
            return
        except TruncatedInput as exc:
            if header is None:
                raise
            yield row + 1, _lost_tail("row", exc)
            return
        except (_RecordTooLong, csv.Error) as exc:
            try:
                lines.skip_record()
            except TruncatedInput as truncated:
                lost = truncated
            where = f"line {lines.first}" if lines.number <= lines.first else f"lines {lines.first}-{lines.number}"
            if isinstance(exc, _RecordTooLong):
                code, reason = "record_too_long", (f"the row ({where}) is longer than {defaults.MAX_LINE_BYTES:,} "
                                                   "bytes")
            else:
                code, reason = "unparsable", f"unparsable CSV row ({where}): {exc}"
            if header is None:
                raise UserError(f"{name}: {where}: the header row is unreadable: {reason}") from None
            row += 1
            yield row, _Rejected(code, reason, record=_preview(lines.head))
            if lost is not None:
                yield row + 1, _lost_tail("row", lost)
                return
            continue
        if not cells:
            continue
        if header is None:
            header, header_bad = cells, lines.bad  # a bad column name taints its column's cells
            continue
        row += 1
        if len(cells) > len(header):
            yield row, _Rejected("unparsable", f"the row has {len(cells) - len(header)} more cells than the header",
                                 record=cells)
        else:
            yield row, ({k: (None if v == "" else v) for k, v in zip(header, cells)}, lines.bad or header_bad)


def read_csv(path: Path, renamer: Renamer, block_bytes: int = _SCAN_BLOCK) -> Iterator[Batch]:
    name = str(path)
    # Lines are capped at MAX_LINE_BYTES before csv sees them (a character is at least a byte),
    # so this only backs that cap up.
    csv.field_size_limit(defaults.MAX_LINE_BYTES)
    with _open(path) as fh:
        for chunk in _chunked(_csv_rows(name, fh, block_bytes), defaults.INGEST_BATCH_RECORDS, _weight):
            yield _records_batch(name, "row", chunk, renamer, _as_parsed)


# ---------------------------------------------------------------- Parquet

def _parquet_record(record: dict) -> dict:
    published = record.get("published")
    if isinstance(published, (_dt.datetime, _dt.date)):
        record = {**record, "published": published.isoformat()}
    return record


def _parquet_records(batch: pa.RecordBatch) -> list[dict | _Rejected]:
    try:
        records = batch.to_pylist()
    except UnicodeDecodeError:  # Parquet does not check UTF-8: find the rows and fields that hold it
        records = []
        for i in range(batch.num_rows):
            record = {}
            for column in batch.schema.names:
                try:
                    record[column] = batch.column(column)[i].as_py()
                except UnicodeDecodeError:
                    record = _Rejected("bad_utf8", "invalid UTF-8", field=column)
                    break
            records.append(record)
    return [r if isinstance(r, _Rejected) else _parquet_record(r) for r in records]


def read_parquet(path: Path, renamer: Renamer) -> Iterator[Batch]:
    name = str(path)
    try:
        parquet = pq.ParquetFile(path)
    except (pa.ArrowInvalid, OSError) as exc:
        raise UserError(f"{path}: not a readable Parquet file ({exc})") from None
    row = 0
    batches = parquet.iter_batches(batch_size=defaults.INGEST_BATCH_RECORDS)
    while True:
        try:
            batch = next(batches, None)
        except (pa.ArrowInvalid, OSError) as exc:
            raise UserError(f"{path}: row {row + 1}: damaged Parquet data ({exc})") from None
        if batch is None:
            return
        records = _parquet_records(batch)
        items = list(enumerate(records, start=row + 1))
        row += len(records)
        yield _records_batch(name, "row", items, renamer, _plain)


def read(path: Path, renamer: Renamer) -> Iterator[Batch]:
    fmt = detect_format(path)
    if fmt == "jsonl":
        return read_jsonl(path, renamer)
    if fmt == "json":
        return read_json_array(path, renamer)
    if fmt == "csv":
        return read_csv(path, renamer)
    return read_parquet(path, renamer)
