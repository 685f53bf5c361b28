"""The example job scripts in pipelines/slurm/ and pipelines/pbs/: pipelines/cluster.example.toml
rendered for a made-up BreakingNews layout. A test checks the committed files equal this render;
`python pipelines/submit.py --examples` rewrites them after a change to the template or the config.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

from newsdl.hpc import config as hpc_config
from newsdl.hpc.scripts import render_chain

CONFIG = "pipelines/cluster.example.toml"
INPUTS = [Path("/data/breakingnews/articles.jsonl.gz")]
IMAGES_ROOT = Path("/data/breakingnews/images")
WORKSPACE = Path("/scratch/me/breakingnews")


def render_examples(root: Path) -> dict[Path, str]:
    """{path relative to the repository: script text} for both schedulers."""
    # The header names the config by its path in the repository, the same on every checkout.
    cfg = dataclasses.replace(hpc_config.load(Path(root) / CONFIG), source=CONFIG)
    found = {}
    for scheduler, folder in (("slurm", "pipelines/slurm"), ("pbs", "pipelines/pbs")):
        for r in render_chain(cfg, WORKSPACE, INPUTS, Path(folder), scheduler=scheduler, images_root=IMAGES_ROOT):
            found[r.path] = r.text
    return found


def write_examples(root: Path) -> list[Path]:
    from newsdl.workspace import write_text

    written = []
    for rel, text in render_examples(root).items():
        write_text(Path(root) / rel, text)
        written.append(rel)
    return written
