"""`newsdl status`: the state of each stage, read from the workspace's manifests.

A task's folder (models/TASK/) holds two stages, train and evaluate. It is "done" while its
metrics, if any, are of its current model (metrics.json names the training run it measured, and
config.json the current run); metrics of another model make it "stale" until `newsdl evaluate`.
"""

from __future__ import annotations

from pathlib import Path

from newsdl.workspace import read_json, read_manifest

STAGES = ("ingest", "features")


def stage_states(ws: Path) -> list[dict]:
    rows = []
    for stage in STAGES + tuple(f"models/{p.name}" for p in sorted((ws / "models").glob("*")) if p.is_dir()):
        folder = ws / stage
        manifest = read_manifest(folder)
        if manifest is not None:
            state, note = metrics_state(folder, manifest) if stage.startswith("models/") else ("done", "")
            run = f"; run {manifest['run']}" if manifest.get("run") else ""
            rows.append({"stage": stage, "state": state,
                         "detail": f"finished {manifest.get('finished')}{run}{note}"})
        elif folder.is_dir() and any(folder.iterdir()):
            rows.append({"stage": stage, "state": "incomplete",
                         "detail": "no manifest: killed or still running; a rerun resumes it"})
        else:
            rows.append({"stage": stage, "state": "pending", "detail": ""})
    return rows


def metrics_state(folder: Path, manifest: dict) -> tuple[str, str]:
    """(state, note) of a trained task's metrics: "stale" when metrics.json is of another model
    than the current one (another run; for a folder from before runs, a metrics.json older than
    model.keras), a note when there are none yet."""
    metrics, model = folder / "metrics.json", folder / "model.keras"
    rerun = f"rerun `newsdl evaluate {folder.name}`"
    if not metrics.is_file():
        return "done", f"; not evaluated yet: run `newsdl evaluate {folder.name}`"
    current = manifest.get("run")
    content = read_json(metrics)
    measured = content.get("run") if isinstance(content, dict) else None
    if current and measured != current:
        return "stale", f"; metrics.json is of run {measured or '(unknown)'}, not of the current model's run " \
                        f"{current}: {rerun}"
    if not current and model.is_file() and metrics.stat().st_mtime_ns < model.stat().st_mtime_ns:
        return "stale", f"; metrics.json is older than the model: {rerun}"
    return "done", "; evaluated"
