// int4 weight-only decode GEMV on tensor cores (W4A16, 1..16 activation rows): mma.sync m16n8k16 with
// fp16 / bf16 operands and fp32 accumulators, weight rows as the mma's M, activation rows as its N.
// The stored format stays (qweight [n, k / 2], low nibble = even column, scales / zeros [n, groups]):
// no pre-shuffle. Included only by wo_gemv_tc_{bf16,f16}_{zp,nozp}.cu; quant_gemm.cuh declares the launcher.
//
// K order. A dot product may sum k in any order as long as x uses the same one. Lane (g, t) of a
// warp (g = lane / 4, t = lane % 4) loads one 16-byte vector (32 codes) of weight rows g and g + 8 at
// k = 128 * bb + 32 * t ("k block" bb) and the same 32 activations of batch row g (and g + 8 when
// m > 8). One 32-bit word of 8 nibbles e0..e7 becomes four 16-bit pairs with one lop3 each,
// (e0, e4), (e1, e5), (e2, e6), (e3, e7) (mask 0x000F000F after a shift of 0, 4, 8, 12), which are
// the A fragment's k slots {2t, 2t + 1} and {2t + 8, 2t + 9} of two mmas; the activations get the
// same pairing with byte permutes. So a warp covers 16 rows x 128 k with 8 mmas per activation tile.
//
// int4 -> 16-bit: (nibble ^ 8) | 0x4300 is the bf16 of 136 + code exactly (fp16: | 0x6400 is
// 1032 + code) in one lop3 ((w & 0x000F000F) ^ 0x43084308), minus 136 (1032) is the signed code
// exactly. Numerics, two paths:
// * group % 128 == 0 or per channel (every k block in one group; int4_awq's g128): the mma multiplies
//   the exact codes by x (exact products, fp32 sums) into a per-k-block partial, then in fp32
//   acc += s * partial (+ z * sum(x), sum(x) from an mma with an all-ones A): the CUDA-core GEMV's
//   arithmetic, summed in another order.
// * other groups (32, 64, 96, ...: the 4 lanes of a quad read different groups, which one mma
//   cannot scale separately): the weight code * s + z is formed in T (one fma, rounded to T: bf16
//   keeps 8 bits) before the mma. Errors ~2^-9 (bf16) / 2^-12 (fp16) of each weight, random in sign.
#pragma once
#include "trtdsl/attention_mma.cuh"
#include "trtdsl/pdl.cuh"
#include "trtdsl/quant_gemm.cuh"

namespace trtdsl {

template <typename T> struct TcTraits;

// The mma itself is attention_mma.cuh's (one wrapper per dtype for the whole project).
template <> struct TcTraits<__nv_bfloat16> {
  using T2 = __nv_bfloat162;
  static constexpr uint32_t kMagic = 0x43084308u;  // bf16x2 (136, 136): 0x4300 = 128, | 8 = the flipped sign bit
  static constexpr uint32_t kOne = 0x3F803F80u;    // bf16x2 (1, 1)
  __device__ static void mma(float (&d)[4], uint32_t a0, uint32_t a1, uint32_t a2, uint32_t a3, uint32_t b0,
                             uint32_t b1) {
    attn::Mma<__nv_bfloat16>::run(d, {a0, a1, a2, a3}, b0, b1);
  }
  __device__ static T2 pair(float v) { return __float2bfloat162_rn(v); }
};

template <> struct TcTraits<__half> {
  using T2 = __half2;
  static constexpr uint32_t kMagic = 0x64086408u;  // fp16x2 (1032, 1032): 0x6400 = 1024
  static constexpr uint32_t kOne = 0x3C003C00u;    // fp16x2 (1, 1)
  __device__ static void mma(float (&d)[4], uint32_t a0, uint32_t a1, uint32_t a2, uint32_t a3, uint32_t b0,
                             uint32_t b1) {
    attn::Mma<__half>::run(d, {a0, a1, a2, a3}, b0, b1);
  }
  __device__ static T2 pair(float v) { return __float2half2_rn(v); }
};

template <typename T2> __device__ __forceinline__ T2 u2t(uint32_t u) { return *reinterpret_cast<T2*>(&u); }
template <typename T2> __device__ __forceinline__ uint32_t t2u(T2 v) { return *reinterpret_cast<uint32_t*>(&v); }

// Biased codes of nibbles q and q + 4 of w as a T pair, 136 + code (fp16: 1032 + code), exact: one
// lop3, (w >> 4q & 0x000F000F) ^ magic.
template <typename T> __device__ __forceinline__ uint32_t biased_code_pair(uint32_t w, int q) {
  uint32_t r;
  asm("lop3.b32 %0, %1, %2, %3, 0x6A;" : "=r"(r) : "r"(w >> (4 * q)), "r"(0x000F000Fu), "r"(TcTraits<T>::kMagic));
  return r;
}

// Signed codes of nibbles q and q + 4 of w as a T pair (exact): the biased pair minus the magic's value.
template <typename T> __device__ __forceinline__ uint32_t code_pair(uint32_t w, int q) {
  using T2 = typename TcTraits<T>::T2;
  return t2u(__hsub2(u2t<T2>(biased_code_pair<T>(w, q)), u2t<T2>(TcTraits<T>::kMagic)));
}

__device__ __forceinline__ uint32_t word_of(const uint4& v, int j) {
  return j == 0 ? v.x : j == 1 ? v.y : j == 2 ? v.z : v.w;
}

// The 4 activation pairs of one word's k slots: (x0, x4), (x1, x5), (x2, x6), (x3, x7) of 8 values.
__device__ __forceinline__ void act_pairs(const uint4& v, uint32_t (&p)[4]) {
  p[0] = __byte_perm(v.x, v.z, 0x5410);
  p[1] = __byte_perm(v.x, v.z, 0x7632);
  p[2] = __byte_perm(v.y, v.w, 0x5410);
  p[3] = __byte_perm(v.y, v.w, 0x7632);
}

// The one-row kernels' step for one 32-bit word of weight rows g (wa) and g + 8 (wb) against that word's
// 4 activation pairs xb (wo_gemv_tc1.cuh, wo_gemv_packed.cuh): p += biased codes x activations, xs +=
// activations (an all-ones A), two mmas each.
template <typename T>
__device__ __forceinline__ void tc1_word_mma(float (&p)[4], float (&xs)[4], uint32_t wa, uint32_t wb,
                                             const uint32_t (&xb)[4]) {
  using Tr = TcTraits<T>;
  uint32_t a[2][4];
#pragma unroll
  for (int q = 0; q < 4; ++q) {
    a[0][q] = biased_code_pair<T>(wa, q);
    a[1][q] = biased_code_pair<T>(wb, q);
  }
  Tr::mma(p, a[0][0], a[1][0], a[0][1], a[1][1], xb[0], xb[1]);
  Tr::mma(p, a[0][2], a[1][2], a[0][3], a[1][3], xb[2], xb[3]);
  Tr::mma(xs, Tr::kOne, Tr::kOne, Tr::kOne, Tr::kOne, xb[0], xb[1]);
  Tr::mma(xs, Tr::kOne, Tr::kOne, Tr::kOne, Tr::kOne, xb[2], xb[3]);
}

// A warp's C fragments (lane (g, t): weight rows g / g + 8 of activation rows 2 t (+ 1 when COLS == 2))
// into red[warp][activation row][weight row] for the block's reduction over its KW warps.
template <int KW, int MT, int COLS>
__device__ __forceinline__ void tc1_stash(float (&red)[KW][MT][16], const float (&acc)[2][COLS], int warp, int g,
                                          int t) {
#pragma unroll
  for (int c = 0; c < COLS; ++c) {
    const int col = 2 * t + c;
    if (col < MT) {
      red[warp][col][g] = acc[0][c];
      red[warp][col][g + 8] = acc[1][c];
    }
  }
}

// Block: KW warps, NT tiles of 16 weight rows; NB activation tiles of 8 rows (m <= 8: 1, else 2).
// Warp w takes U consecutive k blocks at a time (k blocks w*U.., then + KW*U), all U * NT * 2
// weight vectors of a step issued before any math. Rows past n / m are clamped reads, never stored;
// vectors past k read as zero codes against zero activations.
template <typename T, int NB, int NT, int KW, int U, bool ZP, bool DQ>
__global__ void __launch_bounds__(KW * 32) wo_gemv_tc_kernel(const T* __restrict__ x, const uint4* __restrict__ qw,
                                                             const float* __restrict__ scales,
                                                             const float* __restrict__ zeros, T* __restrict__ out,
                                                             int m, int n, int k, int group, int num_groups) {
  using Tr = TcTraits<T>;
  using T2 = typename Tr::T2;
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, g = lane >> 2, t = lane & 3;
  const int row0 = blockIdx.x * (NT * 16);
  const int chunks = k >> 5;           // 16-byte vectors (32 codes) per row
  const int nbb = (chunks + 3) >> 2;   // k blocks of 128
  const uint4* wrow[NT][2];
  int64_t srow[NT][2];
#pragma unroll
  for (int nt = 0; nt < NT; ++nt)
#pragma unroll
    for (int h = 0; h < 2; ++h) {
      const int row = min(row0 + nt * 16 + g + 8 * h, n - 1);
      wrow[nt][h] = qw + static_cast<int64_t>(row) * chunks;
      srow[nt][h] = static_cast<int64_t>(row) * num_groups;
    }
  const T* xrow[NB];
#pragma unroll
  for (int nb = 0; nb < NB; ++nb) xrow[nb] = x + static_cast<int64_t>(min(g + 8 * nb, m - 1)) * k;

  // PDL (pdl.cuh): the weights are constant, so this warp's first step goes to L2 while the previous
  // kernel finishes; x (its output) is read only after the wait. One lane per quad: its 4 vectors share a line.
  if (t == 0) {
#pragma unroll
    for (int u = 0; u < U; ++u) {
      const int c = (warp * U + u) * 4;
#pragma unroll
      for (int nt = 0; nt < NT; ++nt)
#pragma unroll
        for (int h = 0; h < 2; ++h)
          if (c < chunks) pdl_prefetch_l2(wrow[nt][h] + c);
    }
  }
  pdl_wait();
  pdl_launch_dependents();

  float acc[NT][NB][4];
#pragma unroll
  for (int nt = 0; nt < NT; ++nt)
#pragma unroll
    for (int nb = 0; nb < NB; ++nb)
#pragma unroll
      for (int c = 0; c < 4; ++c) acc[nt][nb][c] = 0.f;

  for (int b0 = warp * U; b0 < nbb; b0 += KW * U) {
    uint4 wv[U][NT][2];
#pragma unroll
    for (int u = 0; u < U; ++u) {
      const int c = (b0 + u) * 4 + t;
#pragma unroll
      for (int nt = 0; nt < NT; ++nt)
#pragma unroll
        for (int h = 0; h < 2; ++h) wv[u][nt][h] = c < chunks ? ld_stream(wrow[nt][h] + c) : make_uint4(0, 0, 0, 0);
    }
#pragma unroll
    for (int u = 0; u < U; ++u) {
      const int bb = b0 + u;
      if (bb >= nbb) break;  // uniform across the warp
      const int c = bb * 4 + t;
      const bool valid = c < chunks;
      uint32_t xb[NB][4][4];  // [activation tile][word][pair]
#pragma unroll
      for (int nb = 0; nb < NB; ++nb)
#pragma unroll
        for (int j = 0; j < 4; ++j) {
          const uint4 v = valid ? __ldg(reinterpret_cast<const uint4*>(xrow[nb] + c * 32) + j) : make_uint4(0, 0, 0, 0);
          act_pairs(v, xb[nb][j]);
        }
      if constexpr (DQ) {
        const int gi = min(c * 32, k - 1) / group;  // this lane's group (invalid lanes: any valid one)
        T2 s2[NT][2], z2[NT][2];
#pragma unroll
        for (int nt = 0; nt < NT; ++nt)
#pragma unroll
          for (int h = 0; h < 2; ++h) {
            s2[nt][h] = Tr::pair(__ldg(scales + srow[nt][h] + gi));
            z2[nt][h] = Tr::pair(ZP ? __ldg(zeros + srow[nt][h] + gi) : 0.f);
          }
#pragma unroll
        for (int j = 0; j < 4; ++j)
#pragma unroll
          for (int nt = 0; nt < NT; ++nt) {
            uint32_t a[2][4];
            const uint32_t w[2] = {word_of(wv[u][nt][0], j), word_of(wv[u][nt][1], j)};
#pragma unroll
            for (int h = 0; h < 2; ++h)
#pragma unroll
              for (int q = 0; q < 4; ++q) {
                const T2 code = u2t<T2>(code_pair<T>(w[h], q));
                a[h][q] = t2u(ZP ? __hfma2(code, s2[nt][h], z2[nt][h]) : __hmul2(code, s2[nt][h]));
              }
#pragma unroll
            for (int nb = 0; nb < NB; ++nb) {
              Tr::mma(acc[nt][nb], a[0][0], a[1][0], a[0][1], a[1][1], xb[nb][j][0], xb[nb][j][1]);
              Tr::mma(acc[nt][nb], a[0][2], a[1][2], a[0][3], a[1][3], xb[nb][j][2], xb[nb][j][3]);
            }
          }
      } else {
        float p[NT][NB][4], xs[NB][4];
#pragma unroll
        for (int nb = 0; nb < NB; ++nb)
#pragma unroll
          for (int e = 0; e < 4; ++e) {
            xs[nb][e] = 0.f;
#pragma unroll
            for (int nt = 0; nt < NT; ++nt) p[nt][nb][e] = 0.f;
          }
#pragma unroll
        for (int j = 0; j < 4; ++j) {
#pragma unroll
          for (int nt = 0; nt < NT; ++nt) {
            uint32_t a[2][4];
            const uint32_t w[2] = {word_of(wv[u][nt][0], j), word_of(wv[u][nt][1], j)};
#pragma unroll
            for (int h = 0; h < 2; ++h)
#pragma unroll
              for (int q = 0; q < 4; ++q) a[h][q] = code_pair<T>(w[h], q);
#pragma unroll
            for (int nb = 0; nb < NB; ++nb) {
              Tr::mma(p[nt][nb], a[0][0], a[1][0], a[0][1], a[1][1], xb[nb][j][0], xb[nb][j][1]);
              Tr::mma(p[nt][nb], a[0][2], a[1][2], a[0][3], a[1][3], xb[nb][j][2], xb[nb][j][3]);
            }
          }
          if constexpr (ZP) {  // sum of x per activation row: an mma with all-ones weights
#pragma unroll
            for (int nb = 0; nb < NB; ++nb) {
              Tr::mma(xs[nb], Tr::kOne, Tr::kOne, Tr::kOne, Tr::kOne, xb[nb][j][0], xb[nb][j][1]);
              Tr::mma(xs[nb], Tr::kOne, Tr::kOne, Tr::kOne, Tr::kOne, xb[nb][j][2], xb[nb][j][3]);
            }
          }
        }
        const int gi = bb * 128 / group;
#pragma unroll
        for (int nt = 0; nt < NT; ++nt) {
          const float s0 = __ldg(scales + srow[nt][0] + gi), s1 = __ldg(scales + srow[nt][1] + gi);
          const float z0 = ZP ? __ldg(zeros + srow[nt][0] + gi) : 0.f, z1 = ZP ? __ldg(zeros + srow[nt][1] + gi) : 0.f;
#pragma unroll
          for (int nb = 0; nb < NB; ++nb) {
            // C fragment: [0], [1] = row g, activation rows 2t, 2t + 1; [2], [3] = row g + 8.
            acc[nt][nb][0] = fmaf(p[nt][nb][0], s0, acc[nt][nb][0]);
            acc[nt][nb][1] = fmaf(p[nt][nb][1], s0, acc[nt][nb][1]);
            acc[nt][nb][2] = fmaf(p[nt][nb][2], s1, acc[nt][nb][2]);
            acc[nt][nb][3] = fmaf(p[nt][nb][3], s1, acc[nt][nb][3]);
            if constexpr (ZP) {
              acc[nt][nb][0] = fmaf(xs[nb][0], z0, acc[nt][nb][0]);
              acc[nt][nb][1] = fmaf(xs[nb][1], z0, acc[nt][nb][1]);
              acc[nt][nb][2] = fmaf(xs[nb][2], z1, acc[nt][nb][2]);
              acc[nt][nb][3] = fmaf(xs[nb][3], z1, acc[nt][nb][3]);
            }
          }
        }
      }
    }
  }
  // Sum the KW warps' partials (one per k slice) through shared memory; +1 column against bank conflicts.
  __shared__ float red[KW][NT * 16][NB * 8 + 1];
#pragma unroll
  for (int nt = 0; nt < NT; ++nt)
#pragma unroll
    for (int nb = 0; nb < NB; ++nb) {
      red[warp][nt * 16 + g][nb * 8 + 2 * t] = acc[nt][nb][0];
      red[warp][nt * 16 + g][nb * 8 + 2 * t + 1] = acc[nt][nb][1];
      red[warp][nt * 16 + g + 8][nb * 8 + 2 * t] = acc[nt][nb][2];
      red[warp][nt * 16 + g + 8][nb * 8 + 2 * t + 1] = acc[nt][nb][3];
    }
  __syncthreads();
  const int cols = min(m, NB * 8);
  for (int idx = threadIdx.x; idx < NT * 16 * cols; idx += KW * 32) {
    const int r = idx % (NT * 16), col = idx / (NT * 16);
    float s = 0.f;
#pragma unroll
    for (int w = 0; w < KW; ++w) s += red[w][r][col];
    if (row0 + r < n) out[static_cast<int64_t>(col) * n + row0 + r] = from_float<T>(s);
  }
}

template <typename T, int NB, bool ZP, bool DQ, int NT, int KW, int U>
inline int launch_wo_tc_cfg(const T* x, const void* qw, const float* scales, const float* zeros, T* out, int m, int n,
                            int k, int group, int num_groups, cudaStream_t stream) {
  const int blocks = (n + NT * 16 - 1) / (NT * 16);
  return launch_pdl(wo_gemv_tc_kernel<T, NB, NT, KW, U, ZP, DQ>, dim3(blocks), dim3(KW * 32), 0, stream, x,
                    static_cast<const uint4*>(qw), scales, zeros, out, m, n, k, group, num_groups);
}

// Launch shapes {NT tiles of 16 rows, KW warps splitting k, U k blocks of 128 per step} by config:
// 8 = {1, 4, 4}, 9 = {1, 8, 4}, 10 = {2, 4, 2}, 11 = {1, 8, 2}, 12 = {2, 4, 4}, 13 = {1, 4, 8},
// 14 = {1, 2, 4}, 15 = {2, 8, 2}. Keep in step with WO_TC_CONFIGS (trtdsl/plugins/cuda/quant_ops.py).
constexpr int kWoTcLastConfig = 15;

template <typename T, int NB, bool ZP>
inline int launch_wo_tc_nb(const T* x, const void* qw, const float* scales, const float* zeros, T* out, int m, int n,
                           int k, int group, int num_groups, bool dq, int config, cudaStream_t stream) {
  // The dequantize-in-T path (groups not a multiple of 128) has one shape: it is the rare format.
  if (dq) return launch_wo_tc_cfg<T, NB, ZP, true, 1, 4, 2>(x, qw, scales, zeros, out, m, n, k, group, num_groups, stream);
#define TRTDSL_TC_CFG(NT, KW, U) \
  return launch_wo_tc_cfg<T, NB, ZP, false, NT, KW, U>(x, qw, scales, zeros, out, m, n, k, group, num_groups, stream)
  switch (config) {
    case 8: TRTDSL_TC_CFG(1, 4, 4);
    case 9: TRTDSL_TC_CFG(1, 8, 4);
    case 10: TRTDSL_TC_CFG(2, 4, 2);
    case 11: TRTDSL_TC_CFG(1, 8, 2);
    case 12: TRTDSL_TC_CFG(2, 4, 4);
    case 13: TRTDSL_TC_CFG(1, 4, 8);
    case 14: TRTDSL_TC_CFG(1, 2, 4);
    case 15: TRTDSL_TC_CFG(2, 8, 2);
    default: return kErrUnsupported;
  }
#undef TRTDSL_TC_CFG
}

template <typename T, bool ZP>
int launch_wo_gemv_tc(const T* x, const void* qw, const float* scales, const float* zeros, T* out, int m, int n, int k,
                      int group, int num_groups, int config, cudaStream_t stream) {
  if (m < 1 || m > kGemvMaxM || n < 1 || k < 32 || k % 32 || group % 32) return kErrShape;
  if (!aligned16(x) || !aligned16(qw)) return kErrUnsupported;
  if (config < kWoTcFirstConfig || config > kWoTcLastConfig) return kErrUnsupported;
  const bool dq = num_groups > 1 && group % 128 != 0;
  if (m <= 8)
    return launch_wo_tc_nb<T, 1, ZP>(x, qw, scales, zeros, out, m, n, k, group, num_groups, dq, config, stream);
  return launch_wo_tc_nb<T, 2, ZP>(x, qw, scales, zeros, out, m, n, k, group, num_groups, dq, config, stream);
}

}  // namespace trtdsl
