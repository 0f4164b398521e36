// C launcher of the SmoothQuant W8A8 decode GEMV (int8_gemv.cuh): validate, dispatch on dtype, launch.
#include "trtdsl/int8_gemv.cuh"
#include "trtdsl/plugins.h"

using namespace trtdsl;

extern "C" int trtdsl_int8_gemv(const void* xq, const void* weight, const float* x_scales, const float* w_scales,
                                void* out, int64_t m, int64_t n, int64_t k, int config, int dtype,
                                cudaStream_t stream) {
  if (!xq || !weight || !x_scales || !w_scales || !out) return kErrNullPointer;
  if (m < 1 || n < 1 || k < 1 || n > 0x7fffffff || k > 133000) return kErrShape;  // int32 sums stay exact
  if (config < 0 || config > kQuantGemvNumConfigs) return kErrUnsupported;
  const int mi = static_cast<int>(m), ni = static_cast<int>(n), ki = static_cast<int>(k);
  switch (dtype) {
    case kFloat32:
      return launch_int8_gemv<float>(xq, weight, x_scales, w_scales, static_cast<float*>(out), mi, ni, ki, config, stream);
    case kFloat16:
      return launch_int8_gemv<__half>(xq, weight, x_scales, w_scales, static_cast<__half*>(out), mi, ni, ki, config,
                                      stream);
    case kBFloat16:
      return launch_int8_gemv<__nv_bfloat16>(xq, weight, x_scales, w_scales, static_cast<__nv_bfloat16*>(out), mi, ni,
                                             ki, config, stream);
    default: return kErrDtype;
  }
}
