"""The CLI's fast paths, the sample corpus generator, `status` and `demo`."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

from conftest import run_cli
from newsdl.sample.corpus import write_corpus


def _digest(folder: Path) -> dict[str, str]:
    return {p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def test_version_and_help_do_not_import_tensorflow():
    code = ("import sys; from newsdl.cli import app; "
            "print('tensorflow' in sys.modules, 'pandas' in sys.modules, 'pyarrow' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["False", "False", "False"]
    result = run_cli("--version")
    assert result.returncode == 0 and result.stdout.startswith("newsdl ")
    assert run_cli("-V").stdout == result.stdout
    assert run_cli("--help").returncode == 0


def test_unknown_command_is_usage_error():
    result = run_cli("no-such-command")
    assert result.returncode == 2 and "Traceback" not in result.stderr


def test_sample_corpus_is_deterministic_for_a_seed(tmp_path):
    write_corpus(tmp_path / "a", n_articles=15, seed=3)
    write_corpus(tmp_path / "b", n_articles=15, seed=3)
    write_corpus(tmp_path / "c", n_articles=15, seed=4)
    a, b, c = (_digest(tmp_path / x) for x in "abc")
    assert a == b
    assert a["articles.jsonl"] != c["articles.jsonl"]
    assert any(name.endswith(".png") for name in a) and any(name.endswith(".jpg") for name in a)


def test_sample_corpus_cli_and_bad_count(tmp_path):
    ok = run_cli("sample-corpus", tmp_path / "out", "--articles", "5", "--no-images")
    assert ok.returncode == 0, ok.stderr
    assert len((tmp_path / "out" / "articles.jsonl").read_text().splitlines()) == 5
    bad = run_cli("sample-corpus", tmp_path / "out2", "--articles", "0")
    assert bad.returncode == 2 and "--articles 0" in bad.stderr


def test_status_reports_each_stage(ingested_workspace, tmp_path):
    result = run_cli("status", "-w", ingested_workspace)
    assert result.returncode == 0
    lines = {line.split()[0]: line.split()[1] for line in result.stdout.splitlines()[1:]}
    assert lines["ingest"] == "done" and lines["features"] in ("pending", "done")
    (tmp_path / "ingest").mkdir()
    (tmp_path / "ingest" / "articles.parquet").write_bytes(b"partial")
    assert "incomplete" in run_cli("status", "-w", tmp_path).stdout
    as_json = json.loads(run_cli("status", "-w", ingested_workspace, "--json").stdout)
    assert as_json["workspace"] == str(ingested_workspace) and as_json["jobs"] == []
    assert {r["stage"]: r["state"] for r in as_json["stages"]}["ingest"] == "done"
    missing = run_cli("status", "-w", tmp_path / "nonexistent")
    assert missing.returncode == 2 and "no such workspace folder" in missing.stderr


def test_status_flags_metrics_older_than_their_model(tmp_path):
    from newsdl import workspace
    from newsdl.status import stage_states

    folder = tmp_path / "models" / "source"
    folder.mkdir(parents=True)
    (folder / "metrics.json").write_text("{}")
    (folder / "model.keras").write_bytes(b"model")
    workspace.write_manifest(folder, "train", inputs=[], config={}, counts={}, outputs=["model.keras"],
                             started=workspace.now())
    old = (folder / "model.keras").stat().st_mtime_ns - 10**9
    os.utime(folder / "metrics.json", ns=(old, old))
    row = {r["stage"]: r for r in stage_states(tmp_path)}["models/source"]
    assert row["state"] == "stale" and "older than the model" in row["detail"]
    os.utime(folder / "metrics.json", ns=(old + 2 * 10**9, old + 2 * 10**9))
    assert "older" not in {r["stage"]: r for r in stage_states(tmp_path)}["models/source"]["detail"]


def test_demo_runs_end_to_end(tmp_path):
    result = run_cli("demo", "-w", tmp_path / "ws", "--articles", "40")
    assert result.returncode == 0, result.stderr[-3000:]
    assert "articles accepted" in result.stdout
    assert (tmp_path / "ws" / "ingest" / "manifest.json").is_file()
    # Every stage ran (TensorFlow training, caption metrics through java): none of the libraries'
    # notices reach the user without --verbose.
    for noise in ("cuInit", "oneDNN", "cuda drivers", "retracing", "use_unbounded_threadpool", "PTBTokenizer",
                  "absl::InitializeLog", "Traceback"):
        assert noise not in result.stdout + result.stderr, noise
    again = run_cli("demo", "-w", tmp_path / "ws", "--articles", "40")
    assert again.returncode == 0 and "up to date" in again.stderr


# ------------------------------------------------------------------ help, choices, flags (issue 14)

def _help(*command: str) -> str:
    result = run_cli(*command, "--help")
    assert result.returncode == 0, result.stderr
    return result.stdout


def test_choices_are_listed_completed_and_refused_in_one_line(tmp_path):
    assert "--backbone [vgg16|vgg19|resnet50|mobilenet_v3_small|small_cnn]" in _help("featurize")
    assert "--scheduler [slurm|pbs]" in _help("submit")
    assert "vgg16, vgg19, resnet50, mobilenet_v3_small" in _help("models", "pull")
    for words, expected in ((["featurize", "--backbone", "v"], ["vgg16", "vgg19"]),
                            (["submit", "--scheduler", ""], ["slurm", "pbs"])):
        env = {"_NEWSDL_COMPLETE": "complete_bash", "COMP_WORDS": " ".join(["newsdl", *words]),
               "COMP_CWORD": str(len(words))}
        completed = run_cli(env=env)
        assert completed.stdout.split() == expected, (words, completed.stdout, completed.stderr)
    (tmp_path / "a.jsonl").write_text('{"id": "1", "text": "x"}\n')
    for command, message in ((["models", "pull", "alexnet"], "models pull alexnet: unknown"),
                             (["submit", tmp_path / "a.jsonl", "-w", tmp_path / "ws", "--scheduler", "lsf",
                               "--dry-run"], "--scheduler lsf: choose slurm or pbs")):
        result = run_cli(*command)
        assert result.returncode == 2, result.stderr
        assert result.stderr.strip().splitlines() == [f"newsdl: error: {result.stderr.split('error: ', 1)[1].strip()}"]
        assert message in result.stderr


def test_booleans_are_plain_flags():
    featurize = _help("featurize")
    assert "Usage: newsdl featurize [OPTIONS]\n" in featurize and "[auto]" not in featurize
    assert "<bool>" not in featurize and "--no-force" not in featurize
    assert any(line.split()[:1] == ["--gpu"] for line in featurize.splitlines())
    ingest = _help("ingest")
    assert "--no-strict" not in ingest and "--no-force" not in ingest and "<bool>" not in ingest
    submit = _help("submit")
    assert "<bool>" not in submit
    assert any(line.split()[:1] == ["--dry-run"] for line in submit.splitlines())
    assert "--no-force" not in _help("demo") and "<bool>" not in _help("ops", "build")


def test_help_shows_every_default():
    """Every option of these commands with a default shows it, the ones typer cannot show (None
    standing for "the config's" or "$NEWSDL_WORKSPACE") in their help text."""
    import typer

    from newsdl.cli import app

    root = typer.main.get_command(app)
    ctx = root.make_context("newsdl", ["doctor"], resilient_parsing=True)
    missing = []
    for path in (["ingest"], ["sample-corpus"], ["demo"], ["status"], ["doctor"], ["featurize"], ["submit"],
                 ["models", "pull"], ["ops", "build"]):
        command = root
        for name in path:
            command = command.get_command(ctx, name)
        sub = command.make_context(" ".join(path), [], resilient_parsing=True, parent=ctx)
        for param in command.params:
            record = param.get_help_record(sub)
            if param.param_type_name != "option" or record is None or "--help" in record[0]:
                continue
            flag_off = getattr(param, "is_flag", False) and not param.secondary_opts and param.default is False
            if param.default in (None, []) and "default:" not in record[1]:
                # None must mean something: say what, unless the option is a switch or a repeatable
                if not (param.multiple or param.name in ("pretrained_vectors", "config", "weights")):
                    missing.append(f"{' '.join(path)} {record[0]}")
            elif not flag_off and param.default not in (None, []) and "default:" not in record[1]:
                missing.append(f"{' '.join(path)} {record[0]}")
    assert missing == []
    assert "[default: 2000]" in _help("sample-corpus") and "[default: 1234]" in _help("demo")
    assert "[default: $NEWSDL_WORKSPACE or ./newsdl-work]" in " ".join(_help("featurize").split())


def test_short_version_flag():
    from newsdl import __version__

    result = run_cli("-V")
    assert result.returncode == 0 and result.stdout == f"newsdl {__version__}\n"


def test_ingest_summary_is_sentences(tmp_path):
    records = [{"id": f"a{i}", "text": f"Story {i}.", "split": split}
               for i, split in enumerate(["train"] * 3 + ["val", "test"])] + [{"id": "bad"}]
    (tmp_path / "a.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    result = run_cli("ingest", tmp_path / "a.jsonl", "-w", tmp_path / "ws")
    assert result.returncode == 0, result.stderr
    assert "{" not in result.stdout and "[" not in result.stdout, result.stdout
    assert "6 records read: 5 accepted, 1 rejected" in result.stdout
    assert "splits: 3 train, 1 val, 1 test" in result.stdout


def test_doctor_checks_java_and_the_cached_weights_without_downloading(tmp_path):
    bin_dir, keras = tmp_path / "bin", tmp_path / "keras"
    bin_dir.mkdir()
    (bin_dir / "java").write_text('#!/bin/sh\necho \'openjdk version "99.0.1" 2031-01-01\' >&2\n')
    (bin_dir / "java").chmod(0o755)
    (keras / "models").mkdir(parents=True)
    cached = keras / "models" / "vgg16_weights_tf_dim_ordering_tf_kernels.h5"
    cached.write_bytes(b"weights")
    result = run_cli("doctor", env={"PATH": str(bin_dir), "KERAS_HOME": str(keras)})
    assert result.returncode == 0, result.stderr
    rows = {line[:26].strip(): line[26:].strip() for line in result.stdout.splitlines()}
    assert rows["java"] == f'openjdk version "99.0.1" 2031-01-01 ({bin_dir / "java"})'
    assert rows["weights vgg16"] == f"cached ({cached})"
    assert rows["weights resnet50"] == "not cached: run `newsdl models pull resnet50`"
    assert set(rows) >= {"weights vgg19", "weights mobilenet_v3_small", "weights small_cnn"}
    assert [p.name for p in (keras / "models").iterdir()] == [cached.name]  # nothing downloaded
    (bin_dir / "java").unlink()
    rows = {line[:26].strip(): line[26:].strip() for line in run_cli(
        "doctor", env={"PATH": str(bin_dir), "KERAS_HOME": str(keras)}).stdout.splitlines()}
    assert rows["java"].startswith("not found on PATH")
