// C launchers of the quantizing RMSNorm / SwiGLU kernels (norm_quant.cuh): validate, dispatch on dtype.
#include "trtdsl/norm_quant.cuh"  // (with rmsnorm.cuh: the kernel, kRmsnormMaxHidden)
#include "trtdsl/plugins.h"

using namespace trtdsl;

extern "C" int trtdsl_rmsnorm_fp8(const void* x, const void* residual, const void* weight, const float* input_scale,
                                  const void* mean, void* out, void* residual_out, int64_t rows, int64_t hidden,
                                  int64_t xs, int64_t rs, int64_t os, int64_t ros, float eps, int dtype,
                                  cudaStream_t stream) {
  if (!x || !weight || !input_scale || !out || (residual && !residual_out)) return kErrNullPointer;
  if (rows < 0 || hidden <= 0 || hidden > kRmsnormMaxHidden || rows > 0x7fffffff) return kErrShape;
  if (xs < hidden || os < hidden || (residual && (rs < hidden || ros < hidden))) return kErrShape;
  auto* o = static_cast<Fp8*>(out);
  switch (dtype) {
#define TRTDSL_RMS_FP8(T)                                                                                      \
  if (mean)                                                                                                    \
    return launch_rmsnorm<T, StoreFp8Centered<T>>(                                                             \
        static_cast<const T*>(x), static_cast<const T*>(residual), static_cast<const T*>(weight), o,           \
        static_cast<T*>(residual_out), rows, hidden, xs, rs, os, ros, eps, stream,                             \
        CenteredFp8Arg<T>{input_scale, static_cast<const T*>(mean)});                                          \
  return launch_rmsnorm<T, StoreFp8<T>>(static_cast<const T*>(x), static_cast<const T*>(residual),            \
                                        static_cast<const T*>(weight), o, static_cast<T*>(residual_out),       \
                                        rows, hidden, xs, rs, os, ros, eps, stream, input_scale)
    case kFloat32: TRTDSL_RMS_FP8(float);
    case kFloat16: TRTDSL_RMS_FP8(__half);
    case kBFloat16: TRTDSL_RMS_FP8(__nv_bfloat16);
#undef TRTDSL_RMS_FP8
    default: return kErrDtype;
  }
}

extern "C" int trtdsl_swiglu_fp8(const void* in, const float* input_scale, void* out, int64_t rows, int64_t inter,
                                 int64_t in_stride, int64_t out_stride, int dtype, cudaStream_t stream) {
  if (!in || !input_scale || !out) return kErrNullPointer;
  if (rows < 0 || inter < 0 || rows > 0x7fffffff || in_stride < 2 * inter || out_stride < inter) return kErrShape;
  auto* o = static_cast<Fp8*>(out);
  switch (dtype) {
    case kFloat32: return launch_swiglu_fp8<float>(static_cast<const float*>(in), input_scale, o, rows, inter, in_stride, out_stride, stream);
    case kFloat16: return launch_swiglu_fp8<__half>(static_cast<const __half*>(in), input_scale, o, rows, inter, in_stride, out_stride, stream);
    case kBFloat16: return launch_swiglu_fp8<__nv_bfloat16>(static_cast<const __nv_bfloat16*>(in), input_scale, o, rows, inter, in_stride, out_stride, stream);
    default: return kErrDtype;
  }
}
