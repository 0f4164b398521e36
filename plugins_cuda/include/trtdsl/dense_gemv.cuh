// Dense decode GEMV: y[m, n] = x[m, k] @ W[n, k]^T for 1 <= m <= 8 rows of fp16 / bf16, fp32
// accumulation. A decode step reads every weight once and does ~m FLOPs per weight byte, so the
// kernel is a weight stream: 16-byte non-caching loads, several in flight per thread, and enough
// blocks (n / NR) to keep all SMs loading. cuBLAS reaches the copy bandwidth on large weights but
// not on 4096 x 4096 and adds split-K reduce kernels on tall ones; here the K split lives inside a
// block (warps own interleaved K slices, shared-memory reduce), so one launch does the whole GEMV.
// The approach is that of the weight-only GEMV in quant_gemm.cuh, whose load / convert helpers we use.
#pragma once
#include "trtdsl/common.cuh"
#include "trtdsl/quant_gemm.cuh"  // ld_stream (L1-bypassing 16-byte weight load), act8 (x -> fp32)

namespace trtdsl {

constexpr int kDenseGemvMaxM = 8;  // decode batches; larger m goes to cuBLAS (tensor cores)

// Launch shapes the benchmark sweeps (benchmarks/bench_dense_gemv.py): NR weight rows per block,
// KW warps per block splitting K, U 16-byte loads per row and thread in flight per step.
struct DenseGemvConfig {
  int nr, kw, u;
};
constexpr int kDenseGemvNumConfigs = 5;
constexpr DenseGemvConfig kDenseGemvConfigs[kDenseGemvNumConfigs + 1] = {
    {0, 0, 0},  // 0 = automatic (dense_gemv_auto_config)
    {2, 4, 4},  // 1: 128 threads, 8 loads in flight per thread
    {4, 4, 2},  // 2: 128 threads, 8 loads, x reused over 4 rows
    {2, 8, 2},  // 3: 256 threads, 4 loads (K = 4096 is one step)
    {4, 8, 2},  // 4: 256 threads, 8 loads
    {1, 8, 4},  // 5: 256 threads, one row per block: most blocks for small n
};

// 8 weights of one 16-byte vector -> fp32 (bf16: a shift / mask; fp16: two half2 converts).
template <typename T> __device__ __forceinline__ void unpack8(const uint4& v, float* f) {
  const uint32_t w[4] = {v.x, v.y, v.z, v.w};
#pragma unroll
  for (int j = 0; j < 4; ++j) {
    if constexpr (std::is_same<T, __nv_bfloat16>::value) {
      f[2 * j] = __uint_as_float(w[j] << 16);
      f[2 * j + 1] = __uint_as_float(w[j] & 0xFFFF0000u);
    } else {
      const float2 t = __half22float2(*reinterpret_cast<const __half2*>(&w[j]));
      f[2 * j] = t.x;
      f[2 * j + 1] = t.y;
    }
  }
}

// One block owns NR consecutive output columns (weight rows); thread t of its KW * 32 reads vectors
// t, t + KW*32, ... of each row, so a warp's 32 loads are one contiguous 512-byte span. Each step
// first issues all U * NR weight loads (independent, so they overlap in the memory system), then
// multiplies them with the MT activation rows (each 16-byte x load serves NR weight rows). Rows past
// n recompute row n - 1 and activation rows past m re-read row m - 1: valid memory, never stored,
// so the hot loop has no bounds checks besides the K tail. Requires k % 8 == 0 and 16-byte aligned
// x and W (checked by the launcher).
template <typename T, int MT, int NR, int KW, int U>
__global__ void __launch_bounds__(KW * 32) dense_gemv_kernel(const T* __restrict__ x,
                                                             const uint4* __restrict__ w,
                                                             T* __restrict__ out, int m, int n, int k) {
  constexpr int kThreads = KW * 32;
  __shared__ float red[KW][NR * MT];
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const int row0 = blockIdx.x * NR;
  const int vecs = k / 8;
  const uint4* wrow[NR];
#pragma unroll
  for (int r = 0; r < NR; ++r) wrow[r] = w + static_cast<int64_t>(min(row0 + r, n - 1)) * vecs;
  const int last = m - 1;
  // PDL (pdl.cuh): the first weight step to L2 while the previous kernel finishes; x after the wait.
  prefetch_weight_step<U, NR, kThreads>(wrow, threadIdx.x, vecs);
  pdl_wait();
  pdl_launch_dependents();

  float acc[NR][MT];
#pragma unroll
  for (int r = 0; r < NR; ++r)
#pragma unroll
    for (int i = 0; i < MT; ++i) acc[r][i] = 0.f;

  for (int v0 = threadIdx.x; v0 < vecs; v0 += kThreads * U) {
    uint4 wv[U][NR];
    load_weight_step<U, NR, kThreads>(wv, wrow, v0, vecs);
#pragma unroll
    for (int u = 0; u < U; ++u) {
      const int v = v0 + u * kThreads;
      if (v < vecs) {
        float wf[NR][8];
#pragma unroll
        for (int r = 0; r < NR; ++r) unpack8<T>(wv[u][r], wf[r]);
#pragma unroll
        for (int i = 0; i < MT; ++i) {
          float xf[8];
          act8<T>(x + static_cast<int64_t>(min(i, last)) * k + v * 8, xf);
#pragma unroll
          for (int r = 0; r < NR; ++r)
#pragma unroll
            for (int j = 0; j < 8; ++j) acc[r][i] = fmaf(wf[r][j], xf[j], acc[r][i]);
        }
      }
    }
  }
#pragma unroll
  for (int r = 0; r < NR; ++r)
#pragma unroll
    for (int i = 0; i < MT; ++i) {
      const float s = warp_sum(acc[r][i]);
      if (lane == 0) red[warp][r * MT + i] = s;
    }
  __syncthreads();
  for (int t = threadIdx.x; t < NR * MT; t += kThreads) {
    const int r = t / MT, i = t % MT;
    float s = 0.f;
#pragma unroll
    for (int q = 0; q < KW; ++q) s += red[q][t];
    if (row0 + r < n && i < m) out[static_cast<int64_t>(i) * n + row0 + r] = from_float<T>(s);
  }
}

template <typename T, int MT, int NR, int KW, int U>
inline int launch_dense_gemv_cfg(const T* x, const void* w, T* out, int m, int n, int k, cudaStream_t stream) {
  const int blocks = (n + NR - 1) / NR;
  return launch_pdl(dense_gemv_kernel<T, MT, NR, KW, U>, dim3(blocks), dim3(KW * 32), 0, stream, x,
                    static_cast<const uint4*>(w), out, m, n, k);
}

// Automatic choice (config 0): an untuned prior (few columns -> most blocks; x reuse over 4 rows at
// small m, 256 threads at large m). benchmarks/bench_dense_gemv.py sweeps configs 1..5 at m = 1, 2, 4,
// 8 ("summary" -> "best_config" in its JSON) to replace it with the measured best.
inline int dense_gemv_auto_config(int m, int n, int k) {
  (void)k;
  if (n < 1024) return 5;   // few columns: one row per block keeps more SMs busy
  return m <= 4 ? 2 : 4;
}

template <typename T, int MT>
inline int launch_dense_gemv_mt(const T* x, const void* w, T* out, int m, int n, int k, int config,
                                cudaStream_t stream) {
  switch (config) {
    case 1: return launch_dense_gemv_cfg<T, MT, 2, 4, 4>(x, w, out, m, n, k, stream);
    case 2: return launch_dense_gemv_cfg<T, MT, 4, 4, 2>(x, w, out, m, n, k, stream);
    case 3: return launch_dense_gemv_cfg<T, MT, 2, 8, 2>(x, w, out, m, n, k, stream);
    case 4: return launch_dense_gemv_cfg<T, MT, 4, 8, 2>(x, w, out, m, n, k, stream);
    case 5: return launch_dense_gemv_cfg<T, MT, 1, 8, 4>(x, w, out, m, n, k, stream);
    default: return kErrUnsupported;
  }
}

// Validated entry of the C launcher: m in 1..8, k % 8 == 0, 16-byte aligned x / W; config 0 = auto.
template <typename T>
inline int launch_dense_gemv(const T* x, const void* w, T* out, int m, int n, int k, int config,
                             cudaStream_t stream) {
  if (m < 1 || m > kDenseGemvMaxM || n < 1 || k < 8 || k % 8) return kErrShape;
  if (!aligned16(x) || !aligned16(w)) return kErrUnsupported;
  if (config < 0 || config > kDenseGemvNumConfigs) return kErrUnsupported;
  if (config == 0) config = dense_gemv_auto_config(m, n, k);
  // One instantiation per m: the FMAs scale with MT, and rounding m up would waste them at m = 5..7.
  switch (m) {
    case 1: return launch_dense_gemv_mt<T, 1>(x, w, out, m, n, k, config, stream);
    case 2: return launch_dense_gemv_mt<T, 2>(x, w, out, m, n, k, config, stream);
    case 3: return launch_dense_gemv_mt<T, 3>(x, w, out, m, n, k, config, stream);
    case 4: return launch_dense_gemv_mt<T, 4>(x, w, out, m, n, k, config, stream);
    case 5: return launch_dense_gemv_mt<T, 5>(x, w, out, m, n, k, config, stream);
    case 6: return launch_dense_gemv_mt<T, 6>(x, w, out, m, n, k, config, stream);
    case 7: return launch_dense_gemv_mt<T, 7>(x, w, out, m, n, k, config, stream);
    default: return launch_dense_gemv_mt<T, 8>(x, w, out, m, n, k, config, stream);
  }
}

}  // namespace trtdsl
