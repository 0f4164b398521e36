// Instances of the int4 tensor-core decode GEMV (wo_gemv_tc.cuh) for __nv_bfloat16 activations with zero
// points: one .cu per (activation type, zeros) so the four, the slowest units, compile in parallel.
#include "trtdsl/wo_gemv_tc.cuh"

namespace trtdsl {

template int launch_wo_gemv_tc<__nv_bfloat16, true>(const __nv_bfloat16*, const void*, const float*, const float*, __nv_bfloat16*, int,
                                          int, int, int, int, int, cudaStream_t);

}  // namespace trtdsl
