"""Training throughput per task on the CPU, and the share of step time the input pipeline takes.

For each task the model and data are built exactly as `newsdl train` builds them (default
features, default batch size), then, after a warm-up that traces the step:

- fit: `model.fit` on the training pipeline (newsdl.tasks.data.dataset) for STEPS steps;
- compute: the same on one batch repeated from memory (no input work at all);
- input: the pipeline alone, iterated for STEPS batches;
- baseline: `model.fit` on the same numpy arrays through Keras' own array adapter
  (shuffle=True), the usual way to feed in-memory data, measured in the same run.

Input share of step time, two ways (goal: at most 10% each):
- input wait: in a training loop (next batch, train_on_batch), the time spent waiting for the
  next batch over the whole step time: what the model actually loses to its input;
- pipeline cost: the pipeline's own time per batch over the step time, the bound that holds
  even if prefetching overlapped nothing.
Also shown: (fit - in-memory) / fit, fit on the pipeline against fit on the same batches held in
memory, interleaved; on a shared 2-core machine that difference is noise-dominated (+-20%).

    python benchmarks/bench_train.py [--workspace DIR | --articles 2000] [--steps 40] [--repeats 3]
"""

from __future__ import annotations

import argparse
import logging
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def make_workspace(n: int) -> Path:
    """A sample corpus of ``n`` articles, ingested and featurized with the demo's CPU settings."""
    from newsdl.features import run_featurize
    from newsdl.ingest.run import ingest
    from newsdl.sample.corpus import write_corpus

    work = Path(tempfile.mkdtemp(prefix="bench-train-"))
    write_corpus(work / "corpus", n_articles=n, seed=1)
    ingest([work / "corpus" / "articles.jsonl"], work / "ws", images_root=work / "corpus")
    run_featurize(work / "ws", backbone="small_cnn", weights="random")
    return work / "ws"


def _timed(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def bench_task(ws: Path, task: str, steps: int, repeats: int) -> dict:
    import numpy as np

    from newsdl import defaults as td
    from newsdl.tasks.data import dataset, load_corpus
    from newsdl.tasks.prepare import resolve_features, task_module
    from newsdl.tasks.train import prepare, set_determinism

    mod = task_module(task)
    corpus = load_corpus(ws)
    features = resolve_features(task, None, corpus.available, ws)
    rows, _, _, _, fitted, x = prepare(ws, mod, corpus, features, 1)
    head = "cells" if task == "geoloc" else "default"
    set_determinism(1)
    y = mod.targets(corpus, fitted, head, x)
    sw = mod.sample_weight(corpus, fitted, rows["train"])
    model = mod.build(features, {k: v[rows["train"]] for k, v in x.items()}, fitted, head)
    mod.compile_model(model, td.LEARNING_RATE, fitted, head)
    bs = td.BATCH_SIZE
    # Enough epochs of the real pipeline for every timed run to take fresh batches from it.
    per_epoch = int(np.ceil(len(rows["train"]) / bs))
    epochs_needed = int(np.ceil(steps * (3 * repeats + 2) / per_epoch)) + 1
    ds = dataset(x, y, rows["train"], bs, seed=1, sample_weight=sw, epochs=(0, epochs_needed))
    it = iter(ds)
    # The same batches, decoded once and held in memory: fitting on them costs no input work.
    cached = ds.take(steps).cache().repeat()
    for _ in cached.take(steps):
        pass

    model.fit(cached, steps_per_epoch=3, epochs=1, verbose=0)  # trace the step once
    fit_times, compute_times = [], []
    for _ in range(repeats):  # interleaved, so that a slow spell of a shared machine hits both
        fit_times.append(_timed(lambda: model.fit(ds, steps_per_epoch=steps, epochs=1, verbose=0), 1))
        compute_times.append(_timed(lambda: model.fit(cached, steps_per_epoch=steps, epochs=1, verbose=0), 1))
    fit_s, compute_s = statistics.median(fit_times), statistics.median(compute_times)

    def pipeline():
        for _ in range(steps):
            next(it)

    input_s = _timed(pipeline, repeats)

    def step_waits():
        """Per step: the wait for the next batch (a prefetched one is there at once) and the
        whole step, as a training loop sees them."""
        fresh = iter(ds)
        wait = total = 0.0
        for k in range(steps + 3):
            t0 = time.perf_counter()
            batch = next(fresh)
            t1 = time.perf_counter()
            model.train_on_batch(batch[0], batch[1], sample_weight=batch[2] if len(batch) > 2 else None)
            t2 = time.perf_counter()
            if k >= 3:  # the first steps trace train_on_batch's function
                wait += t1 - t0
                total += t2 - t0
        return wait / total

    wait_share = statistics.median(step_waits() for _ in range(repeats))

    n_base = min(len(rows["train"]), steps * bs)
    base_rows = rows["train"][:n_base]
    base_x = {k: v[base_rows] for k, v in x.items()}
    base_y = {k: v[base_rows] for k, v in y.items()}
    base_w = sw[base_rows] if sw is not None else None

    def baseline():
        model.fit(base_x, base_y, sample_weight=base_w, batch_size=bs, epochs=1, shuffle=True, verbose=0)

    baseline()  # its adapter traces too
    base_s = _timed(baseline, repeats)
    base_steps = int(np.ceil(n_base / bs))
    return {
        "task": task, "head": head, "features": features, "batch_size": bs, "steps": steps,
        "train_articles": int(len(rows["train"])),
        "examples_per_s": round(steps * bs / fit_s, 1),
        "step_ms": round(1000 * fit_s / steps, 2),
        "compute_step_ms": round(1000 * compute_s / steps, 2),
        "input_step_ms": round(1000 * input_s / steps, 3),
        "input_wait_share": round(wait_share, 4),
        "fit_vs_in_memory_share": round(max(0.0, fit_s - compute_s) / fit_s, 4),
        "input_cost_share": round(input_s / fit_s, 4),
        "baseline_keras_arrays_examples_per_s": round(base_steps * bs / base_s, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workspace", type=Path, help="a featurized workspace (default: make one)")
    parser.add_argument("--articles", type=int, default=2000)
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--tasks", default="geoloc,source,popularity")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "train.json")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)

    from newsdl.workspace import versions, write_json

    ws = args.workspace or make_workspace(args.articles)
    results = [bench_task(ws, task, args.steps, args.repeats) for task in args.tasks.split(",")]
    print(f"{'task':<11}{'examples/s':>11}{'step ms':>9}{'in-memory':>10}{'input ms':>9}{'input wait':>11}"
          f"{'pipeline cost':>14}{'fit - in-memory':>16}{'keras arrays ex/s':>19}")
    for r in results:
        print(f"{r['task']:<11}{r['examples_per_s']:>11.0f}{r['step_ms']:>9.1f}{r['compute_step_ms']:>10.1f}"
              f"{r['input_step_ms']:>9.2f}{100 * r['input_wait_share']:>10.1f}%{100 * r['input_cost_share']:>13.1f}%"
              f"{100 * r['fit_vs_in_memory_share']:>15.1f}%{r['baseline_keras_arrays_examples_per_s']:>19.0f}")
    ok = all(r["input_wait_share"] <= 0.10 and r["input_cost_share"] <= 0.10 for r in results)
    print(f"input pipeline <= 10% of step time: {'yes' if ok else 'NO'}", file=sys.stderr)
    write_json(args.out, {"benchmark": "train", "cpu_count": os.cpu_count(), "workspace": str(ws),
                          "results": results, "input_share_goal": 0.10, "goal_met": ok, "versions": versions()})


if __name__ == "__main__":
    main()
