// Instances of the int4 GEMV over the tile-16 packed layout (wo_gemv_packed.cuh) for
// __nv_bfloat16 activations and float scales (a unit of its own so it compiles in parallel with the other GEMV units).
#include "trtdsl/wo_gemv_packed.cuh"

namespace trtdsl {

template int launch_wo_gemv_packed<__nv_bfloat16, float>(const __nv_bfloat16*, const void*, const void*, bool, __nv_bfloat16*, int,
    int, int, int, int, bool, int,
    const PackedNorm<__nv_bfloat16>&, cudaStream_t);

}  // namespace trtdsl
