// C launchers of the low-rank split kernels (lowrank_quant.cuh): validate, dispatch on dtype.
#include "trtdsl/lowrank_quant.cuh"
#include "trtdsl/plugins.h"

using namespace trtdsl;

extern "C" int trtdsl_rmsnorm_fp8_lowrank(const void* x, const void* residual, const void* weight,
                                          const float* input_scale, const void* mean, const void* basis, int64_t rank,
                                          void* out, void* c_out, void* residual_out, int64_t rows, int64_t hidden,
                                          int64_t xs, int64_t rs, int64_t os, int64_t ros, float eps, int dtype,
                                          cudaStream_t stream) {
  if (!x || !weight || !input_scale || !mean || !basis || !out || !c_out || (residual && !residual_out))
    return kErrNullPointer;
  if (rows < 0 || hidden <= 0 || hidden > kLowRankMaxRow || rows > 0x7fffffff) return kErrShape;
  if (xs < hidden || os < hidden || (residual && (rs < hidden || ros < hidden))) return kErrShape;
  auto* o = static_cast<Fp8*>(out);
#define TRTDSL_RMS_LR(T)                                                                                       \
  return launch_rmsnorm_lowrank_fp8<T>(                                                                        \
      static_cast<const T*>(x), static_cast<const T*>(residual), static_cast<const T*>(weight),               \
      LowRankFp8Arg<T>{input_scale, static_cast<const T*>(mean), static_cast<const T*>(basis),                \
                       static_cast<T*>(c_out)},                                                                \
      static_cast<int>(rank), o, static_cast<T*>(residual_out), rows, hidden, xs, rs, os, ros, eps, stream)
  switch (dtype) {
    case kFloat16: TRTDSL_RMS_LR(__half);
    case kBFloat16: TRTDSL_RMS_LR(__nv_bfloat16);
    default: return kErrDtype;
  }
#undef TRTDSL_RMS_LR
}

extern "C" int trtdsl_swiglu_fp8_lowrank(const void* in, const float* input_scale, const void* mean, const void* basis,
                                         int64_t rank, void* out, void* c_out, int64_t rows, int64_t inter,
                                         int64_t in_stride, int64_t out_stride, int blocks, int dtype,
                                         cudaStream_t stream) {
  if (!in || !input_scale || !mean || !basis || !out || !c_out) return kErrNullPointer;
  if (rows < 0 || inter <= 0 || inter > kLowRankMaxRow || rows > 0x7fffffff) return kErrShape;
  if (in_stride < 2 * inter || out_stride < inter) return kErrShape;
  auto* o = static_cast<Fp8*>(out);
#define TRTDSL_SWIGLU_LR(T)                                                                                    \
  return launch_swiglu_lowrank_fp8<T>(                                                                         \
      static_cast<const T*>(in),                                                                               \
      LowRankFp8Arg<T>{input_scale, static_cast<const T*>(mean), static_cast<const T*>(basis),                \
                       static_cast<T*>(c_out)},                                                                \
      static_cast<int>(rank), o, rows, inter, in_stride, out_stride, blocks, stream)
  switch (dtype) {
    case kFloat16: TRTDSL_SWIGLU_LR(__half);
    case kBFloat16: TRTDSL_SWIGLU_LR(__nv_bfloat16);
    default: return kErrDtype;
  }
#undef TRTDSL_SWIGLU_LR
}
