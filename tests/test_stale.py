"""Stages and their records (issue 11): stale upstream output is refused, a damaged output is
noticed by its hash, a failed ingest keeps the good workspace it found, two runs never write one
stage at once, damaged manifests and tiny corpora are user errors, not crashes."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time

import pytest

from conftest import ROOT, run_cli

FAST_TEXT = ("--no-images", "--vector-size", "8", "--min-count", "1", "--epochs", "1")
TRAIN_FAST = ("--epochs", "1", "--batch-size", "16")


def _articles(n: int, *, prefix: str = "a", split: str | None = None, sources=("bbc", "wapo")) -> list[dict]:
    words = ["rain", "market", "vote", "match", "storm", "bank", "court", "film"]
    out = []
    for i in range(n):
        source = sources[i % len(sources)]
        text = f"{source} reports {words[i % 8]} {words[(i * 3) % 8]} news number {i} from {source} desk"
        record = {"id": f"{prefix}{i}", "text": text, "source": source, "lat": 10.0 + i % 7, "lon": 20.0 + i % 5,
                  "comments": i % 13}
        if split:
            record["split"] = split
        out.append(record)
    return out


def _write(path, records) -> str:
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    return str(path)


def _ok(result) -> None:
    assert result.returncode == 0, result.stderr[-2000:]


def _user_error(result, *needles) -> str:
    assert result.returncode == 2, (result.returncode, result.stderr[-2000:])
    assert "Traceback" not in result.stderr
    line = result.stderr.strip().splitlines()[-1]
    for needle in needles:
        assert needle in result.stderr, (needle, result.stderr[-2000:])
    return line


@pytest.fixture(scope="module")
def text_workspace(tmp_path_factory):
    """Corpus A ingested and featurized (text only), with source trained: the base every test copies."""
    base = tmp_path_factory.mktemp("stale")
    ws = base / "ws"
    _ok(run_cli("ingest", _write(base / "a.jsonl", _articles(80)), "-w", ws))
    _ok(run_cli("featurize", "-w", ws, *FAST_TEXT))
    _ok(run_cli("train", "source", "-w", ws, *TRAIN_FAST))
    return ws


def _copy(ws, tmp_path):
    return shutil.copytree(ws, tmp_path / "ws")


def test_features_of_another_ingest_are_refused_not_used(text_workspace, tmp_path):
    ws = _copy(text_workspace, tmp_path)
    # Corpus B shares ids with A but not their texts: A's features would be joined to B's articles.
    b = _articles(80, sources=("guardian", "yahoo", "smh"))
    _ok(run_cli("ingest", _write(tmp_path / "b.jsonl", b), "-w", ws))
    _user_error(run_cli("train", "popularity", "-w", ws, *TRAIN_FAST), "stale", "newsdl featurize")
    # The model trained on A is stale too: evaluate names the stage to rerun.
    _user_error(run_cli("evaluate", "source", "-w", ws), "stale", "newsdl train source")
    _ok(run_cli("featurize", "-w", ws, *FAST_TEXT))
    _ok(run_cli("train", "popularity", "-w", ws, *TRAIN_FAST))


def test_a_same_size_corruption_is_caught_by_its_hash(text_workspace, tmp_path):
    ws = _copy(text_workspace, tmp_path)
    text = ws / "features" / "text.parquet"
    data = bytearray(text.read_bytes())
    middle = len(data) // 2
    data[middle:middle + 64] = bytes(b ^ 0xFF for b in data[middle:middle + 64])
    text.write_bytes(bytes(data))
    line = _user_error(run_cli("train", "popularity", "-w", ws, *TRAIN_FAST), "text.parquet", "sha256")
    assert "newsdl featurize --force" in line
    # featurize no longer calls itself up to date: it redoes the damaged stage.
    redo = run_cli("featurize", "-w", ws, *FAST_TEXT)
    _ok(redo)
    assert "up to date" not in redo.stderr + redo.stdout

    model = ws / "models" / "source" / "model.keras"
    data = bytearray(model.read_bytes())
    data[100:164] = bytes(64)
    model.write_bytes(bytes(data))
    for command in (("evaluate", "source"), ("predict", "source", _write(tmp_path / "new.jsonl", _articles(3)))):
        _user_error(run_cli(*command, "-w", ws), "model.keras")


def test_a_failed_ingest_leaves_the_good_workspace_as_it_was(text_workspace, tmp_path):
    ws = _copy(text_workspace, tmp_path)
    before = {p.name: p.read_bytes() for p in (ws / "ingest").iterdir() if p.is_file() and not p.name.startswith(".")}
    bad = _articles(5, prefix="z")
    bad[2]["lat"] = 400
    _user_error(run_cli("ingest", _write(tmp_path / "bad.jsonl", bad), "-w", ws, "--strict"), "lat")
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n", encoding="utf-8")
    _user_error(run_cli("ingest", str(empty), "-w", ws), "no valid article")
    all_bad = [{"id": f"x{i}", "text": ""} for i in range(4)]
    _user_error(run_cli("ingest", _write(tmp_path / "allbad.jsonl", all_bad), "-w", ws), "no valid article")
    after = {p.name: p.read_bytes() for p in (ws / "ingest").iterdir() if p.is_file() and not p.name.startswith(".")}
    assert after == before
    status = run_cli("status", "-w", ws)
    assert "incomplete" not in status.stdout, status.stdout
    _ok(run_cli("evaluate", "source", "-w", ws))


def test_a_second_run_on_one_stage_is_refused_and_names_the_first(tmp_path):
    from newsdl import workspace

    src = _write(tmp_path / "a.jsonl", _articles(30))
    ws = tmp_path / "ws"
    with workspace.stage_lock(ws / "ingest", "ingest a.jsonl"):
        line = _user_error(run_cli("ingest", src, "-w", ws), "another `newsdl ingest a.jsonl`")
        assert f"pid {__import__('os').getpid()}" in line
    _ok(run_cli("ingest", src, "-w", ws))


def test_concurrent_ingests_never_break_each_other(tmp_path):
    big = _articles(3000)
    for r in big:
        r["text"] = r["text"] * 20
    sources = [_write(tmp_path / f"in{k}.jsonl", big[k::2] + big[:50]) for k in range(2)]
    ws = tmp_path / "ws"
    for attempt in range(3):
        procs = [subprocess.Popen([sys.executable, "-m", "newsdl", "ingest", src, "-w", str(ws), "--force"],
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT)
                 for src in sources]
        results = [(p.wait(timeout=300), p.stderr.read()) for p in procs]
        codes = sorted(code for code, _ in results)
        assert all(code in (0, 2) for code in codes), results
        assert 0 in codes, results
        for code, err in results:
            if code == 2:
                assert "another `newsdl ingest" in err, err
        from newsdl import workspace

        assert workspace.require_stage(ws / "ingest", "") is not None
        assert not list((ws / "ingest").glob(".tmp-*"))


def test_damaged_or_missing_feature_records_are_refused(text_workspace, tmp_path):
    ws = _copy(text_workspace, tmp_path)
    manifest = ws / "features" / "manifest.json"
    good = manifest.read_text(encoding="utf-8")
    manifest.write_text(good[: len(good) // 2], encoding="utf-8")
    _user_error(run_cli("train", "popularity", "-w", ws, *TRAIN_FAST), "features/manifest.json", "unreadable")
    manifest.write_text("[1, 2, 3]", encoding="utf-8")
    _user_error(run_cli("train", "popularity", "-w", ws, *TRAIN_FAST), "features/manifest.json", "not a newsdl")
    manifest.write_text(good, encoding="utf-8")
    (ws / "features" / "text.parquet").unlink()
    _user_error(run_cli("train", "popularity", "-w", ws, *TRAIN_FAST), "text.parquet", "missing")
    shutil.rmtree(ws / "features")
    _user_error(run_cli("train", "popularity", "-w", ws, *TRAIN_FAST), "no finished featurize stage")
    # Asked for explicitly, the text's own bag of words still trains.
    _ok(run_cli("train", "popularity", "-w", ws, *TRAIN_FAST, "--features", "bow"))


@pytest.mark.parametrize("task", ["source", "geoloc", "popularity"])
def test_a_tiny_corpus_is_a_user_error_naming_the_minimum(tmp_path, task):
    ws = tmp_path / "ws"
    _ok(run_cli("ingest", _write(tmp_path / "tiny.jsonl", _articles(3, split="train")), "-w", ws))
    _ok(run_cli("featurize", "-w", ws, *FAST_TEXT))
    line = _user_error(run_cli("train", task, "-w", ws, *TRAIN_FAST), "at least 10")
    assert "3 labelled articles" in line


def test_a_corpus_without_val_split_holds_out_part_of_train(tmp_path):
    from newsdl import defaults
    from newsdl.tasks.task import split_rows
    import numpy as np

    n = defaults.MIN_TRAIN
    rows = split_rows(np.array(["train"] * n), np.ones(n, bool), seed=1)
    assert len(rows["val"]) == 1 and len(rows["train"]) == n - 1
    assert not set(rows["val"]) & set(rows["train"])
    # Per image (caption, illustrate): whole articles are held out, never half of one's images.
    articles = np.repeat([f"a{i}" for i in range(2 * n)], 3)
    rows = split_rows(np.array(["train"] * len(articles)), np.ones(len(articles), bool), seed=1, groups=articles,
                      unit="images")
    held = set(articles[rows["val"]])
    assert len(held) == 2 and len(rows["val"]) == 6 and len(rows["train"]) == len(articles) - 6
    assert not held & set(articles[rows["train"]])


def test_workspace_that_is_a_file_is_a_user_error(tmp_path):
    target = tmp_path / "notafolder"
    target.write_text("x", encoding="utf-8")
    for command in (("status",), ("featurize",), ("train", "source")):
        _user_error(run_cli(*command, "-w", target), "must be a folder")


def test_a_changed_image_is_skipped_by_featurize_and_makes_ingest_redo(sample_corpus, tmp_path):
    corpus = shutil.copytree(sample_corpus, tmp_path / "corpus")
    ws = tmp_path / "ws"
    _ok(run_cli("ingest", corpus / "articles.jsonl", "-w", ws))
    again = run_cli("ingest", corpus / "articles.jsonl", "-w", ws)
    _ok(again)
    assert "up to date" in again.stdout + again.stderr
    image = next(p for p in sorted((corpus / "images").iterdir()) if p.suffix in (".jpg", ".png"))
    data = image.read_bytes()
    time.sleep(0.01)
    image.write_bytes(data + b"\0")  # trailing padding: still a valid image, but not the one checked
    result = run_cli("featurize", "-w", ws, "--no-text", "--backbone", "small_cnn", "--weights", "random",
                     "--image-size", "32")
    _ok(result)
    assert "changed or were deleted since ingest" in result.stderr and image.name in result.stderr
    rejected = [json.loads(line) for line in (ws / "features" / "images" / "rejected.jsonl").read_text().splitlines()]
    assert [r["path"] for r in rejected if "image_changed" in r["reason"]] == [f"images/{image.name}"]
    redo = run_cli("ingest", corpus / "articles.jsonl", "-w", ws)
    _ok(redo)
    assert "up to date" not in redo.stdout + redo.stderr
