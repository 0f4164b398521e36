// C launchers of the normalization / activation kernels: validate, dispatch on dtype, launch.
#include "trtdsl/plugins.h"
#include "trtdsl/rmsnorm.cuh"
#include "trtdsl/swiglu.cuh"

using namespace trtdsl;

extern "C" int trtdsl_rmsnorm(const void* x, const void* residual, const void* weight, void* out,
                              void* residual_out, int64_t rows, int64_t hidden, int64_t xs, int64_t rs,
                              int64_t os, int64_t ros, float eps, int dtype, cudaStream_t stream) {
  if (!x || !weight || !out || (residual && !residual_out)) return kErrNullPointer;
  if (rows < 0 || hidden <= 0 || hidden > kRmsnormMaxHidden || rows > 0x7fffffff) return kErrShape;
  switch (dtype) {
#define TRTDSL_RMS(T)                                                                                        \
  return launch_rmsnorm<T>(static_cast<const T*>(x), static_cast<const T*>(residual),                       \
                           static_cast<const T*>(weight), static_cast<T*>(out), static_cast<T*>(residual_out), \
                           rows, hidden, xs, rs, os, ros, eps, stream)
    case kFloat32: TRTDSL_RMS(float);
    case kFloat16: TRTDSL_RMS(__half);
    case kBFloat16: TRTDSL_RMS(__nv_bfloat16);
#undef TRTDSL_RMS
    default: return kErrDtype;
  }
}

extern "C" int trtdsl_swiglu(const void* in, void* out, int64_t rows, int64_t inter, int64_t in_stride,
                             int64_t out_stride, int dtype, cudaStream_t stream) {
  if (!in || !out) return kErrNullPointer;
  if (rows < 0 || inter < 0 || rows > 0x7fffffff) return kErrShape;
  switch (dtype) {
    case kFloat32: return launch_swiglu<float>(static_cast<const float*>(in), static_cast<float*>(out), rows, inter, in_stride, out_stride, stream);
    case kFloat16: return launch_swiglu<__half>(static_cast<const __half*>(in), static_cast<__half*>(out), rows, inter, in_stride, out_stride, stream);
    case kBFloat16: return launch_swiglu<__nv_bfloat16>(static_cast<const __nv_bfloat16*>(in), static_cast<__nv_bfloat16*>(out), rows, inter, in_stride, out_stride, stream);
    default: return kErrDtype;
  }
}
