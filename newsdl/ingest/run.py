"""`newsdl ingest`: validate and normalise articles into DIR/ingest/ (SPEC sections 1-2)."""

from __future__ import annotations

import json
import logging
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import pyarrow.parquet as pq

from newsdl import defaults, workspace
from newsdl.errors import UserError
from newsdl.ingest import readers
from newsdl.ingest.images import changed_images
from newsdl.ingest.schema import ARTICLES, CANONICAL, IMAGES
from newsdl.ingest.validate import Seen, check_batch
from newsdl.progress import Progress

log = logging.getLogger("newsdl.ingest")
STAGE = "ingest"
OUTPUTS = ("articles.parquet", "images.parquet", "rejected.jsonl")


@dataclass
class IngestResult:
    folder: Path
    skipped: bool  # up to date: nothing was done
    counts: dict


# The article's nested fields that a dotted NEW path of --map may name (SPEC section 1).
NESTED_FIELDS = {"geo": ("lat", "lon"), "popularity": ("comments", "shares")}


def map_targets() -> list[str]:
    """Every NEW that ``--map NEW=OLD`` accepts: the article's fields and their dotted parts."""
    fields = set(CANONICAL.names) - {"extra"} | set(NESTED_FIELDS)
    return sorted(fields | {f"{name}.{part}" for name, parts in NESTED_FIELDS.items() for part in parts})


def parse_mapping(pairs: list[str]) -> dict[str, str]:
    """``NEW=OLD`` pairs onto a dict. NEW is an article field, or a dotted part of one
    (``geo.lat``); OLD is a field of the input, or a dotted path into its nested objects."""
    known = map_targets()
    mapping: dict[str, str] = {}
    for pair in pairs:
        new, sep, old = pair.partition("=")
        new, old = new.strip(), old.strip()
        if not sep or not new or not old:
            raise UserError(f"--map {pair!r}: expected NEW=OLD, e.g. --map text=body or "
                            f"--map geo.lat=location.latitude")
        if new not in known:
            raise UserError(f"--map {pair!r}: {new!r} is not an article field; fields are {', '.join(known)}")
        if "" in old.split("."):
            raise UserError(f"--map {pair!r}: {old!r} has an empty part; a path reads like location.latitude")
        if new in mapping:
            raise UserError(f"--map {pair!r}: {new!r} is mapped twice")
        # geo=... and geo.lat=... would both write the article's geo: which one wins is no one's guess.
        overlap = next((other for other in mapping if new.startswith(other + ".") or other.startswith(new + ".")),
                       None)
        if overlap:
            raise UserError(f"--map {pair!r}: {new!r} overlaps {overlap!r}, mapped already; map one of them")
        mapping[new] = old
    return mapping


def _describe(rej: dict) -> str:
    kind = "line" if "line" in rej else "row"
    loc = f"{rej['file']}:{kind} {rej.get(kind)}"
    ident = f" (id {rej['id']!r})" if rej.get("id") not in (None, "") else ""
    field = f": field '{rej['field']}'" if rej.get("field") else ""
    return f"{loc}{ident}{field}: {rej['reason']}"


def ingest(inputs: list[str | Path], workspace_dir: Path, *, images_root: str | Path | None = None,
           mapping: dict[str, str] | None = None, strict: bool = False, force: bool = False) -> IngestResult:
    paths = [Path(p).expanduser() for p in inputs]
    if not paths:
        raise UserError("ingest needs at least one input file")
    for path in paths:
        if not path.exists():
            raise UserError(f"{path}: no such file")
        if not path.is_file():
            raise UserError(f"{path}: not a file")
        readers.detect_format(path)
    root = Path(images_root).expanduser() if images_root else paths[0].resolve().parent
    if not root.is_dir():
        raise UserError(f"--images-root {root}: no such folder")
    root = root.resolve()
    mapping = mapping or {}

    folder = workspace.stage_dir(workspace_dir, STAGE)
    inputs_meta = [{"path": str(p.resolve()), "bytes": p.stat().st_size, "sha256": workspace.sha256_file(p)}
                   for p in paths]
    config = {"images_root": str(root), "map": mapping, "strict": strict,
              "split_fractions": dict(defaults.SPLIT_FRACTIONS), "max_image_pixels": defaults.MAX_IMAGE_PIXELS}
    with workspace.stage_lock(folder, "ingest"):
        if not force and workspace.is_up_to_date(folder, inputs_meta, config):
            images = folder / "images.parquet"
            recorded = [c for c in ("path", "bytes", "mtime_ns") if c in pq.read_schema(images).names]
            changed = changed_images(root, pq.read_table(images, columns=recorded))
            if not changed:
                manifest = workspace.read_manifest(folder)
                log.info("ingest is up to date in %s (use --force to redo it)", folder)
                return IngestResult(folder, True, manifest["counts"])
            log.info("%d image files changed since the last ingest (the first: %s); redoing it",
                     len(changed), changed[0])
        return _ingest(paths, folder, root, mapping, strict, inputs_meta, config)


def _ingest(paths, folder, root, mapping, strict, inputs_meta, config) -> IngestResult:
    # Under the stage lock, so the temporaries removed here are a killed run's, never a live one's.
    workspace.clean_temporaries(folder)
    started = workspace.now()
    renamer = readers.Renamer(mapping)
    seen = Seen()
    counts = Counter()
    reasons, image_reasons, splits = Counter(), Counter(), Counter()
    first_rejects: list[str] = []

    with workspace.staged(folder) as staged, Progress("ingest", unit="records") as progress:
        articles_tmp, images_tmp = staged.path("articles.parquet"), staged.path("images.parquet")
        rejected_tmp = staged.path("rejected.jsonl")
        articles_out = pq.ParquetWriter(articles_tmp, ARTICLES, compression="zstd")
        images_out = pq.ParquetWriter(images_tmp, IMAGES, compression="zstd")
        with open(rejected_tmp, "w", encoding="utf-8") as rejected_out:
            for path in paths:
                for batch in readers.read(path, renamer):
                    articles, images, rejects = check_batch(batch, seen, root)
                    progress.update(batch.read)
                    counts["records_read"] += batch.read
                    counts["accepted"] += articles.num_rows
                    counts["images_accepted"] += images.num_rows
                    for rej in rejects:
                        is_image = "image" in rej
                        if strict:
                            raise UserError(_describe(rej) + " (--strict stops at the first problem)")
                        if rej["code"] == "truncated":
                            # A file cut short (an interrupted download or copy) is a damaged corpus,
                            # not a bad record: say so and keep the workspace as it was.
                            raise UserError(_describe(rej) + "; the input file is damaged, replace it")
                        (image_reasons if is_image else reasons)[rej["code"]] += 1
                        counts["images_rejected" if is_image else "rejected"] += 1
                        if len(first_rejects) < 5:
                            first_rejects.append(_describe(rej))
                        rejected_out.write(json.dumps(rej, ensure_ascii=False, default=str) + "\n")
                    splits.update(articles.column("split").to_pylist())
                    if articles.num_rows:
                        articles_out.write_table(articles, row_group_size=defaults.INGEST_ROW_GROUP)
                    if images.num_rows:
                        images_out.write_table(images, row_group_size=defaults.INGEST_ROW_GROUP)
        articles_out.close()
        images_out.close()

        if counts["accepted"] + counts["rejected"] != counts["records_read"]:
            raise RuntimeError(f"ingest lost records: read {counts['records_read']}, accepted "
                               f"{counts['accepted']}, rejected {counts['rejected']}")
        if counts["accepted"] == 0:
            detail = f"; the first: {first_rejects[0]}" if first_rejects else ""
            raise UserError(f"no valid article in {', '.join(map(str, paths))} "
                            f"({counts['records_read']} records read, all rejected){detail}")
        staged.commit()

    result_counts = {
        "records_read": counts["records_read"], "accepted": counts["accepted"], "rejected": counts["rejected"],
        "rejected_by_reason": dict(sorted(reasons.items())), "splits": dict(sorted(splits.items())),
        "images_read": counts["images_accepted"] + counts["images_rejected"],
        "images_accepted": counts["images_accepted"], "images_rejected": counts["images_rejected"],
        "images_rejected_by_reason": dict(sorted(image_reasons.items())),
    }
    workspace.write_manifest(folder, STAGE, inputs=inputs_meta, config=config, counts=result_counts,
                             outputs=list(OUTPUTS), started=started, extra={"first_rejects": first_rejects})
    return IngestResult(folder, False, result_counts)
