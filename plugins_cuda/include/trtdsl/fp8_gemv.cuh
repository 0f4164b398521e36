// FP8 (e4m3) W8A8 decode GEMV: y[m, n] = T(acc[m, n] * (x_scale[m] * w_scale[n])) with
// acc = sum_k xq[m, k] * wq[n, k] over e4m3 codes of the already-quantized activations (static
// per-tensor or dynamic per-row scale) and weights. Every e4m3 value is exact in fp16 and every product
// of two is exact in fp32, so this is the reference's arithmetic (trtdsl/quantization/plugins.py:
// fp8 x fp8 products, fp32 accumulation, then scales) up to summation order. CUDA cores, not tensor
// cores: at m <= 8 the weight stream, not the math, bounds the time, and Hopper's fp8 MMA is reported
// to keep fewer accumulator bits than fp32. Same block shapes (kQuantGemvConfigs) as the weight-only GEMV.
#pragma once
#include <cuda_fp8.h>

#include "trtdsl/fp8_gemv_tc.cuh"
#include "trtdsl/quant_gemm.cuh"

namespace trtdsl {

constexpr int kFp8GemvMaxM = 16;

// 8 e4m3 codes (two 32-bit words) -> fp32, through the fp8x2 -> half2 convert (one instruction on
// sm_89+; the header emulates it on older targets).
__device__ __forceinline__ void fp8x8_to_float(uint32_t w0, uint32_t w1, float* f) {
  const uint32_t w[2] = {w0, w1};
#pragma unroll
  for (int q = 0; q < 2; ++q)
#pragma unroll
    for (int j = 0; j < 2; ++j) {
      const __half2_raw h =
          __nv_cvt_fp8x2_to_halfraw2(static_cast<__nv_fp8x2_storage_t>(w[q] >> (16 * j)), __NV_E4M3);
      const float2 t = __half22float2(*reinterpret_cast<const __half2*>(&h));
      f[4 * q + 2 * j] = t.x;
      f[4 * q + 2 * j + 1] = t.y;
    }
}

// 8 activations of T (one 16-byte load) -> their e4m3 codes of x / s -> fp32. The codes are those of
// quantize_fp8_kernel bitwise (IEEE division, round to nearest even, saturating at +-448); the
// round trip through fp8x2 -> half2 gives the exact code value the unfused GEMV reads.
template <typename T> __device__ __forceinline__ void quantize8_fp8(const T* p, float s, float* f) {
  act8<T>(p, f);
#pragma unroll
  for (int j = 0; j < 8; j += 2) {
    const float2 q = make_float2(__fdiv_rn(f[j], s), __fdiv_rn(f[j + 1], s));
    const __nv_fp8x2_storage_t c = __nv_cvt_float2_to_fp8x2(q, __NV_SATFINITE, __NV_E4M3);
    const __half2_raw h = __nv_cvt_fp8x2_to_halfraw2(c, __NV_E4M3);
    const float2 t = __half22float2(*reinterpret_cast<const __half2*>(&h));
    f[j] = t.x;
    f[j + 1] = t.y;
  }
}

// The epilogue's operands of output o = r * MT + i (weight row row0 + r, activation row i), held by
// lane o of the block's first warp, and the low-rank term's pairs (c[i, j], w[j, row]) held by lanes
// o * rank + j when they fit one warp. They are loaded right after pdl_wait and used only at the tail,
// so their latency hides under the weight stream instead of following the last reduction (measured:
// the tail's loads cost the low-rank GEMVs 0.4-1.4 us each). Raw values: nothing consumes a load early.
template <typename T> struct Fp8GemvTail {
  float x_scale = 0.f, w_scale = 0.f;
  T bias{}, c{}, w{};
};

template <typename T, int NR, int MT>
__device__ __forceinline__ Fp8GemvTail<T> fp8_gemv_load_tail(const Fp8GemvEpilogue<T>& e, const float* x_scale,
                                                            int xs_stride, const float* w_scale, int ws_stride,
                                                            bool pairs, int lane, int row0, int m, int n) {
  Fp8GemvTail<T> t;
  if (lane < NR * MT) {
    const int row = min(row0 + lane / MT, n - 1), i = min(lane % MT, m - 1);
    t.x_scale = __ldg(x_scale + i * xs_stride);
    t.w_scale = __ldg(w_scale + static_cast<int64_t>(row) * ws_stride);
    if (e.bias) t.bias = e.bias[row];
  }
  if (pairs && lane < NR * MT * e.rank) {
    const int o = lane / e.rank, j = lane % e.rank;
    const int row = min(row0 + o / MT, n - 1), i = min(o % MT, m - 1);
    t.c = e.lowrank_c[static_cast<int64_t>(i) * e.rank + j];
    t.w = e.lowrank_w[static_cast<int64_t>(j) * n + row];
  }
  return t;
}

// Output o = lane of the block's first warp (all 32 lanes call it: the pairs move by shuffles), acc its
// fp32 sum: fp8_gemv_out's arithmetic, with the operands of the tail.
template <typename T, int NR, int MT>
__device__ __forceinline__ void fp8_gemv_store_tail(float acc, const Fp8GemvTail<T>& t, const Fp8GemvEpilogue<T>& e,
                                                    bool pairs, int lane, int row0, int m, int n, T* out) {
  const int r = lane / MT, i = lane % MT;
  const bool mine = lane < NR * MT && row0 + r < n && i < m;
  float low = 0.f;
  if (pairs) {
    for (int j = 0; j < e.rank; ++j) {  // in j order, as fp8_gemv_out
      const int src = (lane * e.rank + j) & 31;
      const T c = from_float<T>(__shfl_sync(0xffffffffu, to_float<T>(t.c), src));
      const T w = from_float<T>(__shfl_sync(0xffffffffu, to_float<T>(t.w), src));
      low = fmaf(to_float<T>(c), to_float<T>(w), low);
    }
  } else if (e.lowrank_c && mine) {
    for (int j = 0; j < e.rank; ++j)
      low = fmaf(to_float<T>(e.lowrank_c[static_cast<int64_t>(i) * e.rank + j]),
                 to_float<T>(e.lowrank_w[static_cast<int64_t>(j) * n + row0 + r]), low);
  }
  if (!mine) return;
  T y = from_float<T>(__fmul_rn(acc, __fmul_rn(t.x_scale, t.w_scale)));
  if (e.lowrank_c) y = from_float<T>(to_float<T>(y) + to_float<T>(from_float<T>(low)));
  if (e.bias) y = from_float<T>(to_float<T>(y) + to_float<T>(t.bias));
  out[static_cast<int64_t>(i) * n + row0 + r] = y;
}

// Block shape as in wo_gemv_kernel: NR weight rows, KW warps splitting k, U 16-byte loads (16 codes)
// per row and thread in flight. Rows past n / m are clamped reads, never stored. k % 16 == 0.
// QX: xin is the unquantized activation (T) and x_scale the static per-tensor input scale; every
// block quantizes the x values it reads (the same codes as the separate quantizer, so the same
// products and the same sums: one launch instead of two). Else xin holds e4m3 codes.
template <typename T, int MT, int NR, int KW, int U, bool QX>
__global__ void __launch_bounds__(KW * 32) fp8_gemv_kernel(const void* __restrict__ xin,
                                                           const uint4* __restrict__ wq,
                                                           const float* __restrict__ x_scale, int xs_stride,
                                                           const float* __restrict__ w_scale, int ws_stride,
                                                           T* __restrict__ out, const Fp8GemvEpilogue<T> epi,
                                                           int m, int n, int k) {
  constexpr int kThreads = KW * 32;
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const int row0 = blockIdx.x * NR;
  const int vecs = k / 16;
  const uint4* wrow[NR];
#pragma unroll
  for (int r = 0; r < NR; ++r) wrow[r] = wq + static_cast<int64_t>(min(row0 + r, n - 1)) * vecs;
  const int last = m - 1;
  const uint4* xq = static_cast<const uint4*>(xin);
  const T* xt = static_cast<const T*>(xin);
  // PDL (pdl.cuh): the first weight step to L2 while the previous kernel finishes; x and its scale
  // (a dynamic one is the quantizer's output) after the wait.
  prefetch_weight_step<U, NR, kThreads>(wrow, threadIdx.x, vecs);
  if (threadIdx.x == 0) {  // the epilogue's weight scales (constants), so the tail does not wait on DRAM
    pdl_prefetch_l2(w_scale + static_cast<int64_t>(row0) * ws_stride);
    if (ws_stride) pdl_prefetch_l2(w_scale + static_cast<int64_t>(min(row0 + NR, n) - 1) * ws_stride);
    fp8_gemv_prefetch_epilogue(epi, row0, NR, n);
  }
  pdl_wait();
  pdl_launch_dependents();
  const float in_scale = QX ? __ldg(x_scale) : 1.f;
  static_assert(NR * MT <= 32, "one output per lane of the first warp");
  const bool pairs = epi.lowrank_c && NR * MT * epi.rank <= 32;
  Fp8GemvTail<T> tail;
  if (warp == 0) tail = fp8_gemv_load_tail<T, NR, MT>(epi, x_scale, xs_stride, w_scale, ws_stride, pairs, lane, row0, m, n);

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
#pragma unroll
        for (int h = 0; h < 2; ++h) {  // 8 codes at a time bounds the registers of converted weights
          float wf[NR][8];
#pragma unroll
          for (int r = 0; r < NR; ++r)
            fp8x8_to_float(h == 0 ? wv[u][r].x : wv[u][r].z, h == 0 ? wv[u][r].y : wv[u][r].w, wf[r]);
#pragma unroll
          for (int i = 0; i < MT; ++i) {
            float xf[8];
            if constexpr (QX) {
              quantize8_fp8<T>(xt + static_cast<int64_t>(min(i, last)) * k + v * 16 + h * 8, in_scale, xf);
            } else {
              const uint4 xv = __ldg(xq + static_cast<int64_t>(min(i, last)) * vecs + v);
              fp8x8_to_float(h == 0 ? xv.x : xv.z, h == 0 ? xv.y : xv.w, xf);
            }
#pragma unroll
            for (int r = 0; r < NR; ++r)
#pragma unroll
              for (int j = 0; j < 8; ++j) acc[r][i] = fmaf(wf[r][j], xf[j], acc[r][i]);
          }
        }
      }
    }
  }
#pragma unroll
  for (int r = 0; r < NR; ++r)
#pragma unroll
    for (int i = 0; i < MT; ++i) acc[r][i] = warp_sum(acc[r][i]);
  // The reference's order: acc * (x_scale * w_scale), each product rounded once (fp8_gemv_store_tail).
  if constexpr (KW == 1) {
    float mine = 0.f;  // every lane holds every sum: lane o takes output o
#pragma unroll
    for (int r = 0; r < NR; ++r)
#pragma unroll
      for (int i = 0; i < MT; ++i)
        if (lane == r * MT + i) mine = acc[r][i];
    fp8_gemv_store_tail<T, NR, MT>(mine, tail, epi, pairs, lane, row0, m, n, out);
  } else {
    __shared__ float red[KW][NR * MT];
    if (lane == 0) {
#pragma unroll
      for (int r = 0; r < NR; ++r)
#pragma unroll
        for (int i = 0; i < MT; ++i) red[warp][r * MT + i] = acc[r][i];
    }
    __syncthreads();
    if (warp == 0) {
      float sum = 0.f;
      if (lane < NR * MT) {
#pragma unroll
        for (int w = 0; w < KW; ++w) sum += red[w][lane];
      }
      fp8_gemv_store_tail<T, NR, MT>(sum, tail, epi, pairs, lane, row0, m, n, out);
    }
  }
}

template <typename T, int MT, bool QX, int NR0, int KW, int U>
inline int launch_fp8_gemv_cfg(const void* xq, const void* wq, const float* xs, int xs_stride, const float* ws,
                               int ws_stride, T* out, const Fp8GemvEpilogue<T>& epi, int m, int n, int k, cudaStream_t stream) {
  constexpr int NR = clamp_rows<NR0, MT>();  // acc in registers
  const int blocks = (n + NR - 1) / NR;
  return launch_pdl(fp8_gemv_kernel<T, MT, NR, KW, U, QX>, dim3(blocks), dim3(KW * 32), 0, stream, xq,
                    static_cast<const uint4*>(wq), xs, xs_stride, ws, ws_stride, out, epi, m, n, k);
}

template <typename T, int MT, bool QX> struct Fp8GemvLaunch {
  template <int NR, int KW, int U, typename... A> static int run(A... a) {
    return launch_fp8_gemv_cfg<T, MT, QX, NR, KW, U>(a...);
  }
};

template <typename T, int MT, bool QX>
inline int launch_fp8_gemv_mt(const void* xq, const void* wq, const float* xs, int xs_stride, const float* ws,
                              int ws_stride, T* out, const Fp8GemvEpilogue<T>& epi, int m, int n, int k, int config,
                              cudaStream_t stream) {
  return with_quant_gemv_shape<Fp8GemvLaunch<T, MT, QX>>(config, xq, wq, xs, xs_stride, ws, ws_stride, out, epi, m,
                                                         n, k, stream);
}

// Untuned prior for config 0: fp8 rows of k = 4096 are 4 KB, like int8's, whose first kernel
// (config 1) reached 90-99% of copy; one warp per 4 rows with 16 loads in flight for wide n.
inline int fp8_gemv_auto_config(int m, int n, int k) {
  (void)k;
  return m <= 2 && n >= 8192 ? 2 : 1;
}

// QX = false: xq holds e4m3 codes. QX = true: xq is x itself (T, 16-bit) and xs the static input scale
// (xs_stride 0), quantized inside the GEMV. epi: the bias and low-rank terms (fp8_gemv_out).
template <typename T, bool QX>
inline int launch_fp8_gemv(const void* xq, const void* wq, const float* xs, int xs_stride, const float* ws,
                           int ws_stride, T* out, const Fp8GemvEpilogue<T>& epi, int m, int n, int k, int config,
                           cudaStream_t stream) {
  if (m < 1 || m > kFp8GemvMaxM || n < 1 || k < 16 || k % 16) return kErrShape;
  if (!aligned16(xq) || !aligned16(wq)) return kErrUnsupported;
  if (QX && (sizeof(T) != 2 || xs_stride != 0)) return kErrUnsupported;
  if (config >= kFp8TcFirstConfig && config <= kFp8TcLastConfig) {  // tensor cores (fp8_gemv_tc.cuh)
    if constexpr (!QX) {
      const int status = launch_fp8_gemv_tc<T>(xq, wq, xs, xs_stride, ws, ws_stride, out, epi, m, n, k, config,
                                               stream);
      if (status != kErrUnsupported) return status;
    }
    config = 1;  // in-kernel quantization, m > 8 or no e4m3 mma: the CUDA-core kernel
  }
  if (config < 0 || config > kQuantGemvNumConfigs) return kErrUnsupported;
  if (config == 0) config = fp8_gemv_auto_config(m, n, k);
  if (m == 1) return launch_fp8_gemv_mt<T, 1, QX>(xq, wq, xs, xs_stride, ws, ws_stride, out, epi, m, n, k, config, stream);
  if (m == 2) return launch_fp8_gemv_mt<T, 2, QX>(xq, wq, xs, xs_stride, ws, ws_stride, out, epi, m, n, k, config, stream);
  if (m <= 4) return launch_fp8_gemv_mt<T, 4, QX>(xq, wq, xs, xs_stride, ws, ws_stride, out, epi, m, n, k, config, stream);
  if (m <= 8) return launch_fp8_gemv_mt<T, 8, QX>(xq, wq, xs, xs_stride, ws, ws_stride, out, epi, m, n, k, config, stream);
  return launch_fp8_gemv_mt<T, 16, QX>(xq, wq, xs, xs_stride, ws, ws_stride, out, epi, m, n, k, config, stream);
}

}  // namespace trtdsl
