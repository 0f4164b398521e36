// int4 weight-only GEMV on tensor cores for one to eight activation rows (batch-1 decode and small
// batches), configs 16..19: the mma's 8 columns carry the rows (one 8-column activation tile).
// Same stored format and lane layout as wo_gemv_tc.cuh (lane (g, t) streams 16-byte vectors of rows g
// and g + 8 at k = 128 bb + 32 t, the activations permuted into the same k order), built for the
// memory system rather than the arithmetic. Measured on an H100 (docs/quant_kernels.md), what kept
// the earlier kernels at 70-75 % of the time a load-only kernel of the same access pattern takes:
// * L1/TEX wavefronts, not DRAM: a warp-wide load of per-row scalars (scales, zeros) touches 8 rows,
//   i.e. 8 lines for 32 useful bytes. Here warp w owns U consecutive k blocks per step, so a row's U
//   scales (and zeros) of group 128 arrive in ONE load per step (8 bytes at U = 2; U = 4 needed more
//   registers than it saved, measured).
// * Loads not in flight during the math: two steps of weights, scales and zeros live in registers;
//   the step after next is issued as soon as a step's math is done, so a warp always has one step
//   outstanding.
// * bf16's magic 136 (fp16's 1032) is not subtracted per code pair: the mma multiplies the biased
//   codes 136 + c and the zero term absorbs it, acc += s * p + (z - 136 s) * sum(x). Products stay
//   exact (8-bit codes x 8-bit mantissas) and sums fp32; the result differs from the unbiased sum by
//   fp32 rounding of a ~18x larger partial (relative 1e-6), far below the output rounding.
// Warps of a block split k: contiguously (warp w takes steps w * per ..) or interleaved (step j of warp
// w is step j * KW + w), and meet in shared memory. Needs m <= 8, k % 128 == 0, group 128 with k / 128
// a multiple of U and scales / zeros aligned for the vector loads; the launcher returns kErrUnsupported
// otherwise (trtdsl_weight_only_gemv_zp then runs a general tensor-core config). Included only by
// src/wo_gemv_tc1_{bf16,f16}.cu.
#pragma once
#include "trtdsl/wo_gemv_tc.cuh"

namespace trtdsl {

// U consecutive floats (a step's scales or zeros of one row) as one vector load.
template <int U> struct F32Vec;
template <> struct F32Vec<1> { using type = float; };
template <> struct F32Vec<2> { using type = float2; };

template <int U> __device__ __forceinline__ float lane_of(const typename F32Vec<U>::type& v, int i) {
  if constexpr (U == 1) {
    return v;
  } else {
    return i == 0 ? v.x : v.y;
  }
}

// MT: 1 (one activation row) or 8 (up to 8 rows: the mma's N columns, which the one-row case leaves
// idle; lane (g, t) loads activation row min(g, m - 1) and holds outputs of rows 2t and 2t + 1).
template <typename T, int MT, int KW, int U, bool INTERLEAVE, bool ZP>
__global__ void __launch_bounds__(KW * 32) wo_gemv_tc1_kernel(const T* __restrict__ x, const uint4* __restrict__ qw,
                                                              const float* __restrict__ scales,
                                                              const float* __restrict__ zeros, T* __restrict__ out,
                                                              int m, int n, int k, int num_groups) {
  static_assert(MT == 1 || MT == 8, "one row or one 8-row activation tile");
  using FV = typename F32Vec<U>::type;
  constexpr float kBias = std::is_same<T, __nv_bfloat16>::value ? 136.f : 1032.f;
  constexpr int kStride = INTERLEAVE ? KW : 1;  // distance between a warp's consecutive steps
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, g = lane >> 2, t = lane & 3;
  const int row0 = blockIdx.x * 16;
  const int chunks = k >> 5, steps = (k >> 7) / U;  // steps of U k blocks (the launcher: a whole number)
  const int per = (steps + KW - 1) / KW;
  const int first = INTERLEAVE ? warp : warp * per;
  const int end = INTERLEAVE ? steps : min(steps, first + per);  // this warp's steps: first, + kStride, .. < end
  const int r0 = min(row0 + g, n - 1), r1 = min(row0 + g + 8, n - 1);
  const uint4* w0 = qw + static_cast<int64_t>(r0) * chunks + t;
  const uint4* w1 = qw + static_cast<int64_t>(r1) * chunks + t;
  const FV* s0 = reinterpret_cast<const FV*>(scales + static_cast<int64_t>(r0) * num_groups);
  const FV* s1 = reinterpret_cast<const FV*>(scales + static_cast<int64_t>(r1) * num_groups);
  const FV* z0 = reinterpret_cast<const FV*>(zeros + (ZP ? static_cast<int64_t>(r0) * num_groups : 0));
  const FV* z1 = reinterpret_cast<const FV*>(zeros + (ZP ? static_cast<int64_t>(r1) * num_groups : 0));

  // PDL (pdl.cuh): the first two steps' weight lines to L2 before the wait (one lane per quad).
  if (t == 0) {
#pragma unroll
    for (int i = 0; i < 2; ++i)
#pragma unroll
      for (int u = 0; u < U; ++u) {
        const int st = first + i * kStride;
        if (st < end) {
          pdl_prefetch_l2(w0 + (st * U + u) * 4);
          pdl_prefetch_l2(w1 + (st * U + u) * 4);
        }
      }
  }
  pdl_wait();
  pdl_launch_dependents();

  // Two steps in registers: [slot][u] weight vectors of rows g / g + 8, the step's scales and zeros.
  uint4 wa[2][U], wb[2][U];
  FV sa[2], sb[2], za[2], zb[2];
  auto load = [&](int slot, int st) {
    if (st < end) {
#pragma unroll
      for (int u = 0; u < U; ++u) {
        wa[slot][u] = ld_stream(w0 + (st * U + u) * 4);
        wb[slot][u] = ld_stream(w1 + (st * U + u) * 4);
      }
      sa[slot] = __ldg(s0 + st);  // group 128: step st's U groups are FV element st
      sb[slot] = __ldg(s1 + st);
      if constexpr (ZP) {
        za[slot] = __ldg(z0 + st);
        zb[slot] = __ldg(z1 + st);
      }
    }
  };
  load(0, first);
  load(1, first + kStride);

  constexpr int kCols = MT == 1 ? 1 : 2;  // C-fragment columns (activation rows 2t, 2t + 1) a lane keeps
  float acc[2][kCols] = {};                // [weight row g / g + 8][column]
  // this lane's 32 activations of a k block, of activation row g (m == 1: row 0 in every lane)
  const uint4* xv = reinterpret_cast<const uint4*>(x + static_cast<int64_t>(MT == 1 ? 0 : min(g, m - 1)) * k) + t * 4;
  for (int s0i = first; s0i < end; s0i += 2 * kStride) {
#pragma unroll
    for (int slot = 0; slot < 2; ++slot) {
      const int st = s0i + slot * kStride;
      if (st >= end) break;  // uniform across the warp
#pragma unroll
      for (int u = 0; u < U; ++u) {
        const int bb = st * U + u;
        uint32_t xb[4][4];
#pragma unroll
        for (int w = 0; w < 4; ++w) act_pairs(__ldg(xv + bb * 16 + w), xb[w]);
        float p[4] = {0.f, 0.f, 0.f, 0.f}, xs[4] = {0.f, 0.f, 0.f, 0.f};
#pragma unroll
        for (int w = 0; w < 4; ++w) tc1_word_mma<T>(p, xs, word_of(wa[slot][u], w), word_of(wb[slot][u], w), xb[w]);
        // C fragment: [0], [1] = weight row g, activation rows 2t, 2t + 1; [2], [3] = row g + 8.
        const float sc[2] = {lane_of<U>(sa[slot], u), lane_of<U>(sb[slot], u)};
        const float zc[2] = {ZP ? lane_of<U>(za[slot], u) : 0.f, ZP ? lane_of<U>(zb[slot], u) : 0.f};
#pragma unroll
        for (int h = 0; h < 2; ++h)
#pragma unroll
          for (int c = 0; c < kCols; ++c) {
            acc[h][c] = fmaf(p[2 * h + c], sc[h], acc[h][c]);
            acc[h][c] = fmaf(xs[2 * h + c], zc[h] - kBias * sc[h], acc[h][c]);
          }
      }
      load(slot, st + 2 * kStride);
    }
  }
  __shared__ float red[KW][MT][16];
  tc1_stash<KW, MT, kCols>(red, acc, warp, g, t);
  __syncthreads();
  for (int idx = threadIdx.x; idx < 16 * m; idx += KW * 32) {
    const int r = idx % 16, col = idx / 16;
    if (row0 + r < n) {
      float sum = 0.f;
#pragma unroll
      for (int w = 0; w < KW; ++w) sum += red[w][col][r];
      out[static_cast<int64_t>(col) * n + row0 + r] = from_float<T>(sum);
    }
  }
}

template <typename T, bool ZP, int KW, int U, bool INTERLEAVE>
inline int launch_wo_tc1_cfg(const T* x, const void* qw, const float* scales, const float* zeros, T* out, int m, int n,
                             int k, int group, int num_groups, cudaStream_t stream) {
  // Group 128 in whole steps of U, and rows of scales / zeros aligned for the U-float vector loads.
  constexpr uintptr_t kAlign = U * sizeof(float);
  if (group != 128 || num_groups != k / 128 || num_groups % U || reinterpret_cast<uintptr_t>(scales) % kAlign ||
      (ZP && reinterpret_cast<uintptr_t>(zeros) % kAlign))
    return kErrUnsupported;
  if (m == 1)
    return launch_pdl(wo_gemv_tc1_kernel<T, 1, KW, U, INTERLEAVE, ZP>, dim3((n + 15) / 16), dim3(KW * 32), 0, stream,
                      x, static_cast<const uint4*>(qw), scales, zeros, out, m, n, k, num_groups);
  return launch_pdl(wo_gemv_tc1_kernel<T, 8, KW, U, INTERLEAVE, ZP>, dim3((n + 15) / 16), dim3(KW * 32), 0, stream, x,
                    static_cast<const uint4*>(qw), scales, zeros, out, m, n, k, num_groups);
}

// Launch shapes {KW warps, U k blocks per step, interleaved}: 16 = {8, 1, yes}, 17 = {8, 1, no},
// 18 = {8, 2, no}, 19 = {4, 2, no}. Keep in step with WO_TC1_CONFIGS (trtdsl/plugins/cuda/quant_ops.py).
template <typename T, bool ZP>
int launch_wo_gemv_tc1(const T* x, const void* qw, const float* scales, const float* zeros, T* out, int m, int n,
                       int k, int group, int num_groups, int config, cudaStream_t stream) {
  if (m < 1 || m > 8 || n < 1 || k < 128 || k % 128) return kErrUnsupported;
  if (!aligned16(x) || !aligned16(qw)) return kErrUnsupported;
#define TRTDSL_TC1_CFG(KW, U, IL) \
  return launch_wo_tc1_cfg<T, ZP, KW, U, IL>(x, qw, scales, zeros, out, m, n, k, group, num_groups, stream)
  switch (config) {
    case 16: TRTDSL_TC1_CFG(8, 1, true);
    case 17: TRTDSL_TC1_CFG(8, 1, false);
    case 18: TRTDSL_TC1_CFG(8, 2, false);
    case 19: TRTDSL_TC1_CFG(4, 2, false);
    default: return kErrUnsupported;
  }
#undef TRTDSL_TC1_CFG
}

}  // namespace trtdsl
