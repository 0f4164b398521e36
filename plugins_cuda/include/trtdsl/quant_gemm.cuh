// Quantized GEMM kernels: the weight-only (int8 / packed int4, group-wise float32 scales) decode GEMV,
// weight dequantization for the large-M path, and the activation quantizers / epilogue that wrap
// cuBLASLt for FP8 and SmoothQuant int8 GEMMs. Formats are those of trtdsl/quantization/numerics.py:
// symmetric codes, scales [n, num_groups], int4 packed two per byte along k (low nibble = even column).
#pragma once
#include <cuda_fp8.h>

#include <type_traits>

#include "trtdsl/common.cuh"
#include "trtdsl/pdl.cuh"

namespace trtdsl {

constexpr int kGemvMaxM = 16;      // the GEMV serves 1..16 activation rows (decode steps)

// Weights are read exactly once: bypass L1 so it keeps the activations, which every warp re-reads.
__device__ __forceinline__ uint4 ld_stream(const uint4* p) {
  uint4 r;
  asm volatile("ld.global.nc.L1::no_allocate.v4.u32 {%0,%1,%2,%3}, [%4];"
               : "=r"(r.x), "=r"(r.y), "=r"(r.z), "=r"(r.w)
               : "l"(p));
  return r;
}

// One step of a GEMV's weight stream: thread t reads vector v0 + u * THREADS of each of its NR rows
// for u < U, all U * NR loads issued before any is used so they overlap in the memory system
// (vectors at or past `vecs` read as zeros). Shared by the dense, weight-only and FP8 GEMVs.
template <int U, int NR, int THREADS>
__device__ __forceinline__ void load_weight_step(uint4 (&wv)[U][NR], const uint4* const (&wrow)[NR], int v0,
                                                 int vecs) {
#pragma unroll
  for (int u = 0; u < U; ++u) {
    const int v = v0 + u * THREADS;
#pragma unroll
    for (int r = 0; r < NR; ++r) wv[u][r] = v < vecs ? ld_stream(wrow[r] + v) : make_uint4(0, 0, 0, 0);
  }
}

// The lines load_weight_step(.., v0, ..) will read, fetched into L2 (one thread per 128-byte line: 8
// consecutive 16-byte vectors). For the part of a GEMV before pdl_wait() (pdl.cuh): weights only.
template <int U, int NR, int THREADS>
__device__ __forceinline__ void prefetch_weight_step(const uint4* const (&wrow)[NR], int v0, int vecs) {
  if (v0 & 7) return;
#pragma unroll
  for (int u = 0; u < U; ++u) {
    const int v = v0 + u * THREADS;
#pragma unroll
    for (int r = 0; r < NR; ++r)
      if (v < vecs) pdl_prefetch_l2(wrow[r] + v);
  }
}

// Exact integer -> float without the quarter-rate I2F: place the biased code u (0..255) in the low
// mantissa bits of 2^23 (0x4B000000) with one byte permute, then subtract 2^23 + bias.
__device__ __forceinline__ float biased_byte_to_float(uint32_t word, int byte, float offset) {
  return __uint_as_float(__byte_perm(word, 0x4B000000u, 0x7440u | byte)) - offset;
}

// 8 codes of one 32-bit word pair (int8: 2 words of 4 codes) or one word (int4: 8 nibbles) -> floats.
template <int BITS> __device__ __forceinline__ void dequant8(const uint4& v, int h, float* f);

template <> __device__ __forceinline__ void dequant8<8>(const uint4& v, int h, float* f) {
  const uint32_t w0 = (h == 0 ? v.x : v.z) ^ 0x80808080u, w1 = (h == 0 ? v.y : v.w) ^ 0x80808080u;
#pragma unroll
  for (int j = 0; j < 4; ++j) {
    f[j] = biased_byte_to_float(w0, j, 8388736.f);  // 2^23 + 128
    f[4 + j] = biased_byte_to_float(w1, j, 8388736.f);
  }
}

template <> __device__ __forceinline__ void dequant8<4>(const uint4& v, int h, float* f) {
  const uint32_t w = h == 0 ? v.x : h == 1 ? v.y : h == 2 ? v.z : v.w;
  // Two's-complement nibble s -> s + 8 in 0..15 is an XOR of bit 3.
  const uint32_t lo = (w & 0x0F0F0F0Fu) ^ 0x08080808u, hi = ((w >> 4) & 0x0F0F0F0Fu) ^ 0x08080808u;
#pragma unroll
  for (int j = 0; j < 4; ++j) {
    f[2 * j] = biased_byte_to_float(lo, j, 8388616.f);  // 2^23 + 8
    f[2 * j + 1] = biased_byte_to_float(hi, j, 8388616.f);
  }
}

// 8 activations (one 16-byte load) -> float.
template <typename T> __device__ __forceinline__ void act8(const T* p, float* f) {
  const uint4 v = __ldg(reinterpret_cast<const uint4*>(p));
  const uint32_t w[4] = {v.x, v.y, v.z, v.w};
#pragma unroll
  for (int j = 0; j < 4; ++j) {
    if constexpr (std::is_same<T, __nv_bfloat16>::value) {  // bf16 -> fp32 is a shift
      f[2 * j] = __uint_as_float(w[j] << 16);
      f[2 * j + 1] = __uint_as_float(w[j] & 0xFFFF0000u);
    } else {
      const float2 t = __half22float2(*reinterpret_cast<const __half2*>(&w[j]));
      f[2 * j] = t.x;
      f[2 * j + 1] = t.y;
    }
  }
}

// Launch shapes of the weight-only and FP8 decode GEMVs (wo_gemv.cuh, fp8_gemv.cuh), swept by
// benchmarks/bench_quant_gemm.py: NR weight rows per block (shrunk so NR * MT <= 32 at large m), KW
// warps per block splitting k, U 16-byte loads per row and thread in flight per step.
struct QuantGemvConfig {
  int nr, kw, u;
};
constexpr int kQuantGemvNumConfigs = 5;
constexpr QuantGemvConfig kQuantGemvConfigs[kQuantGemvNumConfigs + 1] = {
    {0, 0, 0},  // 0 = automatic (quant_gemv_auto_config); callers usually pass the Python table's pick
    {4, 4, 1},  // 1: 128 threads, 4 loads per thread (the first kernel; int8 reached 90-99% of copy)
    {4, 1, 4},  // 2: one warp per 4 rows over all k, 16 loads in flight, shuffle-only reduce (wide n)
    {2, 2, 2},  // 3: 64 threads, 4 loads: twice the blocks of 2 for narrow n
    {2, 4, 2},  // 4: 128 threads, 4 loads: long rows (k = 14336) of narrow n
    {8, 1, 2},  // 5: one warp per 8 rows: x reused 8x (m >= 2 turns compute bound)
};  // 256-thread shapes {4, 8, 1} / {2, 8, 1} were measured (H100) and never won by > 5%: dropped for build time

// Launch::template run<NR, KW, U>(args...) with config c's shape kQuantGemvConfigs[c] (1..5), as a
// compile-time shape; kErrUnsupported for other configs. The one dispatch of the CUDA-core GEMVs.
template <typename Launch, typename... Args>
inline int with_quant_gemv_shape(int config, Args&&... args) {
  switch (config) {
    case 1: return Launch::template run<4, 4, 1>(std::forward<Args>(args)...);
    case 2: return Launch::template run<4, 1, 4>(std::forward<Args>(args)...);
    case 3: return Launch::template run<2, 2, 2>(std::forward<Args>(args)...);
    case 4: return Launch::template run<2, 4, 2>(std::forward<Args>(args)...);
    case 5: return Launch::template run<8, 1, 2>(std::forward<Args>(args)...);
    default: return kErrUnsupported;
  }
}

// NR rows per block shrunk so that the NR x MT accumulators stay in registers (NR * MT <= 32).
template <int NR, int MT> constexpr int clamp_rows() {
  return NR * MT <= 32 ? NR : (32 / MT > 0 ? 32 / MT : 1);
}

// Untuned prior for config 0 (reasoning, not measurement): int4 rows of k = 4096 are only 2 KB, so at
// small m the weight stream needs many loads in flight per thread (config 2) when n gives enough
// blocks, else more, smaller blocks (3). Larger m and int8 keep the measured first kernel (1).
inline int quant_gemv_auto_config(int bits, int m, int n, int k) {
  (void)k;
  if (bits == 4 && m <= 2) return n >= 8192 ? 2 : 3;
  return 1;
}

// y = x W^T for 1 <= m <= kGemvMaxM with W = codes * scales (+ zeros when ZP), defined in
// wo_gemv.cuh and instantiated in plugins_cuda/src/wo_gemv_b{4,8}[_zp].cu. config: 0 auto, 1..5 above.
template <typename T, int BITS, bool ZP>
int launch_wo_gemv(const T* x, const void* qw, const float* scales, const float* zeros, T* out, int m, int n,
                   int k, int group, int num_groups, int config, cudaStream_t stream);

// int4 tensor-core decode GEMV (wo_gemv_tc.cuh, instantiated in src/wo_gemv_tc_{bf16,f16}_{zp,nozp}.cu):
// configs from kWoTcFirstConfig on, of the same config numbering (its launch shapes: wo_gemv_tc.cuh).
constexpr int kWoTcFirstConfig = 8;
template <typename T, bool ZP>
int launch_wo_gemv_tc(const T* x, const void* qw, const float* scales, const float* zeros, T* out, int m, int n, int k,
                      int group, int num_groups, int config, cudaStream_t stream);

// int4 tensor-core GEMV for 1..8 activation rows (wo_gemv_tc1.cuh, instantiated in src/wo_gemv_tc1_{bf16,f16}.cu):
// configs kWoTc1FirstConfig..kWoTc1LastConfig. Returns kErrUnsupported for shapes it does not take (m > 8,
// k % 128, groups other than 128); trtdsl_weight_only_gemv_zp then runs kWoTc1Fallback.
constexpr int kWoTc1FirstConfig = 16, kWoTc1LastConfig = 19, kWoTc1Fallback = 11;
template <typename T, bool ZP>
int launch_wo_gemv_tc1(const T* x, const void* qw, const float* scales, const float* zeros, T* out, int m, int n,
                       int k, int group, int num_groups, int config, cudaStream_t stream);

// The tile-16 GEMV's deferred RMSNorm (wo_gemv_packed.cuh, "DEFERRED NORM"); all null: a plain GEMV.
// Producer (no SwiGLU): out = T(T(x W^T) + residual), scaled = T(out * gamma), ssq_out [m][tiles] = each
// 16-row tile's sum of out^2. Consumer: ssq_in [m][ssq_tiles] (a producer's ssq_out, ssq_tiles * 16 == k):
// the fp32 sums are multiplied by rsqrt(sum(ssq_in[row]) / k + eps) before rounding (and the SwiGLU).
template <typename T> struct PackedNorm {
  const T* residual = nullptr;
  const T* gamma = nullptr;
  T* scaled = nullptr;
  float* ssq_out = nullptr;
  const float* ssq_in = nullptr;
  int ssq_tiles = 0;
  float eps = 0.f;
};

// int4 decode GEMV over the pre-shuffled tile-16 layout (wo_gemv_packed.cuh, instantiated in
// src/wo_gemv_packed_{bf16,f16}{,_h}.cu: float / __half scales S): 1..8 rows, k % 128 == 0, group 64, a
// multiple of 128 or per channel;
// swiglu: out [m, n] = silu(gate) * up of a pack whose tiles interleave gate and up rows (2 n rows).
// config 0..kWoPackedConfigs - 1 (wo_gemv_packed.cuh); kErrUnsupported when k / 128 is not a whole number of steps.
template <typename T, typename S>
int launch_wo_gemv_packed(const T* x, const void* qp, const void* sz, bool zeros, T* out, int m, int n, int k,
                          int group, int num_groups, bool swiglu, int config, const PackedNorm<T>& norm,
                          cudaStream_t stream);
constexpr int kWoPackedConfigs = 13;  // launch shapes 0..12 (wo_gemv_packed.cuh: kPackedShapes)

// Dequantize codes [n, k] (int4: packed [n, k / 2]) into T [n, k] for the cuBLAS (large-M) path:
// code * scale, then + zero when zeros is not null (separately rounded, as numerics.dequantize_weight
// computes it, so fp32 output is bitwise the reference). One thread per 8 output columns when
// k % 8 == 0 and the group is a multiple of 8 (one scale, one 16-byte store); otherwise one thread
// per column (any k / group: the fallback of every shape).
__device__ __forceinline__ float dequant_value(int code, float s, const float* zrow, int g) {
  const float w = __fmul_rn(static_cast<float>(code), s);
  return zrow ? __fadd_rn(w, __ldg(zrow + g)) : w;
}

template <typename T, int BITS, bool VEC>
__global__ void wo_dequant_kernel(const int8_t* __restrict__ qw, const float* __restrict__ scales,
                                  const float* __restrict__ zeros, T* __restrict__ out, int n, int k,
                                  int group, int num_groups) {
  const int row = blockIdx.x;
  const int64_t kb = BITS == 8 ? k : k / 2;
  const int8_t* q = qw + row * kb;
  const float* s = scales + static_cast<int64_t>(row) * num_groups;
  const float* z = zeros ? zeros + static_cast<int64_t>(row) * num_groups : nullptr;
  T* o = out + static_cast<int64_t>(row) * k;
  if constexpr (VEC) {
    const int c0 = (blockIdx.y * blockDim.x + threadIdx.x) * 8;
    if (c0 >= k) return;
    const float sc = __ldg(s + c0 / group);
    int codes[8];
    if constexpr (BITS == 8) {
      const uint2 b = *reinterpret_cast<const uint2*>(q + c0);
      const uint32_t w[2] = {b.x, b.y};
#pragma unroll
      for (int j = 0; j < 8; ++j) codes[j] = static_cast<int8_t>(w[j / 4] >> (8 * (j % 4)));
    } else {
      const uint32_t w = *reinterpret_cast<const uint32_t*>(q + c0 / 2);
#pragma unroll
      for (int j = 0; j < 8; ++j) codes[j] = static_cast<int32_t>(w << (28 - 4 * j)) >> 28;  // sign-extend
    }
    Vec<T, 8> r;
#pragma unroll
    for (int j = 0; j < 8; ++j) r.v[j] = from_float<T>(dequant_value(codes[j], sc, z, c0 / group));
    store_vec<T, 8>(o + c0, r);
  } else {
    const int c = blockIdx.y * blockDim.x + threadIdx.x;
    if (c >= k) return;
    int code;
    if constexpr (BITS == 8) {
      code = q[c];
    } else {
      const int b = q[c / 2];
      code = (c & 1) ? (b >> 4) : static_cast<int>(static_cast<int8_t>(b << 4)) >> 4;
    }
    o[c] = from_float<T>(dequant_value(code, __ldg(s + c / group), z, c / group));
  }
}

template <typename T, int BITS>
inline int launch_wo_dequant(const int8_t* qw, const float* scales, const float* zeros, T* out, int n, int k,
                             int group, int num_groups, cudaStream_t stream) {
  const bool vec = k % 8 == 0 && group % 8 == 0 && aligned16(out) && (reinterpret_cast<uintptr_t>(qw) & 7) == 0;
  const int threads = 256;
  if (vec) {
    const dim3 grid(n, (k / 8 + threads - 1) / threads);  // rows on x: n may exceed 65535
    wo_dequant_kernel<T, BITS, true><<<grid, threads, 0, stream>>>(qw, scales, zeros, out, n, k, group, num_groups);
  } else {
    const dim3 grid(n, (k + threads - 1) / threads);
    wo_dequant_kernel<T, BITS, false><<<grid, threads, 0, stream>>>(qw, scales, zeros, out, n, k, group, num_groups);
  }
  return launch_status();
}

// ------------------------------------------------------------------ activation quantizers (W8A8)

__device__ __forceinline__ float block_max(float v, float* scratch) {
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
  if (lane == 0) scratch[warp] = v;
  __syncthreads();
  v = lane < static_cast<int>((blockDim.x + 31) >> 5) ? scratch[lane] : 0.f;
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
  return v;
}

constexpr int kQuantCols = 1024;  // columns per block of the fp8 quantizer (grid.y spans k)

// e4m3 codes of x / scale (IEEE division as in the reference, saturating at +-448, round to nearest
// even); rows in [rows, out_rows) are zero padding for GEMM libraries that want aligned M.
template <typename T>
__global__ void quantize_fp8_kernel(const T* __restrict__ x, const float* __restrict__ scale,
                                    __nv_fp8_storage_t* __restrict__ out, int rows, int k) {
  if (threadIdx.x == 0) pdl_prefetch_l2(scale);  // a calibrated constant
  pdl_wait();  // x is the previous kernel's output (pdl.cuh)
  pdl_launch_dependents();
  const int row = blockIdx.x;
  const float s = __ldg(scale);
  const T* xr = x + static_cast<int64_t>(row) * k;
  __nv_fp8_storage_t* o = out + static_cast<int64_t>(row) * k;
  const int end = min(k, static_cast<int>(blockIdx.y + 1) * kQuantCols);
  for (int c = blockIdx.y * kQuantCols + threadIdx.x; c < end; c += blockDim.x) {
    const float v = row < rows ? __fdiv_rn(to_float<T>(xr[c]), s) : 0.f;
    o[c] = __nv_cvt_float_to_fp8(v, __NV_SATFINITE, __NV_E4M3);
  }
}

// Dynamic per-token quantization, one block per row: scale = max(amax, 1e-8) * (1 / code max)
// (torch's CUDA division by a Python scalar multiplies by the reciprocal), codes = encode(x / scale)
// with IEEE division: codes and scales are those of numerics.quantize_per_token_* on the GPU,
// bitwise. Rows in [rows, gridDim.x) are zero padding (uniform per block, so no barrier is skipped
// divergently). Code: e4m3 saturating at +-448, or int8 rint clamped to +-127.
struct Fp8Code {
  using Out = __nv_fp8_storage_t;
  static constexpr float kInvMax = 1.f / 448.f;
  __device__ static Out encode(float v) { return __nv_cvt_float_to_fp8(v, __NV_SATFINITE, __NV_E4M3); }
};
struct Int8Code {
  using Out = int8_t;
  static constexpr float kInvMax = 1.f / 127.f;
  __device__ static Out encode(float v) { return static_cast<int8_t>(fminf(fmaxf(rintf(v), -127.f), 127.f)); }
};

// One block per row (rows >= `rows` are zero padding): amax over the row, scale = max(amax, 1e-8) / qmax,
// codes of x / scale. VEC values per load (16 bytes when k and x allow) and up to 1024 threads: a decode
// step's single row of 14336 values took 16 us with 256 threads of scalar loads, on the critical path
// of every SmoothQuant / dynamic fp8 GEMM. The max is order-free, so the codes do not depend on the shape.
template <typename T, typename Code, int VEC>
__global__ void quantize_per_token_kernel(const T* __restrict__ x, typename Code::Out* __restrict__ out,
                                          float* __restrict__ out_scales, int rows, int k) {
  using Out = typename Code::Out;
  __shared__ float scratch[32];
  pdl_wait();  // x is the previous kernel's output, out may still be read by it (pdl.cuh)
  pdl_launch_dependents();
  const int row = blockIdx.x, nvec = k / VEC;
  Out* o = out + static_cast<int64_t>(row) * k;
  if (row >= rows) {
    Vec<Out, VEC> zero;
#pragma unroll
    for (int j = 0; j < VEC; ++j) zero.v[j] = 0;
    for (int c = threadIdx.x; c < nvec; c += blockDim.x) store_vec<Out, VEC>(o + c * VEC, zero);
    return;
  }
  const T* xr = x + static_cast<int64_t>(row) * k;
  float amax = 0.f;
  for (int c = threadIdx.x; c < nvec; c += blockDim.x) {
    const Vec<T, VEC> v = load_vec<T, VEC>(xr + c * VEC);
#pragma unroll
    for (int j = 0; j < VEC; ++j) amax = fmaxf(amax, fabsf(to_float<T>(v.v[j])));
  }
  amax = block_max(amax, scratch);
  const float s = __fmul_rn(fmaxf(amax, 1e-8f), Code::kInvMax);
  if (threadIdx.x == 0) out_scales[row] = s;
  for (int c = threadIdx.x; c < nvec; c += blockDim.x) {
    const Vec<T, VEC> v = load_vec<T, VEC>(xr + c * VEC);
    Vec<Out, VEC> q;
#pragma unroll
    for (int j = 0; j < VEC; ++j) q.v[j] = Code::encode(__fdiv_rn(to_float<T>(v.v[j]), s));
    store_vec<Out, VEC>(o + c * VEC, q);
  }
}

template <typename T, typename Code>
inline int launch_quantize_per_token(const T* x, typename Code::Out* out, float* scales, int rows, int out_rows, int k,
                                     cudaStream_t stream) {
  constexpr int V = 16 / sizeof(T);
  const bool vec = k % V == 0 && aligned16(x) && aligned_to(out, V);
  const int nvec = vec ? k / V : k;
  const int threads = nvec >= 1024 ? 1024 : ((nvec + 31) / 32) * 32;
  return launch_pdl(vec ? quantize_per_token_kernel<T, Code, V> : quantize_per_token_kernel<T, Code, 1>,
                    dim3(out_rows), dim3(threads), 0, stream, x, out, scales, rows, k);
}

// out[m, n] = T((float(acc[m, n]) * x_scale[m]) * w_scale[n]), the reference's order of operations.
template <typename T>
__global__ void int8_epilogue_kernel(const int32_t* __restrict__ acc, int64_t acc_stride,
                                     const float* __restrict__ xs, const float* __restrict__ ws,
                                     T* __restrict__ out, int n) {
  const int row = blockIdx.x;
  const float sx = __ldg(xs + row);
  const int32_t* a = acc + row * acc_stride;
  T* o = out + static_cast<int64_t>(row) * n;
  for (int c = threadIdx.x; c < n; c += blockDim.x)
    o[c] = from_float<T>(__fmul_rn(__fmul_rn(__int2float_rn(a[c]), sx), __ldg(ws + c)));
}

}  // namespace trtdsl
