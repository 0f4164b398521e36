// C launcher of the FP8 decode GEMV (fp8_gemv.cuh): validate, dispatch on dtype, launch.
#include "trtdsl/fp8_gemv.cuh"
#include "trtdsl/plugins.h"

using namespace trtdsl;

extern "C" int trtdsl_fp8_gemv(const void* xq, const void* weight, const float* x_scale, int64_t x_scale_stride,
                               const float* w_scale, int64_t w_scale_stride, void* out, const void* bias,
                               const void* lowrank_c, const void* lowrank_w, int64_t rank, int64_t m, int64_t n,
                               int64_t k, int config, int dtype, cudaStream_t stream) {
  if (!xq || !weight || !x_scale || !w_scale || !out) return kErrNullPointer;
  if (m < 1 || n < 1 || k < 1 || n > 0x7fffffff || k > 0x7fffffff) return kErrShape;
  if ((x_scale_stride != 0 && x_scale_stride != 1) || (w_scale_stride != 0 && w_scale_stride != 1)) return kErrShape;
  if (!lowrank_c != !lowrank_w || (lowrank_c && (rank < 1 || rank > kFp8GemvMaxLowRank))) return kErrShape;
  const int mi = static_cast<int>(m), ni = static_cast<int>(n), ki = static_cast<int>(k);
  const int xs = static_cast<int>(x_scale_stride), ws = static_cast<int>(w_scale_stride);
  const int r = lowrank_c ? static_cast<int>(rank) : 0;
#define TRTDSL_FP8_GEMV(T)                                                                                   \
  return launch_fp8_gemv<T, false>(                                                                          \
      xq, weight, x_scale, xs, w_scale, ws, static_cast<T*>(out),                                            \
      Fp8GemvEpilogue<T>{static_cast<const T*>(bias), static_cast<const T*>(lowrank_c),                      \
                         static_cast<const T*>(lowrank_w), r},                                               \
      mi, ni, ki, config, stream)
  if (dtype == kFloat16) TRTDSL_FP8_GEMV(__half);
  if (dtype == kBFloat16) TRTDSL_FP8_GEMV(__nv_bfloat16);
  if (dtype == kFloat32) TRTDSL_FP8_GEMV(float);
#undef TRTDSL_FP8_GEMV
  return kErrDtype;
}
