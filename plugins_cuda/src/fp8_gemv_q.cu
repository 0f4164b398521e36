// C launcher of the FP8 decode GEMV with the static activation quantizer fused in (fp8_gemv.cuh,
// QX = true): its own translation unit so it compiles in parallel with fp8_gemv.cu.
#include "trtdsl/fp8_gemv.cuh"
#include "trtdsl/plugins.h"

using namespace trtdsl;

extern "C" int trtdsl_fp8_gemv_static(const void* x, const float* input_scale, const void* weight,
                                      const float* w_scale, int64_t w_scale_stride, void* out, int64_t m, int64_t n,
                                      int64_t k, int config, int dtype, cudaStream_t stream) {
  if (!x || !input_scale || !weight || !w_scale || !out) return kErrNullPointer;
  if (m < 1 || n < 1 || k < 1 || n > 0x7fffffff || k > 0x7fffffff) return kErrShape;
  if (w_scale_stride != 0 && w_scale_stride != 1) return kErrShape;
  const int mi = static_cast<int>(m), ni = static_cast<int>(n), ki = static_cast<int>(k);
  const int ws = static_cast<int>(w_scale_stride);
  if (dtype == kFloat16)
    return launch_fp8_gemv<__half, true>(x, weight, input_scale, 0, w_scale, ws, static_cast<__half*>(out), Fp8GemvEpilogue<__half>{}, mi, ni,
                                         ki, config, stream);
  if (dtype == kBFloat16)
    return launch_fp8_gemv<__nv_bfloat16, true>(x, weight, input_scale, 0, w_scale, ws,
                                                static_cast<__nv_bfloat16*>(out), Fp8GemvEpilogue<__nv_bfloat16>{}, mi, ni, ki, config,
                                                stream);
  return kErrDtype;  // fp32 activations: quantize_fp8 + trtdsl_fp8_gemv
}
