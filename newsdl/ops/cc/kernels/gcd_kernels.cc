// The TensorFlow kernels of GreatCircleDistance and GreatCircleDistanceGrad.
//
// This file checks shapes, allocates outputs and hands the flat buffers to a
// functor of gcd_functor.h: on CPU, sharded over TensorFlow's intra-op thread pool;
// on GPU, launched on the op's CUDA stream. The arithmetic lives in gcd_math.h.
#include <algorithm>
#include <cstdint>
#if defined(__linux__)
#include <sys/mman.h>
#endif

#include "gcd_functor.h"
#include "tensorflow/core/framework/op_kernel.h"
#include "tensorflow/core/framework/tensor.h"
#include "tensorflow/core/framework/tensor_shape.h"
#include "tensorflow/core/platform/threadpool.h"
#if GOOGLE_CUDA
#include "xla/stream_executor/stream.h"
#endif

namespace newsdl_gcd {

using tensorflow::DEVICE_CPU;
using tensorflow::OpKernel;
using tensorflow::OpKernelConstruction;
using tensorflow::OpKernelContext;
using tensorflow::Tensor;
using tensorflow::TensorShape;

struct CpuDevice {};
struct GpuDevice {};

namespace {

// Splits [0, n) into shards for the intra-op pool: no shard under `min_block` pairs
// (below that, waking a thread costs more than the work), a few shards per thread for
// balance, and every shard a multiple of 64 pairs, so that each one runs full SIMD
// vectors and writes whole cache lines of the planar jac.
template <typename Fn>
void Shard(OpKernelContext* ctx, int64_t n, int64_t min_block, const Fn& fn) {
  auto* pool = ctx->device()->tensorflow_cpu_worker_threads()->workers;
  const int64_t threads = pool->NumThreads();
  const int64_t shards = std::max<int64_t>(1, std::min(4 * threads, n / min_block));
  if (shards == 1) {
    fn(0, n);
    return;
  }
  const int64_t block = ((n + shards - 1) / shards + 63) / 64 * 64;
  pool->ParallelFor(n, tsl::thread::ThreadPool::SchedulingParams::Fixed(block), fn);
}

// TensorFlow's CPU allocator hands large outputs (above glibc's mmap threshold, 32 MB
// at most) straight from fresh mmap()s, so every call pays one page fault per 4 KB it
// writes: at 1e7 pairs that costs more than the arithmetic. Asking for transparent
// huge pages on the untouched output, as numpy does for its own arrays, cuts the
// faults 512-fold. Advice only: where THP is off or the range is small, nothing changes.
void AdviseHugePages(void* data, int64_t bytes) {
#if defined(__linux__) && defined(MADV_HUGEPAGE)
  constexpr uintptr_t kHuge = uintptr_t{2} << 20;
  if (bytes < int64_t{4} << 20) return;
  const uintptr_t begin = (reinterpret_cast<uintptr_t>(data) + kHuge - 1) & ~(kHuge - 1);
  const uintptr_t end = (reinterpret_cast<uintptr_t>(data) + bytes) & ~(kHuge - 1);
  if (end > begin) madvise(reinterpret_cast<void*>(begin), end - begin, MADV_HUGEPAGE);
#endif
}

template <typename Device, typename T>
struct Launch;

template <typename T>
struct Launch<CpuDevice, T> {
  static void Forward(OpKernelContext* ctx, const T* y, const T* z, T* dist, T* jac, int64_t n,
                      bool degrees) {
    AdviseHugePages(dist, n * sizeof(T));
    AdviseHugePages(jac, 3 * n * sizeof(T));
    Shard(ctx, n, 8192, [=](int64_t begin, int64_t end) {
      CpuForward<T>()(y, z, dist, jac, n, begin, end, degrees);
    });
  }
  static void Backward(OpKernelContext* ctx, const T* grad, const T* jac, T* grad_y, T* grad_z,
                       int64_t n) {
    AdviseHugePages(grad_y, 2 * n * sizeof(T));
    AdviseHugePages(grad_z, 2 * n * sizeof(T));
    Shard(ctx, n, 32768, [=](int64_t begin, int64_t end) {
      CpuBackward<T>()(grad, jac, grad_y, grad_z, n, begin, end);
    });
  }
};

#if GOOGLE_CUDA
// The raw cudaStream_t of the op's stream. stream_executor's Stream is used through
// its virtual interface only, so this file needs no CUDA header and the library
// still loads under tensorflow-cpu, where no GPU kernel is ever picked.
void* CudaStream(OpKernelContext* ctx) {
  auto* device_context = ctx->op_device_context();
  if (device_context == nullptr || device_context->stream() == nullptr) return nullptr;
  return device_context->stream()->platform_specific_handle().stream;
}

template <typename T>
struct Launch<GpuDevice, T> {
  static void Forward(OpKernelContext* ctx, const T* y, const T* z, T* dist, T* jac, int64_t n,
                      bool degrees) {
    void* stream = CudaStream(ctx);
    OP_REQUIRES(ctx, stream != nullptr, absl::InternalError("GreatCircleDistance: no CUDA stream"));
    const int err = CudaForward<T>()(y, z, dist, jac, n, degrees, stream);
    OP_REQUIRES(ctx, err == 0,
                absl::InternalError(absl::StrCat("GreatCircleDistance CUDA launch failed: ", err)));
  }
  static void Backward(OpKernelContext* ctx, const T* grad, const T* jac, T* grad_y, T* grad_z,
                       int64_t n) {
    void* stream = CudaStream(ctx);
    OP_REQUIRES(ctx, stream != nullptr, absl::InternalError("GreatCircleDistanceGrad: no CUDA stream"));
    const int err = CudaBackward<T>()(grad, jac, grad_y, grad_z, n, stream);
    OP_REQUIRES(ctx, err == 0,
                absl::InternalError(absl::StrCat("GreatCircleDistanceGrad CUDA launch failed: ", err)));
  }
};
#endif  // GOOGLE_CUDA

bool IsPairs(const TensorShape& s) { return s.dims() >= 1 && s.dim_size(s.dims() - 1) == 2; }

}  // namespace

template <typename Device, typename T>
class GreatCircleDistanceOp : public OpKernel {
 public:
  explicit GreatCircleDistanceOp(OpKernelConstruction* ctx) : OpKernel(ctx) {
    OP_REQUIRES_OK(ctx, ctx->GetAttr("degrees", &degrees_));
  }

  void Compute(OpKernelContext* ctx) override {
    const Tensor& y = ctx->input(0);
    const Tensor& z = ctx->input(1);
    OP_REQUIRES(ctx, IsPairs(y.shape()) && IsPairs(z.shape()),
                absl::InvalidArgumentError(absl::StrCat(
                    "GreatCircleDistance: y and z must have shape [..., 2] (lat, lon), got ",
                    y.shape().DebugString(), " and ", z.shape().DebugString())));
    OP_REQUIRES(ctx, y.shape().IsSameSize(z.shape()),
                absl::InvalidArgumentError(absl::StrCat(
                    "GreatCircleDistance: y and z must have the same shape, got ",
                    y.shape().DebugString(), " and ", z.shape().DebugString())));
    TensorShape batch = y.shape();
    batch.RemoveLastDims(1);
    TensorShape jac_shape({3});
    jac_shape.AppendShape(batch);
    Tensor* dist = nullptr;
    Tensor* jac = nullptr;
    OP_REQUIRES_OK(ctx, ctx->allocate_output(0, batch, &dist));
    OP_REQUIRES_OK(ctx, ctx->allocate_output(1, jac_shape, &jac));
    const int64_t n = batch.num_elements();
    if (n == 0) return;
    Launch<Device, T>::Forward(ctx, y.flat<T>().data(), z.flat<T>().data(), dist->flat<T>().data(),
                               jac->flat<T>().data(), n, degrees_);
  }

 private:
  bool degrees_ = false;
};

template <typename Device, typename T>
class GreatCircleDistanceGradOp : public OpKernel {
 public:
  explicit GreatCircleDistanceGradOp(OpKernelConstruction* ctx) : OpKernel(ctx) {}

  void Compute(OpKernelContext* ctx) override {
    const Tensor& grad = ctx->input(0);
    const Tensor& jac = ctx->input(1);
    TensorShape jac_batch = jac.shape();
    const bool jac_ok = jac.dims() >= 1 && jac.dim_size(0) == 3;
    if (jac_ok) jac_batch.RemoveDim(0);
    OP_REQUIRES(ctx, jac_ok && jac_batch.IsSameSize(grad.shape()),
                absl::InvalidArgumentError(absl::StrCat(
                    "GreatCircleDistanceGrad: jac must have shape [3] + grad's shape, got ",
                    jac.shape().DebugString(), " and ", grad.shape().DebugString())));
    TensorShape out_shape = grad.shape();
    out_shape.AddDim(2);
    Tensor* grad_y = nullptr;
    Tensor* grad_z = nullptr;
    OP_REQUIRES_OK(ctx, ctx->allocate_output(0, out_shape, &grad_y));
    OP_REQUIRES_OK(ctx, ctx->allocate_output(1, out_shape, &grad_z));
    const int64_t n = grad.NumElements();
    if (n == 0) return;
    Launch<Device, T>::Backward(ctx, grad.flat<T>().data(), jac.flat<T>().data(),
                                grad_y->flat<T>().data(), grad_z->flat<T>().data(), n);
  }
};

#define NEWSDL_REGISTER(DEVICE_NAME, DEVICE_TAG, TYPE)                                   \
  REGISTER_KERNEL_BUILDER(                                                                \
      Name("GreatCircleDistance").Device(DEVICE_NAME).TypeConstraint<TYPE>("T"),          \
      GreatCircleDistanceOp<DEVICE_TAG, TYPE>);                                           \
  REGISTER_KERNEL_BUILDER(                                                                \
      Name("GreatCircleDistanceGrad").Device(DEVICE_NAME).TypeConstraint<TYPE>("T"),      \
      GreatCircleDistanceGradOp<DEVICE_TAG, TYPE>);

NEWSDL_REGISTER(DEVICE_CPU, CpuDevice, float)
NEWSDL_REGISTER(DEVICE_CPU, CpuDevice, double)
#if GOOGLE_CUDA
NEWSDL_REGISTER(tensorflow::DEVICE_GPU, GpuDevice, float)
NEWSDL_REGISTER(tensorflow::DEVICE_GPU, GpuDevice, double)
#endif

}  // namespace newsdl_gcd
