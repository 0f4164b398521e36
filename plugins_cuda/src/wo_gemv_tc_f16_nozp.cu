// Instances of the int4 tensor-core decode GEMV (wo_gemv_tc.cuh) for __half activations without zero
// points: one .cu per (activation type, zeros) so the four, the slowest units, compile in parallel.
#include "trtdsl/wo_gemv_tc.cuh"

namespace trtdsl {

template int launch_wo_gemv_tc<__half, false>(const __half*, const void*, const float*, const float*, __half*, int,
                                          int, int, int, int, int, cudaStream_t);

}  // namespace trtdsl
