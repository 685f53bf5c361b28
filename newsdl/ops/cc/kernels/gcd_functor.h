// The functors behind the GreatCircleDistance ops, one per device.
//
// Both compute forward() of gcd_math.h per element; they differ only in how the
// elements are spread over the hardware. No TensorFlow header is included here, so
// the CPU loops and the CUDA kernel (and its plain C entry points, which
// pipelines/gpu_check.sh calls without TensorFlow) build from this header alone.
//
// Layout: y, z, grad_y, grad_z are [n][2] (lat, lon); dist and grad are [n];
// jac is planar [3][n] = (d dist/d y_lat, d dist/d z_lat, d dist/d z_lon), the last
// being minus d dist/d y_lon.
#ifndef NEWSDL_OPS_GCD_FUNCTOR_H_
#define NEWSDL_OPS_GCD_FUNCTOR_H_

#include <cstdint>

namespace newsdl_gcd {

// CPU: one range [begin, end) of the n pairs; the op kernel shards the ranges over
// TensorFlow's intra-op thread pool.
template <typename T>
struct CpuForward {
  void operator()(const T* y, const T* z, T* dist, T* jac, int64_t n, int64_t begin, int64_t end,
                  bool degrees) const;
};

template <typename T>
struct CpuBackward {
  void operator()(const T* grad, const T* jac, T* grad_y, T* grad_z, int64_t n, int64_t begin,
                  int64_t end) const;
};

// CUDA: all n pairs, launched asynchronously on `stream` (a cudaStream_t). Returns the
// cudaError_t of the launch, 0 on success.
template <typename T>
struct CudaForward {
  int operator()(const T* y, const T* z, T* dist, T* jac, int64_t n, bool degrees,
                 void* stream) const;
};

template <typename T>
struct CudaBackward {
  int operator()(const T* grad, const T* jac, T* grad_y, T* grad_z, int64_t n,
                 void* stream) const;
};

}  // namespace newsdl_gcd

#endif  // NEWSDL_OPS_GCD_FUNCTOR_H_
