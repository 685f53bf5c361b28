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
from newsdl.errors import UserError

MANIFEST = "manifest.json"
TMP_PREFIX = ".tmp-"
LOCK = ".lock"
# The command that redoes each stage, for messages that say what to rerun.
RERUN = {"ingest": "newsdl ingest INPUT... --force", "features": "newsdl featurize --force"}
_VERSIONED = ("newsdl", "tensorflow", "tensorflow-cpu", "keras", "numpy", "pyarrow", "pandas",
              "gensim", "scikit-learn", "pillow")


def resolve(workspace: str | os.PathLike | None) -> Path:
    """The workspace folder: the argument, else $NEWSDL_WORKSPACE, else ./newsdl-work."""
    chosen = workspace or os.environ.get("NEWSDL_WORKSPACE") or defaults.WORKSPACE
    path = Path(chosen).expanduser().resolve()
    if path.exists() and not path.is_dir():
        raise UserError(f"{path}: the workspace must be a folder, and this is a file (-w / $NEWSDL_WORKSPACE)")
    return path


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


class StagedFiles:
    """A stage's new outputs under temporary names, which replace the old outputs together, on
    ``commit``. Until then the previous finished stage (files and manifest) stays intact, so a run
    that fails validation, or is killed, leaves a good workspace as it was."""

    def __init__(self, folder: Path):
        self.folder = Path(folder)
        self.pending: dict[str, Path] = {}

    def path(self, name: str) -> Path:
        self.folder.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=TMP_PREFIX + name + ".", dir=self.folder)
        os.close(fd)
        os.chmod(tmp, 0o666 & ~_umask())
        self.pending[name] = Path(tmp)
        return Path(tmp)

    def commit(self) -> None:
        for tmp in self.pending.values():
            _fsync(tmp)
        # The manifest goes first: between here and the new manifest, the folder reads unfinished.
        invalidate(self.folder)
        for name, tmp in self.pending.items():
            os.replace(tmp, self.folder / name)
        self.pending.clear()

    def discard(self) -> None:
        for tmp in self.pending.values():
            tmp.unlink(missing_ok=True)
        self.pending.clear()


@contextlib.contextmanager
def staged(folder: Path) -> Iterator[StagedFiles]:
    files = StagedFiles(folder)
    try:
        yield files
    finally:
        files.discard()


@contextlib.contextmanager
def stage_lock(folder: Path, command: str, name: str = "") -> Iterator[None]:
    """Hold the stage folder for one run: two runs writing one stage would delete each other's
    temporaries and mix their outputs. A second run stops at once (exit 2) and says who holds it;
    the OS releases the lock of a killed run. ``name`` tells apart locks that share a folder (the
    image shards of one featurize)."""
    from filelock import FileLock, Timeout

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    lock_path, owner_path = folder / (LOCK + name), folder / (LOCK + name + "-owner.json")
    lock = FileLock(str(lock_path))
    try:
        lock.acquire(timeout=0)
    except Timeout:
        owner = read_json(owner_path)
        owner = owner if isinstance(owner, dict) else {}
        raise UserError(f"{folder}: another `newsdl {owner.get('command', command)}` is writing this stage "
                        f"(pid {owner.get('pid', '?')} on {owner.get('host', '?')}, since "
                        f"{owner.get('since', '?')}); wait for it to finish or stop it, then rerun") from None
    try:
        write_json(owner_path, {"command": command, "pid": os.getpid(), "host": socket.gethostname(),
                                "since": now()})
        yield
    finally:
        owner_path.unlink(missing_ok=True)
        lock.release()


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
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return None


def read_manifest(folder: Path, name: str = MANIFEST) -> dict | None:
    """The stage's manifest, or None when the stage is unfinished (a manifest that is missing,
    unparsable or not a JSON object counts as unfinished: the stage is redone). ``name``: the
    record's file, for a stage that shares its folder (evaluate, in models/TASK/)."""
    manifest = read_json(folder / name)
    return manifest if isinstance(manifest, dict) else None


def rerun_hint(folder: Path, manifest: dict | None = None) -> str:
    stage = (manifest or {}).get("stage") or folder.name
    if stage == "train" or folder.parent.name == "models":
        return f"newsdl train {(manifest or {}).get('task') or folder.name} --force"
    return RERUN.get(stage, f"newsdl {stage} --force")


def require_stage(folder: Path, missing_hint: str) -> dict:
    """The manifest of a finished upstream stage whose outputs are still the files it wrote.

    Raises UserError naming the file and the command to rerun when the stage is unfinished, its
    manifest is damaged, or an output was deleted or changed since (by sha256; size and mtime
    first, so an untouched file is not read again).
    """
    path = Path(folder) / MANIFEST
    if not path.is_file():
        raise UserError(f"{folder}: no finished {Path(folder).name} stage (manifest.json missing); {missing_hint}")
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise UserError(f"{path}: unreadable manifest ({exc}); rerun `{rerun_hint(Path(folder))}`") from None
    if not isinstance(manifest, dict) or not isinstance(manifest.get("outputs", {}), dict):
        raise UserError(f"{path}: not a newsdl manifest (a JSON object with 'outputs' expected); "
                        f"rerun `{rerun_hint(Path(folder))}`")
    problem = changed_output(Path(folder), manifest)
    if problem:
        raise UserError(f"{problem}; rerun `{rerun_hint(Path(folder), manifest)}`")
    return manifest


def changed_output(folder: Path, manifest: dict) -> str | None:
    """Why an output of the stage is no longer the file its manifest records, or None."""
    for name, meta in (manifest.get("outputs") or {}).items():
        path = folder / name
        meta = meta if isinstance(meta, dict) else {}
        try:
            st = path.stat()
        except OSError:
            return f"{path}: missing, though the {manifest.get('stage', folder.name)} stage wrote it"
        if not path.is_file():
            return f"{path}: not a file"
        if st.st_size != meta.get("bytes"):
            return f"{path}: changed since it was written ({st.st_size} bytes, {meta.get('bytes')} recorded)"
        if meta.get("mtime_ns") == st.st_mtime_ns:
            continue
        if sha256_file(path) != meta.get("sha256"):
            return f"{path}: changed since it was written (its sha256 differs from the manifest's)"
    return None


def input_hashes(manifest: dict) -> list:
    """The sha256 of each input a manifest records, in order."""
    return [i.get("sha256") if isinstance(i, dict) else None for i in manifest.get("inputs") or []]


def check_inputs_current(folder: Path, manifest: dict, current: list[dict], upstream_name: str) -> None:
    """Refuse a stage whose recorded inputs are not the current upstream outputs (DVC's rule: a
    stage whose inputs changed after it ran is stale, and stale results are never used)."""
    recorded = {i.get("path"): i.get("sha256") for i in manifest.get("inputs") or [] if isinstance(i, dict)}
    for entry in current:
        if entry["path"] in recorded and recorded[entry["path"]] != entry["sha256"]:
            raise UserError(f"{folder} is stale: {upstream_name} changed after it was made ({entry['path']}); "
                            f"rerun `{rerun_hint(folder, manifest)}`")


def invalidate(folder: Path) -> None:
    """Mark a stage unfinished before replacing any of its files."""
    (folder / MANIFEST).unlink(missing_ok=True)


def write_manifest(folder: Path, stage: str, *, inputs: list[dict], config: dict,
                   counts: dict, outputs: list[str], started: str, extra: dict | None = None,
                   record: str = MANIFEST) -> dict:
    manifest = {
        "stage": stage,
        "inputs": inputs,
        "config": config,
        "counts": counts,
        "outputs": {name: _output_record(folder / name) for name in outputs},
        "versions": versions(),
        "host": socket.gethostname(),
        "started": started,
        "finished": now(),
    }
    if extra:
        manifest.update(extra)
    write_json(folder / record, manifest)
    return manifest


def _output_record(path: Path) -> dict:
    st = path.stat()
    # mtime_ns lets a later check skip rehashing an untouched file; the sha256 decides otherwise.
    return {"sha256": sha256_file(path), "bytes": st.st_size, "mtime_ns": st.st_mtime_ns}


def is_up_to_date(folder: Path, inputs: list[dict], config: dict, record: str = MANIFEST) -> bool:
    """True when the stage finished before with the same input hashes and the same config,
    and its outputs are still the files it wrote (same sha256). ``record``: the manifest's name."""
    previous = read_manifest(folder, record)
    if previous is None or not isinstance(previous.get("outputs", {}), dict):
        return False
    if previous.get("config") != config:
        return False
    if input_hashes(previous) != [i.get("sha256") for i in inputs]:
        return False
    return changed_output(folder, previous) is None
