// Quantized K/V cache codes (trtdsl/quantization/kv_cache.py): a stored K or V value is
// saturate(value / scale) as int8 (round to nearest even, [-127, 127]) or fp8 e4m3 (round to nearest
// even, saturating at +-448), with one K and one V scale per K/V head or per layer. Reading a code
// back is exact in fp16/bf16 (|int8| <= 127, every e4m3 value), so the attention kernels convert
// codes to T and fold the scales into the softmax scale (K) and the output (V).
#pragma once
#include <cuda_fp8.h>
#include <type_traits>
#include "trtdsl/common.cuh"

namespace trtdsl {

template <typename C> struct IsQuantCode : std::false_type {};
template <> struct IsQuantCode<int8_t> : std::true_type {};
template <> struct IsQuantCode<__nv_fp8_e4m3> : std::true_type {};

// Scale of K (which = 0) or V (which = 1) for K/V head `head`; scales are [2] or [2, num_kv_heads].
__device__ __forceinline__ float kv_scale(const float* scales, int per_head, int which, int head, int heads) {
  return scales ? scales[per_head ? which * heads + head : which] : 1.f;
}

// The scale a float cache ignores; a quantized one divides by it.
template <typename C>
__device__ __forceinline__ float kv_code_scale(const float* scales, int per_head, int which, int head, int heads) {
  return IsQuantCode<C>::value ? kv_scale(scales, per_head, which, head, heads) : 1.f;
}

template <typename C> __device__ __forceinline__ C float_to_cache(float v, float scale);
template <> __device__ __forceinline__ float float_to_cache<float>(float v, float) { return v; }
template <> __device__ __forceinline__ __half float_to_cache<__half>(float v, float) { return __float2half_rn(v); }
template <> __device__ __forceinline__ __nv_bfloat16 float_to_cache<__nv_bfloat16>(float v, float) {
  return __float2bfloat16_rn(v);
}
template <> __device__ __forceinline__ int8_t float_to_cache<int8_t>(float v, float scale) {
  // __fdiv_rn: --use_fast_math would otherwise make '/' approximate and codes differ from torch's.
  const int q = __float2int_rn(__fdiv_rn(v, scale));
  return static_cast<int8_t>(q < -127 ? -127 : (q > 127 ? 127 : q));
}
template <> __device__ __forceinline__ __nv_fp8_e4m3 float_to_cache<__nv_fp8_e4m3>(float v, float scale) {
  __nv_fp8_e4m3 c;
  c.__x = __nv_cvt_float_to_fp8(__fdiv_rn(v, scale), __NV_SATFINITE, __NV_E4M3);
  return c;
}

// A T value into the cache: a plain copy for a float cache of type T (bit-exact, no float trip).
template <typename T, typename C> __device__ __forceinline__ C to_cache(T v, float scale) {
  if constexpr (std::is_same<T, C>::value) return v;
  else return float_to_cache<C>(to_float(v), scale);
}

template <typename T> __device__ __forceinline__ T code_to(int8_t c) { return from_float<T>(static_cast<float>(c)); }
template <typename T> __device__ __forceinline__ T code_to(__nv_fp8_e4m3 c) {
  return from_float<T>(static_cast<float>(c));
}

}  // namespace trtdsl
