"""The featurize stage: shards cover every image exactly once, a killed shard resumes without
recomputing its finished chunks, --merge checks the parts, and the CLI end to end."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from conftest import run_cli
from newsdl.errors import UserError
from newsdl.features import merge_shards, run_featurize, shards
from testdata import write_broken_images, write_ingest, write_photos

SMALL = dict(backbone="small_cnn", weights="random", chunk_size=2, batch_size=2)


def _image_ws(path, n_good=9, broken=True):
    root = path / "root"
    names = write_photos(root, n_good, max_side=120)
    if broken:
        bad = list(write_broken_images(root))[:3]
        names = names[:4] + bad + names[4:]
    articles = [{"id": f"a{k}", "text": "words", "split": "train",
                 "images": [{"path": name, "caption": ""} for name in names[k:k + 2]]}
                for k in range(0, len(names), 2)]
    write_ingest(path / "ws", articles, images_root=root)
    return path / "ws"


def _ids(path) -> list[str]:
    return pq.read_table(path, columns=["image_id"]).column("image_id").to_pylist()


def _features(folder) -> dict[str, np.ndarray]:
    out = {}
    for part in sorted(folder.glob("part-*.parquet")):
        table = pq.read_table(part)
        out.update(zip(table.column("image_id").to_pylist(), np.array(table.column("fc7").to_pylist(), np.float32)))
    return out


def test_shards_cover_every_image_exactly_once_and_match_an_unsharded_run(tmp_path):
    ws = _image_ws(tmp_path)
    all_ids = _ids(ws / "ingest" / "images.parquet")
    folder = ws / "features" / "images"
    for i in range(3):
        result = run_featurize(ws, shard=f"{i}/3", **SMALL)["images"]
        assert result["chunks_computed"] == -(-len(all_ids[i::3]) // 2)
        rejected = [json.loads(line)["image_id"] for line in (folder / f"rejected-{i}-of-3.jsonl").read_text().splitlines()]
        assert sorted(_ids(folder / f"part-{i}-of-3.parquet") + rejected) == sorted(all_ids[i::3])
    assert not (ws / "features" / "manifest.json").exists()  # not finished until the merge
    counts = merge_shards(ws)
    assert counts == {"parts": 3, "images": len(all_ids), "featurized": len(all_ids) - 3, "rejected": 3}
    merged = run_featurize(ws, merge=True, text=False)
    assert merged["merge"]["images"] == len(all_ids)
    manifest = json.loads((ws / "features" / "manifest.json").read_text())
    assert sorted(manifest["outputs"]) == ["images/part-0-of-3.parquet", "images/part-1-of-3.parquet",
                                           "images/part-2-of-3.parquet", "images/rejected.jsonl"]
    assert manifest["config"]["images"]["backbone"] == "small_cnn"
    assert manifest["config"]["images"]["preprocessing"]["preprocess_input"].endswith("preprocess_input")
    assert run_featurize(ws, merge=True, text=False)["skipped"] is True
    sharded = _features(folder)

    whole = tmp_path / "whole"
    shutil.copytree(ws, whole)
    shutil.rmtree(whole / "features")
    run_featurize(whole, text=False, **SMALL)
    unsharded = _features(whole / "features" / "images")
    assert sorted(sharded) == sorted(unsharded)
    for image_id, feature in unsharded.items():
        np.testing.assert_allclose(sharded[image_id], feature, rtol=1e-5, atol=1e-6)


def test_merge_refuses_missing_duplicated_and_mismatched_parts(tmp_path):
    ws = _image_ws(tmp_path, n_good=6, broken=False)
    folder = ws / "features" / "images"
    for i in range(2):
        run_featurize(ws, shard=(i, 2), **SMALL)
    parts = {i: folder / f"part-{i}-of-2.parquet" for i in range(2)}
    kept = parts[1].read_bytes()

    parts[1].unlink()
    with pytest.raises(UserError, match=r"1 of 2 shards have no part yet; run `newsdl featurize --shard I/2` for 1/2"):
        merge_shards(ws)

    part0 = pq.read_table(parts[0])
    meta = pq.read_metadata(parts[0]).metadata
    pq.write_table(pa.concat_tables([part0, part0.slice(0, 1)]).replace_schema_metadata(meta), parts[1])
    with pytest.raises(UserError, match="appear more than once"):
        merge_shards(ws)
    parts[1].write_bytes(kept)
    pq.write_table(pq.read_table(parts[0]).slice(1).replace_schema_metadata(meta), parts[0])
    with pytest.raises(UserError, match="are missing"):
        merge_shards(ws)

    run_featurize(ws, shard="0/2", **{**SMALL, "image_size": 64})
    with pytest.raises(UserError, match="made with other image settings"):
        merge_shards(ws)

    with pytest.raises(UserError, match="--shard 2/2: expected I/N"):
        run_featurize(ws, shard="2/2", **SMALL)
    with pytest.raises(UserError, match="--shard processes images only"):
        run_featurize(ws, shard="0/2", text=True, **SMALL)


def test_a_killed_shard_resumes_without_recomputing_finished_chunks(tmp_path, monkeypatch):
    ws = _image_ws(tmp_path, n_good=9, broken=True)  # 12 images: 6 chunks of 2
    chunks = ws / "features" / "images" / ".chunks-0-of-1"
    # VGG16 on 2 CPU cores takes about half a second per chunk: time enough to kill between chunks.
    args = ["--no-text", "--backbone", "vgg16", "--weights", "random", "--chunk-size", "2", "--batch-size", "2",
            "--shard", "0/1"]
    job = subprocess.Popen([sys.executable, "-m", "newsdl", "featurize", "-w", str(ws), *args],
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 300
    while not (chunks / "chunk-000000.parquet").exists():
        assert job.poll() is None and time.monotonic() < deadline, "the shard ended before its first chunk"
        time.sleep(0.01)
    os.kill(job.pid, signal.SIGKILL)
    job.wait()
    finished = {int(p.stem.split("-")[1]): p.stat().st_mtime_ns for p in chunks.glob("chunk-*.parquet")}
    assert 1 <= len(finished) < 6
    assert not (ws / "features" / "images" / "part-0-of-1.parquet").exists()

    written, untouched = [], []
    write, finalize = shards.ChunkStore.write, shards.ChunkStore.finalize

    def spy_write(store, k, table):
        written.append(k)
        write(store, k, table)

    def spy_finalize(store, *args, **kwargs):
        untouched.append(all(store.path(k).stat().st_mtime_ns == ns for k, ns in finished.items()))
        return finalize(store, *args, **kwargs)

    monkeypatch.setattr(shards.ChunkStore, "write", spy_write)
    monkeypatch.setattr(shards.ChunkStore, "finalize", spy_finalize)
    result = run_featurize(ws, shard="0/1", backbone="vgg16", weights="random", chunk_size=2, batch_size=2)["images"]
    assert sorted(written) == sorted(set(range(6)) - set(finished))  # finished chunks were not recomputed
    assert untouched == [True]  # nor rewritten
    assert (result["chunks_reused"], result["chunks_computed"]) == (len(finished), 6 - len(finished))
    assert (result["images"], result["featurized"], result["rejected"]) == (12, 9, 3)
    assert not chunks.exists() and not list((ws / "features" / "images").glob(".tmp-*"))

    # Chunks from the killed process and from this one are the same network's features.
    from newsdl.features import images as img
    from newsdl.features.backbones import get_backbone, resolve_weights

    ext = img.build_extractor(get_backbone("vgg16"), resolve_weights("random", get_backbone("vgg16")))
    table = pq.read_table(ws / "ingest" / "images.parquet")
    root = ws.parent / "root"
    expected = {image_id: f for image_id, (f, _) in zip(table.column("image_id").to_pylist(), img.featurize_paths(
        ext, root, table.column("path").to_pylist(), 4)) if f is not None}
    got = _features(ws / "features" / "images")
    assert sorted(got) == sorted(expected)
    for image_id in expected:
        np.testing.assert_allclose(got[image_id], expected[image_id], rtol=1e-4, atol=1e-5)


def test_max_images_caps_the_scope(tmp_path):
    ws = _image_ws(tmp_path, n_good=6, broken=False)
    result = run_featurize(ws, text=False, max_images=4, **SMALL)
    assert result["merge"] == {"parts": 1, "images": 4, "featurized": 4, "rejected": 0}
    assert _ids(ws / "features" / "images" / "part-0-of-1.parquet") == _ids(ws / "ingest" / "images.parquet")[:4]


def test_featurize_cli_on_the_ingested_sample_corpus(ingested_workspace, tmp_path):
    ws = tmp_path / "ws"
    shutil.copytree(ingested_workspace, ws)
    args = ["featurize", "-w", ws, "--backbone", "small_cnn", "--weights", "random", "--vector-size", "32",
            "--epochs", "2", "--min-count", "2"]
    first = run_cli(*args)
    assert first.returncode == 0, first.stderr
    n_articles = pq.read_metadata(ws / "ingest" / "articles.parquet").num_rows
    n_images = pq.read_metadata(ws / "ingest" / "images.parquet").num_rows
    assert f"text: {n_articles} articles" in first.stdout
    assert f"images: {n_images} images, " in first.stdout and "parts" not in first.stdout
    assert "images/s" in first.stderr  # throughput is logged
    manifest = json.loads((ws / "features" / "manifest.json").read_text())
    assert manifest["stage"] == "features" and manifest["counts"]["articles"] == n_articles
    assert {i["path"] for i in manifest["inputs"]} == {"ingest/articles.parquet", "ingest/images.parquet"}
    text = pq.read_table(ws / "features" / "text.parquet")
    assert text.num_rows == n_articles and text.schema.field("w2v_mean").type == pa.list_(pa.float32(), 32)
    assert len(_features(ws / "features" / "images")) + manifest["counts"]["images_rejected"] == n_images

    again = run_cli(*args)
    assert again.returncode == 0 and "up to date, nothing done" in again.stdout

    for bad, message in ((["--shard", "0/2", "--text"], "--shard processes images only"),
                         (["--shard", "1/1"], "--shard 1/1: expected I/N"),
                         (["--max-tokens", "0"], "--max-tokens 0: must be at least 1"),
                         (["--backbone", "alexnet"], "--backbone alexnet: unknown"),
                         (["auto"], "unexpected argument 'auto'")):
        out = run_cli(*args, *bad)
        assert out.returncode == 2, (bad, out.stderr)
        assert out.stderr.strip().splitlines() == [f"newsdl: error: {out.stderr.split('error: ', 1)[1].strip()}"]
        assert message in out.stderr
