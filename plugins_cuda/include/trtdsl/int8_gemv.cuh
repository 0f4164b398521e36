// SmoothQuant W8A8 decode GEMV: out[i, r] = T((float(acc) * x_scale[i]) * w_scale[r]) with
// acc = sum_k xq[i, k] * wq[r, k] over int8 codes (per-token activation codes from
// trtdsl_quantize_per_token_int8, per-channel weight codes), accumulated exactly in int32 with __dp4a
// (|acc| <= 127 * 127 * k < 2^31 for k <= 133000). The sum is exact and the epilogue is
// int8_epilogue_kernel's expression, so the output is bitwise that of the large-M path
// (torch._int_mm + trtdsl_int8_gemm_epilogue), without its int32 round trip and its padding to 24 rows.
// Block shapes: kQuantGemvConfigs (NR rows, KW warps splitting k, U 16-byte loads per row in flight);
// rows past n / m are clamped reads, never stored. k % 16 == 0, codes 16-byte aligned.
#pragma once
#include "trtdsl/quant_gemm.cuh"

namespace trtdsl {

constexpr int kInt8GemvMaxM = 8;

__device__ __forceinline__ int warp_sum_int(int v) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}

template <typename T, int MT, int NR, int KW, int U>
__global__ void __launch_bounds__(KW * 32) int8_gemv_kernel(const uint4* __restrict__ xq, const uint4* __restrict__ wq,
                                                            const float* __restrict__ x_scale,
                                                            const float* __restrict__ w_scale, T* __restrict__ out,
                                                            int m, int n, int k) {
  constexpr int kThreads = KW * 32;
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const int row0 = blockIdx.x * NR, vecs = k / 16, last = m - 1;
  const uint4* wrow[NR];
#pragma unroll
  for (int r = 0; r < NR; ++r) wrow[r] = wq + static_cast<int64_t>(min(row0 + r, n - 1)) * vecs;
  // PDL (pdl.cuh): the first weight step and the epilogue's weight scales to L2 before the wait; the
  // activation codes and their scales are the quantizer's output.
  prefetch_weight_step<U, NR, kThreads>(wrow, threadIdx.x, vecs);
  if (threadIdx.x == 0) pdl_prefetch_l2(w_scale + row0);
  pdl_wait();
  pdl_launch_dependents();

  int acc[NR][MT];
#pragma unroll
  for (int r = 0; r < NR; ++r)
#pragma unroll
    for (int i = 0; i < MT; ++i) acc[r][i] = 0;
  for (int v0 = threadIdx.x; v0 < vecs; v0 += kThreads * U) {
    uint4 wv[U][NR];
    load_weight_step<U, NR, kThreads>(wv, wrow, v0, vecs);
#pragma unroll
    for (int u = 0; u < U; ++u) {
      const int v = v0 + u * kThreads;
      if (v < vecs) {
#pragma unroll
        for (int i = 0; i < MT; ++i) {
          const uint4 x = __ldg(xq + static_cast<int64_t>(min(i, last)) * vecs + v);
#pragma unroll
          for (int r = 0; r < NR; ++r) {
            const uint4 w = wv[u][r];
            acc[r][i] = __dp4a(static_cast<int>(w.x), static_cast<int>(x.x), acc[r][i]);
            acc[r][i] = __dp4a(static_cast<int>(w.y), static_cast<int>(x.y), acc[r][i]);
            acc[r][i] = __dp4a(static_cast<int>(w.z), static_cast<int>(x.z), acc[r][i]);
            acc[r][i] = __dp4a(static_cast<int>(w.w), static_cast<int>(x.w), acc[r][i]);
          }
        }
      }
    }
  }
#pragma unroll
  for (int r = 0; r < NR; ++r)
#pragma unroll
    for (int i = 0; i < MT; ++i) acc[r][i] = warp_sum_int(acc[r][i]);
  __shared__ int red[KW][NR * MT];
  if (lane == 0) {
#pragma unroll
    for (int r = 0; r < NR; ++r)
#pragma unroll
      for (int i = 0; i < MT; ++i) red[warp][r * MT + i] = acc[r][i];
  }
  __syncthreads();
  for (int t = threadIdx.x; t < NR * MT; t += kThreads) {
    const int r = t / MT, i = t % MT;
    int s = 0;
#pragma unroll
    for (int w = 0; w < KW; ++w) s += red[w][t];
    if (row0 + r < n && i < m)  // int8_epilogue_kernel's order and roundings
      out[static_cast<int64_t>(i) * n + row0 + r] =
          from_float<T>(__fmul_rn(__fmul_rn(__int2float_rn(s), __ldg(x_scale + i)), __ldg(w_scale + row0 + r)));
  }
}

template <typename T, int MT> struct Int8GemvLaunch {
  template <int NR0, int KW, int U>
  static int run(const void* xq, const void* wq, const float* xs, const float* ws, T* out, int m, int n, int k,
                 cudaStream_t stream) {
    constexpr int NR = clamp_rows<NR0, MT>();
    return launch_pdl(int8_gemv_kernel<T, MT, NR, KW, U>, dim3((n + NR - 1) / NR), dim3(KW * 32), 0, stream,
                      static_cast<const uint4*>(xq), static_cast<const uint4*>(wq), xs, ws, out, m, n, k);
  }
};

// config 1..5 (kQuantGemvConfigs); 0 = config 1.
template <typename T>
inline int launch_int8_gemv(const void* xq, const void* wq, const float* xs, const float* ws, T* out, int m, int n,
                            int k, int config, cudaStream_t stream) {
  if (m < 1 || m > kInt8GemvMaxM || n < 1 || k < 16 || k % 16) return kErrShape;
  if (!aligned16(xq) || !aligned16(wq)) return kErrUnsupported;
  if (config == 0) config = 1;
  if (m == 1) return with_quant_gemv_shape<Int8GemvLaunch<T, 1>>(config, xq, wq, xs, ws, out, m, n, k, stream);
  if (m == 2) return with_quant_gemv_shape<Int8GemvLaunch<T, 2>>(config, xq, wq, xs, ws, out, m, n, k, stream);
  if (m <= 4) return with_quant_gemv_shape<Int8GemvLaunch<T, 4>>(config, xq, wq, xs, ws, out, m, n, k, stream);
  return with_quant_gemv_shape<Int8GemvLaunch<T, 8>>(config, xq, wq, xs, ws, out, m, n, k, stream);
}

}  // namespace trtdsl
