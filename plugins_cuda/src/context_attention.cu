// C launcher of the context-phase (prefill / mixed step) paged attention kernel.
#include "attention_launch.h"
#include "trtdsl/plugins.h"

using namespace trtdsl;

namespace {
template <typename T, int D, typename KV_T> struct Ctx {
  static int run(const AttentionParams& p, int max_q_len, cudaStream_t s) {
    return launch_context_attention<T, D, KV_T>(p, max_q_len, s);
  }
};
}  // namespace

extern "C" int trtdsl_context_attention(const void* q, int64_t q_stride, const void* kv_cache, int64_t num_blocks,
                                        const int* seq_lens, const int* past_lens, const int* cu_seqlens,
                                        int batch, const int* block_tables, int64_t bt_stride, void* out,
                                        int64_t out_stride, int num_heads, int num_kv_heads, int head_dim,
                                        int layer_idx, int tpb, float softmax_scale, int max_q_len, int dtype,
                                        int kv_dtype, cudaStream_t stream) {
  AttentionParams p;
  const int st = fill_attention_params(p, q, q_stride, kv_cache, num_blocks, seq_lens, past_lens, cu_seqlens,
                                       batch, block_tables, bt_stride, out, out_stride, num_heads, num_kv_heads,
                                       head_dim, layer_idx, tpb, softmax_scale, dtype, kv_dtype);
  if (st != kOk) return st;
  if (max_q_len < 0) return kErrShape;
  return dispatch_attention_kv<Ctx>(dtype, kv_dtype, head_dim, p, max_q_len, stream);
}

extern "C" int trtdsl_context_attention_quant(const void* q, int64_t q_stride, const void* kv_cache,
                                              int64_t num_blocks, const int* seq_lens, const int* past_lens,
                                              const int* cu_seqlens, int batch, const int* block_tables,
                                              int64_t bt_stride, void* out, int64_t out_stride, int num_heads,
                                              int num_kv_heads, int head_dim, int layer_idx, int tpb,
                                              float softmax_scale, int max_q_len, int dtype, int kv_dtype,
                                              const float* kv_scales, int scales_per_head, cudaStream_t stream) {
  if (kv_dtype != kFp8E4M3 && kv_dtype != kInt8) return kErrDtype;
  AttentionParams p;
  const int st = fill_attention_params(p, q, q_stride, kv_cache, num_blocks, seq_lens, past_lens, cu_seqlens,
                                       batch, block_tables, bt_stride, out, out_stride, num_heads, num_kv_heads,
                                       head_dim, layer_idx, tpb, softmax_scale, dtype, kv_dtype, kv_scales,
                                       scales_per_head);
  if (st != kOk) return st;
  if (max_q_len < 0) return kErrShape;
  return dispatch_attention_kv<Ctx>(dtype, kv_dtype, head_dim, p, max_q_len, stream);
}
