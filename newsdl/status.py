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
            rows.append({"stage": stage, "state": "done", "detail": f"finished {manifest.get('finished')}"})
        elif folder.is_dir() and any(folder.iterdir()):
            rows.append({"stage": stage, "state": "incomplete",
                         "detail": "no manifest: killed or still running; a rerun resumes it"})
        else:
            rows.append({"stage": stage, "state": "pending", "detail": ""})
    return rows
