// Instances of the int4 GEMV over the tile-16 packed layout (wo_gemv_packed.cuh) for
// __half activations and float scales (a unit of its own so it compiles in parallel with the other GEMV units).
#include "trtdsl/wo_gemv_packed.cuh"

namespace trtdsl {

template int launch_wo_gemv_packed<__half, float>(const __half*, const void*, const void*, bool, __half*, int,
    int, int, int, int, bool, int,
    const PackedNorm<__half>&, cudaStream_t);

}  // namespace trtdsl
