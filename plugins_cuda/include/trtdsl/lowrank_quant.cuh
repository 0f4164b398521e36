// The low-rank split of a centered static-fp8 GEMM input (QuantConfig.fp8_lowrank) fused into the kernel
// that makes the input: RMSNorm (optionally after the residual add) or SwiGLU. For the producer's values v
// (rounded to T, as the plain kernel stores them):
//   d    = T(v - mean)                      the centering subtraction
//   c_j  = T(sum_i d_i U[i, j])             the branch's coefficients, fp32 sums
//   rest = T(d - T(sum_j c_j U[i, j]))      what the GEMMs quantize (fp32 sum in j order)
//   out  = e4m3 codes of rest / scale       (quantize_rounded, as the unfused quantizer)
// and c [rows, R] goes to its own output, for the GEMV epilogue's c (W U)^T (Fp8GemvEpilogue).
//
// Every thread takes one 16-byte vector of the row: its mean and basis rows are loaded into registers
// before pdl_wait (constants), its d values stay in registers between the two halves, and its codes
// leave as one vector store, so the split adds one reduction of R sums and no memory round trip to the
// plain kernel. The RMSNorm keeps a whole row in one block (rmsnorm.cuh's thread rule, up to 512
// vectors); the SwiGLU splits a row over a thread-block cluster (sm_90) of kLowRankSwigluSplit blocks,
// which add their shares of c through distributed shared memory in block order (every block gets the
// same c), so that no SM reads more than an eighth of a 14336-wide row and its basis. A block-diagonal
// basis (QuantConfig.fp8_lowrank_blocks: each chunk of the row its own columns) needs no cluster: each
// block's share of c is its chunk's entries (swiglu_lowrank_blocks_fp8_kernel). The first
// versions (a cluster per norm row too, one element per thread, the basis read twice) took 5.5 and
// 7.9 us at decode against 2.8 and 1.9 without the split (H100, decode_profile_fp8_rowpass.json).
//
// Contract against the unfused layers (norm / SwiGLU, sub, matmul, matmul, sub, quantize): every step
// rounds where a layer would; c's sum runs in this kernel's order, not the GEMM's, so codes may differ
// where rest sits on a rounding boundary (tests bound it). U is [k, R] row-major in T.
#pragma once
#include <cooperative_groups.h>

#include "trtdsl/common.cuh"
#include "trtdsl/fp8_code.cuh"
#include "trtdsl/pdl.cuh"
#include "trtdsl/rmsnorm.cuh"

namespace trtdsl {

constexpr int kLowRankSwigluSplit = 8;   // cluster blocks per SwiGLU row (the portable cluster size)
constexpr int kLowRankMaxVecs = 512;     // 16-byte vectors per block, one per thread (registers: rank 8 in 128)
constexpr int64_t kLowRankMaxRow = 48 * 1024;

template <typename T> struct LowRankFp8Arg {
  const float* scale;  // [1] static input scale of the GEMMs
  const T* mean;       // [k] calibrated per-channel mean
  const T* basis;      // [k, R] leading eigenvectors U
  T* c_out;            // [rows, R]
};

// One thread's VEC channels of the branch's constants: their means and their VEC x R basis values
// (row-major, as U stores them: R vectors of VEC), in registers.
template <typename T, int VEC, int R> struct LowRankVec {
  Vec<T, VEC> mean;
  Vec<T, VEC> basis[R];
  __device__ void load(const LowRankFp8Arg<T>& a, int64_t vec) {
    mean = load_vec<T, VEC>(a.mean + vec * VEC);
#pragma unroll
    for (int q = 0; q < R; ++q) basis[q] = load_vec<T, VEC>(a.basis + (vec * VEC) * R + q * VEC);
  }
  __device__ float u(int k, int j) const { return to_float<T>(basis[(k * R + j) / VEC].v[(k * R + j) % VEC]); }
};

// d = T(v - mean) of this thread's VEC values v (already rounded to T by the caller), and their share of c.
template <typename T, int VEC, int R>
__device__ __forceinline__ void lowrank_center(const float (&v)[VEC], const LowRankVec<T, VEC, R>& lv, float (&d)[VEC],
                                               float (&part)[R]) {
#pragma unroll
  for (int k = 0; k < VEC; ++k) {
    d[k] = to_float<T>(from_float<T>(v[k] - to_float<T>(lv.mean.v[k])));
#pragma unroll
    for (int j = 0; j < R; ++j) part[j] = fmaf(d[k], lv.u(k, j), part[j]);
  }
}

// The codes of rest = T(d - T(c U^T)) of this thread's VEC values, as one vector store.
template <typename T, int VEC, int R>
__device__ __forceinline__ void lowrank_store(const float (&d)[VEC], const LowRankVec<T, VEC, R>& lv,
                                              const float (&c)[R], float scale, Fp8* out) {
  Vec<Fp8, VEC> o;
#pragma unroll
  for (int k = 0; k < VEC; ++k) {
    float low = 0.f;
#pragma unroll
    for (int j = 0; j < R; ++j) low = fmaf(c[j], lv.u(k, j), low);
    o.v[k] = quantize_rounded<T>(d[k] - to_float<T>(from_float<T>(low)), scale);
  }
  store_vec<Fp8, VEC>(out, o);
}

// The block's sums of R values at once (common.cuh's block_sum, one pair of barriers for all R);
// scratch holds 32 * R floats.
template <int R>
__device__ __forceinline__ void block_sum_each(float (&v)[R], float* scratch) {
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
#pragma unroll
  for (int j = 0; j < R; ++j) v[j] = warp_sum(v[j]);
  if (lane == 0) {
#pragma unroll
    for (int j = 0; j < R; ++j) scratch[warp * R + j] = v[j];
  }
  __syncthreads();
  const int nwarps = (blockDim.x + 31) >> 5;
#pragma unroll
  for (int j = 0; j < R; ++j) v[j] = warp_sum(lane < nwarps ? scratch[lane * R + j] : 0.f);
  __syncthreads();  // scratch may be reused right after
}

// c rounded to T; thread j < R of the writing block stores c[j] (unrolled: no local-memory indexing).
template <typename T, int R>
__device__ __forceinline__ void lowrank_finish_c(const LowRankFp8Arg<T>& a, const float (&sum)[R], bool writer,
                                                 int64_t row, float (&c)[R]) {
#pragma unroll
  for (int j = 0; j < R; ++j) {
    c[j] = to_float<T>(from_float<T>(sum[j]));
    if (writer && threadIdx.x == j) a.c_out[row * R + j] = from_float<T>(c[j]);
  }
}

#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
// c over the cluster: each block's share (block reduction), then the sum of the shares in block order.
// Lanes b < S of every warp read block b's share (not every thread all S), the sum moves by shuffles.
// After the reads this block arrives at the cluster barrier; lowrank_cluster_exit waits on it, so no
// block leaves (freeing its share) while another may read it, without a second full barrier here.
// Block 0 stores c.
template <typename T, int R, int S>
__device__ __forceinline__ void lowrank_cluster_c(const LowRankFp8Arg<T>& a, float (&part)[R], float* scratch,
                                                  float* share, int64_t row, float (&c)[R]) {
  namespace cg = cooperative_groups;
  static_assert(S <= 32, "one lane per block of the cluster");
  block_sum_each<R>(part, scratch);
  if (threadIdx.x == 0) {
#pragma unroll
    for (int j = 0; j < R; ++j) share[j] = part[j];
  }
  cg::cluster_group cluster = cg::this_cluster();
  cluster.sync();  // every block's share is written and visible cluster-wide
  const int lane = threadIdx.x & 31;
  float held[R];
  const float* remote = cluster.map_shared_rank(share, lane < S ? lane : 0);
#pragma unroll
  for (int j = 0; j < R; ++j) held[j] = lane < S ? remote[j] : 0.f;
  asm volatile("barrier.cluster.arrive.release.aligned;" ::: "memory");
  float sum[R];
#pragma unroll
  for (int j = 0; j < R; ++j) {
    float t = 0.f;
#pragma unroll
    for (int b = 0; b < S; ++b) t += __shfl_sync(0xffffffffu, held[j], b);
    sum[j] = t;
  }
  lowrank_finish_c<T, R>(a, sum, blockIdx.y == 0, row, c);
}

// The end of a kernel that called lowrank_cluster_c: wait for every block's arrival (their reads of
// this block's share are done).
__device__ __forceinline__ void lowrank_cluster_exit() {
  asm volatile("barrier.cluster.wait.acquire.aligned;" ::: "memory");
}
#endif

// RMSNorm followed by the split, one block per row of nvec <= blockDim.x vectors (one per thread). The
// row sum is rmsnorm.cuh's first pass with its thread rule, so the normalized values equal the plain
// kernel's bit for bit.
template <typename T, int VEC, bool RESIDUAL, int R>
__global__ void __launch_bounds__(kLowRankMaxVecs) rmsnorm_lowrank_fp8_kernel(const T* __restrict__ x, const T* residual, const T* __restrict__ weight,
                                           LowRankFp8Arg<T> a, Fp8* out, T* residual_out, int64_t hidden,
                                           int64_t x_stride, int64_t res_stride, int64_t out_stride,
                                           int64_t res_out_stride, float eps) {
  extern __shared__ float row_cache[];
  __shared__ float scratch[32 * R];
  const int64_t nvec = hidden / VEC;
  const bool mine = threadIdx.x < nvec;
  // Constants straight into registers while the predecessor runs (nothing writes them).
  Vec<T, VEC> wv;
  LowRankVec<T, VEC, R> lv;
  if (mine) {
    wv = load_vec<T, VEC>(weight + threadIdx.x * VEC);
    lv.load(a, threadIdx.x);
  }
  const float scale = __ldg(a.scale);
  pdl_wait();
  pdl_launch_dependents();
  const int64_t row = blockIdx.x;
  float sumsq = rmsnorm_row_pass<T, VEC, RESIDUAL>(x + row * x_stride, RESIDUAL ? residual + row * res_stride : nullptr,
                                                   RESIDUAL ? residual_out + row * res_out_stride : nullptr,
                                                   row_cache, nvec);
  sumsq = block_sum(sumsq, scratch);  // its barrier also publishes row_cache
  const float inv = rsqrtf(sumsq / static_cast<float>(hidden) + eps);
  float d[VEC], part[R];
#pragma unroll
  for (int j = 0; j < R; ++j) part[j] = 0.f;
  if (mine) {
    float v[VEC];
#pragma unroll
    for (int k = 0; k < VEC; ++k)
      v[k] = to_float<T>(from_float<T>(row_cache[threadIdx.x * VEC + k] * inv * to_float(wv.v[k])));
    lowrank_center<T, VEC, R>(v, lv, d, part);
  }
  block_sum_each<R>(part, scratch);
  float c[R];
  lowrank_finish_c<T, R>(a, part, true, row, c);
  if (mine) lowrank_store<T, VEC, R>(d, lv, c, scale, out + row * out_stride + threadIdx.x * VEC);
}

// swiglu.cuh's values of vector `vec` of a row (gate then up), rounded to T as the plain kernel stores them.
template <typename T, int VEC>
__device__ __forceinline__ void swiglu_vec(const T* gate, int64_t inter, int64_t vec, float (&v)[VEC]) {
  const Vec<T, VEC> g = load_vec<T, VEC>(gate + vec * VEC), u = load_vec<T, VEC>(gate + inter + vec * VEC);
#pragma unroll
  for (int k = 0; k < VEC; ++k) {
    const float gf = to_float(g.v[k]);
    v[k] = to_float<T>(from_float<T>(gf / (1.f + __expf(-gf)) * to_float(u.v[k])));
  }
}

// SwiGLU (swiglu.cuh's arithmetic) followed by the split; in [rows, 2 * inter], gate then up; grid
// (rows, kLowRankSwigluSplit) in clusters along y, block y taking `per` consecutive vectors of the row.
template <typename T, int R>
__global__ void __launch_bounds__(kLowRankMaxVecs) swiglu_lowrank_fp8_kernel(const T* __restrict__ in, LowRankFp8Arg<T> a, Fp8* out, int64_t inter,
                                          int64_t in_stride, int64_t out_stride) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  constexpr int VEC = 16 / sizeof(T);
  __shared__ float scratch[32 * R];
  __shared__ float share[R];
  const int64_t nvec = inter / VEC, per = (nvec + kLowRankSwigluSplit - 1) / kLowRankSwigluSplit;
  const int64_t vec = blockIdx.y * per + threadIdx.x;
  const bool mine = threadIdx.x < per && vec < nvec;
  LowRankVec<T, VEC, R> lv;
  if (mine) lv.load(a, vec);
  const float scale = __ldg(a.scale);
  pdl_wait();
  pdl_launch_dependents();
  const int64_t row = blockIdx.x;
  float d[VEC], part[R];
#pragma unroll
  for (int j = 0; j < R; ++j) part[j] = 0.f;
  if (mine) {
    float v[VEC];
    swiglu_vec<T, VEC>(in + row * in_stride, inter, vec, v);
    lowrank_center<T, VEC, R>(v, lv, d, part);
  }
  float c[R];
  lowrank_cluster_c<T, R, kLowRankSwigluSplit>(a, part, scratch, share, row, c);
  if (mine) lowrank_store<T, VEC, R>(d, lv, c, scale, out + row * out_stride + vec * VEC);
  lowrank_cluster_exit();
#else
  __trap();  // clusters need sm_90; the launcher refuses older devices
#endif
}

// The same with a block-diagonal basis (QuantConfig.fp8_lowrank_blocks): block y of grid (rows, blocks)
// takes vectors [y * per, (y + 1) * per) of the row, whose channels are chunk y of the basis; basis is
// the compact [inter, RC] (chunk y's own RC columns in its rows), so c's entries y * RC .. y * RC + RC - 1
// are sums over this block's values alone: no cluster, no distributed shared memory.
template <typename T, int RC>
__global__ void __launch_bounds__(kLowRankMaxVecs)
    swiglu_lowrank_blocks_fp8_kernel(const T* __restrict__ in, LowRankFp8Arg<T> a, Fp8* out, int64_t inter,
                                     int64_t in_stride, int64_t out_stride, int64_t per) {
  constexpr int VEC = 16 / sizeof(T);
  __shared__ float scratch[32 * RC];
  const int64_t nvec = inter / VEC, vec = blockIdx.y * per + threadIdx.x;
  const bool mine = threadIdx.x < per && vec < nvec;
  LowRankVec<T, VEC, RC> lv;
  if (mine) lv.load(a, vec);
  const float scale = __ldg(a.scale);
  pdl_wait();
  pdl_launch_dependents();
  const int64_t row = blockIdx.x;
  float d[VEC], part[RC];
#pragma unroll
  for (int j = 0; j < RC; ++j) part[j] = 0.f;
  if (mine) {
    float v[VEC];
    swiglu_vec<T, VEC>(in + row * in_stride, inter, vec, v);
    lowrank_center<T, VEC, RC>(v, lv, d, part);
  }
  block_sum_each<RC>(part, scratch);
  LowRankFp8Arg<T> chunk = a;  // this block's RC entries of the row's c
  chunk.c_out += (row * gridDim.y + blockIdx.y) * RC;
  float c[RC];
  lowrank_finish_c<T, RC>(chunk, part, true, 0, c);
  if (mine) lowrank_store<T, VEC, RC>(d, lv, c, scale, out + row * out_stride + vec * VEC);
}

inline bool cluster_launch_supported() {
  int dev = 0, major = 0;
  if (cudaGetDevice(&dev) != cudaSuccess ||
      cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, dev) != cudaSuccess) {
    (void)cudaGetLastError();
    return false;
  }
  return major >= 9;
}

// One thread per vector, whole warps.
inline int lowrank_threads(int64_t vecs) { return static_cast<int>(((vecs + 31) / 32) * 32); }

// rank 2, 4 or 8; 16-byte vectors of x / residual / weight / mean / basis / out, rows of at most
// kLowRankMaxVecs vectors; else kErrUnsupported (the caller runs the reference).
template <typename T>
inline int launch_rmsnorm_lowrank_fp8(const T* x, const T* res, const T* w, LowRankFp8Arg<T> a, int rank, Fp8* out,
                                      T* res_out, int64_t rows, int64_t hidden, int64_t xs, int64_t rs, int64_t os,
                                      int64_t ros, float eps, cudaStream_t stream) {
  constexpr int V = 16 / sizeof(T);
  if (rows == 0) return kOk;
  if (hidden > kLowRankMaxRow || rows > 0x7fffffff) return kErrShape;
  bool vec = hidden % V == 0 && xs % V == 0 && os % V == 0 && aligned16(x) && aligned16(w) && aligned16(a.mean) &&
             aligned16(a.basis) && aligned_to(out, V);
  if (res) vec = vec && rs % V == 0 && ros % V == 0 && aligned16(res) && aligned16(res_out);
  if (!vec || hidden / V > kLowRankMaxVecs) return kErrUnsupported;
  const int threads = lowrank_threads(hidden / V);  // rmsnorm.cuh's rule below 1024 vectors
  const size_t smem = static_cast<size_t>(hidden) * sizeof(float);
#define TRTDSL_RMS_LR(R)                                                                                        \
  return res ? launch_pdl(rmsnorm_lowrank_fp8_kernel<T, V, true, R>, dim3(static_cast<unsigned>(rows)),          \
                          dim3(threads), smem, stream, x, res, w, a, out, res_out, hidden, xs, rs, os, ros, eps) \
             : launch_pdl(rmsnorm_lowrank_fp8_kernel<T, V, false, R>, dim3(static_cast<unsigned>(rows)),         \
                          dim3(threads), smem, stream, x, res, w, a, out, res_out, hidden, xs, rs, os, ros, eps)
  switch (rank) {  // rows of up to 4096 16-bit values: the row cache fits the default 48 KB of shared memory
    case 2: TRTDSL_RMS_LR(2);
    case 4: TRTDSL_RMS_LR(4);
    case 8: TRTDSL_RMS_LR(8);
    default: return kErrUnsupported;
  }
#undef TRTDSL_RMS_LR
}

// blocks == 0: basis [inter, rank] (the cluster kernel); blocks > 0: basis is the compact block-diagonal
// [inter, rank] of swiglu_lowrank_blocks_fp8_kernel, chunks of ceil(inter / 8 / blocks) vectors, c [rows,
// blocks * rank].
template <typename T>
inline int launch_swiglu_lowrank_fp8(const T* in, LowRankFp8Arg<T> a, int rank, Fp8* out, int64_t rows, int64_t inter,
                                     int64_t in_stride, int64_t out_stride, int blocks, cudaStream_t stream) {
  constexpr int V = 16 / sizeof(T);
  if (rows == 0) return kOk;
  if (inter > kLowRankMaxRow || rows > 0x7fffffff || blocks < 0 || blocks > 65535) return kErrShape;
  const int64_t split = blocks ? blocks : kLowRankSwigluSplit, per = (inter / V + split - 1) / split;
  if (inter % V || in_stride % V || out_stride % V || !aligned16(in) || !aligned16(a.mean) || !aligned16(a.basis) ||
      !aligned_to(out, V) || per > kLowRankMaxVecs || (!blocks && !cluster_launch_supported()))
    return kErrUnsupported;
  if (blocks && (split - 1) * per >= inter / V) return kErrShape;  // every chunk holds channels
  const dim3 grid(static_cast<unsigned>(rows), static_cast<unsigned>(split)), block(lowrank_threads(per));
#define TRTDSL_SWIGLU_LR(R)                                                                                   \
  return blocks ? launch_pdl(swiglu_lowrank_blocks_fp8_kernel<T, R>, grid, block, 0, stream, in, a, out, inter, \
                             in_stride, out_stride, per)                                                      \
                : launch_pdl_cluster(swiglu_lowrank_fp8_kernel<T, R>, grid, block, dim3(1, kLowRankSwigluSplit, 1), \
                                     0, stream, in, a, out, inter, in_stride, out_stride)
  switch (rank) {
    case 1: TRTDSL_SWIGLU_LR(1);
    case 2: TRTDSL_SWIGLU_LR(2);
    case 4: TRTDSL_SWIGLU_LR(4);
    case 8: TRTDSL_SWIGLU_LR(8);
    default: return kErrUnsupported;
  }
#undef TRTDSL_SWIGLU_LR
}

}  // namespace trtdsl
