"""`--pretrained-vectors` against pickles (issue 11, item 9): a pickle runs code when it is
loaded, so one is loaded only when the name asks for gensim's native format (`.kv`, `.model`),
with a warning; under any other name it is refused before anything reads it as a pickle."""

from __future__ import annotations

import gzip
import logging
import pickle
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from conftest import run_cli
from newsdl.errors import UserError
from testdata import write_ingest
from newsdl.features.vectors import load_pretrained, looks_like_pickle


class Marker:
    """Unpickling this creates the file ``path``: the stand-in for code an attacker ships."""

    def __init__(self, path: Path):
        self.path = str(path)

    def __reduce__(self):
        return (open, (self.path, "w"))


def _evil(path: Path, marker: Path, protocol: int = pickle.HIGHEST_PROTOCOL) -> Path:
    data = pickle.dumps(Marker(marker), protocol=protocol)
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix == ".gz":
        with gzip.open(path, "wb") as fh:
            fh.write(data)
    else:
        path.write_bytes(data)
    return path


@pytest.mark.parametrize("protocol", range(pickle.HIGHEST_PROTOCOL + 1))
@pytest.mark.parametrize("name", ["glove.6B.50d.txt", "glove.txt", "vectors.bin", "vectors.npy", "vectors.vec",
                                  "GoogleNews-vectors-negative300.bin.gz", "vectors", "folder/embeddings.npy"])
def test_a_pickle_not_named_as_gensim_native_is_refused(tmp_path, name, protocol):
    marker = tmp_path / "MARKER"
    path = _evil(tmp_path / name, marker, protocol)
    if path.suffix == ".npy":  # the .npy + Parquet layout, complete but for the matrix
        pq.write_table(pa.table({"word": ["a"]}), path.with_suffix(".parquet"))
    target = path.parent if name.startswith("folder/") else path
    with pytest.raises(UserError, match=re.escape(f"--pretrained-vectors {path}: a Python pickle")):
        load_pretrained(target)
    assert not marker.exists()


def test_a_pickle_named_like_text_is_refused_by_featurize(tmp_path):
    """The bug report's case, through the CLI: one line, exit 2, no code run."""
    ws = tmp_path / "ws"
    write_ingest(ws, [{"id": "a", "text": "one two three", "split": "train"}], images_root=None)
    marker = tmp_path / "MARKER"
    path = _evil(tmp_path / "glove.6B.50d.txt", marker)
    proc = run_cli("featurize", "-w", ws, "--no-images", "--pretrained-vectors", path)
    assert proc.returncode == 2, proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1 and f"{path}: a Python pickle" in proc.stderr
    assert not marker.exists()


def test_a_gensim_native_pickle_loads_only_by_its_name_and_warns(tmp_path, caplog):
    from gensim.models import KeyedVectors

    kv = KeyedVectors(4)
    kv.add_vectors(["the", "news"], np.eye(2, 4, dtype=np.float32))
    kv.save(str(tmp_path / "vectors.kv"))
    with caplog.at_level(logging.WARNING):
        loaded = load_pretrained(tmp_path / "vectors.kv")
    assert loaded.index_to_key == ["the", "news"]
    assert "is a gensim pickle" in caplog.text and "runs any code" in caplog.text
    # The same bytes under another name: refused.
    (tmp_path / "vectors.txt").write_bytes((tmp_path / "vectors.kv").read_bytes())
    with pytest.raises(UserError, match="a Python pickle"):
        load_pretrained(tmp_path / "vectors.txt")


def test_a_kv_file_in_word2vec_format_is_read_without_unpickling(tmp_path, caplog):
    """The workspace's own word2vec.kv is word2vec binary: a .kv name alone unpickles nothing."""
    from gensim.models import KeyedVectors

    kv = KeyedVectors(4)
    kv.add_vectors(["the", "news"], np.eye(2, 4, dtype=np.float32))
    kv.save_word2vec_format(str(tmp_path / "word2vec.kv"), binary=True)
    with caplog.at_level(logging.WARNING):
        loaded = load_pretrained(tmp_path / "word2vec.kv")
    assert loaded.index_to_key == ["the", "news"] and "pickle" not in caplog.text


def test_a_bin_file_without_a_header_is_a_user_error(tmp_path):
    (tmp_path / "vectors.bin").write_text("the 0.1 0.2\n")
    with pytest.raises(UserError, match=r"vectors.bin: a .bin file without the word2vec binary header"):
        load_pretrained(tmp_path / "vectors.bin")


def test_text_and_binary_vectors_do_not_look_like_pickles(tmp_path):
    from gensim.models import KeyedVectors

    rng = np.random.default_rng(0)
    words = ["the", ",", ".", "of", "N", "c", "cat", "(", "S", "I", "0", "é"]
    kv = KeyedVectors(5)
    kv.add_vectors(words, rng.normal(size=(len(words), 5)).astype(np.float32))
    for binary in (True, False):
        kv.save_word2vec_format(str(tmp_path / "v"), binary=binary)
        assert not looks_like_pickle((tmp_path / "v").read_bytes())
    for k in range(len(words)):  # GloVe text starting with each word
        order = words[k:] + words[:k]
        glove = "".join(f"{w} {' '.join(f'{x:.5f}' for x in kv[w])}\n" for w in order).encode()
        assert not looks_like_pickle(glove), order[0]


def test_numpy_inputs_are_loaded_without_pickles():
    """Every np.load of an input says allow_pickle=False (numpy's default can change per version)."""
    root = Path(__file__).resolve().parents[1] / "newsdl"
    calls = [(p, line) for p in root.rglob("*.py") for line in p.read_text().splitlines() if "np.load(" in line]
    assert calls, "expected the .npy reader"
    for path, line in calls:
        assert "allow_pickle=False" in line, (path, line)


def test_an_object_array_npy_is_refused(tmp_path):
    folder = tmp_path / "layout"
    folder.mkdir()
    np.save(folder / "m.npy", np.array([{"a": 1}, None], dtype=object), allow_pickle=True)
    pq.write_table(pa.table({"word": ["a", "b"]}), folder / "m.parquet")
    with pytest.raises(UserError, match="m.npy"):
        load_pretrained(folder)


def test_loading_a_refused_pickle_in_a_fresh_process_runs_nothing(tmp_path):
    """The pickle calls io.open, which any process can import: nothing but the refusal stops it."""
    marker = tmp_path / "MARKER"
    path = _evil(tmp_path / "glove.txt", marker)
    assert b"open" in path.read_bytes() and b"test_vectors" not in path.read_bytes()
    code = (f"from newsdl.features.vectors import load_pretrained\n"
            f"try:\n    load_pretrained({str(path)!r})\nexcept Exception as e:\n    print(type(e).__name__)\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.stdout.strip() == "UserError", proc.stderr
    assert not marker.exists()
