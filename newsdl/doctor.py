"""`newsdl doctor`: what this machine offers the suite, one line per fact."""

from __future__ import annotations

import os
import shutil
import subprocess

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


def _java() -> str:
    # pycocoevalcap's PTB tokenizer and METEOR start a JVM: without one, caption's evaluate fails
    # after training, hours in; here it shows at once.
    path = shutil.which("java")
    if path is None:
        return "not found on PATH: the caption metrics need a Java runtime (e.g. apt-get install default-jre-headless)"
    try:
        proc = subprocess.run([path, "-version"], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.SubprocessError) as exc:
        return f"{path} does not run ({exc}): the caption metrics need a working Java runtime"
    lines = (proc.stderr or proc.stdout).strip().splitlines()
    if proc.returncode != 0:
        return f"{path} -version exits {proc.returncode}: {lines[0] if lines else 'no output'}"
    return f"{lines[0] if lines else 'version unknown'} ({path})"


def _weights() -> list[tuple[str, str]]:
    """Each backbone's ImageNet weights: in the Keras cache where `newsdl models pull` puts them,
    or the command that puts them there. Only looks: a compute node often has no internet."""
    from newsdl.features.backbones import BACKBONES, keras_cache_dir

    rows = []
    for name, backbone in BACKBONES.items():
        if backbone.imagenet_file is None:
            rows.append((f"weights {name}", "none to cache (runs with --weights random or a file)"))
            continue
        path = keras_cache_dir() / backbone.imagenet_file
        state = f"cached ({path})" if path.is_file() else f"not cached: run `newsdl models pull {name}`"
        rows.append((f"weights {name}", state))
    return rows


def report() -> list[tuple[str, str]]:
    rows = [(f"version {name}", v) for name, v in versions().items()]
    rows.append(("cpu cores", str(os.cpu_count())))
    rows.append(("GPUs", _gpus()))
    rows.append(("great-circle op", _ops()))
    rows.append(("HPC schedulers", _schedulers()))
    rows.append(("java", _java()))
    rows += _weights()
    rows.append(("workspace default", os.environ.get("NEWSDL_WORKSPACE", "./newsdl-work")))
    return rows
