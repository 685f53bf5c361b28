"""`newsdl doctor`: what this machine offers the suite, one line per fact."""

from __future__ import annotations

import os
import shutil

from newsdl.workspace import versions


def _gpus() -> str:
    try:
        import tensorflow as tf
    except ImportError as exc:
        return f"TensorFlow does not import ({exc})"
    gpus = tf.config.list_physical_devices("GPU")
    built = "CUDA build" if tf.test.is_built_with_cuda() else "CPU-only build"
    return f"{len(gpus)} visible ({', '.join(g.name for g in gpus) or 'none'}; TensorFlow is a {built})"


def _ops() -> str:
    from newsdl.ops import op_status

    status = op_status()
    if status.get("loaded"):
        return f"loaded from {status['path']} (CUDA kernel {'compiled' if status.get('cuda') else 'not compiled'})"
    return f"not loaded, pure-TF fallback in use: {status.get('reason', 'unknown')}"


def _schedulers() -> str:
    found = [f"{name} ({path})" for name in ("sbatch", "qsub") if (path := shutil.which(name))]
    return ", ".join(found) if found else "none on PATH (sbatch, qsub)"


def report() -> list[tuple[str, str]]:
    rows = [(f"version {name}", v) for name, v in versions().items()]
    rows.append(("cpu cores", str(os.cpu_count())))
    rows.append(("GPUs", _gpus()))
    rows.append(("great-circle op", _ops()))
    rows.append(("HPC schedulers", _schedulers()))
    rows.append(("workspace default", os.environ.get("NEWSDL_WORKSPACE", "./newsdl-work")))
    return rows
