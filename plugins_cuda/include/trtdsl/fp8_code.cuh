// The static fp8 activation quantizer's rounding, shared by every kernel that writes e4m3 codes of a
// value it also could have stored in T (quantizing norms / SwiGLU, the fused decode attention).
//
// Bitwise contract: codes equal trtdsl_quantize_fp8 applied to the T value the unfused kernel would
// store: round y to T, widen it back, divide with IEEE division (__fdiv_rn, so --use_fast_math does not
// change the codes) and convert to e4m3 rounding to nearest even, saturating at +-448.
#pragma once
#include <cuda_fp8.h>

#include "trtdsl/common.cuh"

namespace trtdsl {

using Fp8 = __nv_fp8_storage_t;

template <typename T>
__device__ __forceinline__ Fp8 quantize_rounded(float y, float scale) {
  return __nv_cvt_float_to_fp8(__fdiv_rn(to_float<T>(from_float<T>(y)), scale), __NV_SATFINITE, __NV_E4M3);
}

}  // namespace trtdsl
