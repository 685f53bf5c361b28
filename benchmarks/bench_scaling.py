"""Featurize as a SLURM job array: 1 against 2 array tasks on the local single-node SLURM (the
test harness's cluster, started and stopped here), with the same featurize run locally, without
SLURM, as the baseline, all in one run on one ingested sample corpus.

Reported per contender: the wall time (submit to the last task's end, polled every 0.2 s), each
task's queue latency (submit to start) and run time (start to end, from `scontrol show job`, 1 s
resolution), the images/s of the CNN inside each task (from its part file), and:
  speed-up             wall(1 task) / wall(2 tasks);
  scheduling overhead  wall(SLURM, 1 task) - wall(local), and the queue latency;
  array efficiency     sum of the tasks' run times / (tasks x wall).
On a 2-core node both tasks share the same 2 cores that one task already uses (TensorFlow runs
its ops on every core), so no speed-up beyond what overlapping the start-up of two processes
gives is expected here; the figure that carries over to a cluster, where each task has a node
or a GPU of its own, is the per-task overhead. Needs root and the SLURM packages (see FACTS.md).

    sudo python benchmarks/bench_scaling.py [--articles 300] [--backbone small_cnn] [--repeats 2]
        [--out benchmarks/results/scaling.json]     (one entry per --backbone in the file)
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE.parent / "tests"))

NEWSDL = str(Path(sys.executable).parent / "newsdl")


def _seconds(stamp: str) -> float:
    return dt.datetime.fromisoformat(stamp).timestamp()


def run_local(ws: Path, image_args: list[str]) -> dict:
    t0 = time.monotonic()
    proc = subprocess.run([NEWSDL, "featurize", "-w", str(ws), "--no-text", *image_args], capture_output=True,
                          text=True)
    wall = time.monotonic() - t0
    if proc.returncode != 0:
        raise RuntimeError(proc.stderr)
    return {"wall_s": round(wall, 2), "cnn_images_per_s": _part_rates(ws)}


def _part_rates(ws: Path) -> list[float]:
    from newsdl.features import shards

    return [((shards.read_meta(p) or {}).get("runtime") or {}).get("images_per_s")
            for p in sorted((ws / "features" / "images").glob("part-*.parquet"))]


def run_array(cluster, ws: Path, n_tasks: int, image_args: list[str]) -> dict:
    from newsdl.hpc import config as hpc_config
    from newsdl.hpc import scripts

    cfg = hpc_config.parse({"newsdl": NEWSDL}, "bench")
    spec = scripts.JobSpec("featurize", "featurize",
                           (NEWSDL, "featurize", "-w", str(ws), "--shard", scripts.Shell(f'"${{index}}/{n_tasks}"'),
                            *image_args),
                           hpc_config.Resources(time="01:00:00", cpus=1, mem="2G"), ws / "jobs" / "logs",
                           array=n_tasks)
    spec.log_dir.mkdir(parents=True, exist_ok=True)
    script = ws / "jobs" / "featurize.sbatch"
    script.write_text(scripts.render(spec, cfg))
    t0_wall, t0 = time.time(), time.monotonic()
    job = cluster.sbatch(script)
    while True:
        records = cluster.job_records(job)
        if records and all(r.get("JobState") in ("COMPLETED", "FAILED", "CANCELLED") for r in records):
            break
        time.sleep(0.2)
    wall = time.monotonic() - t0
    bad = [r for r in records if r["JobState"] != "COMPLETED"]
    if bad:
        raise RuntimeError(f"array task failed: {bad[0]}; log {spec.log(job, bad[0].get('ArrayTaskId'))}")
    tasks = [{"index": int(r["ArrayTaskId"]),
              "queue_s": round(_seconds(r["StartTime"]) - _seconds(r["SubmitTime"]), 1),
              "run_s": _seconds(r["EndTime"]) - _seconds(r["StartTime"])} for r in records]
    first_start = min(_seconds(r["StartTime"]) for r in records)
    return {"tasks": n_tasks, "wall_s": round(wall, 2), "task_run_s": [t["run_s"] for t in tasks],
            "queue_s": [t["queue_s"] for t in tasks],
            "submit_to_first_start_s": round(first_start - t0_wall, 2),
            "array_efficiency": round(sum(t["run_s"] for t in tasks) / (n_tasks * wall), 3),
            "cnn_images_per_s": _part_rates(ws)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--articles", type=int, default=300)
    parser.add_argument("--backbone", default="small_cnn")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--out", type=Path, default=HERE / "results" / "scaling.json")
    args = parser.parse_args()

    from slurm_harness import SlurmCluster, missing_binaries

    from newsdl.ingest.run import ingest
    from newsdl.sample.corpus import write_corpus
    from newsdl.workspace import versions, write_json

    if missing_binaries() or os.geteuid() != 0:
        sys.exit("bench_scaling: needs root and the SLURM packages (apt-get install -y --no-install-recommends "
                 "slurmctld slurmd slurm-client munge)")
    image_args = ["--backbone", args.backbone, "--weights", "random"]
    load_start = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="bench-scaling-") as tmp:
        tmp = Path(tmp)
        write_corpus(tmp / "corpus", n_articles=args.articles, seed=11)
        base = tmp / "base"
        ingest([tmp / "corpus" / "articles.jsonl"], base, images_root=tmp / "corpus")
        import pyarrow.parquet as pq

        n_images = pq.read_metadata(base / "ingest" / "images.parquet").num_rows
        runs: dict[str, list[dict]] = {"local": [], "slurm_1": [], "slurm_2": []}
        with SlurmCluster(tmp / "slurm") as cluster:
            for rep in range(args.repeats):
                # Rotate the order each repeat, so a change in the shared machine's load falls on all alike.
                order = ["local", "slurm_1", "slurm_2"]
                order = order[rep % 3:] + order[:rep % 3]
                for name in order:
                    ws = tmp / f"{name}-{rep}"
                    shutil.copytree(base, ws)
                    result = (run_local(ws, image_args) if name == "local"
                              else run_array(cluster, ws, int(name[-1]), image_args))
                    runs[name].append(result)
                    print(f"  {name:<8} repeat {rep}: {result['wall_s']:.1f} s", flush=True)

    def median(name: str, key: str) -> float:
        return round(statistics.median(r[key] for r in runs[name]), 2)

    local, one, two = median("local", "wall_s"), median("slurm_1", "wall_s"), median("slurm_2", "wall_s")
    queue = [q for name in ("slurm_1", "slurm_2") for r in runs[name] for q in r["queue_s"]]
    report = {
        "machine": {"cores": os.cpu_count(), "processor": platform.machine(), "gpu": False,
                    "load_average_at_start": list(load_start), "load_average_at_end": list(os.getloadavg())},
        "versions": versions(),
        "slurm": subprocess.run(["sinfo", "--version"], capture_output=True, text=True).stdout.strip(),
        "setup": {"articles": args.articles, "images": n_images, "backbone": args.backbone, "weights": "random",
                  "repeats": args.repeats, "cpus_per_task": 1},
        "runs": runs,
        "median_wall_s": {"local": local, "slurm_1_task": one, "slurm_2_tasks": two},
        "speedup_2_vs_1_tasks": round(one / two, 3),
        "speedup_2_tasks_vs_local": round(local / two, 3),
        "scheduling_overhead_s": {"slurm_1_task_minus_local": round(one - local, 2),
                                  "queue_latency_median_s": statistics.median(queue) if queue else None,
                                  "queue_latency_max_s": max(queue) if queue else None},
        "array_efficiency_2_tasks": median("slurm_2", "array_efficiency"),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    # One entry per backbone, so a small_cnn run and a vgg16 run both stay in the file.
    previous = json.loads(args.out.read_text()) if args.out.is_file() else {}
    shared = {k: report.pop(k) for k in ("machine", "versions", "slurm")}
    write_json(args.out, {**previous, **shared, args.backbone: report})
    print(f"\nfeaturize of {n_images} images ({args.backbone}, random weights), median of {args.repeats}:")
    print(f"  {'local, no SLURM':<24}{local:>8.1f} s")
    print(f"  {'SLURM array, 1 task':<24}{one:>8.1f} s   overhead vs local {one - local:+.1f} s")
    print(f"  {'SLURM array, 2 tasks':<24}{two:>8.1f} s   speed-up vs 1 task x{one / two:.2f}, "
          f"array efficiency {report['array_efficiency_2_tasks']:.2f}")
    print(f"  queue latency (submit -> start): median {report['scheduling_overhead_s']['queue_latency_median_s']} s, "
          f"max {report['scheduling_overhead_s']['queue_latency_max_s']} s")
    print(f"-> {args.out}")


if __name__ == "__main__":
    main()
