"""The workspace: where stages live, how they write atomically, and their manifests.

A stage writes every file under a temporary name and renames it into place, then writes
``manifest.json`` last. A stage folder without a manifest is unfinished and is redone; a
manifest whose inputs and config match the current ones means the stage is up to date.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import hashlib
import json
import os
import platform
import socket
import tempfile
from importlib import metadata
from pathlib import Path
from typing import Any, Iterator

from newsdl import defaults

MANIFEST = "manifest.json"
TMP_PREFIX = ".tmp-"
_VERSIONED = ("newsdl", "tensorflow", "tensorflow-cpu", "keras", "numpy", "pyarrow", "pandas",
              "gensim", "scikit-learn", "pillow")


def resolve(workspace: str | os.PathLike | None) -> Path:
    """The workspace folder: the argument, else $NEWSDL_WORKSPACE, else ./newsdl-work."""
    chosen = workspace or os.environ.get("NEWSDL_WORKSPACE") or defaults.WORKSPACE
    return Path(chosen).expanduser().resolve()


def stage_dir(workspace: Path, stage: str) -> Path:
    return workspace / stage


@contextlib.contextmanager
def atomic_path(final: Path) -> Iterator[Path]:
    """Yield a temporary path beside ``final``; rename it onto ``final`` only on success."""
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=TMP_PREFIX + final.name + ".", dir=final.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    os.chmod(tmp_path, 0o666 & ~_umask())
    try:
        yield tmp_path
        _fsync(tmp_path)
        os.replace(tmp_path, final)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _fsync(path: Path) -> None:
    with open(path, "rb") as fh:
        os.fsync(fh.fileno())


def write_text(final: Path, text: str) -> None:
    with atomic_path(final) as tmp:
        tmp.write_text(text, encoding="utf-8")


def write_json(final: Path, obj: Any) -> None:
    write_text(final, json.dumps(obj, indent=2, sort_keys=False, default=str) + "\n")


def clean_temporaries(folder: Path) -> int:
    """Remove what a killed run left under temporary names; return how many were removed."""
    removed = 0
    if folder.is_dir():
        for leftover in folder.glob(TMP_PREFIX + "*"):
            if leftover.is_file():
                leftover.unlink(missing_ok=True)
                removed += 1
    return removed


def sha256_file(path: Path, chunk: int = 8 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def versions() -> dict[str, str]:
    found = {"python": platform.python_version()}
    for name in _VERSIONED:
        with contextlib.suppress(metadata.PackageNotFoundError):
            found[name] = metadata.version(name)
    return found


def read_json(path: Path):
    """A JSON file's content, or None when it is missing or unreadable (a killed writer's leftovers
    never reach a final name, so unreadable means absent here)."""
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return None


def read_manifest(folder: Path) -> dict | None:
    return read_json(folder / MANIFEST)


def invalidate(folder: Path) -> None:
    """Mark a stage unfinished before replacing any of its files."""
    (folder / MANIFEST).unlink(missing_ok=True)


def write_manifest(folder: Path, stage: str, *, inputs: list[dict], config: dict,
                   counts: dict, outputs: list[str], started: str, extra: dict | None = None) -> dict:
    manifest = {
        "stage": stage,
        "inputs": inputs,
        "config": config,
        "counts": counts,
        "outputs": {name: {"sha256": sha256_file(folder / name), "bytes": (folder / name).stat().st_size}
                    for name in outputs},
        "versions": versions(),
        "host": socket.gethostname(),
        "started": started,
        "finished": now(),
    }
    if extra:
        manifest.update(extra)
    write_json(folder / MANIFEST, manifest)
    return manifest


def is_up_to_date(folder: Path, inputs: list[dict], config: dict) -> bool:
    """True when the stage finished before with the same input hashes and the same config,
    and its outputs are still the files it wrote."""
    previous = read_manifest(folder)
    if previous is None:
        return False
    if previous.get("config") != config:
        return False
    if [i.get("sha256") for i in previous.get("inputs", [])] != [i.get("sha256") for i in inputs]:
        return False
    for name, meta in previous.get("outputs", {}).items():
        path = folder / name
        if not path.is_file() or path.stat().st_size != meta.get("bytes"):
            return False
    return True
