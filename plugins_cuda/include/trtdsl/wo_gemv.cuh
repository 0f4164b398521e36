// Weight-only decode GEMV (int8 / packed int4 codes, group-wise float32 scales, optional additive
// float32 zeros): y[m, n] = sum_g s[n, g] * sum_{k in g} x[m, k] * code[n, k] + z[n, g] * sum_{k in g} x[m, k],
// fp32 accumulation, for 1..16 activation rows. Formats: trtdsl/quantization/numerics.py.
//
// Included only by the .cu files that instantiate launch_wo_gemv (wo_gemv_b{4,8}[_zp].cu), so
// the many template instances compile in parallel; quant_gemm.cuh declares the launcher.
#pragma once
#include "trtdsl/quant_gemm.cuh"

namespace trtdsl {

// y = (sum of dequantized codes * x) per 16-byte weight vector (16 int8 / 32 int4 codes), which lies
// in one group (the launcher requires group % codes-per-vector == 0), then one scale FMA per vector
// and, with zeros, one zero FMA against the vector's sum of x (shared by all NR rows).
//
// Block shape (NR, KW, U): NR weight rows per block, KW warps splitting k, U 16-byte loads per row
// and thread issued before any math (loads in flight). Thread t of KW * 32 reads vectors t,
// t + KW*32, ... of each row, so a warp's loads are one contiguous 512-byte span per row. Rows past n
// recompute row n - 1 and activation rows past m re-read row m - 1 (valid memory, never stored): the
// hot loop has no bounds checks besides the k tail. KW == 1 reduces with shuffles only (no shared
// memory, no barrier): the variant for long rows of short blocks.
template <typename T, int MT, int BITS, int NR, int KW, int U, bool ZP>
__global__ void __launch_bounds__(KW * 32) wo_gemv_kernel(const T* __restrict__ x,
                                                          const uint4* __restrict__ qw,
                                                          const float* __restrict__ scales,
                                                          const float* __restrict__ zeros,
                                                          T* __restrict__ out, int m, int n, int k,
                                                          int vecs_per_group, int num_groups) {
  constexpr int EPV = BITS == 8 ? 16 : 32;  // codes per 16-byte vector
  constexpr int kThreads = KW * 32;
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const int row0 = blockIdx.x * NR;
  const int vecs = k / EPV;
  const uint4* wrow[NR];
  int64_t grow[NR];  // row offset into scales / zeros
#pragma unroll
  for (int r = 0; r < NR; ++r) {
    const int row = min(row0 + r, n - 1);
    wrow[r] = qw + static_cast<int64_t>(row) * vecs;
    grow[r] = static_cast<int64_t>(row) * num_groups;
  }
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
        float p[NR][MT], xsum[MT];
#pragma unroll
        for (int i = 0; i < MT; ++i) {
          xsum[i] = 0.f;
#pragma unroll
          for (int r = 0; r < NR; ++r) p[r][i] = 0.f;
        }
#pragma unroll
        for (int h = 0; h < EPV / 8; ++h) {
          float wf[NR][8];
#pragma unroll
          for (int r = 0; r < NR; ++r) dequant8<BITS>(wv[u][r], h, wf[r]);
#pragma unroll
          for (int i = 0; i < MT; ++i) {
            float xf[8];
            act8<T>(x + static_cast<int64_t>(min(i, last)) * k + v * EPV + h * 8, xf);
            if constexpr (ZP) {
#pragma unroll
              for (int j = 0; j < 8; ++j) xsum[i] += xf[j];
            }
#pragma unroll
            for (int r = 0; r < NR; ++r)
#pragma unroll
              for (int j = 0; j < 8; ++j) p[r][i] = fmaf(wf[r][j], xf[j], p[r][i]);
          }
        }
        const int g = v / vecs_per_group;
#pragma unroll
        for (int r = 0; r < NR; ++r) {
          const float s = __ldg(scales + grow[r] + g);
#pragma unroll
          for (int i = 0; i < MT; ++i) acc[r][i] = fmaf(p[r][i], s, acc[r][i]);
          if constexpr (ZP) {
            const float z = __ldg(zeros + grow[r] + g);
#pragma unroll
            for (int i = 0; i < MT; ++i) acc[r][i] = fmaf(xsum[i], z, acc[r][i]);
          }
        }
      }
    }
  }
  if constexpr (KW == 1) {
#pragma unroll
    for (int r = 0; r < NR; ++r)
#pragma unroll
      for (int i = 0; i < MT; ++i) {
        const float s = warp_sum(acc[r][i]);
        if (lane == 0 && row0 + r < n && i < m) out[static_cast<int64_t>(i) * n + row0 + r] = from_float<T>(s);
      }
  } else {
    __shared__ float red[KW][NR * MT];
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
      for (int w = 0; w < KW; ++w) s += red[w][t];
      if (row0 + r < n && i < m) out[static_cast<int64_t>(i) * n + row0 + r] = from_float<T>(s);
    }
  }
}

template <typename T, int MT, int BITS, bool ZP, int NR0, int KW, int U>
inline int launch_wo_gemv_cfg(const T* x, const void* qw, const float* scales, const float* zeros, T* out, int m,
                              int n, int k, int group, int num_groups, cudaStream_t stream) {
  constexpr int EPV = BITS == 8 ? 16 : 32;
  constexpr int NR = clamp_rows<NR0, MT>();
  const int blocks = (n + NR - 1) / NR;
  return launch_pdl(wo_gemv_kernel<T, MT, BITS, NR, KW, U, ZP>, dim3(blocks), dim3(KW * 32), 0, stream, x,
                    static_cast<const uint4*>(qw), scales, zeros, out, m, n, k, group / EPV, num_groups);
}

template <typename T, int MT, int BITS, bool ZP> struct WoGemvLaunch {
  template <int NR, int KW, int U, typename... A> static int run(A... a) {
    return launch_wo_gemv_cfg<T, MT, BITS, ZP, NR, KW, U>(a...);
  }
};

template <typename T, int MT, int BITS, bool ZP>
inline int launch_wo_gemv_mt(const T* x, const void* qw, const float* scales, const float* zeros, T* out, int m,
                             int n, int k, int group, int num_groups, int config, cudaStream_t stream) {
  return with_quant_gemv_shape<WoGemvLaunch<T, MT, BITS, ZP>>(config, x, qw, scales, zeros, out, m, n, k, group,
                                                              num_groups, stream);
}

template <typename T, int BITS, bool ZP>
int launch_wo_gemv(const T* x, const void* qw, const float* scales, const float* zeros, T* out, int m, int n,
                   int k, int group, int num_groups, int config, cudaStream_t stream) {
  constexpr int EPV = BITS == 8 ? 16 : 32;
  if (m < 1 || m > kGemvMaxM || n < 1 || k < EPV || k % EPV || group % EPV) return kErrShape;
  if (!aligned16(x) || !aligned16(qw)) return kErrUnsupported;
  if (config < 0 || config > kQuantGemvNumConfigs) return kErrUnsupported;
  if (config == 0) config = quant_gemv_auto_config(BITS, m, n, k);
  // MT rounds m up to a power of two: 5 instances per config instead of 16, at most 2x the FMAs.
  if (m == 1) return launch_wo_gemv_mt<T, 1, BITS, ZP>(x, qw, scales, zeros, out, m, n, k, group, num_groups, config, stream);
  if (m == 2) return launch_wo_gemv_mt<T, 2, BITS, ZP>(x, qw, scales, zeros, out, m, n, k, group, num_groups, config, stream);
  if (m <= 4) return launch_wo_gemv_mt<T, 4, BITS, ZP>(x, qw, scales, zeros, out, m, n, k, group, num_groups, config, stream);
  if (m <= 8) return launch_wo_gemv_mt<T, 8, BITS, ZP>(x, qw, scales, zeros, out, m, n, k, group, num_groups, config, stream);
  return launch_wo_gemv_mt<T, 16, BITS, ZP>(x, qw, scales, zeros, out, m, n, k, group, num_groups, config, stream);
}

}  // namespace trtdsl
