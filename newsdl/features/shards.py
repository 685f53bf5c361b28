"""Feature files on disk: which images a shard owns, the resumable chunks inside a shard, the
shard's part file, and the merge check that the parts cover every image exactly once.

Every file carries, in its Parquet footer under the key ``newsdl``, the settings and input hashes
that made it, so a resumed or merged run can tell a reusable file from a stale one.
"""

from __future__ import annotations

import json
import re
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from newsdl.errors import UserError
from newsdl.workspace import atomic_path, clean_temporaries, write_text

META_KEY = b"newsdl"
PART_COLUMNS = ["image_id", "article_id", "fc7", "backbone"]
_PART = re.compile(r"part-(\d+)-of-(\d+)\.parquet")
# What identifies the run that made a file; counts and timings ride along but don't decide reuse.
_IDENTITY = ("config", "inputs", "shard", "chunk_size")


def parse_shard(spec: str) -> tuple[int, int]:
    match = re.fullmatch(r"\s*(\d+)\s*/\s*(\d+)\s*", spec or "")
    if not match or not 0 <= int(match[1]) < int(match[2]):
        raise UserError(f"--shard {spec}: expected I/N with 0 <= I < N, e.g. 0/4 to 3/4 "
                        f"(in a SLURM array: --shard $SLURM_ARRAY_TASK_ID/N with --array=0-(N-1))")
    return int(match[1]), int(match[2])


def part_name(i: int, n: int) -> str:
    return f"part-{i}-of-{n}.parquet"


def rejected_name(i: int, n: int) -> str:
    return f"rejected-{i}-of-{n}.jsonl"


def shard_positions(n_images: int, shard: tuple[int, int]) -> np.ndarray:
    """Image k belongs to shard k mod N: fixed by the images table alone, and shard sizes differ
    by at most one image."""
    i, n = shard
    return np.arange(i, n_images, n)


def fixed_size_list(matrix: np.ndarray, valid: np.ndarray | None = None) -> pa.FixedSizeListArray:
    matrix = np.ascontiguousarray(matrix, dtype=np.float32)
    mask = None if valid is None else pa.array(~valid)
    return pa.FixedSizeListArray.from_arrays(pa.array(matrix.reshape(-1)), matrix.shape[1], mask=mask)


def read_meta(path: Path) -> dict | None:
    try:
        raw = (pq.read_metadata(path).metadata or {}).get(META_KEY)
    except (OSError, pa.ArrowInvalid):
        return None
    return json.loads(raw) if raw else None


def same_run(meta: dict | None, identity: dict) -> bool:
    return meta is not None and all(meta.get(k) == identity.get(k) for k in _IDENTITY)


def _encode(meta: dict) -> bytes:
    return json.dumps(meta, sort_keys=True, default=str).encode()


def chunk_table(image_ids, article_ids, paths, features: np.ndarray, reasons: list[str | None],
                backbone: str) -> pa.Table:
    """One chunk: every image of it, featurized (reason null) or rejected (fc7 null)."""
    valid = np.array([r is None for r in reasons], dtype=bool)
    return pa.table({
        "image_id": pa.array(image_ids, pa.string()),
        "article_id": pa.array(article_ids, pa.string()),
        "path": pa.array(paths, pa.string()),
        "fc7": fixed_size_list(features, valid),
        "backbone": pa.array([backbone] * len(reasons), pa.string()),
        "reason": pa.array(reasons, pa.string()),
    })


@dataclass
class ChunkStore:
    """A shard's finished chunks, one Parquet file each, written atomically: a killed job
    restarts at the first chunk that has no file, and never trusts a half-written one."""

    folder: Path
    identity: dict  # the shard's identity plus the chunk size: chunks of other settings are stale

    def path(self, k: int) -> Path:
        return self.folder / f"chunk-{k:06d}.parquet"

    def done(self) -> set[int]:
        if not self.folder.is_dir():
            return set()
        clean_temporaries(self.folder)
        found = set()
        for path in self.folder.glob("chunk-*.parquet"):
            if same_run(read_meta(path), self.identity):
                found.add(int(path.stem.split("-")[1]))
            else:
                path.unlink()
        return found

    def clear(self) -> None:
        shutil.rmtree(self.folder, ignore_errors=True)

    def write(self, k: int, table: pa.Table) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        with atomic_path(self.path(k)) as tmp:
            pq.write_table(table.replace_schema_metadata({META_KEY: _encode(self.identity)}), tmp,
                           compression="zstd")

    def finalize(self, n_chunks: int, part: Path, rejected: Path, identity: dict, extra: dict) -> dict:
        """Join the chunks into the shard's part file and its rejected list, then drop them.
        The rejected list is written first: the part file is what marks the shard done."""
        chunks = [self.path(k) for k in range(n_chunks)]
        lines, n_images = [], 0
        for path in chunks:
            table = pq.read_table(path, columns=["image_id", "article_id", "path", "reason"])
            n_images += table.num_rows
            lines += table.filter(pc.is_valid(table.column("reason"))).to_pylist()
        write_text(rejected, "".join(json.dumps(line, ensure_ascii=False) + "\n" for line in lines))
        counts = {"images": n_images, "featurized": n_images - len(lines), "rejected": len(lines)}
        schema = part_schema(pq.read_schema(chunks[0]) if chunks else None)
        with atomic_path(part) as tmp:
            with pq.ParquetWriter(tmp, schema, compression="zstd") as writer:
                for path in chunks:
                    table = pq.read_table(path)
                    writer.write_table(table.filter(pc.is_null(table.column("reason"))).select(PART_COLUMNS)
                                       .cast(schema))
                writer.add_key_value_metadata({META_KEY: _encode({**identity, **extra, "counts": counts})})
        self.clear()
        return counts


def part_schema(chunk_schema: pa.Schema | None) -> pa.Schema:
    if chunk_schema is None:  # a shard with no images still writes an (empty) part
        fc7 = pa.list_(pa.float32(), 0)
    else:
        fc7 = chunk_schema.field("fc7").type
    return pa.schema([("image_id", pa.string()), ("article_id", pa.string()), ("fc7", fc7),
                      ("backbone", pa.string())])


def find_parts(folder: Path) -> tuple[int, dict[int, Path]]:
    """The shard count and the part of each shard; every shard must be there, of one count."""
    found: dict[int, dict[int, Path]] = {}
    for path in folder.glob("part-*-of-*.parquet"):
        match = _PART.fullmatch(path.name)
        if match:
            found.setdefault(int(match[2]), {})[int(match[1])] = path
    if not found:
        raise UserError(f"{folder}: no image feature parts; run `newsdl featurize --shard I/N` for every shard "
                        f"(or `newsdl featurize` without --shard) before --merge")
    if len(found) > 1:
        raise UserError(f"{folder}: parts of different shard counts ({', '.join(map(str, sorted(found)))}); "
                        f"delete the stale part-*-of-*.parquet files")
    (n, parts), = found.items()
    missing = [i for i in range(n) if i not in parts]
    if missing:
        shown = ", ".join(f"{i}/{n}" for i in missing[:10]) + (" ..." if len(missing) > 10 else "")
        raise UserError(f"{folder}: {len(missing)} of {n} shards have no part yet; run `newsdl featurize "
                        f"--shard I/{n}` for {shown}")
    return n, dict(sorted(parts.items()))


def check_coverage(folder: Path, parts: dict[int, Path], n: int, expected_ids: pa.ChunkedArray) -> dict:
    """Every image in scope appears once, featurized or rejected; then write the merged rejected.jsonl."""
    seen = [pq.read_table(path, columns=["image_id"]).column("image_id") for path in parts.values()]
    rejected_lines = []
    for i in parts:
        path = folder / rejected_name(i, n)
        if not path.is_file():
            raise UserError(f"{path}: missing beside {parts[i].name}; rerun `newsdl featurize --shard {i}/{n} --force`")
        rejected_lines += [line for line in path.read_text(encoding="utf-8").splitlines() if line]
    rejected_ids = [json.loads(line)["image_id"] for line in rejected_lines]
    got = pa.chunked_array(seen + [pa.array(rejected_ids, pa.string())], pa.string())
    counts = pc.value_counts(got)
    duplicated = counts.filter(pc.greater(counts.field("counts"), 1)).field("values").to_pylist()
    got_set = pc.unique(got)
    missing = pc.filter(expected_ids, pc.invert(pc.is_in(expected_ids, value_set=got_set))).to_pylist()
    unexpected = pc.filter(got_set, pc.invert(pc.is_in(got_set, value_set=pc.unique(expected_ids)))).to_pylist()
    for what, ids in (("appear more than once", duplicated), ("are missing", missing),
                      ("are not in ingest/images.parquet", unexpected)):
        if ids:
            raise UserError(f"{folder}: {len(ids)} images {what} across the {n} parts (e.g. {ids[0]!r}); "
                            f"rerun the shards with --force")
    write_text(folder / "rejected.jsonl", "".join(line + "\n" for line in rejected_lines))
    return {"parts": n, "images": len(expected_ids), "featurized": len(got) - len(rejected_ids),
            "rejected": len(rejected_ids)}


def remove_other_counts(folder: Path, keep_n: int) -> None:
    """Parts and chunks of another shard count are from an older run, which this one replaces
    (shards of one run share N, so they never remove each other's files)."""
    for path in [*folder.glob("part-*-of-*.parquet"), *folder.glob(".chunks-*-of-*")]:
        match = re.search(r"-(\d+)-of-(\d+)", path.name)
        if match and int(match[2]) != keep_n:
            if path.is_dir():
                shutil.rmtree(path, ignore_errors=True)
            else:
                path.unlink(missing_ok=True)
                (folder / rejected_name(int(match[1]), int(match[2]))).unlink(missing_ok=True)


def positions_of(ids: np.ndarray, wanted: np.ndarray) -> np.ndarray:
    """Row of each ``wanted`` id in ``ids`` (-1 where absent)."""
    order = np.argsort(ids)
    found = np.searchsorted(ids, wanted, sorter=order)
    found = np.clip(found, 0, len(ids) - 1)
    rows = order[found]
    return np.where(ids[rows] == wanted, rows, -1)


def column_matrix(column) -> np.ndarray:
    """A fixed-size-list (or list) column of floats as an [n, d] float32 matrix; nulls are zeros."""
    column = column.combine_chunks() if hasattr(column, "combine_chunks") else column
    n = len(column)
    if n == 0:
        return np.zeros((0, 0), np.float32)
    if column.null_count:
        width = column.type.list_size if pa.types.is_fixed_size_list(column.type) else None
        if width is None:
            width = max((len(v) for v in column.to_pylist() if v is not None), default=0)
        column = pc.fill_null(column, pa.scalar([0.0] * width, column.type))
    if pa.types.is_fixed_size_list(column.type):
        values = column.flatten().to_numpy(zero_copy_only=False)
        return values.astype(np.float32, copy=False).reshape(n, column.type.list_size)
    return np.asarray(column.to_pylist(), dtype=np.float32)


def read_fc7(parts: list[Path]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(image_id, article_id, [n, d] FC7) of every featurized image in the features' parts."""
    ids, articles, vecs = [], [], []
    for part in parts:
        table = pq.read_table(part, columns=["image_id", "article_id", "fc7"])
        table = table.filter(pc.is_valid(table.column("fc7")))
        if table.num_rows == 0:
            continue
        vecs.append(column_matrix(table.column("fc7")))
        if vecs[-1].shape[1] != vecs[0].shape[1]:
            raise UserError(f"{part}: field 'fc7' has {vecs[-1].shape[1]} values, other parts {vecs[0].shape[1]}; "
                            f"rerun `newsdl featurize --force`")
        ids.append(table.column("image_id").to_numpy(zero_copy_only=False).astype(str))
        articles.append(table.column("article_id").to_numpy(zero_copy_only=False).astype(str))
    if not vecs:
        return np.zeros(0, str), np.zeros(0, str), np.zeros((0, 0), np.float32)
    return np.concatenate(ids), np.concatenate(articles), np.vstack(vecs).astype(np.float32)
