// Instances of the one-row int4 tensor-core GEMV (wo_gemv_tc1.cuh) for __half activations, with and
// without zero points (a unit of its own so it compiles in parallel with the other GEMV units).
#include "trtdsl/wo_gemv_tc1.cuh"

namespace trtdsl {

template int launch_wo_gemv_tc1<__half, true>(const __half*, const void*, const float*, const float*, __half*, int, int,
                                           int, int, int, int, cudaStream_t);
template int launch_wo_gemv_tc1<__half, false>(const __half*, const void*, const float*, const float*, __half*, int, int,
                                            int, int, int, int, cudaStream_t);

}  // namespace trtdsl
