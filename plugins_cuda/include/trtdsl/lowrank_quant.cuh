// The low-rank split of a centered static-fp8 GEMM input (QuantConfig.fp8_lowrank) fused into the kernel
// that makes the input: RMSNorm (optionally after the residual add) or SwiGLU. For the producer's values v
// (rounded to T, as the plain kernel stores them):
//   d    = T(v - mean)                      the centering subtraction
//   c_j  = T(sum_i d_i U[i, j])             the branch's coefficients, fp32 sums
//   rest = T(d - T(sum_j c_j U[i, j]))      what the GEMMs quantize (fp32 sum in j order)
//   out  = e4m3 codes of rest / scale       (quantize_rounded, as the unfused quantizer)
// and c [rows, R] goes to its own output, for the GEMV epilogue's c (W U)^T (Fp8GemvEpilogue).
//
// A row is split over a thread-block cluster (sm_90): each block takes a chunk of the row, reduces its
// share of c, the blocks add the shares through distributed shared memory in block order (every block
// gets the same c) and each writes its chunk's codes. One block per row took 6 us for a 4096-wide norm
// and 12 us for a 14336-wide SwiGLU at decode (one SM reading the row and a basis of up to 115 KB); the
// clusters take 5.5 and 7.9 us (H100, decode_profile_fp8_rowpass.json), against 2.8 and 1.9 without the split.
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

constexpr int kLowRankNormSplit = 4;     // cluster blocks per RMSNorm row
constexpr int kLowRankSwigluSplit = 8;   // cluster blocks per SwiGLU row (the portable cluster size)
constexpr int kLowRankSwigluThreads = 256;
constexpr int64_t kLowRankMaxRow = 48 * 1024;  // floats of a row in shared memory

template <typename T> struct LowRankFp8Arg {
  const float* scale;  // [1] static input scale of the GEMMs
  const T* mean;       // [k] calibrated per-channel mean
  const T* basis;      // [k, R] leading eigenvectors U
  T* c_out;            // [rows, R]
};

// The chunk [begin, end) of the mean and the basis, and the scale, to L2 before pdl_wait.
template <typename T, int R>
__device__ __forceinline__ void lowrank_prefetch(const LowRankFp8Arg<T>& a, int64_t begin, int64_t end) {
  if (threadIdx.x == 0) pdl_prefetch_l2(a.scale);
  pdl_prefetch_l2_range(a.mean + begin, (end - begin) * static_cast<int64_t>(sizeof(T)));
  pdl_prefetch_l2_range(a.basis + begin * R, (end - begin) * R * static_cast<int64_t>(sizeof(T)));
}

// d = T(v - mean[i]) into cache[i - offset] (v already rounded to T by the caller), and its share of c.
template <typename T, int R>
__device__ __forceinline__ void lowrank_accumulate(float v, int64_t i, const LowRankFp8Arg<T>& a, float* cache,
                                                   float (&part)[R]) {
  const float d = to_float<T>(from_float<T>(v - to_float<T>(a.mean[i])));
  cache[i] = d;
  const Vec<T, R> u = load_vec<T, R>(a.basis + i * R);
#pragma unroll
  for (int j = 0; j < R; ++j) part[j] = fmaf(d, to_float<T>(u.v[j]), part[j]);
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

#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
// c over the cluster: each block's share (block reduction; its barriers also publish the caller's shared
// memory), then the sum of the shares in block order, rounded to T. Block 0 stores c.
template <typename T, int R, int S>
__device__ __forceinline__ void lowrank_cluster_c(const LowRankFp8Arg<T>& a, float (&part)[R], float* scratch,
                                                  float* share, int64_t row, float (&c)[R]) {
  namespace cg = cooperative_groups;
  block_sum_each<R>(part, scratch);
  if (threadIdx.x == 0) {
#pragma unroll
    for (int j = 0; j < R; ++j) share[j] = part[j];
  }
  cg::cluster_group cluster = cg::this_cluster();
  cluster.sync();  // every block's share is written and visible cluster-wide
#pragma unroll
  for (int j = 0; j < R; ++j) {
    float t = 0.f;
    for (int b = 0; b < S; ++b) t += cluster.map_shared_rank(share, b)[j];
    c[j] = to_float<T>(from_float<T>(t));
  }
  if (blockIdx.y == 0 && threadIdx.x < R) a.c_out[row * R + threadIdx.x] = from_float<T>(c[threadIdx.x]);
}
#endif

// The codes of rest = T(d - T(c U^T)) for the elements [begin, end), d read from cache[i].
template <typename T, int R>
__device__ __forceinline__ void lowrank_store(const LowRankFp8Arg<T>& a, const float* cache, const float (&c)[R],
                                              Fp8* out_row, int64_t begin, int64_t end) {
  const float scale = __ldg(a.scale);
  for (int64_t i = begin + threadIdx.x; i < end; i += blockDim.x) {
    const Vec<T, R> u = load_vec<T, R>(a.basis + i * R);
    float low = 0.f;
#pragma unroll
    for (int j = 0; j < R; ++j) low = fmaf(c[j], to_float<T>(u.v[j]), low);
    out_row[i] = quantize_rounded<T>(cache[i] - to_float<T>(from_float<T>(low)), scale);
  }
}

// RMSNorm followed by the split; grid (rows, kLowRankNormSplit) in clusters along y. Every block of a
// row sums the whole row as rmsnorm.cuh does (vector for vector, its thread-count rule), so the
// normalized values equal the plain kernel's bit for bit; then it splits its chunk of vectors.
template <typename T, int VEC, bool RESIDUAL, int R>
__global__ void rmsnorm_lowrank_fp8_kernel(const T* __restrict__ x, const T* residual, const T* __restrict__ weight,
                                           LowRankFp8Arg<T> a, Fp8* out, T* residual_out, int64_t hidden,
                                           int64_t x_stride, int64_t res_stride, int64_t out_stride,
                                           int64_t res_out_stride, float eps) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  extern __shared__ float row_cache[];
  __shared__ float scratch[32 * R];
  __shared__ float share[R];
  const int64_t nvec = hidden / VEC, per = (nvec + kLowRankNormSplit - 1) / kLowRankNormSplit;
  const int64_t vbegin = blockIdx.y * per, vend = vbegin + per < nvec ? vbegin + per : nvec;
  pdl_prefetch_l2_range(weight + vbegin * VEC, (vend - vbegin) * VEC * static_cast<int64_t>(sizeof(T)));
  lowrank_prefetch<T, R>(a, vbegin * VEC, vend * VEC);
  pdl_wait();
  pdl_launch_dependents();
  const int64_t row = blockIdx.x;
  const T* xr = x + row * x_stride;
  float sumsq = rmsnorm_row_pass<T, VEC, RESIDUAL>(xr, RESIDUAL ? residual + row * res_stride : nullptr,
                                                   RESIDUAL ? residual_out + row * res_out_stride : nullptr,
                                                   row_cache, nvec, vbegin, vend);  // rmsnorm.cuh's first pass
  sumsq = block_sum(sumsq, scratch);  // its barrier also publishes row_cache
  const float inv = rsqrtf(sumsq / static_cast<float>(hidden) + eps);
  float part[R];
#pragma unroll
  for (int j = 0; j < R; ++j) part[j] = 0.f;
  for (int64_t i = vbegin + threadIdx.x; i < vend; i += blockDim.x) {
    const Vec<T, VEC> wv = load_vec<T, VEC>(weight + i * VEC);
#pragma unroll
    for (int k = 0; k < VEC; ++k) {
      const int64_t e = i * VEC + k;
      lowrank_accumulate<T, R>(to_float<T>(from_float<T>(row_cache[e] * inv * to_float(wv.v[k]))), e, a, row_cache,
                               part);
    }
  }
  float c[R];
  lowrank_cluster_c<T, R, kLowRankNormSplit>(a, part, scratch, share, row, c);
  lowrank_store<T, R>(a, row_cache, c, out + row * out_stride, vbegin * VEC, vend * VEC);
  cooperative_groups::this_cluster().sync();  // the other blocks read this block's share until here
#else
  __trap();  // clusters need sm_90; the launchers refuse older devices
#endif
}

// SwiGLU (swiglu.cuh's arithmetic) followed by the split; in [rows, 2 * inter], gate then up; grid
// (rows, kLowRankSwigluSplit) in clusters along y, each block a contiguous chunk of the row.
template <typename T, int R>
__global__ void swiglu_lowrank_fp8_kernel(const T* __restrict__ in, LowRankFp8Arg<T> a, Fp8* out, int64_t inter,
                                          int64_t in_stride, int64_t out_stride) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  extern __shared__ float chunk_cache[];
  __shared__ float scratch[32 * R];
  __shared__ float share[R];
  const int64_t per = (inter + kLowRankSwigluSplit - 1) / kLowRankSwigluSplit;
  const int64_t begin = blockIdx.y * per, end = begin + per < inter ? begin + per : inter;
  lowrank_prefetch<T, R>(a, begin, end);
  pdl_wait();
  pdl_launch_dependents();
  const int64_t row = blockIdx.x;
  const T* gate = in + row * in_stride;
  const T* up = gate + inter;
  float* cache = chunk_cache - begin;  // indexed by the row's element
  float part[R];
#pragma unroll
  for (int j = 0; j < R; ++j) part[j] = 0.f;
  for (int64_t i = begin + threadIdx.x; i < end; i += blockDim.x) {
    const float gf = to_float(gate[i]);
    lowrank_accumulate<T, R>(to_float<T>(from_float<T>(gf / (1.f + __expf(-gf)) * to_float(up[i]))), i, a, cache,
                             part);
  }
  float c[R];
  lowrank_cluster_c<T, R, kLowRankSwigluSplit>(a, part, scratch, share, row, c);
  lowrank_store<T, R>(a, cache, c, out + row * out_stride, begin, end);
  cooperative_groups::this_cluster().sync();
#else
  __trap();
#endif
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

template <typename K, typename... Args>
inline int launch_lowrank_row(K kernel, int64_t rows, int split, int threads, size_t smem, cudaStream_t stream,
                              Args... args) {
  if (rows > 0x7fffffff) return kErrShape;
  if (smem > 48 * 1024 &&
      cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(smem)) != cudaSuccess)
    return kErrLaunch;
  return launch_pdl_cluster(kernel, dim3(static_cast<unsigned>(rows), split), dim3(threads), dim3(1, split, 1), smem,
                            stream, args...);
}

// rank 2, 4 or 8, sm_90, 16-byte vectors of x / residual / weight and the basis aligned to R values, else
// kErrUnsupported (the caller runs the reference). Threads: rmsnorm.cuh's rule for rows of hidden / VEC.
template <typename T>
inline int launch_rmsnorm_lowrank_fp8(const T* x, const T* res, const T* w, LowRankFp8Arg<T> a, int rank, Fp8* out,
                                      T* res_out, int64_t rows, int64_t hidden, int64_t xs, int64_t rs, int64_t os,
                                      int64_t ros, float eps, cudaStream_t stream) {
  constexpr int V = 16 / sizeof(T);
  if (rows == 0) return kOk;
  if (hidden > kLowRankMaxRow) return kErrShape;
  bool vec = hidden % V == 0 && xs % V == 0 && aligned16(x) && aligned16(w);
  if (res) vec = vec && rs % V == 0 && ros % V == 0 && aligned16(res) && aligned16(res_out);
  if (!vec || !aligned_to(a.basis, static_cast<uintptr_t>(rank) * sizeof(T)) || !cluster_launch_supported())
    return kErrUnsupported;
  const int64_t nvec = hidden / V;
  const int threads = nvec >= 1024 ? 1024 : static_cast<int>(((nvec + 31) / 32) * 32);
  const size_t smem = static_cast<size_t>(hidden) * sizeof(float);
#define TRTDSL_RMS_LR(R)                                                                                        \
  return res ? launch_lowrank_row(rmsnorm_lowrank_fp8_kernel<T, V, true, R>, rows, kLowRankNormSplit, threads,   \
                                  smem, stream, x, res, w, a, out, res_out, hidden, xs, rs, os, ros, eps)      \
             : launch_lowrank_row(rmsnorm_lowrank_fp8_kernel<T, V, false, R>, rows, kLowRankNormSplit, threads,  \
                                  smem, stream, x, res, w, a, out, res_out, hidden, xs, rs, os, ros, eps)
  switch (rank) {
    case 2: TRTDSL_RMS_LR(2);
    case 4: TRTDSL_RMS_LR(4);
    case 8: TRTDSL_RMS_LR(8);
    default: return kErrUnsupported;
  }
#undef TRTDSL_RMS_LR
}

template <typename T>
inline int launch_swiglu_lowrank_fp8(const T* in, LowRankFp8Arg<T> a, int rank, Fp8* out, int64_t rows, int64_t inter,
                                     int64_t in_stride, int64_t out_stride, cudaStream_t stream) {
  if (rows == 0) return kOk;
  if (inter > kLowRankMaxRow) return kErrShape;
  if (!aligned_to(a.basis, static_cast<uintptr_t>(rank) * sizeof(T)) || !cluster_launch_supported())
    return kErrUnsupported;
  const size_t smem = static_cast<size_t>((inter + kLowRankSwigluSplit - 1) / kLowRankSwigluSplit) * sizeof(float);
#define TRTDSL_SWIGLU_LR(R)                                                                                     \
  return launch_lowrank_row(swiglu_lowrank_fp8_kernel<T, R>, rows, kLowRankSwigluSplit, kLowRankSwigluThreads,   \
                            smem, stream, in, a, out, inter, in_stride, out_stride)
  switch (rank) {
    case 2: TRTDSL_SWIGLU_LR(2);
    case 4: TRTDSL_SWIGLU_LR(4);
    case 8: TRTDSL_SWIGLU_LR(8);
    default: return kErrUnsupported;
  }
#undef TRTDSL_SWIGLU_LR
}

}  // namespace trtdsl
