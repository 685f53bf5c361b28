"""Caption decoding and retrieval ranking speed.

    python benchmarks/bench_caption.py [--quick] [--out benchmarks/results/caption.json]

1. Captions/s of the caption model's decoders (newsdl.tasks.caption_model.Decoder) at the default
   sizes (LSTM CAPTION_UNITS, 4096-d FC7, a 5,000-word vocabulary, CAPTION_EMBED, 20 words),
   on untrained weights: an untrained decoder never says <end>, so every caption runs the full
   length, the worst case. Greedy and beam 3 decode all images in batches of CAPTION_DECODE_BATCH;
   the baseline is greedy one image at a time (what a per-image loop would do).
2. Ranking for illustrate: 10k articles x 10k images, 128-d unit embeddings, the rank of each
   query's own item, text to image. Batched matrix products (newsdl.tasks.retrieval.ranks, 256
   queries a block, RANK_BLOCK) against the naive loop of one matrix-vector product per query
   (retrieval.ranks_naive), in the same run; the two must agree (float32 rounding of a product and
   of matrix-vector products may order a near-tie differently, by a rank or so).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def bench_decoding(n_images: int, n_single: int) -> dict:
    import keras

    from newsdl import defaults as td
    from newsdl.tasks import caption_model as cm

    keras.utils.set_random_seed(0)
    rng = np.random.default_rng(0)
    vocab, max_len, dim = 5000, 20, 4096
    fc7 = np.abs(rng.normal(size=(max(n_images, n_single), dim))).astype(np.float32)
    emb = rng.normal(0, 0.05, (vocab, td.CAPTION_EMBED)).astype(np.float32)
    model = cm.build(vocab, fc7[:256], None, embedding=emb, max_len=max_len)
    dec = cm.Decoder(model)
    dec.greedy(fc7[:8])  # trace the step functions once, outside the timings
    dec.beam(fc7[:8], beam=3)
    out = {"images": n_images, "max_len": max_len, "vocab": vocab, "units": td.CAPTION_UNITS,
           "decode_batch": td.CAPTION_DECODE_BATCH}

    def timed(fn, n):
        t = time.perf_counter()
        fn()
        dt = time.perf_counter() - t
        return {"seconds": round(dt, 3), "captions_per_s": round(n / dt, 1)}

    out["greedy_batched"] = timed(lambda: cm.decode_batches(dec, fc7[:n_images], beam=1, progress="greedy"),
                                  n_images)
    out["beam3_batched"] = timed(lambda: cm.decode_batches(dec, fc7[:n_images], beam=3, progress="beam 3"),
                                 n_images)
    out["greedy_one_at_a_time"] = timed(lambda: [dec.greedy(fc7[i:i + 1]) for i in range(n_single)], n_single)
    out["beam3_vs_greedy_cost"] = round(out["greedy_batched"]["captions_per_s"]
                                        / out["beam3_batched"]["captions_per_s"], 2)
    out["batched_greedy_speedup"] = round(out["greedy_batched"]["captions_per_s"]
                                          / out["greedy_one_at_a_time"]["captions_per_s"], 1)
    return out


def bench_ranking(n: int, d: int = 128) -> dict:
    from newsdl.tasks import retrieval as R

    rng = np.random.default_rng(1)
    text = R.unit(rng.normal(size=(n, d)))
    image = R.unit(text + rng.normal(scale=1.5, size=(n, d)))
    t = time.perf_counter()
    batched = R.ranks(text, image)
    t_batched = time.perf_counter() - t
    t = time.perf_counter()
    naive = R.ranks_naive(text, image)
    t_naive = time.perf_counter() - t
    # A matrix product and matrix-vector products round differently in float32, so a near-tie can
    # order differently: the ranks must agree almost everywhere and by a rank or two at most.
    same = float(np.mean(batched == naive))
    worst = float(np.max(np.abs(batched - naive)))
    if same < 0.99 or worst > 3:
        raise SystemExit(f"batched and naive ranks differ: {same:.4f} identical, up to {worst} apart")
    m_batched, m_naive = R.recall_metrics(batched), R.recall_metrics(naive)
    return {"queries": n, "candidates": n, "dim": d, "batched_s": round(t_batched, 3), "naive_loop_s": round(t_naive, 3),
            "speedup": round(t_naive / t_batched, 1), "identical_rank_share": round(same, 6), "max_rank_diff": worst,
            "recall_at_10": m_batched["recall_at_10"], "recall_at_10_naive": m_naive["recall_at_10"]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="fewer images and a 2k x 2k ranking")
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "caption.json")
    args = ap.parse_args()
    n_images, n_single, n_rank = (128, 16, 2000) if args.quick else (1024, 64, 10_000)
    result = {"benchmark": "caption", "machine": {"cpus": os.cpu_count(), "platform": platform.platform()},
              "quick": args.quick, "decoding": bench_decoding(n_images, n_single), "ranking": bench_ranking(n_rank)}
    d, r = result["decoding"], result["ranking"]
    print(f"{'decoding (' + str(d['images']) + ' images, ' + str(d['max_len']) + ' words)':<44} {'captions/s':>12}")
    for name in ("greedy_batched", "beam3_batched", "greedy_one_at_a_time"):
        print(f"  {name:<42} {d[name]['captions_per_s']:>12.1f}")
    print(f"  beam 3 costs {d['beam3_vs_greedy_cost']}x greedy; batching speeds greedy up {d['batched_greedy_speedup']}x")
    print(f"ranking {r['queries']} x {r['candidates']} ({r['dim']}-d): batched {r['batched_s']} s, "
          f"naive loop {r['naive_loop_s']} s, speed-up {r['speedup']}x ({r['identical_rank_share']:.2%} of ranks "
          f"identical, the rest within {r['max_rank_diff']:g})")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
