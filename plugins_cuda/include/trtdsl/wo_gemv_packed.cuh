// int4 weight-only decode GEMV (1..8 activation rows) on tensor cores over a PRE-SHUFFLED layout, the
// "tile-16" format of trtdsl/quantization/int4_tiles.py (whose docstring is the format's spec):
//
//   qp [tiles][k / 128][2][32] 16-byte vectors: vector (tile, kb, h, lane = 4 g + t) holds weight row
//      16 tile + 8 h + g; its word w is that row's canonical word at byte 64 kb + 16 w + 4 t, i.e. the
//      8 codes of k = 128 kb + 32 w + 8 t + 0..7 in the canonical nibble order.
//   sz [tiles][groups][8] of float4 {s[r], s[r + 8], z[r], z[r + 8]} (float2 {s[r], s[r + 8]} without
//      zeros), r = 16 tile + g; or the same as float16 (QuantConfig.half_scales).
//
// Why (wo_gemv_tc1.cuh reads the canonical [n, k / 2] rows; docs/quant_kernels.md measured its L1/TEX
// pipe 67-72 % busy): there a warp's 16-byte weight load touches 8 rows (8 lines for 512 bytes), its
// activation load 2 lines for 64 bytes, and each row's scale and zero one line per 4 bytes, ~40 L1
// wavefronts per 128-wide k block. Here a weight load is 512 contiguous bytes (4 lines), an activation
// load 64 contiguous bytes (lane t's word w is k = 32 w + 8 t, the uint4 after lane t - 1's), and the
// scales and zeros of the 16 rows one 128-byte line: 13 wavefronts per k block.
// The same k permutation puts mma pair w on k = 32 w .. 32 w + 31 only, so group 64 (two groups per k
// block: pairs 0-1 and 2-3) keeps exact codes in the mma and fp32 scaling, like group 128 does.
//
// Arithmetic is wo_gemv_tc1.cuh's (exact biased codes x activations in the mma, fp32 acc += s * p +
// (z - bias * s) * sum(x)). SWIGLU (the pack interleaved gate and up: tile rows 0..7 = gate rows 8 tile
// .., rows 8..15 = up rows 8 tile ..): the block writes silu(gate) * up of its 8 outputs instead, each
// factor first rounded to T, which is what the GEMV's T output followed by swiglu.cuh computes.
// DEFERRED NORM (PackedNorm; trtdsl/passes/deferred_norm.py): the RMSNorm between two of these GEMVs,
// split across them so no kernel of its own runs. The producer (o_proj, down) adds the residual to its
// outputs (the next residual stream, out), writes them times gamma (`scaled`) and each tile's sum of
// squares (ssq_out [m][tiles]); the consumer (qkv, gate_up) reads `scaled` as x and multiplies its fp32
// sums by rsqrt(sum(ssq_in[col]) / k + eps) before rounding: the norm's row scale, applied after the
// dot product instead of before it (a scalar per activation row commutes with the GEMV).
// Included only by src/wo_gemv_packed_{bf16,f16}{,_h}.cu.
#pragma once
#include "trtdsl/wo_gemv_tc.cuh"

namespace trtdsl {

// A row pair's scales (and zeros) of one group: S = float, or __half (QuantConfig.half_scales: 8 bytes a
// group instead of 16 with zeros).
template <bool ZP, typename S> struct PackedSz;
template <> struct PackedSz<true, float> {
  using type = float4;  // {s[r], s[r + 8], z[r], z[r + 8]}
  __device__ static float s(const float4& v, int h) { return h ? v.y : v.x; }
  __device__ static float z(const float4& v, int h) { return h ? v.w : v.z; }
};
template <> struct PackedSz<false, float> {
  using type = float2;  // {s[r], s[r + 8]}
  __device__ static float s(const float2& v, int h) { return h ? v.y : v.x; }
  __device__ static float z(const float2&, int) { return 0.f; }
};
template <> struct PackedSz<true, __half> {
  using type = uint2;  // half2 (s[r], s[r + 8]), half2 (z[r], z[r + 8])
  __device__ static float s(const uint2& v, int h) { return half_of(v.x, h); }
  __device__ static float z(const uint2& v, int h) { return half_of(v.y, h); }
  __device__ static float half_of(uint32_t w, int h) {
    return __half2float(__ushort_as_half(static_cast<unsigned short>(h ? w >> 16 : w & 0xFFFF)));
  }
};
template <> struct PackedSz<false, __half> {
  using type = uint32_t;  // half2 (s[r], s[r + 8])
  __device__ static float s(uint32_t v, int h) { return PackedSz<true, __half>::half_of(v, h); }
  __device__ static float z(uint32_t, int) { return 0.f; }
};

// The consumer's row scale of activation row col: rsqrt(mean of the squares + eps), the RMSNorm's.
template <int KW, int MT>
__device__ __forceinline__ float norm_scale(const float (&ssq_red)[KW][MT], int col, int k, float eps) {
  float total = 0.f;
#pragma unroll
  for (int w = 0; w < KW; ++w) total += ssq_red[w][col];
  return rsqrtf(total / static_cast<float>(k) + eps);
}

// Consumer tile sums kept per thread from the prologue to the epilogue (the rest, if any, loaded there).
template <int MT> constexpr int kSsqSlots = MT == 1 ? 2 : 1;

template <int KW, typename T, int MT>
__device__ __forceinline__ void ssq_load_share(const PackedNorm<T>& norm, int m, float (&part)[MT][kSsqSlots<MT>]) {
#pragma unroll
  for (int c = 0; c < MT; ++c) {
#pragma unroll
    for (int i = 0; i < kSsqSlots<MT>; ++i) {
      const int j = threadIdx.x + i * KW * 32;
      if (c < m && j < norm.ssq_tiles) part[c][i] = __ldg(norm.ssq_in + c * norm.ssq_tiles + j);
    }
  }
}

// Each warp's sum of the tile sums of every activation row into ssq_red[warp][row] (all lanes call it).
template <int KW, typename T, int MT>
__device__ __forceinline__ void ssq_warp_sums(const PackedNorm<T>& norm, int m, const float (&part)[MT][kSsqSlots<MT>],
                                              float (&ssq_red)[KW][MT]) {
#pragma unroll
  for (int c = 0; c < MT; ++c) {
    float v = 0.f;
#pragma unroll
    for (int i = 0; i < kSsqSlots<MT>; ++i) v += part[c][i];
    for (int j = threadIdx.x + kSsqSlots<MT> * KW * 32; c < m && j < norm.ssq_tiles; j += KW * 32)
      v += __ldg(norm.ssq_in + c * norm.ssq_tiles + j);
    v = warp_sum(v);
    if ((threadIdx.x & 31) == 0) ssq_red[threadIdx.x >> 5][c] = v;
  }
}

// The producer's epilogue, one output per thread (16 * MT <= KW * 32): the residual added with the fused
// add_rms_norm's roundings (the GEMV output in T, the sum in T), the sum and sum * gamma stored, and each
// (row, tile)'s sum of squares of the stored sums reduced over its 16 lanes. All threads call it.
template <int KW, typename T, int MT>
__device__ __forceinline__ void producer_epilogue(const PackedNorm<T>& norm, const float (&red)[KW][MT][16],
                                                  const float (&ssq_red)[KW][MT], float res_v, float gamma_v,
                                                  T* __restrict__ out, int m, int n, int k) {
  const int r = threadIdx.x & 15, col = threadIdx.x >> 4;
  const int row = blockIdx.x * 16 + r;
  float sq = 0.f;
  if (col < m && row < n) {
    float sum = 0.f;
#pragma unroll
    for (int w = 0; w < KW; ++w) sum += red[w][col][r];
    if (norm.ssq_in) sum *= norm_scale<KW>(ssq_red, col, k, norm.eps);
    const T total = from_float<T>(to_float(from_float<T>(sum)) + res_v);
    const float tf = to_float(total);
    out[static_cast<int64_t>(col) * n + row] = total;
    norm.scaled[static_cast<int64_t>(col) * n + row] = from_float<T>(tf * gamma_v);
    sq = tf * tf;
  }
#pragma unroll
  for (int o = 8; o > 0; o >>= 1) sq += __shfl_xor_sync(0xffffffffu, sq, o);  // the 16 lanes of one (col, tile)
  if (r == 0 && col < m) norm.ssq_out[static_cast<int64_t>(col) * gridDim.x + blockIdx.x] = sq;
}

// KW warps split the k blocks (interleaved: warp w takes blocks w, w + KW, ..; else contiguous runs),
// U k blocks per step, STAGES steps of loads in registers. GPB: groups per k block (1: group % 128 == 0 or
// per channel, bpg = k blocks per group; 2: group 64); S: the scales' type (PackedSz).
// PREWAIT: the weights and scales are engine constants (no kernel of the step writes them), so the
// STAGES steps that fill the pipeline are loaded into registers BEFORE pdl_wait (and the next STAGES
// steps prefetched to L2): with PDL the block does its first DRAM round trip while the kernel before it
// still runs (decode attention at batch 1 holds 8 SMs: o_proj's whole tile is in registers when it ends).
// Without PREWAIT only L2 prefetches of the first STAGES steps precede the wait (pdl.cuh's contract).
template <typename T, int MT, int KW, int U, bool INTERLEAVE, int STAGES, bool PREWAIT, int GPB, bool ZP, bool SWIGLU,
          typename S>
__global__ void __launch_bounds__(KW * 32)
    wo_gemv_packed_kernel(const T* __restrict__ x, const uint4* __restrict__ qp,
                          const typename PackedSz<ZP, S>::type* __restrict__ sz, T* __restrict__ out, int m, int n,
                          int k, int num_groups, int bpg, const PackedNorm<T> norm) {
  static_assert(MT == 1 || MT == 8, "one row or one 8-row activation tile");
  static_assert(GPB == 1 || GPB == 2, "group % 128 == 0 (or per channel) or group 64");
  static_assert(STAGES >= 2, "at least two steps in flight");
  static_assert(16 * MT <= KW * 32, "the producer epilogue takes one output per thread");
  using SZ = PackedSz<ZP, S>;
  using FV = typename SZ::type;
  constexpr float kBias = std::is_same<T, __nv_bfloat16>::value ? 136.f : 1032.f;
  constexpr int kStride = INTERLEAVE ? KW : 1;
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, g = lane >> 2, t = lane & 3;
  const int kbs = k >> 7, steps = kbs / U;
  const int per = (steps + KW - 1) / KW;
  const int first = INTERLEAVE ? warp : warp * per;
  const int end = INTERLEAVE ? steps : min(steps, first + per);
  const uint4* wt = qp + static_cast<int64_t>(blockIdx.x) * kbs * 64 + lane;  // + kb * 64 (+ 32: rows g + 8)
  const FV* st_sz = sz + static_cast<int64_t>(blockIdx.x) * num_groups * 8 + g;  // + group * 8

  uint4 wa[STAGES][U], wb[STAGES][U];
  FV sv[STAGES][U][GPB];
  auto load = [&](int slot, int st) {
    if (st < end) {
#pragma unroll
      for (int u = 0; u < U; ++u) {
        const int kb = st * U + u;
        wa[slot][u] = ld_stream(wt + kb * 64);
        wb[slot][u] = ld_stream(wt + kb * 64 + 32);
#pragma unroll
        for (int gi = 0; gi < GPB; ++gi) sv[slot][u][gi] = __ldg(st_sz + (GPB == 2 ? 2 * kb + gi : kb / bpg) * 8);
      }
    }
  };
  // Step st's weights to L2, one 128-byte line per lane of lanes 0..7.
  auto prefetch = [&](int st) {
    if (lane < 8 && st < end) {
#pragma unroll
      for (int u = 0; u < U; ++u) pdl_prefetch_l2(wt - lane + (st * U + u) * 64 + lane * 8);
    }
  };
  auto fill = [&] {  // the pipeline's first STAGES steps into registers
#pragma unroll
    for (int slot = 0; slot < STAGES; ++slot) load(slot, first + slot * kStride);
  };
  if constexpr (PREWAIT) fill();
  constexpr int kPrefetchFrom = PREWAIT ? STAGES : 0;  // the next STAGES steps not in registers yet
#pragma unroll
  for (int i = 0; i < STAGES; ++i) prefetch(first + (kPrefetchFrom + i) * kStride);
  pdl_wait();
  pdl_launch_dependents();
  if constexpr (!PREWAIT) fill();
  // Deferred norm, issued behind the weight loads so the latencies overlap; summed in the epilogue.
  // Consumer: this thread's share of the producer's tile sums (the rest, if any, in the epilogue).
  float ssq_part[MT][kSsqSlots<MT>] = {};
  if (norm.ssq_in) ssq_load_share<KW>(norm, m, ssq_part);
  // Producer: the residual and gamma of the one output this thread writes (see the epilogue).
  float res_v = 0.f, gamma_v = 0.f;
  if (norm.residual) {
    const int row = blockIdx.x * 16 + (threadIdx.x & 15), col = threadIdx.x >> 4;
    if (col < m && row < n) {
      res_v = to_float(norm.residual[static_cast<int64_t>(col) * n + row]);
      gamma_v = to_float(norm.gamma[row]);
    }
  }

  constexpr int kCols = MT == 1 ? 1 : 2;
  float acc[2][kCols] = {};
  // lane t's activations of a k block: uint4 (8 values) w at 16 kb + 4 w + t, of activation row g (m == 1: 0)
  const uint4* xv = reinterpret_cast<const uint4*>(x + static_cast<int64_t>(MT == 1 ? 0 : min(g, m - 1)) * k) + t;
  for (int s0i = first; s0i < end; s0i += STAGES * kStride) {
#pragma unroll
    for (int slot = 0; slot < STAGES; ++slot) {
      const int st = s0i + slot * kStride;
      if (st >= end) break;  // uniform across the warp
#pragma unroll
      for (int u = 0; u < U; ++u) {
        const int kb = st * U + u;
        uint32_t xb[4][4];
#pragma unroll
        for (int w = 0; w < 4; ++w) act_pairs(__ldg(xv + kb * 16 + 4 * w), xb[w]);
#pragma unroll
        for (int gi = 0; gi < GPB; ++gi) {
          float p[4] = {0.f, 0.f, 0.f, 0.f}, xs[4] = {0.f, 0.f, 0.f, 0.f};
#pragma unroll
          for (int w = gi * (4 / GPB); w < (gi + 1) * (4 / GPB); ++w)
            tc1_word_mma<T>(p, xs, word_of(wa[slot][u], w), word_of(wb[slot][u], w), xb[w]);
#pragma unroll
          for (int h = 0; h < 2; ++h) {
            const float s = SZ::s(sv[slot][u][gi], h), zc = SZ::z(sv[slot][u][gi], h) - kBias * s;
#pragma unroll
            for (int c = 0; c < kCols; ++c) {
              acc[h][c] = fmaf(p[2 * h + c], s, acc[h][c]);
              acc[h][c] = fmaf(xs[2 * h + c], zc, acc[h][c]);
            }
          }
        }
      }
      load(slot, st + STAGES * kStride);
    }
  }
  __shared__ float red[KW][MT][16];
  __shared__ float ssq_red[KW][MT];
  tc1_stash<KW, MT, kCols>(red, acc, warp, g, t);
  if (norm.ssq_in) ssq_warp_sums<KW>(norm, m, ssq_part, ssq_red);  // uniform: every lane takes part
  __syncthreads();
  constexpr int kOuts = SWIGLU ? 8 : 16;  // outputs per tile and activation row
  if (norm.residual) {  // uniform; no SwiGLU (the launcher checks)
    producer_epilogue<KW>(norm, red, ssq_red, res_v, gamma_v, out, m, n, k);
    return;
  }
  for (int idx = threadIdx.x; idx < kOuts * m; idx += KW * 32) {
    const int r = idx % kOuts, col = idx / kOuts;
    const int row = blockIdx.x * kOuts + r;
    if (row < n) {
      const float scale = norm.ssq_in ? norm_scale<KW>(ssq_red, col, k, norm.eps) : 1.f;
      float sum = 0.f;
#pragma unroll
      for (int w = 0; w < KW; ++w) sum += red[w][col][r];
      sum *= scale;
      if constexpr (SWIGLU) {
        float up = 0.f;
#pragma unroll
        for (int w = 0; w < KW; ++w) up += red[w][col][r + 8];
        const float gf = to_float(from_float<T>(sum));
        sum = gf / (1.f + __expf(-gf)) * to_float(from_float<T>(up * scale));
      }
      out[static_cast<int64_t>(col) * n + row] = from_float<T>(sum);
    }
  }
}

// Launch shapes {KW warps, U k blocks per step, interleaved, STAGES steps in registers, loads before the
// PDL wait} (kWoPackedConfigs): 0 = {8, 1, yes}, 1 = {8, 1, no}, 2 = {8, 2, no}, 3 = {4, 2, no},
// 4 = {4, 1, no}, 5 = {16, 1, no}, 6 = {16, 1, yes}, all with 2 stages and L2 prefetches before the wait;
// 7, 8, 9 = 0, 2, 4 with the pipeline's fill loaded before the wait (PREWAIT); with PREWAIT and 4 stages,
// 10 = {8, 1, yes}, 11 = {8, 1, no}, 12 = {4, 1, no} (a 4096-wide k: 10 and 11 load a warp's whole share
// before the wait, as 8 does). 16 warps: a 4096-wide k is 2 k blocks per warp. 8 warps x 2 k blocks x 4
// stages would take 178 registers (one 256-thread block per SM), hence no deeper U = 2 shape.
struct PackedShape { int warps, k_blocks, interleave, stages, prewait; };
constexpr PackedShape kPackedShapes[] = {
    {8, 1, 1, 2, 0}, {8, 1, 0, 2, 0}, {8, 2, 0, 2, 0}, {4, 2, 0, 2, 0}, {4, 1, 0, 2, 0}, {16, 1, 0, 2, 0},
    {16, 1, 1, 2, 0}, {8, 1, 1, 2, 1}, {8, 2, 0, 2, 1}, {4, 1, 0, 2, 1}, {8, 1, 1, 4, 1}, {8, 1, 0, 4, 1},
    {4, 1, 0, 4, 1}};
static_assert(sizeof(kPackedShapes) / sizeof(kPackedShapes[0]) == kWoPackedConfigs, "one shape per config");

template <typename T, int C, int GPB, bool ZP, bool SW, typename S>
inline int launch_wo_packed_shape(const T* x, const void* qp, const void* sz, T* out, int m, int n, int k,
                                  int num_groups, int bpg, int tiles, const PackedNorm<T>& norm, cudaStream_t stream) {
  constexpr PackedShape sh = kPackedShapes[C];
  constexpr int KW = sh.warps, U = sh.k_blocks, ST = sh.stages;
  constexpr bool IL = sh.interleave, PW = sh.prewait;
  using FV = typename PackedSz<ZP, S>::type;
  if ((k >> 7) % U) return kErrUnsupported;  // whole steps
  const auto* q = static_cast<const uint4*>(qp);
  const auto* s = static_cast<const FV*>(sz);
  if (m == 1)
    return launch_pdl(wo_gemv_packed_kernel<T, 1, KW, U, IL, ST, PW, GPB, ZP, SW, S>, dim3(tiles), dim3(KW * 32), 0,
                      stream, x, q, s, out, m, n, k, num_groups, bpg, norm);
  return launch_pdl(wo_gemv_packed_kernel<T, 8, KW, U, IL, ST, PW, GPB, ZP, SW, S>, dim3(tiles), dim3(KW * 32), 0,
                    stream, x, q, s, out, m, n, k, num_groups, bpg, norm);
}

template <typename T, int GPB, bool ZP, bool SW, typename S, int C = 0>
inline int launch_wo_packed_cfg(const T* x, const void* qp, const void* sz, T* out, int m, int n, int k,
                                int num_groups, int bpg, int tiles, int config, const PackedNorm<T>& norm,
                                cudaStream_t stream) {
  if constexpr (C >= kWoPackedConfigs) {
    return kErrUnsupported;
  } else {
    if (config == C)
      return launch_wo_packed_shape<T, C, GPB, ZP, SW, S>(x, qp, sz, out, m, n, k, num_groups, bpg, tiles, norm,
                                                          stream);
    return launch_wo_packed_cfg<T, GPB, ZP, SW, S, C + 1>(x, qp, sz, out, m, n, k, num_groups, bpg, tiles, config,
                                                          norm, stream);
  }
}

// n: output columns (SwiGLU: the intermediate size, half the packed rows); group: 64, a multiple of 128,
// or k (per channel); S: float or __half scales. The C launcher (quant_gemm.cu) has checked pointers,
// alignment and sizes (and the deferred norm's: PackedNorm).
template <typename T, typename S>
int launch_wo_gemv_packed(const T* x, const void* qp, const void* sz, bool zeros, T* out, int m, int n, int k,
                          int group, int num_groups, bool swiglu, int config, const PackedNorm<T>& norm,
                          cudaStream_t stream) {
  const int rows = swiglu ? 2 * n : n;
  const int tiles = (rows + 15) / 16;
  const int gpb = group == 64 ? 2 : 1;
  const int bpg = group / 128;  // k blocks per group (gpb == 1)
#define TRTDSL_PACKED_SW(GPB, ZP)                                                                                   \
  return swiglu ? launch_wo_packed_cfg<T, GPB, ZP, true, S>(x, qp, sz, out, m, n, k, num_groups, bpg, tiles,     \
                                                            config, norm, stream)                                 \
                : launch_wo_packed_cfg<T, GPB, ZP, false, S>(x, qp, sz, out, m, n, k, num_groups, bpg, tiles,    \
                                                             config, norm, stream)
  if (gpb == 2) {
    if (zeros) TRTDSL_PACKED_SW(2, true);
    TRTDSL_PACKED_SW(2, false);
  }
  if (zeros) TRTDSL_PACKED_SW(1, true);
  TRTDSL_PACKED_SW(1, false);
#undef TRTDSL_PACKED_SW
}

}  // namespace trtdsl
