"""Ingest speed and memory: `newsdl ingest` against the naive pandas baseline, same corpus, same run.

Generates N sample articles (text and metadata; image files are left out because the naive
baseline does not look at them), then times each contender in its own process, several
times, and records wall time and peak RSS (from wait4). Prints a table, saves JSON.

    python benchmarks/bench_ingest.py [--articles 100000] [--repeats 3] [--out benchmarks/results/ingest.json]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

NAIVE = """
import sys, pandas as pd
df = pd.read_json(sys.argv[1], lines=True)
df.to_parquet(sys.argv[2])
"""


def measure(cmd: list[str]) -> dict:
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - start
    stderr = proc.stderr.read().decode()
    proc.stderr.close()
    if os.waitstatus_to_exitcode(status) != 0:
        raise RuntimeError(f"{cmd} failed:\n{stderr}")
    return {"wall_s": wall, "peak_rss_mb": usage.ru_maxrss / 1024}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--articles", type=int, default=100_000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--corpus", type=Path, help="reuse (or keep) the generated corpus in this folder")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "ingest.json")
    args = parser.parse_args()

    from newsdl.sample.corpus import write_corpus
    from newsdl.workspace import write_json

    work = Path(tempfile.mkdtemp(prefix="bench-ingest-"))
    corpus = args.corpus or work / "corpus"
    source = corpus / "articles.jsonl"
    if not source.is_file():
        started = time.perf_counter()
        write_corpus(corpus, n_articles=args.articles, seed=1, images=False)
        print(f"generated {args.articles} articles in {time.perf_counter() - started:.0f} s", file=sys.stderr)
    size_mb = source.stat().st_size / 2**20

    contenders = {
        "newsdl ingest": [sys.executable, "-m", "newsdl", "ingest", str(source), "-w", str(work / "ws"), "--force"],
        "naive pandas": [sys.executable, "-c", NAIVE, str(source), str(work / "naive.parquet")],
    }
    runs = {name: [] for name in contenders}
    for _ in range(args.repeats):  # interleaved, so drift in machine load hits both alike
        for name, cmd in contenders.items():
            runs[name].append(measure(cmd))

    summary = {}
    for name, samples in runs.items():
        summary[name] = {
            "wall_s_median": statistics.median(s["wall_s"] for s in samples),
            "wall_s_min": min(s["wall_s"] for s in samples),
            "peak_rss_mb_max": max(s["peak_rss_mb"] for s in samples),
            "samples": samples,
        }
    ours, naive = summary["newsdl ingest"], summary["naive pandas"]
    ratios = {
        "wall_time_vs_naive": ours["wall_s_median"] / naive["wall_s_median"],
        "peak_rss_vs_naive": ours["peak_rss_mb_max"] / naive["peak_rss_mb_max"],
        "articles_per_s": args.articles / ours["wall_s_median"],
    }
    goals = {
        "under_60_s": ours["wall_s_median"] < 60,
        "at_most_1.2x_naive_wall": ratios["wall_time_vs_naive"] <= 1.2,
        "peak_rss_under_1_gb": ours["peak_rss_mb_max"] < 1024,
        "peak_rss_under_half_naive": ratios["peak_rss_vs_naive"] < 0.5,
    }
    manifest = json.loads((work / "ws" / "ingest" / "manifest.json").read_text())
    result = {"benchmark": "ingest", "articles": args.articles, "input_mb": size_mb, "cpus": os.cpu_count(),
              "repeats": args.repeats, "results": summary, "ratios": ratios, "goals": goals,
              "ingest_counts": manifest["counts"], "finished": time.strftime("%Y-%m-%dT%H:%M:%S")}

    print(f"\ningest of {args.articles:,} articles ({size_mb:,.0f} MiB JSONL), median of {args.repeats}, {os.cpu_count()} CPUs")
    print(f"{'':<16}{'wall s':>9}{'peak RSS MiB':>15}")
    for name, s in summary.items():
        print(f"{name:<16}{s['wall_s_median']:>9.2f}{s['peak_rss_mb_max']:>15.0f}")
    print(f"ratio (ours/naive): wall {ratios['wall_time_vs_naive']:.2f}x, peak RSS {ratios['peak_rss_vs_naive']:.2f}x; "
          f"{ratios['articles_per_s']:,.0f} articles/s")
    print("goals: " + ", ".join(f"{k} {'met' if v else 'MISSED'}" for k, v in goals.items()))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    write_json(args.out, result)
    print(f"saved {args.out}")


if __name__ == "__main__":
    main()
