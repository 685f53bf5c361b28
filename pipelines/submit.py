#!/usr/bin/env python3
"""Submit the whole newsdl pipeline to SLURM or PBS: the same as `newsdl submit` (pipelines/README.md).

    python pipelines/submit.py INPUT... -w DIR --config cluster.toml [--shards N] [--tasks geoloc,source]
                               [--scheduler slurm|pbs] [--dry-run] [--wait]
    python pipelines/submit.py --examples    # rewrite pipelines/slurm/ and pipelines/pbs/ from
                                             # pipelines/cluster.example.toml
"""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run from a checkout without installing, too

if __name__ == "__main__":
    if sys.argv[1:] == ["--examples"]:
        from newsdl.hpc.examples import write_examples

        for path in write_examples(ROOT):
            print(path)
    else:
        from newsdl.cli import main

        main(["submit", *sys.argv[1:]])
