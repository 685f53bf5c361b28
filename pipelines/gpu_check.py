"""Check and time the CUDA kernel through its plain C entry points, without TensorFlow.

Run by pipelines/gpu_check.sh on a GPU machine that has CuPy or PyTorch (and numpy):

    python pipelines/gpu_check.py --lib build/libnewsdl_gcd_cuda.so [--n 100000000]

1. Accuracy: random and hard pairs (identical, 1e-9 apart, antipodal, poles, dateline)
   against mpmath when it is installed, else numpy in float64/longdouble, with the
   issue's bounds: 1e-12 rad in float64, 2e-6 rad in float32. Also the partials.
2. Speed: forward + backward at N pairs, reported as pairs/s, as GB/s of the bytes
   the two kernels move, and as a fraction of the device's memory bandwidth (from its
   memory clock and bus width, and from a measured device-to-device copy).
Prints a JSON summary last; exits 1 if an accuracy bound is missed.
"""

from __future__ import annotations

import argparse
import ctypes
import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from newsdl.ops import reference  # noqa: E402  (numpy only; no TensorFlow)

BOUNDS = {"float32": 2e-6, "float64": 1e-12}


class Cupy:
    """Device arrays, streams and timers through CuPy."""

    name = "cupy"

    def __init__(self):
        import cupy

        self.cp = cupy

    def to_device(self, a):
        return self.cp.asarray(a)

    def empty(self, shape, dtype):
        return self.cp.empty(shape, dtype=dtype)

    def uniform(self, lo, hi, shape, dtype):
        return self.cp.random.uniform(lo, hi, shape).astype(dtype)

    def ptr(self, a) -> int:
        return a.data.ptr

    def stream(self) -> int:
        return self.cp.cuda.get_current_stream().ptr

    def to_host(self, a):
        return self.cp.asnumpy(a)

    def time_ms(self, fn, reps: int) -> list[float]:
        start, stop = self.cp.cuda.Event(), self.cp.cuda.Event()
        out = []
        for _ in range(reps):
            start.record()
            fn()
            stop.record()
            stop.synchronize()
            out.append(self.cp.cuda.get_elapsed_time(start, stop))
        return out

    def copy(self, dst, src):
        self.cp.copyto(dst, src)

    def device(self) -> dict:
        rt = self.cp.cuda.runtime
        dev = self.cp.cuda.Device()
        props = rt.getDeviceProperties(dev.id)
        attrs = dev.attributes
        clock_khz = attrs.get("MemoryClockRate") or props.get("memoryClockRate")
        bus_bits = attrs.get("GlobalMemoryBusWidth") or props.get("memoryBusWidth")
        name = props["name"].decode() if isinstance(props["name"], bytes) else props["name"]
        return {"name": name, "memory_clock_khz": clock_khz, "bus_width_bits": bus_bits,
                "driver": rt.driverGetVersion(), "runtime_cupy": rt.runtimeGetVersion()}


class Torch:
    """The same through PyTorch."""

    name = "torch"

    def __init__(self):
        import torch

        self.torch = torch
        self.dev = torch.device("cuda")

    def _dt(self, dtype):
        return {np.float32: self.torch.float32, np.float64: self.torch.float64}[np.dtype(dtype).type]

    def to_device(self, a):
        return self.torch.from_numpy(np.ascontiguousarray(a)).to(self.dev)

    def empty(self, shape, dtype):
        return self.torch.empty(shape, dtype=self._dt(dtype), device=self.dev)

    def uniform(self, lo, hi, shape, dtype):
        return self.torch.empty(shape, dtype=self._dt(dtype), device=self.dev).uniform_(lo, hi)

    def ptr(self, a) -> int:
        return a.data_ptr()

    def stream(self) -> int:
        return self.torch.cuda.current_stream().cuda_stream

    def to_host(self, a):
        return a.cpu().numpy()

    def time_ms(self, fn, reps: int) -> list[float]:
        out = []
        for _ in range(reps):
            start = self.torch.cuda.Event(enable_timing=True)
            stop = self.torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            stop.record()
            stop.synchronize()
            out.append(start.elapsed_time(stop))
        return out

    def copy(self, dst, src):
        dst.copy_(src)

    def device(self) -> dict:
        props = self.torch.cuda.get_device_properties(0)
        return {"name": props.name, "memory_clock_khz": getattr(props, "memory_clock_rate", None),
                "bus_width_bits": getattr(props, "memory_bus_width", None),
                "runtime_torch": self.torch.version.cuda}


def backend(preferred: str | None):
    errors = []
    for cls in ([Cupy, Torch] if preferred is None else [{"cupy": Cupy, "torch": Torch}[preferred]]):
        try:
            return cls()
        except ImportError as err:
            errors.append(f"{cls.name}: {err}")
    sys.exit("gpu_check: neither CuPy nor PyTorch is importable (" + "; ".join(errors) + ")")


def load(lib_path: str):
    lib = ctypes.CDLL(lib_path)
    p, i64, i32 = ctypes.c_void_p, ctypes.c_int64, ctypes.c_int
    for suffix in ("f32", "f64"):
        fwd = getattr(lib, f"newsdl_gcd_forward_{suffix}")
        fwd.argtypes, fwd.restype = [p, p, p, p, i64, i32, p], i32
        bwd = getattr(lib, f"newsdl_gcd_backward_{suffix}")
        bwd.argtypes, bwd.restype = [p, p, p, p, i64, p], i32
    return lib


def run_pair(lib, be, dtype, y, z, grad, degrees=False):
    """(dist, jac, grad_y, grad_z) device arrays for device inputs y, z, grad."""
    n = int(np.prod(y.shape[:-1]))
    suffix = "f32" if np.dtype(dtype) == np.float32 else "f64"
    dist, jac = be.empty((n,), dtype), be.empty((3, n), dtype)
    grad_y, grad_z = be.empty((n, 2), dtype), be.empty((n, 2), dtype)
    err = getattr(lib, f"newsdl_gcd_forward_{suffix}")(
        be.ptr(y), be.ptr(z), be.ptr(dist), be.ptr(jac), n, int(degrees), be.stream())
    err = err or getattr(lib, f"newsdl_gcd_backward_{suffix}")(
        be.ptr(grad), be.ptr(jac), be.ptr(grad_y), be.ptr(grad_z), n, be.stream())
    if err:
        sys.exit(f"gpu_check: CUDA launch failed with cudaError_t {err}")
    return dist, jac, grad_y, grad_z


def check_accuracy(lib, be, n_random: int, mp_subset: int) -> dict:
    rng = np.random.default_rng(0)
    y64, z64 = reference.hard_pairs(rng, n_random)
    try:
        import mpmath  # noqa: F401

        have_mp = True
    except ImportError:
        have_mp = False
    report, ok = {}, True
    for dtype in (np.float32, np.float64):
        y, z = y64.astype(dtype), z64.astype(dtype)
        g = np.ones(len(y), dtype)
        dist, jac, gy, gz = (be.to_host(a) for a in run_pair(
            lib, be, dtype, be.to_device(y), be.to_device(z), be.to_device(g)))
        ref_dist, ref_jac = reference.numpy_forward(y.astype(np.longdouble), z.astype(np.longdouble))
        cpu_dist, cpu_jac = reference.numpy_forward(y, z)
        entry = {
            "max_abs_err_vs_longdouble": float(np.max(np.abs(dist - ref_dist))),
            "max_abs_diff_vs_numpy_same_dtype": float(np.max(np.abs(dist - cpu_dist))),
            "max_abs_jac_diff_vs_numpy_same_dtype": float(np.max(np.abs(jac - cpu_jac))),
            "finite": bool(np.isfinite(dist).all() and np.isfinite(jac).all()),
            "grad_is_jac": bool(np.array_equal(gy[:, 0], jac[0]) and np.array_equal(gz[:, 1], jac[2])),
        }
        if have_mp:
            idx = np.linspace(0, len(y) - 1, min(mp_subset, len(y))).astype(int)
            # The hard pairs sit at the end: check all of them plus a spread of random ones.
            idx = np.unique(np.concatenate([idx, np.arange(n_random, len(y))]))
            mp_dist, _ = reference.mp_distance_and_partials(y[idx], z[idx])
            entry["max_abs_err_vs_mpmath"] = float(np.max(np.abs(dist[idx] - mp_dist)))
            entry["mpmath_pairs"] = int(len(idx))
        worst = entry.get("max_abs_err_vs_mpmath", entry["max_abs_err_vs_longdouble"])
        entry["bound"] = BOUNDS[np.dtype(dtype).name]
        entry["ok"] = bool(worst <= entry["bound"] and entry["finite"] and entry["grad_is_jac"])
        ok &= entry["ok"]
        report[np.dtype(dtype).name] = entry
    report["ok"] = ok
    return report


def bandwidth(be, dev: dict, reps: int, n: int = 1 << 28) -> dict:
    """Peak from the memory clock and bus width, and a measured copy (n float32, 1 GiB)."""
    out = {}
    if dev.get("memory_clock_khz") and dev.get("bus_width_bits"):
        # DDR: two transfers per clock.
        out["theoretical_GBps"] = 2 * dev["memory_clock_khz"] * 1e3 * dev["bus_width_bits"] / 8 / 1e9
    src, dst = be.uniform(0, 1, (n,), np.float32), be.empty((n,), np.float32)
    times = be.time_ms(lambda: be.copy(dst, src), reps)
    out["copy_GBps"] = 2 * 4 * n / (float(np.median(times)) * 1e-3) / 1e9  # read + write
    del src, dst
    return out


def time_kernels(lib, be, n: int, reps: int, bw: dict) -> dict:
    report = {}
    for dtype in (np.float32, np.float64):
        item = np.dtype(dtype).itemsize
        y = be.uniform(-1.5, 1.5, (n, 2), dtype)
        z = be.uniform(-1.5, 1.5, (n, 2), dtype)
        g = be.uniform(0.5, 1.5, (n,), dtype)
        suffix = "f32" if item == 4 else "f64"
        dist, jac = be.empty((n,), dtype), be.empty((3, n), dtype)
        gy, gz = be.empty((n, 2), dtype), be.empty((n, 2), dtype)
        fwd = getattr(lib, f"newsdl_gcd_forward_{suffix}")
        bwd = getattr(lib, f"newsdl_gcd_backward_{suffix}")

        def step():
            fwd(be.ptr(y), be.ptr(z), be.ptr(dist), be.ptr(jac), n, 0, be.stream())
            bwd(be.ptr(g), be.ptr(jac), be.ptr(gy), be.ptr(gz), n, be.stream())

        step()
        fwd_ms = float(np.median(be.time_ms(
            lambda: fwd(be.ptr(y), be.ptr(z), be.ptr(dist), be.ptr(jac), n, 0, be.stream()), reps)))
        ms = float(np.median(be.time_ms(step, reps)))
        moved = 16 * item * n   # fwd: 4 in, 1 + 3 out; bwd: 1 + 3 in, 4 out
        minimum = 10 * item * n  # y, z in; d out; grad in; grad_y, grad_z out
        gbps = moved / (ms * 1e-3) / 1e9
        entry = {"n": n, "fwd_ms": fwd_ms, "fwd_bwd_ms": ms, "pairs_per_s": n / (ms * 1e-3),
                 "GBps_moved": gbps, "bytes_per_pair_moved": 16 * item, "bytes_per_pair_min": 10 * item}
        for name, peak in (("theoretical", bw.get("theoretical_GBps")), ("copy", bw.get("copy_GBps"))):
            if peak:
                entry[f"fraction_of_{name}_bw"] = gbps / peak
                entry[f"fraction_of_{name}_bw_min_bytes"] = minimum / (ms * 1e-3) / 1e9 / peak
        report[np.dtype(dtype).name] = entry
        del y, z, g, dist, jac, gy, gz
    return report


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--lib", required=True, help="the .so built by gpu_check.sh")
    ap.add_argument("--n", type=int, default=100_000_000, help="pairs for the timing")
    ap.add_argument("--reps", type=int, default=10)
    ap.add_argument("--random", type=int, default=1_000_000, help="random pairs for the accuracy check")
    ap.add_argument("--mp-subset", type=int, default=3000)
    ap.add_argument("--backend", choices=("cupy", "torch"))
    ap.add_argument("--json", help="also write the summary here")
    args = ap.parse_args(argv)

    summary = run_checks(load(args.lib), backend(args.backend), args.n, args.reps, args.random,
                         args.mp_subset)
    print(json.dumps(summary, default=str))
    if args.json:
        Path(args.json).write_text(json.dumps(summary, indent=2, default=str) + "\n")
    return 0 if summary["accuracy"]["ok"] else 1


def run_checks(lib, be, n: int, reps: int, n_random: int, mp_subset: int) -> dict:
    """Accuracy, bandwidth and speed, printed as they come; the summary dict."""
    dev = be.device()
    print(f"device: {dev}  (arrays through {be.name})")
    acc = check_accuracy(lib, be, n_random, mp_subset)
    for name in ("float32", "float64"):
        print(f"accuracy {name}: {acc[name]}")
    bw = bandwidth(be, dev, reps, n=min(1 << 28, 4 * n))
    print(f"bandwidth: {bw}")
    speed = time_kernels(lib, be, n, reps, bw)
    print(f"{'dtype':8} {'N':>11} {'fwd+bwd ms':>11} {'pairs/s':>10} {'GB/s':>8} {'of peak':>8} {'of copy':>8}")
    for name, e in speed.items():
        print(f"{name:8} {e['n']:>11,} {e['fwd_bwd_ms']:>11.3f} {e['pairs_per_s']:>10.3g} "
              f"{e['GBps_moved']:>8.0f} {e.get('fraction_of_theoretical_bw', float('nan')):>8.1%} "
              f"{e.get('fraction_of_copy_bw', float('nan')):>8.1%}")
    return {"device": dev, "accuracy": acc, "bandwidth": bw, "speed": speed}


if __name__ == "__main__":
    sys.exit(main())
