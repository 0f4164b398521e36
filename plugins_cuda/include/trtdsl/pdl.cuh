// Programmatic dependent launch (PDL, sm_90+): a kernel launched with `launch_pdl` may start while
// the kernel before it on the stream is still finishing, so its launch and block scheduling (and, for
// the GEMVs, the first weight reads into L2) overlap the predecessor's tail instead of following it.
//
// Contract of every kernel launched through launch_pdl (a kernel that breaks it may race ahead):
// * call pdl_wait() before its first read of anything an earlier kernel may write (activations,
//   dynamic scales, the K/V cache) and before its first global write: the wait returns once every
//   preceding kernel has completed and its memory is visible;
// * before the wait, touch only memory no kernel writes during the step: through pdl_prefetch_l2 (an
//   L2 prefetch cannot see stale data: every SM writes through the L2, the coherence point), or with
//   register loads of engine constants only (weights, their scales: written when the engine loads, by
//   copies or kernels that completed before the first step; the tile GEMV's PREWAIT shapes);
// * call pdl_launch_dependents() early: the next kernel may then launch as soon as every block of this
//   one has started (it still waits for this one's completion in its own pdl_wait(), and so, through
//   this one's wait, for every kernel before). Every kernel triggers right AFTER its wait, so at most
//   one kernel runs ahead of a running one. Triggering before the wait in the short kernels (norms,
//   SwiGLU, decode attention), to let the GEMV after them prefetch its weights while their own
//   predecessor still streams, was measured slower on an H100 (8B, batch 1: bf16 5.96 vs 5.85 ms
//   with PDL off), presumably from the extra blocks waiting on SMs the running GEMV needs.
// Kernels launched without the attribute (torch's, cuBLAS's, ours with PDL off) serialize as usual;
// the device calls are no-ops then. CUDA graphs capture the attribute as programmatic edges.
//
// Switch: env TRTDSL_PDL=0 turns it off for the process (read once); trtdsl_set_pdl(0/1) changes it
// at run time (for A/B timings in one process; graphs captured before keep their launches).
#pragma once
#include <utility>

#include "trtdsl/common.cuh"

extern "C" {
/* 1 enables programmatic dependent launch of the kernels that support it (default: env TRTDSL_PDL,
 * unset = on); returns the previous setting. Devices below sm_90 never get the attribute. */
int trtdsl_set_pdl(int enabled);
int trtdsl_pdl_enabled(void);
}

namespace trtdsl {

// Whether launches on the current device get the PDL attribute (switch on and sm_90+).
bool pdl_active();

__device__ __forceinline__ void pdl_wait() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("griddepcontrol.wait;" ::: "memory");
#endif
}

__device__ __forceinline__ void pdl_launch_dependents() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("griddepcontrol.launch_dependents;" ::: "memory");
#endif
}

// Fetch the 128-byte line holding p into L2 (no register result, nothing to wait for).
__device__ __forceinline__ void pdl_prefetch_l2(const void* p) {
  asm volatile("prefetch.global.L2 [%0];" ::"l"(p));
}

// The block's threads fetch the 128-byte lines of [p, p + bytes) into L2, e.g. a norm's weight before
// pdl_wait(): the kernel starts while its predecessor runs, so the later register loads hit L2.
__device__ __forceinline__ void pdl_prefetch_l2_range(const void* p, int64_t bytes) {
  const char* c = static_cast<const char*>(p);
  for (int64_t off = static_cast<int64_t>(threadIdx.x) * 128; off < bytes; off += static_cast<int64_t>(blockDim.x) * 128)
    pdl_prefetch_l2(c + off);
}

// kernel<<<grid, block, smem, stream>>>(args...) with the programmatic-serialization attribute when
// pdl_active(), and as thread-block clusters of `cluster` blocks when that is not 1 x 1 x 1 (sm_90+;
// grid must be a multiple of it); returns kOk or kErrLaunch.
template <typename... KArgs, typename... Args>
inline int launch_pdl_cluster(void (*kernel)(KArgs...), dim3 grid, dim3 block, dim3 cluster, size_t smem,
                              cudaStream_t stream, Args&&... args) {
  cudaLaunchConfig_t cfg = {};
  cfg.gridDim = grid;
  cfg.blockDim = block;
  cfg.dynamicSmemBytes = smem;
  cfg.stream = stream;
  cudaLaunchAttribute attr[2];
  unsigned n = 0;
  if (pdl_active()) {
    attr[n].id = cudaLaunchAttributeProgrammaticStreamSerialization;
    attr[n++].val.programmaticStreamSerializationAllowed = 1;
  }
  if (cluster.x * cluster.y * cluster.z > 1) {
    attr[n].id = cudaLaunchAttributeClusterDimension;
    attr[n].val.clusterDim.x = cluster.x;
    attr[n].val.clusterDim.y = cluster.y;
    attr[n++].val.clusterDim.z = cluster.z;
  }
  cfg.attrs = attr;
  cfg.numAttrs = n;
  // Converts each argument to the kernel's parameter type, as <<<>>> would.
  if (cudaLaunchKernelEx(&cfg, kernel, static_cast<KArgs>(std::forward<Args>(args))...) != cudaSuccess) {
    (void)cudaGetLastError();  // clear it: the status code reports it
    return kErrLaunch;
  }
  return kOk;
}

// launch_pdl_cluster without clusters.
template <typename... KArgs, typename... Args>
inline int launch_pdl(void (*kernel)(KArgs...), dim3 grid, dim3 block, size_t smem, cudaStream_t stream,
                      Args&&... args) {
  return launch_pdl_cluster(kernel, grid, block, dim3(1, 1, 1), smem, stream, std::forward<Args>(args)...);
}

}  // namespace trtdsl
