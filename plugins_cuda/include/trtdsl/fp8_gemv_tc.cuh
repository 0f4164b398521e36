// FP8 (e4m3) W8A8 decode GEMV on tensor cores, configs 20..23: mma.sync m16n8k32 e4m3 (sm_89+) for 1..8
// rows of already-quantized activations (the decode graph's form: the norm, SwiGLU or attention before
// the GEMM writes the codes). Same contract as fp8_gemv_kernel: y[i, r] = T(acc * (x_scale[i] * w_scale[r])).
//
// Why: the CUDA-core kernel turns every code pair into fp32 (fp8x2 -> half2 -> float2) and does m fp32
// FMAs per weight code, so from m ~ 4 its arithmetic, not the weight stream, sets the time (H100, m = 8:
// gate_up 81.6 us, slower than _scaled_mm's 50.8). Here the loaded codes ARE the mma's operands: per 32
// weight bytes a lane issues 2 loads, 1 activation load, 2 mma and 4 adds, whatever m <= 8 is (gate_up
// 44.4 us at m = 8). At m = 1 it loses to the CUDA-core kernel (qkv 11.8 vs 11.1 us, gate_up 42.8 vs
// 38.6; quant_gemm_h100_fp8_tc.json), which stays the m = 1..2 choice: a warp's load here spans 8 rows x 64
// bytes, not one row's 512, and a variant with the CUDA-core kernel's row-contiguous loads (the mma's
// diagonal) was slower in the decode graph too (branch wip/fp8-tc-row).
//
// Layout (wo_gemv_tc1.cuh's, for 8-bit codes): a block owns 16 weight rows; its KW warps split k into
// contiguous runs of steps. A step is U chunks of 64 codes; in chunk c lane (g = lane / 4, t = lane % 4)
// loads 16-byte vector 4c + t of rows g and g + 8 and the activation vector at the same k (of activation
// row min(g, m - 1): the mma's columns are the activation rows, m = 1 uses column 0). The fragment's k
// slots {4t..4t+3} / {4t+16..4t+19} of the chunk's two mmas take words (x, y) / (z, w) of those vectors
// on both sides, so every k meets its own activation exactly once: a permuted dot product.
//
// Numerics: products of two e4m3 codes are exact. Hopper's fp8 tensor-core sums are reported to keep
// fewer bits than fp32 (DeepSeek-V3 report, sec. 3.3.2, promotes to CUDA cores every 128), so each
// step's mmas start from zero and the step's partial (64 U codes) is added to an fp32 accumulator on
// CUDA cores; the result differs from the reference by summation order and that rounding (tests hold it
// to the CUDA-core kernel's tolerances). k % 16 == 0; vectors past k read as zeros.
#pragma once
#include "trtdsl/attention_mma.cuh"
#include "trtdsl/pdl.cuh"
#include "trtdsl/quant_gemm.cuh"

namespace trtdsl {

constexpr int kFp8TcMaxM = 8;  // one activation tile: the mma's 8 columns
constexpr int kFp8GemvMaxLowRank = 64;  // the low-rank term's r (a loop per output, not registers)
constexpr int kFp8TcFirstConfig = 20, kFp8TcLastConfig = 23;

// What the FP8 GEMVs add to acc * scale, each addition rounded to T as the separate layers they replace:
// first the low-rank branch's c[i] . lowrank_w[:, row] (QuantConfig.fp8_lowrank: c [m, rank], the
// branch weight (W U)^T [rank, n], summed in fp32 in j order, rounded to T as the unfused GEMM's output),
// then bias[row] (the centered input's W mean). Null pointers skip a term.
template <typename T> struct Fp8GemvEpilogue {
  const T* bias = nullptr;
  const T* lowrank_c = nullptr;
  const T* lowrank_w = nullptr;
  int rank = 0;
};

// One output (activation row i, weight row `row` of n): acc * sc rounded to T, then the epilogue's terms.
template <typename T>
__device__ __forceinline__ T fp8_gemv_out(float acc, float sc, const Fp8GemvEpilogue<T>& e, int i, int row, int n) {
  T y = from_float<T>(__fmul_rn(acc, sc));
  if (e.lowrank_c) {
    float s = 0.f;
    for (int j = 0; j < e.rank; ++j)
      s = fmaf(to_float<T>(e.lowrank_c[static_cast<int64_t>(i) * e.rank + j]),
               to_float<T>(e.lowrank_w[static_cast<int64_t>(j) * n + row]), s);
    y = from_float<T>(to_float<T>(y) + to_float<T>(from_float<T>(s)));
  }
  return e.bias ? from_float<T>(to_float<T>(y) + to_float<T>(e.bias[row])) : y;
}

// Before pdl_wait: the epilogue's constants for rows [row0, row0 + rows) to L2 (bias, the branch weight).
template <typename T>
__device__ __forceinline__ void fp8_gemv_prefetch_epilogue(const Fp8GemvEpilogue<T>& e, int row0, int rows, int n) {
  if (e.bias) pdl_prefetch_l2(e.bias + row0);
  for (int j = 0; j < e.rank; ++j) {
    pdl_prefetch_l2(e.lowrank_w + static_cast<int64_t>(j) * n + row0);
    pdl_prefetch_l2(e.lowrank_w + static_cast<int64_t>(j) * n + min(row0 + rows, n) - 1);
  }
}

template <typename T, int KW, int U>
__global__ void __launch_bounds__(KW * 32) fp8_gemv_tc_kernel(const uint4* __restrict__ xq, const uint4* __restrict__ wq,
                                                              const float* __restrict__ x_scale, int xs_stride,
                                                              const float* __restrict__ w_scale, int ws_stride,
                                                              T* __restrict__ out, const Fp8GemvEpilogue<T> epi,
                                                              int m, int n, int k) {
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, g = lane >> 2, t = lane & 3;
  const int row0 = blockIdx.x * 16;
  const int vecs = k >> 4;                                // 16-byte vectors per row
  const int steps = ((vecs + 3) / 4 + U - 1) / U;         // steps of U chunks of 4 vectors
  const int per = (steps + KW - 1) / KW;
  const int first = warp * per, end = min(steps, first + per);  // this warp's steps
  const uint4* w0 = wq + static_cast<int64_t>(min(row0 + g, n - 1)) * vecs;
  const uint4* w1 = wq + static_cast<int64_t>(min(row0 + g + 8, n - 1)) * vecs;
  const uint4* xv = xq + static_cast<int64_t>(min(g, m - 1)) * vecs;
  const uint4 zero = make_uint4(0, 0, 0, 0);

  // PDL (pdl.cuh): the first two steps' weight lines to L2 before the wait (a quad reads 64 bytes of a
  // row per chunk: one prefetch by its lane 0); the activation codes are the previous kernel's output.
  if (t == 0) {
#pragma unroll
    for (int i = 0; i < 2; ++i)
#pragma unroll
      for (int u = 0; u < U; ++u) {
        const int v = ((first + i) * U + u) * 4;
        if (first + i < end && v < vecs) {
          pdl_prefetch_l2(w0 + v);
          pdl_prefetch_l2(w1 + v);
        }
      }
  }
  if (threadIdx.x == 0) fp8_gemv_prefetch_epilogue(epi, row0, 16, n);
  pdl_wait();
  pdl_launch_dependents();

  // Two steps of weights in registers: the next step's loads are in flight during a step's mmas.
  uint4 wa[2][U], wb[2][U];
  auto load = [&](int slot, int st) {
    if (st < end) {
#pragma unroll
      for (int u = 0; u < U; ++u) {
        const int v = (st * U + u) * 4 + t;
        wa[slot][u] = v < vecs ? ld_stream(w0 + v) : zero;
        wb[slot][u] = v < vecs ? ld_stream(w1 + v) : zero;
      }
    }
  };
  load(0, first);
  load(1, first + 1);

  float acc[4] = {0.f, 0.f, 0.f, 0.f};  // C fragment: rows g / g + 8 x activation rows 2t, 2t + 1
  for (int s0 = first; s0 < end; s0 += 2) {
#pragma unroll
    for (int slot = 0; slot < 2; ++slot) {
      const int st = s0 + slot;
      if (st >= end) break;  // uniform across the warp
      float p[4] = {0.f, 0.f, 0.f, 0.f};
#pragma unroll
      for (int u = 0; u < U; ++u) {
        const int v = (st * U + u) * 4 + t;
        const uint4 x = v < vecs ? __ldg(xv + v) : zero;
        const uint4 a = wa[slot][u], b = wb[slot][u];
        attn::mma_e4m3(p, a.x, b.x, a.y, b.y, x.x, x.y);
        attn::mma_e4m3(p, a.z, b.z, a.w, b.w, x.z, x.w);
      }
#pragma unroll
      for (int c = 0; c < 4; ++c) acc[c] += p[c];
      load(slot, st + 2);
    }
  }

  __shared__ float red[KW][kFp8TcMaxM][16];
#pragma unroll
  for (int c = 0; c < 2; ++c) {
    red[warp][2 * t + c][g] = acc[c];
    red[warp][2 * t + c][g + 8] = acc[2 + c];
  }
  __syncthreads();
  // The reference's order: acc * (x_scale * w_scale), each product rounded once.
  for (int idx = threadIdx.x; idx < 16 * m; idx += KW * 32) {
    const int r = idx % 16, i = idx / 16;
    if (row0 + r < n) {
      float s = 0.f;
#pragma unroll
      for (int w = 0; w < KW; ++w) s += red[w][i][r];
      const float sc = __fmul_rn(__ldg(x_scale + i * xs_stride), __ldg(w_scale + (row0 + r) * ws_stride));
      out[static_cast<int64_t>(i) * n + row0 + r] = fp8_gemv_out<T>(s, sc, epi, i, row0 + r, n);
    }
  }
}

// Whether this device has the e4m3 mma (compute capability 8.9 or more).
inline bool fp8_mma_supported() {
  int dev = 0, major = 0, minor = 0;
  if (cudaGetDevice(&dev) != cudaSuccess ||
      cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, dev) != cudaSuccess ||
      cudaDeviceGetAttribute(&minor, cudaDevAttrComputeCapabilityMinor, dev) != cudaSuccess) {
    (void)cudaGetLastError();
    return false;
  }
  return major * 10 + minor >= 89;
}

// Launch shapes {KW warps, U chunks per step}: 20 = {8, 1}, 21 = {8, 2}, 22 = {4, 2}, 23 = {4, 4}.
// Keep in step with FP8_TC_CONFIGS (trtdsl/plugins/cuda/quant_ops.py). kErrUnsupported for m > 8, a
// device without the e4m3 mma or another config: the caller (launch_fp8_gemv) runs config 1 instead.
template <typename T>
inline int launch_fp8_gemv_tc(const void* xq, const void* wq, const float* xs, int xs_stride, const float* ws,
                              int ws_stride, T* out, const Fp8GemvEpilogue<T>& epi, int m, int n, int k, int config,
                              cudaStream_t stream) {
  if (m < 1 || m > kFp8TcMaxM || !fp8_mma_supported()) return kErrUnsupported;
#define TRTDSL_FP8_TC_CFG(KW, U)                                                                              \
  return launch_pdl(fp8_gemv_tc_kernel<T, KW, U>, dim3((n + 15) / 16), dim3(KW * 32), 0, stream,            \
                    static_cast<const uint4*>(xq), static_cast<const uint4*>(wq), xs, xs_stride, ws, ws_stride, \
                    out, epi, m, n, k)
  switch (config) {
    case 20: TRTDSL_FP8_TC_CFG(8, 1);
    case 21: TRTDSL_FP8_TC_CFG(8, 2);
    case 22: TRTDSL_FP8_TC_CFG(4, 2);
    case 23: TRTDSL_FP8_TC_CFG(4, 4);
    default: return kErrUnsupported;
  }
#undef TRTDSL_FP8_TC_CFG
}

}  // namespace trtdsl
