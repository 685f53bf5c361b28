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

# ---- featurize

# word2vec as in the BreakingNews feature release: skip-gram, 300-d, window 5; min_count 5
# drops typos and one-off names that would get noisy vectors.
W2V_DIM = 300
W2V_WINDOW = 5
W2V_MIN_COUNT = 5
W2V_SKIP_GRAM = True
# Five passes is gensim's default and where the Lee-corpus similarities stop improving.
W2V_EPOCHS = 5

# Word ids kept per article for the text CNN: covers the whole of ~90% of BreakingNews articles.
MAX_TOKENS = 500

# Articles per Parquet batch when tokenising and writing text features: ~1 MB of text a batch.
TEXT_BATCH_ROWS = 1024

# FC7 of VGG16 is the image feature of the BreakingNews paper.
BACKBONE = "vgg16"
WEIGHTS = "imagenet"

# Images per forward pass: 16 keeps VGG16 activations under 1 GB on a CPU; a GPU wants more
# work per launch, and 128 fits VGG16 in 16-bit on any GPU with 8 GB.
IMAGE_BATCH_CPU = 16
IMAGE_BATCH_GPU = 128

# Images per resumable chunk: ~4 minutes of VGG16 on 2 CPU cores, under a second on a GPU, so a
# killed job loses little and the chunk files stay few.
IMAGE_CHUNK = 1024

# The ImageNet evaluation recipe: shorter side to size/0.875 (256 for 224), then a centre crop.
CROP_FRACTION = 0.875
