"""Featurize speed: the image pipeline and word2vec training, each against baselines measured in
the same run.

Images (real photos from scikit-image and scikit-learn, resized to news-photo size and repeated):
  pipeline   featurize's tf.data input pipeline (header checks, parallel decode, resize, crop,
             preprocess_input, batch, prefetch) feeding the network;
  naive      a loop of PIL load + resize + crop per image and one `model.predict` call per batch;
  in-memory  the network alone on batches already preprocessed in memory: the compute limit.
Text (gensim's Lee corpus repeated to --words):
  pipeline   the text part of `newsdl featurize` (tokenise to Parquet, stream it to word2vec);
  raw        gensim on a list of token lists held in memory, same tokens and settings.
Each text contender runs in its own process, for its own peak RSS; the pipeline runs at
--words and at twice that, to check that its memory stays flat.

    python benchmarks/bench_featurize.py [--images vgg16=128,small_cnn=500] [--words 20000000]
        [--rounds 4] [--epochs 1] [--skip-images] [--skip-text] [--out benchmarks/results/featurize.json]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
# The real photos and Lee-corpus articles the tests use (tests/testdata.py).
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))


# --- images -------------------------------------------------------------------------------------

def bench_images(backbone_name: str, n_images: int, batch_size: int, rounds: int, work: Path) -> dict:
    """Each contender featurizes all ``n_images``, split over ``rounds`` rounds; within a round
    the contenders take turns in a rotating order, so a change in the machine's load (it is
    shared) falls on all of them alike."""
    import numpy as np
    import tensorflow as tf
    from PIL import Image

    from newsdl import defaults as fd
    from newsdl.features import images as img
    from newsdl.features.backbones import get_backbone, resolve_weights
    from testdata import write_photos

    root = work / "photos"
    names = write_photos(root, n_images, max_side=500)  # news photos are about 500 px wide
    backbone = get_backbone(backbone_name)
    ext = img.build_extractor(backbone, resolve_weights("random", backbone))
    preprocess = getattr(__import__("keras").applications, backbone.module).preprocess_input
    side = round(ext.size / fd.CROP_FRACTION)

    def naive(part: list[str]) -> int:
        for start in range(0, len(part), batch_size):
            batch = []
            for name in part[start:start + batch_size]:
                with Image.open(root / name) as image:
                    image = image.convert("RGB")
                    scale = side / min(image.size)
                    image = image.resize((max(side, round(image.width * scale)), max(side, round(image.height * scale))),
                                         Image.Resampling.BILINEAR)
                    left, top = (image.width - ext.size) // 2, (image.height - ext.size) // 2
                    batch.append(np.asarray(image.crop((left, top, left + ext.size, top + ext.size)), np.float32))
            ext.model.predict(preprocess(np.stack(batch)), verbose=0)
        return len(part)

    def pipeline(part: list[str]) -> int:
        return sum(f is not None for f, _ in img.featurize_paths(ext, root, part, batch_size))

    tensors = {n: ext.load(tf.constant(str(root / n))).numpy() for n in names}

    def in_memory(part: list[str]) -> int:
        batches = [tf.constant(np.stack([tensors[n] for n in part[s:s + batch_size]]))
                   for s in range(0, len(part), batch_size)]
        start = time.perf_counter()
        for batch in batches:
            ext(batch)
        return len(part), time.perf_counter() - start  # the batches are built outside the clock

    contenders = {"naive": naive, "pipeline": pipeline, "in_memory": in_memory}
    warm = names[:batch_size]
    for run in contenders.values():  # trace and warm every call path outside the clock
        run(warm)
    seconds = dict.fromkeys(contenders, 0.0)
    counts = dict.fromkeys(contenders, 0)
    per_round = -(-n_images // rounds)
    for r in range(rounds):
        part = names[r * per_round:(r + 1) * per_round]
        order = list(contenders)[r % 3:] + list(contenders)[:r % 3]
        for name in order:
            start = time.perf_counter()
            done = contenders[name](part)
            elapsed = time.perf_counter() - start
            if isinstance(done, tuple):
                done, elapsed = done
            assert done == len(part), f"{name} featurized {done} of {len(part)} images"
            seconds[name] += elapsed
            counts[name] += done
    rates = {name: round(counts[name] / seconds[name], 2) for name in contenders}
    for name, rate in rates.items():
        print(f"  {backbone_name:<18} {name:<10} {rate:8.1f} images/s", file=sys.stderr)
    return {"backbone": backbone_name, "images": n_images, "image_side_px": 500, "batch_size": batch_size,
            "rounds": rounds, "weights": "random", "layer": ext.layer, "dim": ext.dim, "images_per_s": rates,
            "pipeline_vs_naive": round(rates["pipeline"] / rates["naive"], 3),
            "pipeline_vs_in_memory": round(rates["pipeline"] / rates["in_memory"], 3)}


# --- text ---------------------------------------------------------------------------------------

def text_worker(kind: str, ws: Path, epochs: int) -> dict:
    """Runs in a child process; prints one JSON line."""
    if kind == "pipeline":
        from newsdl.features import run_featurize

        start = time.perf_counter()
        result = run_featurize(ws, images=False, epochs=epochs, force=True)["text"]
        w2v = result["word2vec"]
        return {"words": w2v["train_words"], "train_s": w2v["seconds"], "stage_s": time.perf_counter() - start,
                "words_per_s": w2v["train_words"] * epochs / w2v["seconds"]}
    import pyarrow.parquet as pq
    from gensim.models import Word2Vec

    from newsdl.features.text import Word2VecConfig, available_cores
    from newsdl.features.tokenize import tokenize
    from testdata import lee_documents

    # The same articles (Lee, repeated) as the pipeline's train split, tokenised once, held as a list.
    table = pq.read_table(ws / "ingest" / "articles.parquet", columns=["id", "title", "text", "split"])
    lee = {text: tokenize(text) for text in lee_documents()}
    sentences = [lee[t] for t, s in zip(table.column("text").to_pylist(), table.column("split").to_pylist())
                 if s == "train"]
    cfg = Word2VecConfig(epochs=epochs)
    start = time.perf_counter()
    model = Word2Vec(vector_size=cfg.vector_size, window=cfg.window, min_count=cfg.min_count, sg=1, seed=cfg.seed,
                     workers=available_cores(), epochs=epochs)
    model.build_vocab(sentences)
    vocab_s = time.perf_counter() - start
    model.train(sentences, total_examples=model.corpus_count, total_words=model.corpus_total_words, epochs=epochs)
    train_s = time.perf_counter() - start - vocab_s
    return {"words": model.corpus_total_words, "train_s": train_s, "stage_s": vocab_s + train_s,
            "words_per_s": model.corpus_total_words * epochs / train_s}


def peak_rss_mb() -> float:
    """This process's peak RSS since its exec. Not wait4's ru_maxrss: Linux carries that across
    fork and exec, so a child would report its parent's size (TensorFlow's, here)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return round(int(line.split()[1]) / 1024, 1)
    import resource

    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)


def run_worker(kind: str, ws: Path, epochs: int) -> dict:
    cmd = [sys.executable, __file__, "--worker", kind, "--ws", str(ws), "--epochs", str(epochs)]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"{kind} worker failed:\n{proc.stderr}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def make_text_ws(path: Path, n_words: int) -> Path:
    from testdata import lee_articles, write_ingest

    write_ingest(path, lee_articles(n_words), images_root=None)
    return path


def bench_text(n_words: int, epochs: int, work: Path) -> dict:
    small = make_text_ws(work / "text-1x", n_words)
    double_ws = make_text_ws(work / "text-2x", 2 * n_words)
    runs = {}
    # raw, pipeline, raw: the pipeline is compared with the mean of the raw runs around it.
    for label, kind, ws in (("raw_1", "raw", small), ("pipeline", "pipeline", small), ("raw_2", "raw", small),
                            ("pipeline_2x", "pipeline", double_ws)):
        runs[label] = run_worker(kind, ws, epochs)
        print(f"  {label:<14} {runs[label]['words_per_s']:>10,.0f} words/s  {runs[label]['peak_rss_mb']:7.0f} MB",
              file=sys.stderr)
    raw = {key: statistics.mean([runs["raw_1"][key], runs["raw_2"][key]]) for key in runs["raw_1"]}
    pipeline, double = runs["pipeline"], runs["pipeline_2x"]
    return {"corpus": "gensim lee_background.cor, repeated", "target_words": n_words, "epochs": epochs,
            "settings": "skip-gram, 300-d, window 5, min_count 5, workers = all cores",
            "raw": raw, "raw_runs": [runs["raw_1"], runs["raw_2"]], "pipeline": pipeline, "pipeline_2x": double,
            "train_overhead": round(raw["words_per_s"] / pipeline["words_per_s"] - 1, 4),
            "stage_overhead_incl_tokenising": round(pipeline["stage_s"] / raw["stage_s"] - 1, 4),
            "rss_2x_over_1x": round(double["peak_rss_mb"] / pipeline["peak_rss_mb"], 3)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", default="vgg16=128,small_cnn=500",
                        help="backbone=count,...: VGG16 runs at ~4 images/s on 2 CPU cores")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=4, help="rounds the contenders take turns in")
    parser.add_argument("--words", type=int, default=20_000_000)
    parser.add_argument("--epochs", type=int, default=1, help="word2vec passes (words/s does not depend on it)")
    parser.add_argument("--skip-images", action="store_true")
    parser.add_argument("--skip-text", action="store_true")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "featurize.json")
    parser.add_argument("--worker", choices=("pipeline", "raw"), help=argparse.SUPPRESS)
    parser.add_argument("--ws", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps({**text_worker(args.worker, args.ws, args.epochs), "peak_rss_mb": peak_rss_mb()}))
        return

    from newsdl.features.text import available_cores
    from newsdl.workspace import versions, write_json

    work = Path(tempfile.mkdtemp(prefix="bench-featurize-"))
    # The load average says whether something else shared the cores while this ran.
    report = {"machine": {"cores": available_cores(), "processor": platform.processor() or platform.machine(),
                          "gpu": False, "load_average_at_start": os.getloadavg()},
              "versions": versions()}
    if not args.skip_images:
        report["images"] = []
        for item in args.images.split(","):
            name, count = item.split("=")
            report["images"].append(bench_images(name, int(count), args.batch_size, args.rounds, work / name))
    if not args.skip_text:
        report["text"] = bench_text(args.words, args.epochs, work)

    report["machine"]["load_average_at_end"] = os.getloadavg()
    previous = json.loads(args.out.read_text()) if args.out.is_file() else {}
    write_json(args.out, {**previous, **report})
    print_table(report)


def print_table(report: dict) -> None:
    if "images" in report:
        print(f"\n{'backbone':<20}{'images':>7}{'naive':>10}{'pipeline':>10}{'in-memory':>11}{'vs naive':>10}"
              f"{'vs in-mem':>11}   (images/s)")
        for row in report["images"]:
            r = row["images_per_s"]
            print(f"{row['backbone']:<20}{row['images']:>7}{r['naive']:>10.1f}{r['pipeline']:>10.1f}"
                  f"{r['in_memory']:>11.1f}{row['pipeline_vs_naive']:>10.2f}{row['pipeline_vs_in_memory']:>11.2f}")
    if "text" in report:
        t = report["text"]
        print(f"\nword2vec, {t['raw']['words']:,} training words x {t['epochs']} epoch(s):")
        for name in ("raw", "pipeline", "pipeline_2x"):
            row = t[name]
            print(f"  {name:<12} {row['words_per_s']:>10,.0f} words/s   train {row['train_s']:6.1f} s   "
                  f"stage {row['stage_s']:6.1f} s   peak RSS {row['peak_rss_mb']:6.0f} MB")
        print(f"  overhead: training {100 * t['train_overhead']:+.1f}%, with tokenising "
              f"{100 * t['stage_overhead_incl_tokenising']:+.1f}%; RSS at 2x words: {t['rss_2x_over_1x']:.2f}x")


if __name__ == "__main__":
    main()
