"""`newsdl status`: the state of each stage, read from the workspace's manifests."""

from __future__ import annotations

from pathlib import Path

from newsdl.workspace import read_manifest

STAGES = ("ingest", "features")


def stage_states(ws: Path) -> list[dict]:
    rows = []
    for stage in STAGES + tuple(f"models/{p.name}" for p in sorted((ws / "models").glob("*")) if p.is_dir()):
        folder = ws / stage
        manifest = read_manifest(folder)
        if manifest is not None:
            rows.append({"stage": stage, "state": "done",
                         "detail": f"finished {manifest.get('finished')}{_metrics_note(folder)}"})
        elif folder.is_dir() and any(folder.iterdir()):
            rows.append({"stage": stage, "state": "incomplete",
                         "detail": "no manifest: killed or still running; a rerun resumes it"})
        else:
            rows.append({"stage": stage, "state": "pending", "detail": ""})
    return rows


def _metrics_note(folder: Path) -> str:
    """A trained model's metrics.json written before its model.keras is from an earlier model."""
    metrics, model = folder / "metrics.json", folder / "model.keras"
    if not metrics.is_file() or not model.is_file():
        return ""
    if metrics.stat().st_mtime_ns < model.stat().st_mtime_ns:
        return f"; metrics.json is older than the model: rerun `newsdl evaluate {folder.name}`"
    return ""
