// Instances of the int4 weight-only decode GEMV (wo_gemv.cuh) with zero points: one .cu per
// (bits, zeros) so the four compile in parallel.
#include "trtdsl/wo_gemv.cuh"

namespace trtdsl {

template int launch_wo_gemv<__half, 4, true>(const __half*, const void*, const float*, const float*, __half*, int, int,
                                            int, int, int, int, cudaStream_t);
template int launch_wo_gemv<__nv_bfloat16, 4, true>(const __nv_bfloat16*, const void*, const float*, const float*,
                                                   __nv_bfloat16*, int, int, int, int, int, int, cudaStream_t);

}  // namespace trtdsl
