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

# ---- train / evaluate / predict (none tuned on the sample corpus: each holds on corpora of
# 1k to 100k articles, the BreakingNews range, on a CPU)

# The tasks this release trains; caption and illustrate come with a later issue.
TASKS = ("geoloc", "source", "popularity")

# Every feature family the heads can read; `--features` picks among them. gaz is geoloc's
# gazetteer evidence (top places named in the text), useless for the other tasks.
FEATURES = ("w2v_mean", "w2v_max", "tokens", "bow", "fc7", "gaz")
TASK_FEATURES = {"geoloc": FEATURES, "source": FEATURES[:-1], "popularity": FEATURES[:-1]}
# Short names the CLI accepts for whole families (`--features text,image`, the SPEC's example).
# The gazetteer evidence is read from the text, so "text" includes it (for geoloc).
FEATURE_GROUPS = {"text": ("w2v_mean", "w2v_max", "tokens", "bow", "gaz"), "image": ("fc7",),
                  "images": ("fc7",), "w2v": ("w2v_mean", "w2v_max")}

# Upper bound on epochs; early stopping usually ends training before it (with the step halving
# every LR_HALF_LIFE epochs, epoch 30 moves the weights 1/1000 as much as epoch 1).
EPOCHS = 30
# Epochs without a better val score before stopping: enough to ride out Adam's noisy epochs on
# small corpora, short enough that a plateau costs little.
PATIENCE = 4
# Smallest val improvement that resets early stopping's patience, in the monitored unit: 1 km of
# mean error for geoloc, 0.001 of val loss (nats, Huber) for the others.
MIN_DELTA = {"geoloc": 1.0, "source": 1e-3, "popularity": 1e-3}
# Small batches are the better regulariser on 1-10k articles, and 64 still fills 2 CPU cores.
BATCH_SIZE = 64
# Adam's usual step; the heads are shallow, so no warm-up or schedule is needed.
LEARNING_RATE = 2e-3
# The learning rate halves every this many epochs (exponential decay): noisy Adam steps on small
# corpora settle down instead of oscillating around the val optimum.
LR_HALF_LIFE = 3
# L2 on every dense and convolution kernel: mild, against memorising small corpora.
L2 = 1e-4
# Dropout on the fused representation and the shared dense layers.
DROPOUT = 0.3

# Shared trunk: one dense layer of this width after fusion (BreakingNews used a few hundred
# units; 256 is plenty for the ~10 output classes/values here and keeps CPU epochs short).
HIDDEN = 256
# Width of each per-feature branch before fusion (the bag of words' term embeddings too: with
# 20k terms, 64 keeps the table at 1.3M weights, cheap to update and hard to overfit).
BRANCH = 64

# The text CNN ("adaptive CNN" of BreakingNews): the word2vec vectors are projected by PCA to
# this size, which keeps 80-90% of their variance and makes the convolutions ~5x cheaper than
# on the raw 300-d vectors; the projected embedding is fine-tuned.
EMBED_DIM = 48
# Convolution widths (word n-grams) and filters per width.
CNN_WIDTHS = (2, 3, 5)
CNN_FILTERS = 48
# Word ids the CNN reads per article (featurize stores up to 500): the first 200 hold the
# headline, the lead and most named places; the rest of the article reaches the model through
# the bag of words and the word-vector mean/max, and longer windows cost CPU time.
CNN_TOKENS = 200

# TF-IDF bag of words: word 1-2 grams, seen in at least 2 training articles, at most this many
# terms; rare terms are noise and cost embedding rows.
BOW_NGRAMS = (1, 2)
BOW_MIN_DF = 2
BOW_VOCAB = 20_000
# Terms per article fed to the model, the highest-weighted first: covers every distinct term of
# a ~700-word article; the tail of a longer one carries little weight after l2 normalisation.
BOW_TERMS = 400

# Gazetteer evidence given to the geoloc model: the top places named in the text.
GAZ_TOP = 3
# Cities below this population are left out of the gazetteer: smaller ones are mostly
# homonyms of common words and rarer places ("Reading", "Mobile") that make false hits.
GAZ_MIN_POPULATION = 15_000

# Geo-cells: k-means on the unit sphere over training locations, one cell per this many training
# articles (so granularity follows the data: 16 cells for 1,600 articles, 512 for 51,200) ...
CELL_ARTICLES = 100
# ... within these bounds.
CELLS_MIN, CELLS_MAX = 4, 512
# Weight of geoloc's cross-entropy terms (cells, trust), in km per nat: the classifiers must learn
# fast enough to matter, yet the GCD term (hundreds to thousands of km) must dominate.
CE_KM = 300.0
# A place named in the text counts as the story's place when it is within this distance of the
# truth: a metropolitan area's reach, so suburbs count, while a country's centre does not.
TRUST_KM = 100.0
# The cells head's offset moves the centre by at most this angle (radians, ~1,900 km).
CELL_OFFSET_MAX = 0.3
# `--head auto` trains both and keeps the one with the lower val mean km.
HEADS = ("auto", "regress", "cells")

# kNN baseline: neighbour counts tried on val.
KNN_K = (1, 3, 5, 10, 25, 50)
# Logistic-regression and ridge baselines: regularisation strengths tried on val.
LOGREG_C = (0.3, 1.0, 3.0, 10.0, 30.0)
RIDGE_ALPHA = (0.1, 1.0, 10.0, 100.0, 1000.0)
# Candidate points for the constant baseline (the training point with least total GCD): at most
# this many distinct training locations are tried, so it stays O(n) on 100k articles.
MEDOID_CANDIDATES = 2000

# Loss for popularity: Huber on log1p counts, robust to the heavy tail of comment counts.
HUBER_DELTA = 1.0
# Shares are a second output when the corpus has them; they weigh less than comments, the
# SPEC's metric.
SHARES_WEIGHT = 0.5

# Geoloc metrics: accuracy at street, city, region, country and continent scale (km).
ACC_KM = (1, 25, 200, 750, 2500)

# Points drawn on the world scatter plot: more is unreadable.
PLOT_POINTS = 500
