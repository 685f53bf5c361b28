"""Readers: every input format becomes a stream of canonical batches.

JSONL goes through pyarrow's parser a block at a time (column-wise, the fast path). A block
that pyarrow refuses, and every other format, goes record by record through ``coerce``.
Either way a batch carries the canonical table, the record locators (1-based line or row)
and the records rejected while parsing, so nothing is lost between the two paths.
"""

from __future__ import annotations

import csv
import datetime as _dt
import gzip
import io
import json
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.json as pj
import pyarrow.parquet as pq

from newsdl import defaults
from newsdl.errors import UserError
from newsdl.ingest.coerce import FieldError, canonical_row
from newsdl.ingest.schema import CANONICAL, IMAGE_IN, INPUT_SCHEMA

FORMATS = {".jsonl": "jsonl", ".ndjson": "jsonl", ".json": "json", ".csv": "csv", ".parquet": "parquet",
           ".pq": "parquet"}
_FLAT_ALIASES = pa.schema([("comments", pa.int64()), ("shares", pa.int64())])


@dataclass
class Batch:
    file: str
    kind: str  # "line" or "row": what the locators count
    table: pa.Table  # CANONICAL
    locators: list[int]
    raw: Callable[[int], Any]  # the record as read, for rejected.jsonl
    rejects: list[dict] = field(default_factory=list)
    read: int = 0  # records read, rejected ones included


def reject(file: str, kind: str, locator: int, reason: str, *, code: str, field: str = "", record: Any = None,
           id: Any = None) -> dict:
    """One line of rejected.jsonl; ``code`` is the reason's name, counted in the manifest."""
    return {"file": file, kind: locator, "id": id, "field": field, "code": code, "reason": reason,
            "record": record}


def detect_format(path: Path) -> str:
    suffixes = [s.lower() for s in path.suffixes]
    if suffixes and suffixes[-1] == ".gz":
        suffixes = suffixes[:-1]
    fmt = FORMATS.get(suffixes[-1]) if suffixes else None
    if fmt is None:
        raise UserError(f"{path}: unknown input format; expected .jsonl, .jsonl.gz, .json, .csv or .parquet")
    return fmt


def _open(path: Path):
    return gzip.open(path, "rb") if path.suffix.lower() == ".gz" else open(path, "rb")


class Renamer:
    """Applies ``--map NEW=OLD``. A field shadowed by a mapping keeps its value in ``extra``."""

    def __init__(self, mapping: dict[str, str]):
        self.old_to_new = {old: new for new, old in mapping.items()}
        self.shadowed = set(mapping) - set(mapping.values())

    def record(self, record: Any) -> Any:
        if not isinstance(record, dict) or not self.old_to_new:
            return record
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


def read_jsonl(path: Path, renamer: Renamer, block_bytes: int = defaults.INGEST_BLOCK_BYTES) -> Iterator[Batch]:
    name = str(path)
    parse_options = pj.ParseOptions(explicit_schema=renamer.parse_schema(), unexpected_field_behavior="infer")
    read_options = pj.ReadOptions(use_threads=True, block_size=4 << 20)
    lines_before = 0
    carry = b""
    with _open(path) as fh:
        while True:
            data = fh.read(block_bytes)
            if data:
                buffer = carry + data
                cut = buffer.rfind(b"\n")
                if cut < 0:
                    carry = buffer
                    continue
                chunk, carry = buffer[:cut + 1], buffer[cut + 1:]
            else:
                chunk, carry = carry, b""
                if not chunk:
                    break
            yield _jsonl_block(name, chunk, lines_before, renamer, parse_options, read_options)
            lines_before += chunk.count(b"\n")
            if not data:
                break


def _jsonl_block(name, chunk, lines_before, renamer, parse_options, read_options) -> Batch:
    lines = chunk.split(b"\n")
    numbered = [(lines_before + i + 1, line) for i, line in enumerate(lines) if line.strip()]
    locators = [n for n, _ in numbered]
    try:
        parsed = pj.read_json(io.BytesIO(chunk), read_options=read_options, parse_options=parse_options)
        if parsed.num_rows != len(locators):
            raise pa.ArrowInvalid("row count differs from the count of non-blank lines")
        table = canonical_from_arrow(renamer.table(parsed))
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError, pa.ArrowTypeError):
        return _records_batch(name, "line", ((n, line) for n, line in numbered), renamer, _json_line)
    return Batch(name, "line", table, locators, lambda i: _arrow_row(parsed, i), read=len(locators))


def _json_line(line: bytes) -> Any:
    return json.loads(line)


# ---------------------------------------------------------------- the record-by-record path

def _records_batch(name: str, kind: str, items, renamer: Renamer, parse: Callable[[Any], Any]) -> Batch:
    """``items`` yields (locator, raw); ``parse`` turns raw into a record or raises."""
    rows, locators, raws, rejects = [], [], [], []
    read = 0
    for locator, raw in items:
        read += 1
        try:
            record = parse(raw)
        except (ValueError, UnicodeDecodeError) as exc:
            text = raw.decode("utf-8", "replace") if isinstance(raw, bytes) else raw
            rejects.append(reject(name, kind, locator, f"unparsable record: {exc}", code="unparsable", record=text))
            continue
        record = renamer.record(record)
        try:
            row = canonical_row(record)
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


def _identity(record: Any) -> Any:
    return record


def _chunked(iterable, size: int):
    batch = []
    for item in iterable:
        batch.append(item)
        if len(batch) >= size:
            yield batch
            batch = []
    if batch:
        yield batch


def read_json_array(path: Path, renamer: Renamer) -> Iterator[Batch]:
    import ijson

    name = str(path)
    with _open(path) as fh:
        head = fh.read(4096).lstrip()
        if not head.startswith(b"["):
            raise UserError(f"{path}: a .json input must hold one JSON array of articles "
                            "(use .jsonl for one article per line)")
        fh.seek(0)
        items = enumerate(ijson.items(fh, "item", use_float=True), start=1)
        row = 0
        try:
            for chunk in _chunked(items, defaults.INGEST_BATCH_RECORDS):
                row = chunk[-1][0]
                yield _records_batch(name, "row", chunk, renamer, _identity)
        except ijson.JSONError as exc:
            batch = Batch(name, "row", CANONICAL.empty_table(), [], lambda i: None, read=1)
            batch.rejects.append(reject(name, "row", row + 1,
                                        f"unparsable JSON from this record to the end of the file: {exc}",
                                        code="unparsable"))
            yield batch


def _csv_cells(row: dict) -> dict:
    if None in row:
        raise ValueError(f"the row has {len(row[None])} more cells than the header")
    return {k: (None if v == "" else v) for k, v in row.items()}


def read_csv(path: Path, renamer: Renamer) -> Iterator[Batch]:
    name = str(path)
    csv.field_size_limit(min(sys.maxsize, 2**31 - 1))
    with _open(path) as raw, io.TextIOWrapper(raw, encoding="utf-8-sig", newline="") as fh:
        reader = csv.DictReader(fh)
        items = enumerate(reader, start=1)
        row = 0
        try:
            for chunk in _chunked(items, defaults.INGEST_BATCH_RECORDS):
                row = chunk[-1][0]
                yield _records_batch(name, "row", chunk, renamer, _csv_cells)
        except (csv.Error, UnicodeDecodeError) as exc:
            batch = Batch(name, "row", CANONICAL.empty_table(), [], lambda i: None, read=1)
            batch.rejects.append(reject(name, "row", row + 1, f"unparsable CSV from this row to the end: {exc}",
                                        code="unparsable"))
            yield batch


def _parquet_record(record: dict) -> dict:
    published = record.get("published")
    if isinstance(published, (_dt.datetime, _dt.date)):
        record = {**record, "published": published.isoformat()}
    return record


def read_parquet(path: Path, renamer: Renamer) -> Iterator[Batch]:
    name = str(path)
    try:
        parquet = pq.ParquetFile(path)
    except (pa.ArrowInvalid, OSError) as exc:
        raise UserError(f"{path}: not a readable Parquet file ({exc})") from None
    row = 0
    for batch in parquet.iter_batches(batch_size=defaults.INGEST_BATCH_RECORDS):
        records = batch.to_pylist()
        items = list(enumerate(records, start=row + 1))
        row += len(records)
        yield _records_batch(name, "row", items, renamer, _parquet_record)


def read(path: Path, renamer: Renamer) -> Iterator[Batch]:
    fmt = detect_format(path)
    if fmt == "jsonl":
        return read_jsonl(path, renamer)
    if fmt == "json":
        return read_json_array(path, renamer)
    if fmt == "csv":
        return read_csv(path, renamer)
    return read_parquet(path, renamer)
