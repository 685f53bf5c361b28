#!/usr/bin/env bash
# Check the great-circle-distance CUDA kernel on a GPU machine that has no TensorFlow.
#
# Builds the kernel's plain C entry points (newsdl/ops/cc/kernels/gcd_kernels.cu.cc,
# no TF) into a small shared library with nvcc, then runs pipelines/gpu_check.py, which
# drives it through CuPy (or PyTorch): accuracy against mpmath/numpy, and the speed of
# forward + backward at N=1e8 as a fraction of the device's memory bandwidth.
#
#   pipelines/gpu_check.sh [--compile-only] [--out DIR] [-- ARGS FOR gpu_check.py]
#
# Environment: NVCC (default: nvcc on PATH, else $CUDA_HOME/bin/nvcc), PYTHON (python3),
# GPU_CHECK_ARCHS (nvcc -gencode flags; default sm_80 + sm_90 + compute_90 PTX).
# The CUDA runtime is linked statically (nvcc's default, -cudart static): the library
# needs only a driver recent enough for the toolkit that compiled it.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(dirname "$here")"
src="$root/newsdl/ops/cc/kernels"
out="${TMPDIR:-/tmp}/newsdl-gpu-check"
compile_only=0
while [[ $# -gt 0 ]]; do
  case "$1" in
    --compile-only) compile_only=1; shift ;;
    --out) out="$2"; shift 2 ;;
    --) shift; break ;;
    -h|--help) sed -n '2,16p' "$0"; exit 0 ;;
    *) echo "gpu_check.sh: unknown argument $1 (see --help)" >&2; exit 2 ;;
  esac
done

nvcc="${NVCC:-$(command -v nvcc || true)}"
if [[ -z "$nvcc" && -n "${CUDA_HOME:-}" && -x "$CUDA_HOME/bin/nvcc" ]]; then nvcc="$CUDA_HOME/bin/nvcc"; fi
if [[ -z "$nvcc" ]]; then echo "gpu_check.sh: no nvcc (set NVCC or CUDA_HOME)" >&2; exit 2; fi
archs=(${GPU_CHECK_ARCHS:--gencode arch=compute_80,code=sm_80 -gencode arch=compute_90,code=[sm_90,compute_90]})

mkdir -p "$out"
lib="$out/libnewsdl_gcd_cuda.so"
echo "nvcc: $("$nvcc" --version | tail -1)"
"$nvcc" -x cu -std=c++17 -O3 -DGOOGLE_CUDA=1 --expt-relaxed-constexpr -Xcompiler -fPIC \
  "${archs[@]}" -shared -cudart static -o "$lib.tmp" "$src/gcd_kernels.cu.cc"
mv -f "$lib.tmp" "$lib"
for sym in newsdl_gcd_forward_f32 newsdl_gcd_forward_f64 newsdl_gcd_backward_f32 newsdl_gcd_backward_f64; do
  nm -D --defined-only "$lib" | grep -q " T $sym\$" || { echo "gpu_check.sh: $lib lacks $sym" >&2; exit 1; }
done
echo "built $lib"
if [[ $compile_only == 1 ]]; then exit 0; fi

command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader || true
exec "${PYTHON:-python3}" "$here/gpu_check.py" --lib "$lib" "$@"
