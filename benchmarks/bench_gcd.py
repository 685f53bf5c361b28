"""Throughput of the great-circle distance, forward + backward, in pairs/s.

    python benchmarks/bench_gcd.py [--quick] [--out benchmarks/results/gcd.json]

Every method gets the same random (lat, lon) pairs and, except the haversine package,
computes the distance and its gradient with respect to both inputs for an upstream
gradient g (the backward pass of a loss):
  op         the custom op (newsdl.ops, backend="op") in a tf.function
  tf         the same math in plain TF ops (backend="tf", the fallback) in a tf.function
  tf_xla     the same, jit_compile=True
  numpy      the same math in numpy (newsdl.ops.reference), one thread
  haversine  the haversine package's haversine_vector: forward only (it has no
             gradient), degrees in and km out, as a user would call it
The machine's limit for this work is a memory-bandwidth probe (np.copyto of large
arrays, one thread per core) over the minimum bytes per pair: y and z in, d out, g in,
grad_y and grad_z out, 10 values. The op itself moves 16 (the 3 partials go out and
back in). Methods are timed in interleaved rounds so that load from other processes
hits them alike; the table shows medians.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import threading
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

METHODS = ("op", "tf", "tf_xla", "numpy", "haversine")
MIN_BYTES_VALUES = 10  # values per pair: y (2), z (2), d (1), g (1), grad_y (2), grad_z (2)
OP_BYTES_VALUES = 16   # the op also writes and reads back 3 partials per pair
SAMPLE_S = 0.002       # small N: repeat calls until one timed sample lasts at least this


def copy_bandwidth(nbytes: int = 256 << 20, repeats: int = 5) -> float:
    """Bytes/s read + written by np.copyto, one thread per core (numpy drops the GIL)."""
    src = np.ones(nbytes // 8, np.float64)
    dst = np.empty_like(src)
    threads = os.cpu_count() or 1
    parts = np.array_split(np.arange(len(src)), threads)
    bounds = [(int(p[0]), int(p[-1]) + 1) for p in parts if len(p)]

    def copy(lo, hi):
        np.copyto(dst[lo:hi], src[lo:hi])

    best = float("inf")
    for _ in range(repeats):
        workers = [threading.Thread(target=copy, args=b) for b in bounds]
        start = time.perf_counter()
        for w in workers:
            w.start()
        for w in workers:
            w.join()
        best = min(best, time.perf_counter() - start)
    return 2 * nbytes / best


def make_methods(tf, dtype):
    from haversine import Unit, haversine_vector

    from newsdl.ops import great_circle_distance
    from newsdl.ops.reference import numpy_backward, numpy_forward

    def tf_step(backend, jit):
        @tf.function(jit_compile=jit)
        def step(y, z, g):
            with tf.GradientTape() as tape:
                tape.watch([y, z])
                d = great_circle_distance(y, z, degrees=False, radius_km=None, backend=backend)
            grad_y, grad_z = tape.gradient(d, [y, z], output_gradients=g)
            return d, grad_y, grad_z

        return step

    def numpy_step(y, z, g):
        d, jac = numpy_forward(y, z)
        return (d, *numpy_backward(g, jac))

    def haversine_step(y_deg, z_deg):
        return haversine_vector(y_deg, z_deg, Unit.KILOMETERS)

    return {"op": tf_step("op", False), "tf": tf_step("tf", False), "tf_xla": tf_step(None, True),
            "numpy": numpy_step, "haversine": haversine_step}


def bench_size(tf, methods, dtype, n, rounds, rng):
    y = np.stack([np.arcsin(rng.uniform(-1, 1, n)), rng.uniform(-np.pi, np.pi, n)], -1).astype(dtype)
    z = np.stack([np.arcsin(rng.uniform(-1, 1, n)), rng.uniform(-np.pi, np.pi, n)], -1).astype(dtype)
    g = rng.uniform(0.5, 1.5, n).astype(dtype)
    ty, tz, tg = tf.constant(y), tf.constant(z), tf.constant(g)
    y_deg, z_deg = np.degrees(y), np.degrees(z)
    args = {"op": (ty, tz, tg), "tf": (ty, tz, tg), "tf_xla": (ty, tz, tg), "numpy": (y, z, g),
            "haversine": (y_deg, z_deg)}

    calls, samples = {}, {m: [] for m in methods}
    for m, fn in methods.items():  # warm up (trace, compile), and size the samples
        fn(*args[m])
        start = time.perf_counter()
        fn(*args[m])
        once = time.perf_counter() - start
        calls[m] = max(1, int(SAMPLE_S / max(once, 1e-7)))
    for _ in range(rounds):
        for m, fn in methods.items():
            k = calls[m]
            start = time.perf_counter()
            for _ in range(k):
                fn(*args[m])
            samples[m].append((time.perf_counter() - start) / k)
    return {m: {"median_s": statistics.median(s), "min_s": min(s), "samples": len(s), "calls_per_sample": calls[m],
                "pairs_per_s": n / statistics.median(s), "pairs_per_s_best": n / min(s)}
            for m, s in samples.items()}


def load_average() -> list[float] | None:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return None


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="N up to 1e6, fewer rounds (about a minute)")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "gcd.json"))
    args = ap.parse_args(argv)

    import tensorflow as tf

    from newsdl.ops import op_status
    from newsdl.workspace import write_json

    status = op_status(build=True)
    if not status["loaded"]:
        sys.exit(f"bench_gcd: the op is not available: {status['reason']}")
    sizes = [10**e for e in range(3, 7 if args.quick else 8)]
    started, load_before = time.time(), load_average()
    bandwidth = copy_bandwidth()
    results = {}
    rng = np.random.default_rng(0)
    for dtype in ("float32", "float64"):
        methods = make_methods(tf, dtype)
        item = np.dtype(dtype).itemsize
        limit = bandwidth / (MIN_BYTES_VALUES * item)
        rows = {}
        for n in sizes:
            rounds = (3 if args.quick else 5) if n >= 10**6 else (5 if args.quick else 9)
            row = bench_size(tf, methods, dtype, n, rounds, rng)
            row["op_over_tf"] = row["op"]["pairs_per_s"] / row["tf"]["pairs_per_s"]
            row["op_over_tf_xla"] = row["op"]["pairs_per_s"] / row["tf_xla"]["pairs_per_s"]
            row["op_share_of_limit"] = row["op"]["pairs_per_s"] / limit
            rows[str(n)] = row
        results[dtype] = {"limit_pairs_per_s": limit, "sizes": rows}

    header = f"{'N':>9} " + " ".join(f"{m:>11}" for m in METHODS) + f" {'op/tf':>6} {'op/xla':>6} {'of limit':>8}"
    print("\nfwd+bwd throughput, pairs/s (median of interleaved rounds); haversine is forward only")
    print(f"copy bandwidth {bandwidth / 1e9:.1f} GB/s, {os.cpu_count()} cores; load average {load_before}")
    for dtype, res in results.items():
        print(f"\n{dtype}: limit {res['limit_pairs_per_s']:.3g} pairs/s "
              f"({MIN_BYTES_VALUES * np.dtype(dtype).itemsize} B/pair at the copy bandwidth)")
        print(header)
        for n, row in res["sizes"].items():
            print(f"{int(n):>9} " + " ".join(f"{row[m]['pairs_per_s']:>11.3g}" for m in METHODS)
                  + f" {row['op_over_tf']:>5.1f}x {row['op_over_tf_xla']:>5.1f}x {row['op_share_of_limit']:>8.0%}")
    goal = results["float32"]["sizes"].get(str(10**6), {}).get("op_over_tf")
    if goal is not None:
        print(f"\ngoal: op >= 4x plain TF at N=1e6 float32: {goal:.1f}x -> {'met' if goal >= 4 else 'NOT met'}")

    write_json(Path(args.out), {
        "benchmark": "great-circle distance, forward + backward", "quick": args.quick,
        "machine": {"cpu": cpu_name(), "cores": os.cpu_count(), "platform": platform.platform(),
                    "load_average_before": load_before, "load_average_after": load_average()},
        "versions": {"tensorflow": tf.__version__, "numpy": np.__version__, "python": platform.python_version()},
        "op": status, "copy_bandwidth_Bps": bandwidth,
        "bytes_per_pair": {"minimum_values": MIN_BYTES_VALUES, "op_values": OP_BYTES_VALUES},
        "methods": {"op": "custom op, tf.function", "tf": "same math in plain TF ops, tf.function",
                    "tf_xla": "same, tf.function(jit_compile=True)", "numpy": "same math in numpy",
                    "haversine": "haversine.haversine_vector, forward only"},
        "goal_op_over_tf_1e6_float32": goal, "seconds": round(time.time() - started, 1),
        "results": results,
    })
    print(f"saved {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
