"""The job scripts of `newsdl submit`, without a scheduler: the config file, reference files for
both schedulers, the committed examples, bash syntax, and the submission chain against fake
sbatch/qsub commands. (tests/test_slurm.py runs them on a real SLURM.)"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from conftest import ROOT, run_cli
from newsdl.errors import UserError
from newsdl.hpc import config as hpc_config
from newsdl.hpc.examples import render_examples
from newsdl.hpc.scripts import render_chain

REF = ROOT / "tests" / "reference" / "hpc"
# NEWSDL_UPDATE_REFERENCE=1 rewrites the reference files instead of comparing (then review the diff).
UPDATE = os.environ.get("NEWSDL_UPDATE_REFERENCE") == "1"


def _reference_render(scheduler: str) -> dict[str, str]:
    cfg = hpc_config.load(REF / "cluster.toml")
    cfg = dataclasses.replace(cfg, source="tests/reference/hpc/cluster.toml")
    rendered = render_chain(cfg, Path("/scratch/proj42/ws"), [Path("/data/bn/a.jsonl.gz"), Path("/data/bn/b.csv")],
                            REF / scheduler, scheduler=scheduler, images_root=Path("/data/bn/images"))
    return {r.path.name: r.text for r in rendered}


@pytest.mark.parametrize("scheduler", ["slurm", "pbs"])
def test_scripts_match_reference_files(scheduler):
    rendered = _reference_render(scheduler)
    folder = REF / scheduler
    if UPDATE:
        folder.mkdir(parents=True, exist_ok=True)
        for name, text in rendered.items():
            (folder / name).write_text(text)
    on_disk = {p.name for p in folder.iterdir()}
    assert on_disk == set(rendered), "reference files differ in names (NEWSDL_UPDATE_REFERENCE=1 rewrites them)"
    for name, text in rendered.items():
        assert (folder / name).read_text() == text, f"{folder / name} differs from the render"


def test_committed_examples_are_the_example_config_rendered():
    expected = render_examples(ROOT)
    for folder, suffix in (("pipelines/slurm", ".sbatch"), ("pipelines/pbs", ".pbs")):
        on_disk = {str(p.relative_to(ROOT)) for p in (ROOT / folder).glob("*" + suffix)}
        assert on_disk == {str(p) for p in expected if str(p).startswith(folder)}, \
            "run: python pipelines/submit.py --examples"
    for rel, text in expected.items():
        assert (ROOT / rel).read_text() == text, f"{rel} is stale: run python pipelines/submit.py --examples"


def test_slurm_scripts_carry_the_preemption_and_dependency_settings():
    scripts = _reference_render("slurm")
    assert set(scripts) == {"ingest.sbatch", "featurize.sbatch", "merge.sbatch", "train-geoloc.sbatch",
                            "evaluate-geoloc.sbatch", "train-popularity.sbatch", "evaluate-popularity.sbatch"}
    for name, text in scripts.items():
        stage = name.removesuffix(".sbatch")
        assert f"#SBATCH --job-name={stage}\n" in text
        assert "#SBATCH --output=/scratch/proj42/ws/jobs/logs/%x-%A_%a.out\n" in text
        for line in ("--open-mode=append", "--signal=B:USR1@300", "--requeue", "--kill-on-invalid-dep=yes",
                     "--account=proj42", "--qos=normal"):
            assert f"#SBATCH {line}\n" in text, (name, line)
        assert "max_requeues=5" in text and 'scontrol requeue "$job"' in text
        assert 'job="${SLURM_ARRAY_JOB_ID:-${SLURM_JOB_ID}}_${index}"' in text
    feat = scripts["featurize.sbatch"]
    assert "#SBATCH --array=0-2\n" in feat and "#SBATCH --gres=gpu:a100:2\n" in feat
    assert '--shard "${index}/3" --gpu --backbone resnet50 &' in feat
    assert "--merge --gpu --backbone resnet50 --pretrained-vectors /data/glove &" in scripts["merge.sbatch"]
    train = scripts["train-geoloc.sbatch"]
    assert "#SBATCH --ntasks=2\n" in train and "#SBATCH --nodes=2\n" in train and "#SBATCH --time=1-00:00:00\n" in train
    assert "srun /opt/newsdl/.venv/bin/newsdl train geoloc -w /scratch/proj42/ws --epochs 20 --distributed slurm &" \
        in train
    ingest = scripts["ingest.sbatch"]
    assert "ingest /data/bn/a.jsonl.gz /data/bn/b.csv -w /scratch/proj42/ws --images-root /data/bn/images &" in ingest
    assert "module load python/3.11 || exit 1\numask 002\nexport NEWSDL_CACHE=\"/scratch/$USER/cache\"" in ingest


def test_pbs_scripts():
    scripts = _reference_render("pbs")
    feat = scripts["featurize.pbs"]
    assert "#PBS -J 0-2\n" in feat and "#PBS -l select=1:ncpus=2:mem=4gb:ngpus=2\n" in feat
    assert "#PBS -q gpu\n#PBS -A proj42\n" in feat and "#PBS -r y\n#PBS -l place=excl\n" in feat
    assert "--exclusive" not in feat and "#SBATCH --exclusive\n" in _reference_render("slurm")["featurize.sbatch"]
    assert "#PBS -J" not in scripts["ingest.pbs"]
    assert "mem=2000mb" in scripts["evaluate-geoloc.pbs"]
    assert "#PBS -l select=2:ncpus=2:mpiprocs=1:mem=4gb:ngpus=1\n" in scripts["train-geoloc.pbs"]
    for text in scripts.values():
        assert 'exec >>/scratch/proj42/ws/jobs/logs/"${PBS_JOBNAME}-${job}.out" 2>&1' in text
        assert "scontrol" not in text


@pytest.mark.parametrize("scheduler", ["slurm", "pbs"])
def test_scripts_are_valid_bash(scheduler):
    for name, text in _reference_render(scheduler).items():
        proc = subprocess.run(["bash", "-n"], input=text, capture_output=True, text=True)
        assert proc.returncode == 0, (name, proc.stderr)


def test_config_errors_name_the_file_and_key(tmp_path):
    cases = {
        "shard = 3\n": "shard: unknown key",
        "scheduler = \"lsf\"\n": "scheduler: 'lsf'",
        "tasks = [\"nope\"]\n": "tasks: unknown task 'nope'",
        "[resources]\ntime = \"soon\"\n": "resources.time: 'soon'",
        "[resources]\ncpus = 0\n": "resources.cpus: must be an integer >= 1",
        "[stage.fetch]\ncpus = 1\n": "stage.fetch: unknown stage",
        "[stage.train]\nargs = 3\n": "stage.train.args: must be a list of strings",
        "[env]\n\"A-B\" = \"x\"\n": "env.A-B: not a shell variable name",
        "x = [\n": "not valid TOML",
    }
    for text, message in cases.items():
        path = tmp_path / "c.toml"
        path.write_text(text)
        with pytest.raises(UserError, match=re.escape(message)) as info:
            hpc_config.load(path)
        assert str(path) in str(info.value)


def test_stage_tables_override_resources_key_by_key():
    cfg = hpc_config.parse({"resources": {"time": "02:00:00", "cpus": 4}, "stage": {"train": {"cpus": 8}}})
    assert cfg.stage("train").cpus == 8 and cfg.stage("train").time == "02:00:00"
    assert cfg.stage("ingest").cpus == 4


def test_dry_run_writes_scripts_and_submits_nothing(tmp_path, sample_corpus):
    ws = tmp_path / "ws"
    proc = run_cli("submit", sample_corpus / "articles.jsonl", "-w", ws, "--shards", "2", "--tasks", "source",
                   "--dry-run", env={"PATH": "/nonexistent"})
    assert proc.returncode == 0, proc.stderr
    lines = [json.loads(line) for line in proc.stdout.splitlines()]
    assert [r["stage"] for r in lines] == ["ingest", "featurize", "merge", "train-source", "evaluate-source"]
    assert all(r["job_id"] is None and Path(r["script"]).is_file() for r in lines)
    assert lines[1]["log"] == str(ws / "jobs" / "logs" / "featurize-%A_%a.out")
    assert not (ws / "jobs" / "jobs.json").exists()


# A --map value with a blank, both quotes and a $: each must reach ingest as one word, as typed.
MAPS = ("text=body.content", "geo.lat=location.latitude", """title=head line's "main" $HOME""")


def test_map_reaches_the_ingest_line_quoted_as_the_reference():
    cfg = dataclasses.replace(hpc_config.load(REF / "cluster.toml"), source="tests/reference/hpc/cluster.toml")
    rendered = {r.path.name: r.text for r in render_chain(
        cfg, Path("/scratch/proj42/ws"), [Path("/data/bn/a.jsonl.gz")], REF / "map", scheduler="slurm",
        mapping=MAPS)}
    reference = REF / "map" / "ingest.sbatch"
    if UPDATE:
        reference.parent.mkdir(parents=True, exist_ok=True)
        reference.write_text(rendered["ingest.sbatch"])
    assert rendered["ingest.sbatch"] == reference.read_text(), f"{reference} differs from the render"
    assert all("--map" not in text for name, text in rendered.items() if name != "ingest.sbatch")
    line = next(l for l in rendered["ingest.sbatch"].splitlines() if " ingest " in l and l.endswith(" &"))
    # what bash hands newsdl: every pair one word, the quotes and the $ untouched
    argv = subprocess.run(["bash", "-c", f"set -- {line[:-2]}; printf '%s\\n' \"$@\""], capture_output=True,
                          text=True, env={"HOME": "/home/x", "PATH": os.environ["PATH"]}).stdout.splitlines()
    assert [argv[k + 1] for k, word in enumerate(argv) if word == "--map"] == list(MAPS)


def test_submit_dry_run_writes_the_map_into_the_ingest_script(tmp_path, sample_corpus):
    ws = tmp_path / "ws"
    proc = run_cli("submit", sample_corpus / "articles.jsonl", "-w", ws, "--tasks", "source", "--dry-run",
                   *(w for pair in MAPS for w in ("--map", pair)), env={"PATH": "/nonexistent"})
    assert proc.returncode == 0, proc.stderr
    text = (ws / "jobs" / "ingest.sbatch").read_text()
    assert " ".join(f"--map {shlex.quote(pair)}" for pair in MAPS) in text
    assert """--map 'title=head line'"'"'s "main" $HOME'""" in text
    bad = run_cli("submit", sample_corpus / "articles.jsonl", "-w", tmp_path / "ws2", "--dry-run",
                  "--map", "geo.alt=location.altitude")
    assert bad.returncode == 2 and len(bad.stderr.strip().splitlines()) == 1, bad.stderr
    assert "--map 'geo.alt=location.altitude'" in bad.stderr and not (tmp_path / "ws2" / "jobs").exists()


def test_user_errors_are_one_line(tmp_path):
    proc = run_cli("submit", tmp_path / "missing.jsonl", "-w", tmp_path / "ws", "--dry-run")
    assert proc.returncode == 2 and "missing.jsonl: input not found" in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1
    (tmp_path / "a.jsonl").write_text("{}\n")
    proc = run_cli("submit", tmp_path / "a.jsonl", "-w", tmp_path / "ws", "--tasks", "weather", "--dry-run")
    assert proc.returncode == 2 and "--tasks weather" in proc.stderr


def _fake_scheduler(bin_dir: Path, name: str, ids: str) -> Path:
    """A fake sbatch/qsub that logs its arguments and prints the next job id."""
    calls = bin_dir / f"{name}.calls"
    script = bin_dir / name
    script.write_text(textwrap.dedent(f"""\
        #!/bin/bash
        echo "$*" >> {calls}
        n=$(wc -l < {calls})
        printf '{ids}\\n' "$((n + 100))"
        """))
    script.chmod(0o755)
    return calls


@pytest.mark.parametrize("scheduler,ids,dep", [("slurm", "%s", "--dependency=afterok:{}"),
                                               ("pbs", "%s.pbs01", "-W depend=afterok:{}")])
def test_submit_chains_jobs_with_afterok(tmp_path, sample_corpus, scheduler, ids, dep):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    calls = _fake_scheduler(bin_dir, "sbatch" if scheduler == "slurm" else "qsub", ids)
    ws = tmp_path / "ws"
    proc = run_cli("submit", sample_corpus / "articles.jsonl", "-w", ws, "--scheduler", scheduler, "--shards", "3",
                   "--tasks", "geoloc,source", env={"PATH": f"{bin_dir}:{os.environ['PATH']}"})
    assert proc.returncode == 0, proc.stderr
    jobs = [json.loads(line) for line in proc.stdout.splitlines()]
    idx = {j["stage"]: j["job_id"] for j in jobs}
    assert list(idx) == ["ingest", "featurize", "merge", "train-geoloc", "evaluate-geoloc", "train-source",
                         "evaluate-source"]
    argv = calls.read_text().splitlines()
    assert len(argv) == 7 and dep.format(idx["ingest"]) not in argv[0]
    want = {"featurize": "ingest", "merge": "featurize", "train-geoloc": "merge", "evaluate-geoloc": "train-geoloc",
            "train-source": "merge", "evaluate-source": "train-source"}
    for k, stage in enumerate(idx):
        if stage in want:
            assert dep.format(idx[want[stage]]) in argv[k], (stage, argv[k])
        assert argv[k].endswith(jobs[k]["script"])
    recorded = json.loads((ws / "jobs" / "jobs.json").read_text())
    assert recorded["scheduler"] == scheduler and [j["job_id"] for j in recorded["jobs"]] == list(idx.values())
    assert jobs[0]["log"] == str(ws / "jobs" / "logs" / "ingest-101_0.out")
    assert jobs[1]["log"] == str(ws / "jobs" / "logs" / "featurize-102_%a.out")


def test_a_failed_submission_cancels_the_jobs_already_submitted(tmp_path, sample_corpus):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "sbatch").write_text(f"#!/bin/bash\necho x >> {bin_dir}/n\n"
                                    f"[ $(wc -l < {bin_dir}/n) -ge 3 ] && {{ echo 'sbatch: error: invalid partition' >&2;"
                                    f" exit 1; }}\necho $(wc -l < {bin_dir}/n)\n")
    (bin_dir / "scancel").write_text(f"#!/bin/bash\necho \"$*\" > {bin_dir}/cancelled\n")
    for name in ("sbatch", "scancel"):
        (bin_dir / name).chmod(0o755)
    proc = run_cli("submit", sample_corpus / "articles.jsonl", "-w", tmp_path / "ws",
                   env={"PATH": f"{bin_dir}:{os.environ['PATH']}"})
    assert proc.returncode == 1 and "invalid partition" in proc.stderr
    assert (bin_dir / "cancelled").read_text().split() == ["1", "2"]


def test_status_falls_back_to_manifests_without_a_scheduler(tmp_path, ingested_workspace):
    ws = tmp_path / "ws"
    shutil.copytree(ingested_workspace, ws)
    logs = ws / "jobs" / "logs"
    logs.mkdir(parents=True)
    jobs = [{"stage": "ingest", "job_id": "7", "script": "s", "log": str(logs / "ingest-7_0.out"), "array": 1},
            {"stage": "merge", "job_id": "9", "script": "s", "log": str(logs / "merge-9_0.out"), "array": 1}]
    (ws / "jobs" / "jobs.json").write_text(json.dumps({"scheduler": "slurm", "jobs": jobs}))
    proc = run_cli("status", "-w", ws, env={"PATH": "/nonexistent", "SLURM_CONF": "/nonexistent"})
    assert proc.returncode == 0, proc.stderr
    assert re.search(r"ingest\s+done\s+job 7: output present", proc.stdout), proc.stdout
    assert re.search(r"merge\s+unknown\s+job 9: the scheduler no longer lists the job", proc.stdout)


@pytest.mark.slow
def test_sigusr1_mid_epoch_exits_75_and_keeps_the_last_finished_epoch(tmp_path):
    """SIGUSR1 during epoch 3 of the training loop: it leaves at the next step with exit 75, and the
    checkpoint and history.csv stay those of epoch 2. The task is a 20-line linear regression, which
    is also all a new task needs to train with the loop."""
    code = textwrap.dedent(f"""
        import os, signal, numpy as np, tensorflow as tf, keras
        from pathlib import Path
        from newsdl.tasks import loop
        from newsdl.tasks.loop import Preempted
        from newsdl.tasks.task import Data, Task
        calls = [0]
        def kick(x):
            calls[0] += 1
            # 1 val batch (the untrained model), then 4 steps + 1 val batch per epoch: call 13 is
            # epoch 3's second step.
            if calls[0] == 13:
                os.kill(os.getpid(), signal.SIGUSR1)
            return x
        class Linear(Task):
            name, epochs, batch_size, patience = "linear", 6, 8, 9
            def build(self, data, s, head):
                x = keras.Input((3,), name="x")
                return keras.Model(x, {{"y": keras.layers.Dense(1, name="y")(x)}})
            def losses(self, y, pred, batch):
                err = tf.py_function(kick, [pred["y"][:, 0] - y["y"]], tf.float32)
                return {{"loss": tf.square(err)}}
        rng = np.random.default_rng(0)
        x = rng.normal(size=(40, 3)).astype("float32")
        data = Data({{"x": x}}, {{"y": x.sum(axis=1)}}, {{"train": np.arange(32), "val": np.arange(32, 40)}})
        task = Linear()
        s = {{"epochs": 6, "batch_size": 8, "lr": 0.01, "seed": 1, "patience": 9}}
        run = Path({str(tmp_path / 'run')!r})
        run.mkdir()
        try:
            loop.fit(task, data, s, "default", run, run / "logs", loop.Cluster())
        except Preempted as exc:
            rows = [line.split(",")[0] for line in (run / "history.csv").read_text().splitlines()[1:]]
            print("PREEMPTED", exc.code, rows, tf.train.latest_checkpoint(str(run / "backup")).rsplit("-", 1)[1])
            raise
    """)
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}, timeout=300)
    assert proc.returncode == 75, proc.stderr[-2000:]
    assert "PREEMPTED 75 ['0', '1'] 2" in proc.stdout, proc.stdout
    assert "during epoch 3" in proc.stderr, proc.stderr[-2000:]


@pytest.mark.parametrize("job_id,index,number", [("1234.server", "0", "1234"), ("1234[5].server", "5", "1234"),
                                                 ("1234[].pbs01.example.org", "0", "1234"), ("1234", "0", "1234")])
def test_pbs_log_names_are_the_ones_status_reads(job_id, index, number):
    """bash 5.2 reads `%%[[.]*` as a collating symbol and strips nothing: logs were named
    featurize-1234[5].server_5.out while `newsdl status` looked for featurize-1234_5.out."""
    text = _reference_render("pbs")["featurize.pbs"]
    lines = [line for line in text.splitlines() if line.startswith(("index=", "job="))]
    assert len(lines) == 2, lines
    proc = subprocess.run(["bash", "-c", "set -u\n" + "\n".join(lines) + '\nprintf %s "$job"'],
                          env={"PBS_JOBID": job_id, "PBS_ARRAY_INDEX": index, "PATH": os.environ["PATH"]},
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == f"{number}_{index}"
    from newsdl.hpc.scripts import log_id

    assert log_id(job_id) == number  # what `newsdl submit` records and `newsdl status` looks for


def _status_with_jobs(tmp_path, content: str):
    ws = tmp_path / "ws"
    (ws / "jobs").mkdir(parents=True)
    (ws / "jobs" / "jobs.json").write_text(content)
    return ws, run_cli("status", "-w", ws, env={"PATH": "/nonexistent", "SLURM_CONF": "/nonexistent"})


def test_status_fills_in_the_fields_a_job_lacks(tmp_path):
    ws, proc = _status_with_jobs(tmp_path, json.dumps({"jobs": [{"stage": "ingest"},
                                                                {"stage": "merge", "job_id": 9}]}))
    assert proc.returncode == 0, proc.stderr
    assert re.search(r"ingest\s+unknown\s+job None: no job id recorded", proc.stdout), proc.stdout
    assert re.search(r"merge\s+unknown\s+job 9: the scheduler no longer lists the job", proc.stdout), proc.stdout


@pytest.mark.parametrize("content,message", [
    ("{not json", "not valid JSON"),
    ("[1, 2]", "expected a JSON object with a 'jobs' list, found list"),
    ('{"jobs": {"stage": "ingest"}}', "field 'jobs': expected a list, found dict"),
    ('{"scheduler": "lsf", "jobs": []}', "field 'scheduler': 'lsf' is not slurm or pbs"),
    ('{"jobs": [{"job_id": "7"}]}', "jobs.json:jobs[0]: field 'stage': missing"),
    ('{"jobs": ["ingest"]}', "jobs.json:jobs[0]: expected an object, found str"),
    ('{"jobs": [{"stage": "ingest", "array": "3"}]}', "jobs.json:jobs[0]: field 'array': '3' is not a task count"),
    ('{"jobs": [{"stage": "ingest", "job_id": [7]}]}', "field 'job_id': [7] is not a job id"),
])
def test_a_damaged_jobs_json_is_one_line_naming_the_file(tmp_path, content, message):
    ws, proc = _status_with_jobs(tmp_path, content)
    assert proc.returncode == 2, (proc.stdout, proc.stderr)
    assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    assert str(ws / "jobs" / "jobs.json") in proc.stderr and message in proc.stderr, proc.stderr
