// Shared argument checks and dispatch of the two attention launchers (context / decode).
#pragma once
#include <math.h>
#include "trtdsl/context_attention.cuh"

namespace trtdsl {

inline int fill_attention_params(AttentionParams& p, const void* q, int64_t q_stride, const void* kv_cache,
                                 int64_t num_blocks, const int* seq_lens, const int* past_lens,
                                 const int* cu_seqlens, int batch, const int* block_tables, int64_t bt_stride,
                                 void* out, int64_t out_stride, int num_heads, int num_kv_heads, int head_dim,
                                 int layer_idx, int tpb, float softmax_scale, int dtype, int kv_dtype,
                                 const float* kv_scales = nullptr, int scales_per_head = 0) {
  if (!q || !kv_cache || !seq_lens || !past_lens || !cu_seqlens || !block_tables || !out) return kErrNullPointer;
  if (dtype != kFloat16 && dtype != kBFloat16) return kErrDtype;
  // A cache of codes (fp8 / int8) needs its scales; a float cache has the activations' dtype.
  const bool codes = kv_dtype == kFp8E4M3 || kv_dtype == kInt8;
  if (!codes && kv_dtype != dtype) return kErrDtype;
  if (codes && !kv_scales) return kErrNullPointer;
  if (head_dim != 64 && head_dim != 128) return kErrHeadDim;
  if (batch < 0 || num_heads <= 0 || num_kv_heads <= 0 || num_heads % num_kv_heads || tpb <= 0 ||
      layer_idx < 0 || num_blocks <= 0 || q_stride % 2 || out_stride % 2 || !(softmax_scale > 0.f))
    return kErrShape;
  p = AttentionParams{};
  p.q = q; p.q_stride = q_stride; p.seq_lens = seq_lens; p.past_lens = past_lens; p.cu_seqlens = cu_seqlens;
  p.batch = batch; p.block_tables = block_tables; p.bt_stride = bt_stride; p.out = out; p.out_stride = out_stride;
  p.num_heads = num_heads; p.num_kv_heads = num_kv_heads; p.head_dim = head_dim; p.tokens_per_block = tpb;
  p.scale_log2 = softmax_scale * 1.4426950408889634f;
  const int64_t layer_elems = num_blocks * 2 * num_kv_heads * static_cast<int64_t>(tpb) * head_dim;
  p.cache_layer = codes ? static_cast<const void*>(static_cast<const uint8_t*>(kv_cache) + layer_idx * layer_elems)
                        : static_cast<const void*>(static_cast<const uint16_t*>(kv_cache) + layer_idx * layer_elems);
  p.kv_scales = codes ? kv_scales : nullptr;
  p.scales_per_head = scales_per_head;
  return kOk;
}

// Instantiates `launch<T, D>` for the supported (dtype, head_dim) pairs.
template <template <typename, int> class L, typename... Args>
int dispatch_attention(int dtype, int head_dim, Args... args) {
  if (dtype == kFloat16) return head_dim == 64 ? L<__half, 64>::run(args...) : L<__half, 128>::run(args...);
  return head_dim == 64 ? L<__nv_bfloat16, 64>::run(args...) : L<__nv_bfloat16, 128>::run(args...);
}

// Instantiates `launch<T, D, KV_T>` for the supported (dtype, cache dtype, head_dim) triples.
template <template <typename, int, typename> class L, typename... Args>
int dispatch_attention_kv(int dtype, int kv_dtype, int head_dim, Args... args) {
  if (dtype == kFloat16) {
    if (kv_dtype == kFp8E4M3) return head_dim == 64 ? L<__half, 64, __nv_fp8_e4m3>::run(args...) : L<__half, 128, __nv_fp8_e4m3>::run(args...);
    if (kv_dtype == kInt8) return head_dim == 64 ? L<__half, 64, int8_t>::run(args...) : L<__half, 128, int8_t>::run(args...);
    return head_dim == 64 ? L<__half, 64, __half>::run(args...) : L<__half, 128, __half>::run(args...);
  }
  using B = __nv_bfloat16;
  if (kv_dtype == kFp8E4M3) return head_dim == 64 ? L<B, 64, __nv_fp8_e4m3>::run(args...) : L<B, 128, __nv_fp8_e4m3>::run(args...);
  if (kv_dtype == kInt8) return head_dim == 64 ? L<B, 64, int8_t>::run(args...) : L<B, 128, int8_t>::run(args...);
  return head_dim == 64 ? L<B, 64, B>::run(args...) : L<B, 128, B>::run(args...);
}

}  // namespace trtdsl
