// C launcher of the tile-16 int4 pack's dequantization (wo_dequant_packed.cuh): the large-M path of
// trtdsl.int4_tile_gemm (dequantize into fp16 / bf16, then cuBLAS).
#include "trtdsl/plugins.h"
#include "trtdsl/wo_dequant_packed.cuh"

using namespace trtdsl;

extern "C" int trtdsl_weight_only_dequantize_packed(const void* qpacked, const void* sz, int has_zeros, int sz_half,
                                                    void* out, int64_t rows, int64_t k, int group_size,
                                                    int num_groups, int swiglu, int dtype, cudaStream_t stream) {
  if (!qpacked || !sz || !out) return kErrNullPointer;
  if (rows < 1 || rows > 0x7fffffff || k < 128 || k > 0x7fffffff || k % 128 || (swiglu && rows % 16))
    return kErrShape;
  if (group_size < 0 || (group_size && (k % group_size || group_size % 32)) ||
      num_groups != (group_size ? k / group_size : 1))
    return kErrShape;
  if (!aligned16(qpacked) || !aligned16(out)) return kErrUnsupported;
  const int r = static_cast<int>(rows), ki = static_cast<int>(k);
#define TRTDSL_DQP(T)                                                                                            \
  return sz_half ? launch_wo_dequant_packed<T, __half>(qpacked, sz, has_zeros, static_cast<T*>(out), r, ki,     \
                                                       group_size, num_groups, swiglu, stream)                  \
                 : launch_wo_dequant_packed<T, float>(qpacked, sz, has_zeros, static_cast<T*>(out), r, ki,      \
                                                      group_size, num_groups, swiglu, stream)
  if (dtype == kFloat16) TRTDSL_DQP(__half);
  if (dtype == kBFloat16) TRTDSL_DQP(__nv_bfloat16);
#undef TRTDSL_DQP
  return kErrDtype;
}
