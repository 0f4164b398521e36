// C launchers of the split-K paged decode attention kernel and its workspace query.
#include "attention_launch.h"
#include "trtdsl/decode_attention.cuh"
#include "trtdsl/plugins.h"

using namespace trtdsl;

namespace {
template <typename T, int D, typename KV_T> struct Dec {
  static int run(const AttentionParams& p, int max_kv_len, cudaStream_t s) {
    return launch_decode_attention<T, D, KV_T>(p, max_kv_len, s);
  }
};

int num_sms() {
  int dev = 0, n = 132;
  if (cudaGetDevice(&dev) == cudaSuccess) cudaDeviceGetAttribute(&n, cudaDevAttrMultiProcessorCount, dev);
  return n > 0 ? n : 132;
}

size_t workspace_for(int batch, int num_heads, int head_dim, int max_kv_len, int chunk) {
  const size_t splits = (static_cast<size_t>(max_kv_len) + chunk - 1) / chunk;
  return static_cast<size_t>(batch) * num_heads * splits * (head_dim + 2) * sizeof(float);
}
}  // namespace

extern "C" int trtdsl_decode_attention_workspace(int batch, int num_heads, int num_kv_heads, int head_dim,
                                                 int max_kv_len, int* kv_chunk, size_t* workspace_bytes) {
  if (!kv_chunk || !workspace_bytes) return kErrNullPointer;
  if (batch < 0 || num_heads <= 0 || num_kv_heads <= 0 || num_heads % num_kv_heads || max_kv_len < 0)
    return kErrShape;
  const int chunk = decode_kv_chunk(batch > 0 ? batch : 1, num_heads, num_kv_heads, max_kv_len > 0 ? max_kv_len : 1,
                                    num_sms());
  *kv_chunk = chunk;
  *workspace_bytes = workspace_for(batch, num_heads, head_dim, max_kv_len > 0 ? max_kv_len : 1, chunk);
  return kOk;
}

namespace {
int decode(AttentionParams& p, int max_kv_len, int kv_chunk, void* workspace, size_t workspace_bytes, int dtype,
           int kv_dtype, cudaStream_t stream) {
  if (max_kv_len < 0 || kv_chunk <= 0 || kv_chunk % attn::kDecBN) return kErrShape;
  if (!workspace) return kErrNullPointer;
  if (p.batch == 0 || max_kv_len == 0) return kOk;
  if (workspace_bytes < workspace_for(p.batch, p.num_heads, p.head_dim, max_kv_len, kv_chunk)) return kErrWorkspace;
  p.kv_chunk = kv_chunk;
  p.max_splits = (max_kv_len + kv_chunk - 1) / kv_chunk;
  p.ws_o = static_cast<float*>(workspace);
  p.ws_ml = p.ws_o + static_cast<size_t>(p.batch) * p.num_heads * p.max_splits * p.head_dim;
  return dispatch_attention_kv<Dec>(dtype, kv_dtype, p.head_dim, p, max_kv_len, stream);
}
}  // namespace

extern "C" int trtdsl_decode_attention(const void* q, int64_t q_stride, const void* kv_cache, int64_t num_blocks,
                                       const int* seq_lens, const int* past_lens, const int* cu_seqlens, int batch,
                                       const int* block_tables, int64_t bt_stride, void* out, int64_t out_stride,
                                       int num_heads, int num_kv_heads, int head_dim, int layer_idx, int tpb,
                                       float softmax_scale, int max_kv_len, int kv_chunk, void* workspace,
                                       size_t workspace_bytes, int dtype, int kv_dtype, cudaStream_t stream) {
  AttentionParams p;
  const int st = fill_attention_params(p, q, q_stride, kv_cache, num_blocks, seq_lens, past_lens, cu_seqlens,
                                       batch, block_tables, bt_stride, out, out_stride, num_heads, num_kv_heads,
                                       head_dim, layer_idx, tpb, softmax_scale, dtype, kv_dtype);
  if (st != kOk) return st;
  return decode(p, max_kv_len, kv_chunk, workspace, workspace_bytes, dtype, kv_dtype, stream);
}

extern "C" int trtdsl_decode_attention_quant(const void* q, int64_t q_stride, const void* kv_cache,
                                             int64_t num_blocks, const int* seq_lens, const int* past_lens,
                                             const int* cu_seqlens, int batch, const int* block_tables,
                                             int64_t bt_stride, void* out, int64_t out_stride, int num_heads,
                                             int num_kv_heads, int head_dim, int layer_idx, int tpb,
                                             float softmax_scale, int max_kv_len, int kv_chunk, void* workspace,
                                             size_t workspace_bytes, int dtype, int kv_dtype,
                                             const float* kv_scales, int scales_per_head, cudaStream_t stream) {
  if (kv_dtype != kFp8E4M3 && kv_dtype != kInt8) return kErrDtype;
  AttentionParams p;
  const int st = fill_attention_params(p, q, q_stride, kv_cache, num_blocks, seq_lens, past_lens, cu_seqlens,
                                       batch, block_tables, bt_stride, out, out_stride, num_heads, num_kv_heads,
                                       head_dim, layer_idx, tpb, softmax_scale, dtype, kv_dtype, kv_scales,
                                       scales_per_head);
  if (st != kOk) return st;
  return decode(p, max_kv_len, kv_chunk, workspace, workspace_bytes, dtype, kv_dtype, stream);
}
