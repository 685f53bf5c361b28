"""Building, caching and loading the op library; the fallback; the CLI; the GPU check's build."""

from __future__ import annotations

import ctypes
import json
import os
import subprocess
import sys
import textwrap
import warnings
from pathlib import Path

import numpy as np
import pytest

from ops_helpers import require_op

from newsdl.ops import build

ROOT = Path(__file__).resolve().parents[1]


# --- the build cache, with a fake compiler so that these tests take seconds ---------

FAKE_CXX = """\
#!{python}
import os, sys, time
args = sys.argv[1:]
if args == ["--version"]:
    print("fakecc {version}")
    sys.exit(0)
with open({log!r}, "a") as fh:
    fh.write(" ".join(args) + "\\n")
time.sleep({delay})
if {fail}:
    print("fatal error: this compiler always fails", file=sys.stderr)
    sys.exit(1)
out = args[args.index("-o") + 1]
with open(out, "w") as fh:
    fh.write("not really a library")
"""


def fake_cxx(tmp_path: Path, *, delay: float = 0.0, fail: bool = False, version: str = "1.0") -> tuple[Path, Path]:
    log = tmp_path / "compiler.log"
    exe = tmp_path / f"fakecc-{version}-{int(fail)}"
    exe.write_text(FAKE_CXX.format(python=sys.executable, log=str(log), delay=delay, fail=fail,
                                   version=version))
    exe.chmod(0o755)
    return exe, log


@pytest.fixture
def fake_env(tmp_path, monkeypatch):
    """A private cache, a fake compiler, no nvcc, and TF's flags without importing TF."""
    monkeypatch.setenv("NEWSDL_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("NVCC", str(tmp_path / "no-such-nvcc"))
    monkeypatch.setattr(build, "_tf_flags", lambda: ("9.9.9", ["-I/fake/include"], ["-lfake"]))
    exe, log = fake_cxx(tmp_path)
    monkeypatch.setenv("CXX", str(exe))
    return tmp_path, log


def invocations(log: Path) -> list[str]:
    return log.read_text().splitlines() if log.exists() else []


def test_cache_root_follows_the_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("NEWSDL_CACHE", str(tmp_path / "a"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "b"))
    assert build.cache_root() == tmp_path / "a"
    monkeypatch.delenv("NEWSDL_CACHE")
    assert build.cache_root() == tmp_path / "b" / "newsdl"
    monkeypatch.delenv("XDG_CACHE_HOME")
    assert build.cache_root() == Path.home() / ".cache" / "newsdl"


def test_build_once_then_cached_then_forced(fake_env):
    tmp_path, log = fake_env
    first = build.build(cuda=False)
    assert not first.cached and not first.cuda
    assert first.path.read_text() == "not really a library"
    assert first.path.parent.parent == tmp_path / "cache" / "ops"
    assert first.path.parent.name.startswith("gcd-tf9.9.9-cpu-")
    assert len(invocations(log)) == 4  # three objects and the link
    meta = json.loads((first.path.parent / "build.json").read_text())
    assert meta["tensorflow"] == "9.9.9" and meta["cxx"] == "fakecc 1.0" and meta["cuda"] is False
    assert "gcd_cpu.cc" in (first.path.parent / "build.log").read_text()

    again = build.build(cuda=False)
    assert again.cached and again.path == first.path
    assert build.cached(cuda=None) == again
    assert len(invocations(log)) == 4

    forced = build.build(cuda=False, force=True)
    assert not forced.cached and forced.path == first.path
    assert len(invocations(log)) == 8
    # Only the library and its notes are left: no temporary build folders.
    assert sorted(p.name for p in first.path.parent.iterdir()) == ["build.json", "build.log", build.LIB_NAME]


def test_cache_key_follows_compiler_sources_tf_and_cpu(fake_env, monkeypatch, tmp_path):
    base = build.build(cuda=False).path.parent

    exe2, _ = fake_cxx(tmp_path, version="2.0")
    monkeypatch.setenv("CXX", str(exe2))
    assert build.build(cuda=False).path.parent != base
    monkeypatch.setenv("CXX", str(fake_env[0] / "fakecc-1.0-0"))
    assert build.build(cuda=False).path.parent == base

    monkeypatch.setattr(build, "_tf_flags", lambda: ("9.9.10", ["-I/fake/include"], ["-lfake"]))
    assert build.build(cuda=False).path.parent != base
    monkeypatch.setattr(build, "_tf_flags", lambda: ("9.9.9", ["-I/fake/include"], ["-lfake"]))

    monkeypatch.setenv("NEWSDL_OPS_MARCH", "x86-64-v2")
    assert build.build(cuda=False).path.parent != base
    monkeypatch.delenv("NEWSDL_OPS_MARCH")

    src = tmp_path / "src"
    import shutil

    shutil.copytree(build.SRC, src)
    monkeypatch.setattr(build, "SRC", src)
    assert build.cached(cuda=False) is not None  # same bytes, same key
    with open(src / "kernels" / "gcd_math.h", "a") as fh:
        fh.write("\n// changed\n")
    assert build.cached(cuda=False) is None
    assert build.build(cuda=False).path.parent != base


def test_parallel_builds_wait_for_one_another(fake_env, tmp_path):
    """Three processes race on a cold cache: one compiles, the other two wait and reuse it."""
    _, log = fake_env
    slow, log = fake_cxx(tmp_path, delay=1.0, version="slow")
    script = textwrap.dedent(f"""
        import json, sys
        sys.path.insert(0, {str(ROOT)!r})
        from newsdl.ops import build
        build._tf_flags = lambda: ("9.9.9", ["-I/fake/include"], ["-lfake"])
        built = build.build(cuda=False)
        print(json.dumps({{"path": str(built.path), "cached": built.cached}}))
    """)
    env = {**os.environ, "CXX": str(slow)}
    procs = [subprocess.Popen([sys.executable, "-c", script], env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for _ in range(3)]
    results = []
    for proc in procs:
        out, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, err
        results.append(json.loads(out.strip().splitlines()[-1]))
    assert len({r["path"] for r in results}) == 1
    assert sorted(r["cached"] for r in results) == [False, True, True]
    assert len(invocations(log)) == 4


def test_failed_build_leaves_no_library_and_a_log(fake_env, tmp_path, monkeypatch):
    bad, _ = fake_cxx(tmp_path, fail=True, version="bad")
    monkeypatch.setenv("CXX", str(bad))
    with pytest.raises(build.BuildError, match="always fails") as info:
        build.build(cuda=False)
    assert not isinstance(info.value, build.NoCompilerError)
    failed_log = Path(str(info.value).split("full log: ")[1].split("\n")[0])
    assert failed_log.is_file() and "always fails" in failed_log.read_text()
    assert not (failed_log.parent / build.LIB_NAME).exists()
    assert build.cached(cuda=False) is None


def test_missing_compilers_are_reported(monkeypatch, tmp_path):
    monkeypatch.setenv("CXX", str(tmp_path / "no-such-cxx"))
    with pytest.raises(build.NoCompilerError, match="no C\\+\\+ compiler"):
        build.toolchain(None)
    monkeypatch.delenv("CXX")
    monkeypatch.setenv("NVCC", str(tmp_path / "no-such-nvcc"))
    if build.find_cxx() is None:
        pytest.skip("no C++ compiler here")
    with pytest.raises(build.NoCompilerError, match="no nvcc"):
        build.toolchain(True)
    assert build.toolchain(None).nvcc is None  # auto: CPU only, no error


# --- the real library: built once per session by ops_helpers --------------------------

def test_real_library_loads_and_reports_status():
    require_op()
    from newsdl.ops import op_status

    status = op_status()
    assert status["loaded"] is True and status["reason"] == ""
    assert Path(status["path"]).is_file()
    # The CUDA object is compiled in whenever nvcc is here (it cannot run under
    # tensorflow-cpu, but the library must still load, as it just did).
    assert status["cuda"] == (build.find_nvcc() is not None)
    meta = json.loads((Path(status["path"]).parent / "build.json").read_text())
    assert meta["cuda"] == status["cuda"]


def test_hot_loops_use_no_double_libm_in_float_path():
    """The float32 path must not call sin/cos/atan2 (the pitfall of an unqualified sin)."""
    require_op()
    from newsdl.ops import op_status

    nm = subprocess.run(["nm", "-D", "--undefined-only", op_status()["path"]], capture_output=True, text=True)
    if nm.returncode != 0:
        pytest.skip("no nm")
    undefined = {line.split()[-1] for line in nm.stdout.splitlines() if line.strip()}
    libm = {"sin", "cos", "sincos", "atan2", "atan", "sinf", "cosf", "sincosf", "atan2f", "atanf",
            "sqrt", "sqrtf", "floor", "floorf"}
    assert not undefined & libm


def test_fallback_when_no_compiler_warns_once(monkeypatch, tmp_path):
    pytest.importorskip("tensorflow")
    from newsdl.ops import gcd, great_circle_distance, op_status

    monkeypatch.setenv("NEWSDL_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("CXX", str(tmp_path / "no-such-cxx"))
    monkeypatch.setattr(gcd, "_library", None)
    monkeypatch.setattr(gcd, "_warned", False)
    y = np.array([[10.0, 20.0], [-5.0, 170.0]])
    z = np.array([[11.0, 21.0], [5.0, -170.0]])
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        first = great_circle_distance(y, z).numpy()
        second = great_circle_distance(y, z).numpy()
    ours = [w for w in caught if "pure-TensorFlow" in str(w.message)]
    assert len(ours) == 1 and "no C++ compiler" in str(ours[0].message)
    np.testing.assert_array_equal(first, second)
    np.testing.assert_array_equal(first, great_circle_distance(y, z, backend="tf").numpy())
    status = op_status()
    assert status["loaded"] is False and "no C++ compiler" in status["reason"]
    with pytest.raises(RuntimeError, match="unavailable"):
        great_circle_distance(y, z, backend="op")
    assert not (tmp_path / "cache" / "ops").exists() or not any((tmp_path / "cache" / "ops").rglob("*.so"))


def test_fallback_can_be_forced(monkeypatch):
    pytest.importorskip("tensorflow")
    from newsdl.ops import gcd, op_status

    monkeypatch.setenv("NEWSDL_OPS_FALLBACK", "1")
    monkeypatch.setattr(gcd, "_library", None)
    status = op_status(build=True)
    assert status["loaded"] is False and "NEWSDL_OPS_FALLBACK" in status["reason"]


def test_op_status_without_build_builds_nothing(monkeypatch, tmp_path):
    pytest.importorskip("tensorflow")
    from newsdl.ops import gcd, op_status

    monkeypatch.setenv("NEWSDL_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(gcd, "_library", None)
    status = op_status()
    assert status["loaded"] is False and "not built yet" in status["reason"]
    assert gcd._library is None  # a later call may still build
    assert not (tmp_path / "cache").exists()


def test_importing_the_package_and_cli_imports_no_tensorflow():
    code = ("import sys, newsdl.ops, newsdl.ops.cli, newsdl.ops.build, newsdl.ops.reference; "
            "from newsdl.ops import great_circle_distance; "
            "assert 'tensorflow' not in sys.modules and 'keras' not in sys.modules, 'imported'")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT, timeout=60)


# --- the CLI -----------------------------------------------------------------------

def _app():
    import typer

    from newsdl.ops.cli import register

    app = typer.Typer()
    register(app)

    @app.command("version")
    def _version():  # a second command keeps typer from collapsing the app into `ops`
        pass

    return app


def test_cli_build_reports_the_cached_library():
    require_op()
    from typer.testing import CliRunner

    from newsdl.ops import op_status

    result = CliRunner().invoke(_app(), ["ops", "build"])
    assert result.exit_code == 0, result.output
    assert f"library: {op_status()['path']}" in result.output
    assert "cached: yes" in result.output
    assert ("cuda: compiled" in result.output) == (build.find_nvcc() is not None)


def test_cli_build_cuda_without_nvcc_is_a_user_error(monkeypatch, tmp_path):
    from typer.testing import CliRunner

    from newsdl.errors import UserError

    monkeypatch.setenv("NVCC", str(tmp_path / "no-such-nvcc"))
    monkeypatch.setattr(build, "_tf_flags", lambda: ("9.9.9", [], []))
    result = CliRunner().invoke(_app(), ["ops", "build", "--cuda"])
    assert isinstance(result.exception, UserError), result.output
    assert "no nvcc" in str(result.exception)


def test_cli_build_failure_exits_1(monkeypatch, tmp_path):
    from typer.testing import CliRunner

    bad, _ = fake_cxx(tmp_path, fail=True, version="bad")
    monkeypatch.setenv("CXX", str(bad))
    monkeypatch.setenv("NEWSDL_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(build, "_tf_flags", lambda: ("9.9.9", [], []))
    result = CliRunner().invoke(_app(), ["ops", "build", "--no-cuda"])
    assert result.exit_code == 1
    assert "always fails" in result.output


# --- the GPU check's TF-free build (the GPU run itself needs a GPU machine) ---------

@pytest.mark.skipif(build.find_nvcc() is None, reason="no nvcc")
def test_gpu_check_builds_the_c_entry_points(tmp_path):
    env = {**os.environ, "NVCC": build.find_nvcc()}
    run = subprocess.run(["bash", str(ROOT / "pipelines" / "gpu_check.sh"), "--compile-only", "--out", str(tmp_path)],
                         capture_output=True, text=True, env=env, timeout=600)
    assert run.returncode == 0, run.stdout + run.stderr
    lib_path = tmp_path / "libnewsdl_gcd_cuda.so"
    sys.path.insert(0, str(ROOT / "pipelines"))
    try:
        import gpu_check
    finally:
        sys.path.remove(str(ROOT / "pipelines"))
    lib = gpu_check.load(str(lib_path))  # loads without TensorFlow and without a GPU
    assert lib.newsdl_gcd_forward_f32(None, None, None, None, 0, 0, None) == 0
    has_gpu = subprocess.run(["nvidia-smi"], capture_output=True).returncode == 0 if _which("nvidia-smi") else False
    if not has_gpu:
        # No device: the launch reports a CUDA error code instead of crashing.
        assert lib.newsdl_gcd_forward_f32(None, None, None, None, 1, 0, None) != 0
        assert lib.newsdl_gcd_backward_f64(None, None, None, None, 1, None) != 0
    assert isinstance(lib, ctypes.CDLL)


def _which(tool: str) -> bool:
    import shutil

    return shutil.which(tool) is not None


def test_gpu_check_python_is_valid_and_guards_its_imports():
    code = ("import sys; sys.path.insert(0, 'pipelines'); import gpu_check; "
            "assert 'cupy' not in sys.modules and 'torch' not in sys.modules and 'tensorflow' not in sys.modules")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT, timeout=60)


class _FakeDevice:
    """numpy standing in for CuPy: "pointers" are keys into a registry of arrays."""

    name = "fake"

    def __init__(self):
        self.arrays = {}

    def _keep(self, a):
        self.arrays[id(a)] = a
        return a

    def to_device(self, a):
        return self._keep(np.array(a))

    def empty(self, shape, dtype):
        return self._keep(np.empty(shape, dtype))

    def uniform(self, lo, hi, shape, dtype):
        return self._keep(np.random.default_rng(0).uniform(lo, hi, shape).astype(dtype))

    def ptr(self, a):
        return id(a)

    def stream(self):
        return 0

    def to_host(self, a):
        return a

    def time_ms(self, fn, reps):
        import time

        out = []
        for _ in range(reps):
            start = time.perf_counter()
            fn()
            out.append((time.perf_counter() - start) * 1e3)
        return out

    def copy(self, dst, src):
        np.copyto(dst, src)

    def device(self):
        return {"name": "fake", "memory_clock_khz": 1_000_000, "bus_width_bits": 256}


class _FakeLib:
    """The four C entry points, computed by the numpy reference on the fake device."""

    def __init__(self, dev, corrupt=False):
        self.dev, self.corrupt = dev, corrupt
        for suffix in ("f32", "f64"):
            setattr(self, f"newsdl_gcd_forward_{suffix}", self._forward)
            setattr(self, f"newsdl_gcd_backward_{suffix}", self._backward)

    def _forward(self, y, z, dist, jac, n, degrees, stream):
        from newsdl.ops.reference import numpy_forward

        a = self.dev.arrays
        d, j = numpy_forward(a[y].reshape(n, 2), a[z].reshape(n, 2), bool(degrees))
        a[dist][...] = d + (1e-5 if self.corrupt else 0)
        a[jac][...] = j
        return 0

    def _backward(self, grad, jac, grad_y, grad_z, n, stream):
        from newsdl.ops.reference import numpy_backward

        a = self.dev.arrays
        gy, gz = numpy_backward(a[grad], a[jac].reshape(3, n))
        a[grad_y][...], a[grad_z][...] = gy, gz
        return 0


@pytest.mark.parametrize("corrupt", [False, True])
def test_gpu_check_harness_on_a_fake_device(corrupt):
    """The harness's logic (accuracy verdict, bandwidth, timing table) without a GPU."""
    sys.path.insert(0, str(ROOT / "pipelines"))
    try:
        import gpu_check
    finally:
        sys.path.remove(str(ROOT / "pipelines"))
    dev = _FakeDevice()
    summary = gpu_check.run_checks(_FakeLib(dev, corrupt), dev, n=20000, reps=2, n_random=500, mp_subset=50)
    assert summary["accuracy"]["ok"] is (not corrupt)
    for dtype in ("float32", "float64"):
        speed = summary["speed"][dtype]
        assert speed["n"] == 20000 and speed["pairs_per_s"] > 0
        assert 0 < speed["fraction_of_theoretical_bw"] and "fraction_of_copy_bw" in speed
    assert summary["bandwidth"]["theoretical_GBps"] == pytest.approx(64.0)
