"""Every default of the suite, in one place, each with the reason for its value."""

from __future__ import annotations

# Where stages read and write when neither --workspace nor $NEWSDL_WORKSPACE is given.
WORKSPACE = "newsdl-work"

# BreakingNews has no official split; 80/10/10 by a stable hash of the id keeps a record's
# split fixed across machines, reruns and corpus growth.
SPLIT_FRACTIONS = (("train", 0.8), ("val", 0.1), ("test", 0.1))

# Raw bytes per JSONL block: large enough for pyarrow's parser to amortise its set-up, small
# enough that a block and its parsed table stay well under 100 MB.
INGEST_BLOCK_BYTES = 16 << 20

# Records per batch on the record-by-record path (JSON arrays, CSV, Parquet, bad blocks).
INGEST_BATCH_RECORDS = 4096

# Rows per Parquet row group written by ingest: bounds the memory of every later reader.
INGEST_ROW_GROUP = 8192

# Larger than any news photo (BreakingNews tops out near 5,000 x 5,000), far below a bomb.
MAX_IMAGE_PIXELS = 40_000_000

# Bytes read from each image at ingest: enough for every header PIL needs to report a size.
IMAGE_HEADER_BYTES = 64 << 10

# Articles in the embedded sample corpus: enough for every task to beat its baselines,
# small enough for `newsdl demo` to finish inside ten minutes on two CPU cores.
SAMPLE_ARTICLES = 2000

# Seed of the sample corpus and of every stage that draws random numbers.
SEED = 1234
