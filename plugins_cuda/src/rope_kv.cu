// C launcher of the RoPE + paged K/V write kernel.
#include "trtdsl/plugins.h"
#include "trtdsl/rope_kv.cuh"

using namespace trtdsl;

extern "C" int trtdsl_rope_kv_write(const void* qkv, int64_t qkv_stride, void* q_out, int64_t q_out_stride,
                                    void* k_out, int64_t k_out_stride, void* kv_cache, int64_t num_blocks,
                                    const int* position_ids, const int* past_lens, const int* cu_seqlens, int batch,
                                    const int* block_tables, int64_t bt_stride, const float* rope_cos_sin,
                                    int rotary_dim, int rope_style, int num_tokens, int num_heads, int num_kv_heads,
                                    int head_dim, int layer_idx, int tokens_per_block, int dtype, int kv_dtype,
                                    cudaStream_t stream) {
  if (!qkv || !q_out || !kv_cache || !position_ids || !past_lens || !cu_seqlens || !block_tables)
    return kErrNullPointer;
  if (rotary_dim > 0 && !rope_cos_sin) return kErrNullPointer;
  if (batch <= 0 || num_tokens < 0 || num_heads <= 0 || num_kv_heads <= 0 || num_heads % num_kv_heads ||
      head_dim <= 0 || head_dim % 2 || rotary_dim < 0 || rotary_dim % 2 || rotary_dim > head_dim ||
      tokens_per_block <= 0 || layer_idx < 0 || num_blocks <= 0 || (rope_style != 0 && rope_style != 1))
    return kErrShape;
  if (kv_dtype != dtype) return kErrDtype;
  RopeKvParams p;
  p.qkv = qkv; p.qkv_stride = qkv_stride; p.q_out = q_out; p.q_out_stride = q_out_stride;
  p.k_out = k_out; p.k_out_stride = k_out_stride;
  p.position_ids = position_ids; p.past_lens = past_lens; p.cu_seqlens = cu_seqlens; p.batch = batch;
  p.block_tables = block_tables; p.bt_stride = bt_stride; p.cos_sin = rope_cos_sin;
  p.rotary_dim = rotary_dim; p.neox = rope_style == 0; p.num_heads = num_heads; p.num_kv_heads = num_kv_heads;
  p.head_dim = head_dim; p.tokens_per_block = tokens_per_block;
  const int64_t layer_elems = num_blocks * 2 * num_kv_heads * static_cast<int64_t>(tokens_per_block) * head_dim;
  switch (dtype) {
    case kFloat32: p.cache_layer = static_cast<float*>(kv_cache) + layer_idx * layer_elems; return launch_rope_kv<float>(p, num_tokens, stream);
    case kFloat16: p.cache_layer = static_cast<__half*>(kv_cache) + layer_idx * layer_elems; return launch_rope_kv<__half>(p, num_tokens, stream);
    case kBFloat16: p.cache_layer = static_cast<__nv_bfloat16*>(kv_cache) + layer_idx * layer_elems; return launch_rope_kv<__nv_bfloat16>(p, num_tokens, stream);
    default: return kErrDtype;
  }
}
