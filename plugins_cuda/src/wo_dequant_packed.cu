// C launcher of the tile-16 int4 pack's dequantization (wo_dequant_packed.cuh): the large-M path of
// trtdsl.int4_tile_gemm (dequantize into fp16 / bf16, then cuBLAS).
#include "trtdsl/plugins.h"
#include "trtdsl/wo_dequant_packed.cuh"

using namespace trtdsl;

extern "C" int trtdsl_weight_only_dequantize_packed(const void* qpacked, const float* sz, int has_zeros, void* out,
                                                    int64_t rows, int64_t k, int group_size, int num_groups,
                                                    int swiglu, int dtype, cudaStream_t stream) {
  if (!qpacked || !sz || !out) return kErrNullPointer;
  if (rows < 1 || rows > 0x7fffffff || k < 128 || k > 0x7fffffff || k % 128 || (swiglu && rows % 16))
    return kErrShape;
  if (group_size < 0 || (group_size && (k % group_size || group_size % 32)) ||
      num_groups != (group_size ? k / group_size : 1))
    return kErrShape;
  if (!aligned16(qpacked) || !aligned16(out)) return kErrUnsupported;
  const int r = static_cast<int>(rows), ki = static_cast<int>(k);
  if (dtype == kFloat16)
    return launch_wo_dequant_packed<__half>(qpacked, sz, has_zeros, static_cast<__half*>(out), r, ki, group_size,
                                            num_groups, swiglu, stream);
  if (dtype == kBFloat16)
    return launch_wo_dequant_packed<__nv_bfloat16>(qpacked, sz, has_zeros, static_cast<__nv_bfloat16*>(out), r, ki,
                                                   group_size, num_groups, swiglu, stream);
  return kErrDtype;
}
