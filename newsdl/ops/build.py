"""Compile the great-circle-distance op library against the installed TensorFlow.

One shared library per (TensorFlow, compiler, CUDA toolkit, sources, CPU) in a per-user
cache, built once: on first use, or with ``newsdl ops build``. A file lock makes parallel
jobs (pytest -n, a job array) wait for one build instead of racing, and the library is
linked under a temporary name and renamed into place, so a killed build leaves no
half-written library behind.

Four translation units, compiled in parallel:
- ops/gcd_ops.cc, kernels/gcd_kernels.cc: TensorFlow-facing, with tf.sysconfig's flags;
- kernels/gcd_cpu.cc: the hot loops, no TensorFlow header, -O3 -march=native (which is
  why the CPU's features are part of the cache key);
- kernels/gcd_kernels.cu.cc: the CUDA kernel, whenever nvcc is found (or --cuda).
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import hashlib
import json
import logging
import os
import platform
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

log = logging.getLogger("newsdl.ops")

SRC = Path(__file__).resolve().parent / "cc"
SOURCES = ("ops/gcd_ops.cc", "kernels/gcd_kernels.cc", "kernels/gcd_cpu.cc", "kernels/gcd_kernels.cu.cc")
HEADERS = ("kernels/gcd_math.h", "kernels/gcd_functor.h")
LIB_NAME = "libnewsdl_gcd.so"

# Ampere and Hopper SASS, plus Hopper PTX that newer GPUs can JIT. nvcc 13 has nothing
# below sm_75, and sm_80 code also runs on sm_86/sm_89.
CUDA_ARCHS = ("-gencode", "arch=compute_80,code=sm_80",
              "-gencode", "arch=compute_90,code=[sm_90,compute_90]")
# TF's headers are noisy under g++ 12 and nvcc 13; none of these warnings is ours.
QUIET = ("-Wno-deprecated-declarations", "-Wno-interference-size")
# The hot loops: -fno-trapping-math lets GCC turn the selects of gcd_math.h into
# blends (without it the loop does not vectorise); it changes no result. No -ffast-math:
# the TwoSum and the rounding trick of gcd_math.h depend on IEEE arithmetic.
LOOP_FLAGS = ("-O3", "-fno-math-errno", "-fno-trapping-math", "-ffp-contract=fast",
              "-fopenmp-simd", "-fvisibility=hidden")
# Waiting longer than a build can take means the holder is stuck.
LOCK_TIMEOUT_S = 900


class BuildError(RuntimeError):
    """The library could not be built: no compiler, or the compiler failed."""


class NoCompilerError(BuildError):
    """No C++ compiler (or no nvcc, when CUDA was asked for)."""


@dataclasses.dataclass(frozen=True)
class Toolchain:
    cxx: str
    cxx_version: str
    nvcc: str | None = None
    nvcc_version: str | None = None
    cudart: str | None = None  # libcudart_static.a of nvcc's toolkit


@dataclasses.dataclass(frozen=True)
class Built:
    path: Path
    cuda: bool
    cached: bool
    seconds: float = 0.0


def cache_root() -> Path:
    """$NEWSDL_CACHE, else $XDG_CACHE_HOME/newsdl, else ~/.cache/newsdl."""
    if os.environ.get("NEWSDL_CACHE"):
        return Path(os.environ["NEWSDL_CACHE"]).expanduser()
    if os.environ.get("XDG_CACHE_HOME"):
        return Path(os.environ["XDG_CACHE_HOME"]).expanduser() / "newsdl"
    return Path.home() / ".cache" / "newsdl"


def find_cxx() -> str | None:
    cxx = os.environ.get("CXX") or "g++"
    return shutil.which(cxx) or (None if os.environ.get("CXX") else shutil.which("c++"))


def find_nvcc() -> str | None:
    if os.environ.get("NVCC"):
        return shutil.which(os.environ["NVCC"])
    found = shutil.which("nvcc")
    if found:
        return found
    for root in (os.environ.get("CUDA_HOME"), os.environ.get("CUDA_PATH"), "/usr/local/cuda"):
        if root and os.access(Path(root) / "bin" / "nvcc", os.X_OK):
            return str(Path(root) / "bin" / "nvcc")
    return None


def _version(tool: str) -> str:
    try:
        out = subprocess.run([tool, "--version"], capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired) as err:
        raise NoCompilerError(f"{tool} does not run: {err}") from err
    lines = [ln for ln in (out.stdout + out.stderr).splitlines() if ln.strip()]
    if out.returncode != 0 or not lines:
        raise NoCompilerError(f"{tool} --version failed (exit {out.returncode})")
    # g++ names itself on the first line, nvcc on the last ("Build cuda_13.0...").
    return lines[0] if "nvcc" not in Path(tool).name else " ".join(lines[-2:])


def _cudart_static(nvcc: str) -> str | None:
    """libcudart_static.a from the library folders nvcc itself links against."""
    try:
        out = subprocess.run([nvcc, "--dryrun", "-x", "cu", "-c", os.devnull, "-o", os.devnull],
                             capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired):
        return None
    for line in (out.stdout + out.stderr).splitlines():
        if "LIBRARIES=" in line:
            for token in line.split("=", 1)[1].split():
                folder = Path(token.strip('"')[2:]) if token.strip('"').startswith("-L") else None
                if folder and (folder / "libcudart_static.a").is_file():
                    return str((folder / "libcudart_static.a").resolve())
    return None


def toolchain(cuda: bool | None) -> Toolchain:
    """The compilers to use. cuda=None: CUDA if nvcc is found; True: CUDA or an error."""
    cxx = find_cxx()
    if cxx is None:
        raise NoCompilerError("no C++ compiler found (install g++, or set $CXX)")
    tc = Toolchain(cxx=cxx, cxx_version=_version(cxx))
    if cuda is False:
        return tc
    nvcc = find_nvcc()
    if nvcc is None:
        if cuda:
            raise NoCompilerError("--cuda asked for, but no nvcc found (put it on PATH, or set $NVCC "
                                  "or $CUDA_HOME)")
        return tc
    cudart = _cudart_static(nvcc)
    if cudart is None:
        if cuda:
            raise NoCompilerError(f"{nvcc} has no libcudart_static.a next to it")
        log.warning("nvcc at %s has no libcudart_static.a; building the CPU kernel only", nvcc)
        return tc
    return dataclasses.replace(tc, nvcc=nvcc, nvcc_version=_version(nvcc), cudart=cudart)


def _tf_flags() -> tuple[str, list[str], list[str]]:
    import tensorflow as tf

    return tf.__version__, list(tf.sysconfig.get_compile_flags()), list(tf.sysconfig.get_link_flags())


def cpu_fingerprint() -> str:
    """What -march=native compiles for: the CPU's feature flags (or the override)."""
    if os.environ.get("NEWSDL_OPS_MARCH"):
        return "march=" + os.environ["NEWSDL_OPS_MARCH"]
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith(("flags", "Features")):
                return " ".join(sorted(line.split(":", 1)[1].split()))
    except OSError:
        pass
    return f"{platform.machine()} {platform.processor()}"


def _march() -> str:
    return "-march=" + os.environ.get("NEWSDL_OPS_MARCH", "native")


def _commands(tc: Toolchain, tf_compile: list[str], tf_link: list[str], objdir: Path,
              out: Path) -> tuple[list[tuple[str, list[str]]], list[str]]:
    """(name, compile command) per object, and the link command."""
    tf_cc = [*tf_compile, "-std=c++17", "-fPIC", "-O2", *QUIET]
    if tc.nvcc:
        tf_cc.append("-DGOOGLE_CUDA=1")
    obj = {name: str(objdir / (Path(name).name.replace(".", "_") + ".o")) for name in SOURCES}
    jobs = [
        ("ops/gcd_ops.cc", [tc.cxx, *tf_cc, "-c", str(SRC / "ops/gcd_ops.cc"), "-o", obj["ops/gcd_ops.cc"]]),
        ("kernels/gcd_kernels.cc", [tc.cxx, *tf_cc, "-c", str(SRC / "kernels/gcd_kernels.cc"),
                                    "-o", obj["kernels/gcd_kernels.cc"]]),
        ("kernels/gcd_cpu.cc", [tc.cxx, "-std=c++17", "-fPIC", _march(), *LOOP_FLAGS,
                                "-c", str(SRC / "kernels/gcd_cpu.cc"), "-o", obj["kernels/gcd_cpu.cc"]]),
    ]
    if tc.nvcc:
        jobs.append(("kernels/gcd_kernels.cu.cc", [
            tc.nvcc, "-x", "cu", "-std=c++17", "-O3", "-DGOOGLE_CUDA=1", "--expt-relaxed-constexpr",
            "-ccbin", tc.cxx, "-Xcompiler", "-fPIC", *CUDA_ARCHS, "-Xptxas", "-v",
            "-c", str(SRC / "kernels/gcd_kernels.cu.cc"), "-o", obj["kernels/gcd_kernels.cu.cc"]]))
    objects = [obj[name] for name, _ in jobs]
    # The static CUDA runtime goes before TF's flags: the library then carries its own
    # runtime (the toolkit's that compiled the kernel) rather than binding to whatever
    # cudart symbols libtensorflow_framework exports.
    cuda_libs = [tc.cudart, "-ldl", "-lrt", "-lpthread"] if tc.nvcc else []
    link = [tc.cxx, "-shared", "-o", str(out), *objects, *cuda_libs, *tf_link]
    return jobs, link


def _key(tc: Toolchain, tf_version: str, tf_compile: list[str], tf_link: list[str]) -> str:
    digest = hashlib.sha256()
    jobs, link = _commands(tc, tf_compile, tf_link, Path("obj"), Path("out"))
    parts = {
        "tf": tf_version, "cxx": tc.cxx, "cxx_version": tc.cxx_version,
        "nvcc_version": tc.nvcc_version, "cpu": cpu_fingerprint(),
        # Where the sources live does not matter, only what they say (hashed below).
        "commands": [[arg.replace(str(SRC), "<src>") for arg in cmd] for cmd in [c for _, c in jobs] + [link]],
    }
    digest.update(json.dumps(parts, sort_keys=True).encode())
    for name in (*SOURCES, *HEADERS):
        digest.update(name.encode() + b"\0" + (SRC / name).read_bytes() + b"\0")
    return digest.hexdigest()[:16]


def _folder(tc: Toolchain, tf_version: str, key: str) -> Path:
    return cache_root() / "ops" / f"gcd-tf{tf_version}-{'cuda' if tc.nvcc else 'cpu'}-{key}"


def cached(cuda: bool | None = None) -> Built | None:
    """The library already built for this machine, if any; builds nothing.

    cuda=None looks for the CUDA build first (when nvcc is here), then the CPU one.
    """
    tf_version, tf_compile, tf_link = _tf_flags()
    variants = [True, False] if cuda is None else [cuda]
    for variant in variants:
        try:
            tc = toolchain(variant)
        except NoCompilerError:
            continue
        if variant and tc.nvcc is None:
            continue
        lib = _folder(tc, tf_version, _key(tc, tf_version, tf_compile, tf_link)) / LIB_NAME
        if lib.is_file():
            return Built(lib, cuda=tc.nvcc is not None, cached=True)
    return None


def build(cuda: bool | None = None, force: bool = False) -> Built:
    """Build (or find) the library. cuda=None compiles the CUDA kernel if nvcc is here."""
    tf_version, tf_compile, tf_link = _tf_flags()
    tc = toolchain(cuda)
    folder = _folder(tc, tf_version, _key(tc, tf_version, tf_compile, tf_link))
    lib = folder / LIB_NAME
    if lib.is_file() and not force:
        return Built(lib, cuda=tc.nvcc is not None, cached=True)

    from filelock import FileLock, Timeout

    folder.mkdir(parents=True, exist_ok=True)
    lock = FileLock(str(folder) + ".lock")
    try:
        lock.acquire(timeout=5)
    except Timeout:
        log.info("another process is building %s; waiting", folder.name)
        try:
            lock.acquire(timeout=LOCK_TIMEOUT_S)
        except Timeout as err:
            raise BuildError(f"gave up after {LOCK_TIMEOUT_S} s waiting for {lock.lock_file}") from err
    try:
        if lib.is_file() and not force:  # built by whoever held the lock
            return Built(lib, cuda=tc.nvcc is not None, cached=True)
        started = time.monotonic()
        log.info("building the great-circle-distance op for TensorFlow %s with %s%s",
                 tf_version, tc.cxx_version, f" and {tc.nvcc_version}" if tc.nvcc else "")
        with tempfile.TemporaryDirectory(prefix=".tmp-build-", dir=folder) as tmp:
            tmp_lib = Path(tmp) / LIB_NAME
            jobs, link = _commands(tc, tf_compile, tf_link, Path(tmp), tmp_lib)
            transcript = _run_all(jobs, link, folder)
            os.replace(tmp_lib, lib)
        seconds = time.monotonic() - started
        (folder / "build.log").write_text(transcript)
        meta = {"tensorflow": tf_version, "cxx": tc.cxx_version, "nvcc": tc.nvcc_version,
                "cudart": tc.cudart, "cuda": tc.nvcc is not None, "cpu": cpu_fingerprint(),
                "march": _march(), "seconds": round(seconds, 1), "library": str(lib)}
        from newsdl.workspace import write_json

        write_json(folder / "build.json", meta)
        log.info("built %s in %.0f s", lib, seconds)
        return Built(lib, cuda=tc.nvcc is not None, cached=False, seconds=seconds)
    finally:
        lock.release()


def _run_all(jobs: list[tuple[str, list[str]]], link: list[str], folder: Path) -> str:
    """Compile the objects in parallel, then link; the transcript of every command."""
    def run(cmd: list[str]) -> subprocess.CompletedProcess:
        return subprocess.run(cmd, capture_output=True, text=True)

    workers = max(1, min(len(jobs), os.cpu_count() or 1))
    with concurrent.futures.ThreadPoolExecutor(workers) as pool:
        results = list(pool.map(run, [cmd for _, cmd in jobs]))
    results.append(run(link) if all(r.returncode == 0 for r in results) else None)
    transcript, failed = [], None
    for (name, cmd), res in zip([*jobs, ("link", link)], results):
        if res is None:
            continue
        transcript.append(f"$ {' '.join(cmd)}\n{res.stdout}{res.stderr}(exit {res.returncode})\n")
        if res.returncode != 0 and failed is None:
            failed = (name, res)
    text = "\n".join(transcript)
    if failed:
        failed_log = folder / "build-failed.log"
        failed_log.write_text(text)
        name, res = failed
        tail = "\n".join((res.stdout + res.stderr).strip().splitlines()[-15:])
        raise BuildError(f"compiling {name} failed (exit {res.returncode}); full log: {failed_log}\n{tail}")
    return text
