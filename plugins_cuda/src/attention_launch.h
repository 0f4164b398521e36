// Shared argument checks and dispatch of the two attention launchers (context / decode).
#pragma once
#include <math.h>
#include "trtdsl/context_attention.cuh"

namespace trtdsl {

inline int fill_attention_params(AttentionParams& p, const void* q, int64_t q_stride, const void* kv_cache,
                                 int64_t num_blocks, const int* seq_lens, const int* past_lens,
                                 const int* cu_seqlens, int batch, const int* block_tables, int64_t bt_stride,
                                 void* out, int64_t out_stride, int num_heads, int num_kv_heads, int head_dim,
                                 int layer_idx, int tpb, float softmax_scale, int dtype, int kv_dtype) {
  if (!q || !kv_cache || !seq_lens || !past_lens || !cu_seqlens || !block_tables || !out) return kErrNullPointer;
  if (dtype != kFloat16 && dtype != kBFloat16) return kErrDtype;
  if (kv_dtype != dtype) return kErrDtype;
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
  p.cache_layer = static_cast<const uint16_t*>(kv_cache) + layer_idx * layer_elems;  // 2-byte elements
  return kOk;
}

// Instantiates `launch<T, D>` for the supported (dtype, head_dim) pairs.
template <template <typename, int> class L, typename... Args>
int dispatch_attention(int dtype, int head_dim, Args... args) {
  if (dtype == kFloat16) return head_dim == 64 ? L<__half, 64>::run(args...) : L<__half, 128>::run(args...);
  return head_dim == 64 ? L<__nv_bfloat16, 64>::run(args...) : L<__nv_bfloat16, 128>::run(args...);
}

}  // namespace trtdsl
