// C launchers of the RoPE + paged K/V write kernel (float cache, and quantized fp8 / int8 cache).
#include "trtdsl/plugins.h"
#include "trtdsl/rope_kv.cuh"

using namespace trtdsl;

namespace {
template <typename T>
int launch_for_cache(RopeKvParams& p, void* kv_cache, int64_t layer_elems, int layer_idx, int kv_dtype,
                     int num_tokens, cudaStream_t stream) {
  switch (kv_dtype) {
    case kFp8E4M3:
      p.cache_layer = static_cast<__nv_fp8_e4m3*>(kv_cache) + layer_idx * layer_elems;
      return launch_rope_kv<T, __nv_fp8_e4m3>(p, num_tokens, stream);
    case kInt8:
      p.cache_layer = static_cast<int8_t*>(kv_cache) + layer_idx * layer_elems;
      return launch_rope_kv<T, int8_t>(p, num_tokens, stream);
    default:
      p.cache_layer = static_cast<T*>(kv_cache) + layer_idx * layer_elems;
      return launch_rope_kv<T, T>(p, num_tokens, stream);
  }
}

int rope_kv_write(const void* qkv, int64_t qkv_stride, void* q_out, int64_t q_out_stride, void* k_out,
                  int64_t k_out_stride, void* kv_cache, int64_t num_blocks, const int* position_ids,
                  const int* past_lens, const int* cu_seqlens, int batch, const int* block_tables,
                  int64_t bt_stride, const float* rope_cos_sin, int rotary_dim, int rope_style, int num_tokens,
                  int num_heads, int num_kv_heads, int head_dim, int layer_idx, int tokens_per_block, int dtype,
                  int kv_dtype, const float* kv_scales, int scales_per_head, int k_rotation, const float* k_bias,
                  cudaStream_t stream) {
  if (!qkv || !q_out || !kv_cache || !position_ids || !past_lens || !cu_seqlens || !block_tables)
    return kErrNullPointer;
  if (rotary_dim > 0 && !rope_cos_sin) return kErrNullPointer;
  if (batch <= 0 || num_tokens < 0 || num_heads <= 0 || num_kv_heads <= 0 || num_heads % num_kv_heads ||
      head_dim <= 0 || head_dim % 2 || rotary_dim < 0 || rotary_dim % 2 || rotary_dim > head_dim ||
      tokens_per_block <= 0 || layer_idx < 0 || num_blocks <= 0 || (rope_style != 0 && rope_style != 1))
    return kErrShape;
  const bool quantized = kv_dtype == kFp8E4M3 || kv_dtype == kInt8;
  if (!quantized && kv_dtype != dtype) return kErrDtype;
  if (quantized && (dtype == kFloat32 || !kv_scales)) return quantized && !kv_scales ? kErrNullPointer : kErrDtype;
  if (k_rotation && (!quantized || k_out || (head_dim & (head_dim - 1)))) return kErrUnsupported;
  // A float cache stores K as it is (k_out too): a bias there would change the attention's keys.
  if (k_bias && (!quantized || k_out)) return kErrUnsupported;
  RopeKvParams p;
  p.qkv = qkv; p.qkv_stride = qkv_stride; p.q_out = q_out; p.q_out_stride = q_out_stride;
  p.k_out = k_out; p.k_out_stride = k_out_stride;
  p.position_ids = position_ids; p.past_lens = past_lens; p.cu_seqlens = cu_seqlens; p.batch = batch;
  p.block_tables = block_tables; p.bt_stride = bt_stride; p.cos_sin = rope_cos_sin;
  p.rotary_dim = rotary_dim; p.neox = rope_style == 0; p.num_heads = num_heads; p.num_kv_heads = num_kv_heads;
  p.head_dim = head_dim; p.tokens_per_block = tokens_per_block;
  p.kv_scales = quantized ? kv_scales : nullptr; p.scales_per_head = scales_per_head; p.k_rotation = k_rotation;
  p.k_bias = k_bias;
  const int64_t layer_elems = num_blocks * 2 * num_kv_heads * static_cast<int64_t>(tokens_per_block) * head_dim;
  switch (dtype) {
    case kFloat32: p.cache_layer = static_cast<float*>(kv_cache) + layer_idx * layer_elems; return launch_rope_kv<float>(p, num_tokens, stream);
    case kFloat16: return launch_for_cache<__half>(p, kv_cache, layer_elems, layer_idx, kv_dtype, num_tokens, stream);
    case kBFloat16: return launch_for_cache<__nv_bfloat16>(p, kv_cache, layer_elems, layer_idx, kv_dtype, num_tokens, stream);
    default: return kErrDtype;
  }
}
}  // namespace

extern "C" int trtdsl_rope_kv_write(const void* qkv, int64_t qkv_stride, void* q_out, int64_t q_out_stride,
                                    void* k_out, int64_t k_out_stride, void* kv_cache, int64_t num_blocks,
                                    const int* position_ids, const int* past_lens, const int* cu_seqlens, int batch,
                                    const int* block_tables, int64_t bt_stride, const float* rope_cos_sin,
                                    int rotary_dim, int rope_style, int num_tokens, int num_heads, int num_kv_heads,
                                    int head_dim, int layer_idx, int tokens_per_block, int dtype, int kv_dtype,
                                    cudaStream_t stream) {
  if (kv_dtype != dtype) return kErrDtype;  // quantized caches go through trtdsl_rope_kv_write_quant
  return rope_kv_write(qkv, qkv_stride, q_out, q_out_stride, k_out, k_out_stride, kv_cache, num_blocks,
                       position_ids, past_lens, cu_seqlens, batch, block_tables, bt_stride, rope_cos_sin, rotary_dim,
                       rope_style, num_tokens, num_heads, num_kv_heads, head_dim, layer_idx, tokens_per_block, dtype,
                       kv_dtype, nullptr, 0, 0, nullptr, stream);
}

extern "C" int trtdsl_rope_kv_write_quant(const void* qkv, int64_t qkv_stride, void* q_out, int64_t q_out_stride,
                                          void* kv_cache, int64_t num_blocks, const int* position_ids,
                                          const int* past_lens, const int* cu_seqlens, int batch,
                                          const int* block_tables, int64_t bt_stride, const float* rope_cos_sin,
                                          int rotary_dim, int rope_style, int num_tokens, int num_heads,
                                          int num_kv_heads, int head_dim, int layer_idx, int tokens_per_block,
                                          int dtype, int kv_dtype, const float* kv_scales, int scales_per_head,
                                          int k_rotation, const float* k_bias, cudaStream_t stream) {
  if (kv_dtype != kFp8E4M3 && kv_dtype != kInt8) return kErrDtype;
  return rope_kv_write(qkv, qkv_stride, q_out, q_out_stride, nullptr, 0, kv_cache, num_blocks, position_ids,
                       past_lens, cu_seqlens, batch, block_tables, bt_stride, rope_cos_sin, rotary_dim, rope_style,
                       num_tokens, num_heads, num_kv_heads, head_dim, layer_idx, tokens_per_block, dtype, kv_dtype,
                       kv_scales, scales_per_head, k_rotation, k_bias, stream);
}
