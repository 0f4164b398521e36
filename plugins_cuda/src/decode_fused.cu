// C launcher of the fused decode step (RoPE + paged K/V write + attention, one launch, no split-K), for
// float and quantized caches.
#include "attention_launch.h"
#include "trtdsl/decode_fused.cuh"
#include "trtdsl/plugins.h"

using namespace trtdsl;

namespace {
template <typename T, int D, typename KV_T> struct Fused {
  static int run(const DecodeFusedParams& fp, cudaStream_t s) { return launch_decode_fused<T, D, KV_T>(fp, s); }
};
}  // namespace

extern "C" int trtdsl_decode_fused(const void* qkv, int64_t qkv_stride, void* kv_cache, int64_t num_blocks,
                                   const int* position_ids, const int* seq_lens, const int* past_lens,
                                   const int* cu_seqlens, int batch, const int* block_tables, int64_t bt_stride,
                                   const float* rope_cos_sin, int rotary_dim, int rope_style, void* out,
                                   int64_t out_stride, const float* out_scale, int splits, int num_heads, int num_kv_heads,
                                   int head_dim, int layer_idx,
                                   int tokens_per_block, float softmax_scale, int dtype, int kv_dtype,
                                   const float* kv_scales, int scales_per_head, int k_rotation, const float* k_bias,
                                   cudaStream_t stream) {
  DecodeFusedParams fp;
  const int st = fill_attention_params(fp.a, qkv, qkv_stride, kv_cache, num_blocks, seq_lens, past_lens, cu_seqlens,
                                       batch, block_tables, bt_stride, out, out_stride, num_heads, num_kv_heads,
                                       head_dim, layer_idx, tokens_per_block, softmax_scale, dtype, kv_dtype,
                                       kv_scales, scales_per_head);
  if (st != kOk) return st;
  if (!position_ids || (rotary_dim > 0 && !rope_cos_sin)) return kErrNullPointer;
  if (rotary_dim < 0 || rotary_dim % 2 || rotary_dim > head_dim || (rope_style != 0 && rope_style != 1))
    return kErrShape;
  fp.position_ids = position_ids; fp.cos_sin = rope_cos_sin; fp.rotary_dim = rotary_dim; fp.neox = rope_style == 0;
  fp.out_scale = out_scale;
  fp.splits = splits;
  fp.k_rotation = k_rotation;
  fp.k_bias = k_bias;
  return dispatch_attention_kv<Fused>(dtype, kv_dtype, head_dim, fp, stream);
}
