// C launcher of the dense decode GEMV (dense_gemv.cuh): validate, dispatch on dtype, launch.
#include "trtdsl/dense_gemv.cuh"
#include "trtdsl/plugins.h"

using namespace trtdsl;

extern "C" int trtdsl_dense_gemv(const void* x, const void* weight, void* out, int64_t m, int64_t n, int64_t k,
                                 int config, int dtype, cudaStream_t stream) {
  if (!x || !weight || !out) return kErrNullPointer;
  // k / 8 vectors and row offsets are int / int64 in the kernel; grid.x = ceil(n / NR) <= 2^31 - 1.
  if (m < 1 || n < 1 || k < 1 || n > 0x7fffffff || k > 0x7fffffff) return kErrShape;
  const int mi = static_cast<int>(m), ni = static_cast<int>(n), ki = static_cast<int>(k);
  if (dtype == kFloat16)
    return launch_dense_gemv<__half>(static_cast<const __half*>(x), weight, static_cast<__half*>(out), mi, ni, ki,
                                     config, stream);
  if (dtype == kBFloat16)
    return launch_dense_gemv<__nv_bfloat16>(static_cast<const __nv_bfloat16*>(x), weight,
                                            static_cast<__nv_bfloat16*>(out), mi, ni, ki, config, stream);
  return kErrDtype;
}
