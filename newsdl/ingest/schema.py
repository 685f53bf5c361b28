"""The article schema: what ingest reads (SPEC section 1) and what it writes (section 2)."""

from __future__ import annotations

import pyarrow as pa

SPLITS = ("train", "val", "test")

IMAGE_IN = pa.struct([("path", pa.string()), ("url", pa.string()), ("caption", pa.string())])
IMAGE_OUT = pa.struct([("image_id", pa.string()), ("path", pa.string()), ("url", pa.string()),
                       ("caption", pa.string())])

# The input fields as pyarrow parses them; types outside this go to the record-by-record path.
INPUT_SCHEMA = pa.schema([
    ("id", pa.string()),
    ("source", pa.string()),
    ("url", pa.string()),
    ("published", pa.string()),
    ("title", pa.string()),
    ("text", pa.string()),
    ("images", pa.list_(IMAGE_IN)),
    ("geo", pa.struct([("lat", pa.float64()), ("lon", pa.float64())])),
    ("lat", pa.float64()),
    ("lon", pa.float64()),
    ("popularity", pa.struct([("comments", pa.int64()), ("shares", pa.int64())])),
    ("keywords", pa.list_(pa.string())),
    ("split", pa.string()),
])
INPUT_FIELDS = tuple(INPUT_SCHEMA.names)

# One flat table per batch, whatever the input format, before the semantic checks.
CANONICAL = pa.schema([
    ("id", pa.string()),
    ("source", pa.string()),
    ("url", pa.string()),
    ("published", pa.string()),
    ("title", pa.string()),
    ("text", pa.string()),
    ("images", pa.list_(IMAGE_IN)),
    ("lat", pa.float64()),
    ("lon", pa.float64()),
    ("comments", pa.int64()),
    ("shares", pa.int64()),
    ("keywords", pa.list_(pa.string())),
    ("split", pa.string()),
    ("extra", pa.string()),
])

ARTICLES = pa.schema([
    pa.field("id", pa.string(), nullable=False),
    ("source", pa.string()),
    ("url", pa.string()),
    ("published", pa.timestamp("ms", tz="UTC")),
    ("title", pa.string()),
    pa.field("text", pa.string(), nullable=False),
    ("images", pa.list_(IMAGE_OUT)),
    ("lat", pa.float64()),
    ("lon", pa.float64()),
    ("comments", pa.int64()),
    ("shares", pa.int64()),
    ("keywords", pa.list_(pa.string())),
    pa.field("split", pa.string(), nullable=False),
    ("extra", pa.string()),
    ("input_file", pa.string()),
    ("input_record", pa.int64()),
])

IMAGES = pa.schema([
    pa.field("image_id", pa.string(), nullable=False),
    pa.field("article_id", pa.string(), nullable=False),
    pa.field("path", pa.string(), nullable=False),
    ("url", pa.string()),
    ("caption", pa.string()),
    pa.field("split", pa.string(), nullable=False),
    ("width", pa.int32()),
    ("height", pa.int32()),
    ("format", pa.string()),
    # The checked file's size and modification time, to notice it changed since (null in files
    # written before they were recorded).
    ("bytes", pa.int64()),
    ("mtime_ns", pa.int64()),
])
