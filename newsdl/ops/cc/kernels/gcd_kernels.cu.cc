// The CUDA kernel: a grid-stride loop over the pairs, each thread running the same
// forward() of gcd_math.h as the CPU, so both devices agree to the last few ulps.
//
// Nothing here includes TensorFlow. The TF kernel (gcd_kernels.cc) calls CudaForward
// and CudaBackward with the op's stream; pipelines/gpu_check.sh builds this file alone
// and calls the extern "C" entry points at the bottom with device pointers from CuPy.
// Both kernels are memory-bound on any recent GPU, so the work per thread is kept
// simple: one pair, vector loads of the (lat, lon) pairs, coalesced planar jac.
#if GOOGLE_CUDA

#include <cuda_runtime.h>

#include <cstdint>

#include "gcd_functor.h"
#include "gcd_math.h"

namespace newsdl_gcd {
namespace {

constexpr int kThreads = 256;

template <typename T>
struct Pair;
template <>
struct Pair<float> {
  using type = float2;
};
template <>
struct Pair<double> {
  using type = double2;
};

template <typename T>
__global__ void __launch_bounds__(kThreads)
    ForwardKernel(const typename Pair<T>::type* __restrict__ y,
                  const typename Pair<T>::type* __restrict__ z, T* __restrict__ dist,
                  T* __restrict__ jac, int64_t n, Unit<T> unit) {
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<int64_t>(blockDim.x) * gridDim.x) {
    const auto a = y[i];
    const auto b = z[i];
    forward<T>(a.x, a.y, b.x, b.y, unit, &dist[i], &jac[i], &jac[n + i], &jac[2 * n + i]);
  }
}

template <typename T>
__global__ void __launch_bounds__(kThreads)
    BackwardKernel(const T* __restrict__ grad, const T* __restrict__ jac,
                   typename Pair<T>::type* __restrict__ grad_y,
                   typename Pair<T>::type* __restrict__ grad_z, int64_t n) {
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<int64_t>(blockDim.x) * gridDim.x) {
    const T g = grad[i];
    const T g_lon = g * jac[2 * n + i];
    grad_y[i] = {g * jac[i], -g_lon};
    grad_z[i] = {g * jac[n + i], g_lon};
  }
}

// Enough blocks to fill every SM several times over; the grid-stride loop does the rest.
int Blocks(int64_t n) {
  int device = 0, sms = 1;
  cudaGetDevice(&device);
  cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device);
  const int64_t needed = (n + kThreads - 1) / kThreads;
  const int64_t cap = static_cast<int64_t>(sms) * 32;
  return static_cast<int>(needed < cap ? needed : cap);
}

}  // namespace

// TensorFlow's allocations are 64-byte aligned; the float2/double2 loads need the
// pairs aligned to their own size, which any [..., 2] tensor or CuPy array is.
template <typename T>
int CudaForward<T>::operator()(const T* y, const T* z, T* dist, T* jac, int64_t n, bool degrees,
                               void* stream) const {
  if (n <= 0) return 0;
  using P = typename Pair<T>::type;
  ForwardKernel<T><<<Blocks(n), kThreads, 0, static_cast<cudaStream_t>(stream)>>>(
      reinterpret_cast<const P*>(y), reinterpret_cast<const P*>(z), dist, jac, n,
      make_unit<T>(degrees));
  return static_cast<int>(cudaGetLastError());
}

template <typename T>
int CudaBackward<T>::operator()(const T* grad, const T* jac, T* grad_y, T* grad_z, int64_t n,
                                void* stream) const {
  if (n <= 0) return 0;
  using P = typename Pair<T>::type;
  BackwardKernel<T><<<Blocks(n), kThreads, 0, static_cast<cudaStream_t>(stream)>>>(
      grad, jac, reinterpret_cast<P*>(grad_y), reinterpret_cast<P*>(grad_z), n);
  return static_cast<int>(cudaGetLastError());
}

template struct CudaForward<float>;
template struct CudaForward<double>;
template struct CudaBackward<float>;
template struct CudaBackward<double>;

}  // namespace newsdl_gcd

// Plain C entry points: device pointers in, device pointers out, no TensorFlow.
// `stream` is a cudaStream_t (0 for the default stream); the return value is the
// launch's cudaError_t. Layouts as in gcd_functor.h.
extern "C" {

int newsdl_gcd_forward_f32(const float* y, const float* z, float* dist, float* jac, int64_t n,
                           int degrees, void* stream) {
  return newsdl_gcd::CudaForward<float>()(y, z, dist, jac, n, degrees != 0, stream);
}

int newsdl_gcd_forward_f64(const double* y, const double* z, double* dist, double* jac,
                           int64_t n, int degrees, void* stream) {
  return newsdl_gcd::CudaForward<double>()(y, z, dist, jac, n, degrees != 0, stream);
}

int newsdl_gcd_backward_f32(const float* grad, const float* jac, float* grad_y, float* grad_z,
                            int64_t n, void* stream) {
  return newsdl_gcd::CudaBackward<float>()(grad, jac, grad_y, grad_z, n, stream);
}

int newsdl_gcd_backward_f64(const double* grad, const double* jac, double* grad_y,
                            double* grad_z, int64_t n, void* stream) {
  return newsdl_gcd::CudaBackward<double>()(grad, jac, grad_y, grad_z, n, stream);
}

}  // extern "C"

#endif  // GOOGLE_CUDA
