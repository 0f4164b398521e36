// C launcher of the FP8 decode GEMV (fp8_gemv.cuh): validate, dispatch on dtype, launch.
#include "trtdsl/fp8_gemv.cuh"
#include "trtdsl/plugins.h"

using namespace trtdsl;

extern "C" int trtdsl_fp8_gemv(const void* xq, const void* weight, const float* x_scale, int64_t x_scale_stride,
                               const float* w_scale, int64_t w_scale_stride, void* out, const void* bias,
                               int64_t m, int64_t n, int64_t k, int config, int dtype, cudaStream_t stream) {
  if (!xq || !weight || !x_scale || !w_scale || !out) return kErrNullPointer;
  if (m < 1 || n < 1 || k < 1 || n > 0x7fffffff || k > 0x7fffffff) return kErrShape;
  if ((x_scale_stride != 0 && x_scale_stride != 1) || (w_scale_stride != 0 && w_scale_stride != 1)) return kErrShape;
  const int mi = static_cast<int>(m), ni = static_cast<int>(n), ki = static_cast<int>(k);
  const int xs = static_cast<int>(x_scale_stride), ws = static_cast<int>(w_scale_stride);
  if (dtype == kFloat16)
    return launch_fp8_gemv<__half, false>(xq, weight, x_scale, xs, w_scale, ws, static_cast<__half*>(out),
                                   static_cast<const __half*>(bias), mi, ni, ki,
                                   config, stream);
  if (dtype == kBFloat16)
    return launch_fp8_gemv<__nv_bfloat16, false>(xq, weight, x_scale, xs, w_scale, ws, static_cast<__nv_bfloat16*>(out),
                                          static_cast<const __nv_bfloat16*>(bias), mi, ni, ki, config, stream);
  if (dtype == kFloat32)
    return launch_fp8_gemv<float, false>(xq, weight, x_scale, xs, w_scale, ws, static_cast<float*>(out),
                                  static_cast<const float*>(bias), mi, ni, ki,
                                  config, stream);
  return kErrDtype;
}
