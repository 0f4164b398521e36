/* C ABI of the trtdsl kernels. Every function checks its inputs, launches on `stream` without any
 * host synchronization (so calls can be captured in CUDA graphs), and returns 0 or a status code
 * that trtdsl_error_string() explains. Strides are in elements; dtype codes: 0 fp32, 1 fp16, 2 bf16.
 * Attention metadata (seq_lens, past_lens, cu_seqlens, block_tables, position_ids) are int32 device
 * pointers; grids are sized from the host-side upper bounds max_q_len / max_kv_len. */
#pragma once
#include <cuda_runtime.h>
#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

const char* trtdsl_error_string(int status);
int trtdsl_abi_version(void);

int trtdsl_rmsnorm(const void* x, const void* residual, const void* weight, void* out, void* residual_out,
                   int64_t rows, int64_t hidden, int64_t x_stride, int64_t residual_stride, int64_t out_stride,
                   int64_t residual_out_stride, float eps, int dtype, cudaStream_t stream);

int trtdsl_swiglu(const void* in, void* out, int64_t rows, int64_t inter, int64_t in_stride, int64_t out_stride,
                  int dtype, cudaStream_t stream);

int trtdsl_rope_kv_write(const void* qkv, int64_t qkv_stride, void* q_out, int64_t q_out_stride, void* k_out,
                         int64_t k_out_stride, void* kv_cache, int64_t num_blocks, const int* position_ids,
                         const int* past_lens, const int* cu_seqlens, int batch, const int* block_tables,
                         int64_t block_table_stride, const float* rope_cos_sin, int rotary_dim, int rope_style,
                         int num_tokens, int num_heads, int num_kv_heads, int head_dim, int layer_idx,
                         int tokens_per_block, int dtype, int kv_dtype, cudaStream_t stream);

int trtdsl_context_attention(const void* q, int64_t q_stride, const void* kv_cache, int64_t num_blocks,
                             const int* seq_lens, const int* past_lens, const int* cu_seqlens, int batch,
                             const int* block_tables, int64_t block_table_stride, void* out, int64_t out_stride,
                             int num_heads, int num_kv_heads, int head_dim, int layer_idx, int tokens_per_block,
                             float softmax_scale, int max_q_len, int dtype, int kv_dtype, cudaStream_t stream);

/* Split size (keys per split) and float workspace bytes the decode kernel needs for these bounds. */
int trtdsl_decode_attention_workspace(int batch, int num_heads, int num_kv_heads, int head_dim, int max_kv_len,
                                      int* kv_chunk, size_t* workspace_bytes);

int trtdsl_decode_attention(const void* q, int64_t q_stride, const void* kv_cache, int64_t num_blocks,
                            const int* seq_lens, const int* past_lens, const int* cu_seqlens, int batch,
                            const int* block_tables, int64_t block_table_stride, void* out, int64_t out_stride,
                            int num_heads, int num_kv_heads, int head_dim, int layer_idx, int tokens_per_block,
                            float softmax_scale, int max_kv_len, int kv_chunk, void* workspace,
                            size_t workspace_bytes, int dtype, int kv_dtype, cudaStream_t stream);

/* Quantized K/V cache (kv_cache of fp8 e4m3 / int8 codes, kv_dtype kFp8E4M3 / kInt8; the scheme of
 * trtdsl/quantization/kv_cache.py): kv_scales float32 [2] (K, V) or [2, num_kv_heads] when
 * scales_per_head; codes are written as saturate(value / scale) and read back as code * scale.
 * k_rotation = 1 multiplies RoPE'd q and k by the orthonormal Hadamard matrix (power-of-two head_dim).
 * k_bias: null, or float32 [num_kv_heads, head_dim] subtracted (fp32) from every key after RoPE and the
 * rotation, before its code is taken (kv_cache_center_k); q and V are not shifted. */
int trtdsl_rope_kv_write_quant(const void* qkv, int64_t qkv_stride, void* q_out, int64_t q_out_stride,
                               void* kv_cache, int64_t num_blocks, const int* position_ids, const int* past_lens,
                               const int* cu_seqlens, int batch, const int* block_tables,
                               int64_t block_table_stride, const float* rope_cos_sin, int rotary_dim,
                               int rope_style, int num_tokens, int num_heads, int num_kv_heads, int head_dim,
                               int layer_idx, int tokens_per_block, int dtype, int kv_dtype,
                               const float* kv_scales, int scales_per_head, int k_rotation, const float* k_bias,
                               cudaStream_t stream);

int trtdsl_context_attention_quant(const void* q, int64_t q_stride, const void* kv_cache, int64_t num_blocks,
                                   const int* seq_lens, const int* past_lens, const int* cu_seqlens, int batch,
                                   const int* block_tables, int64_t block_table_stride, void* out,
                                   int64_t out_stride, int num_heads, int num_kv_heads, int head_dim,
                                   int layer_idx, int tokens_per_block, float softmax_scale, int max_q_len,
                                   int dtype, int kv_dtype, const float* kv_scales, int scales_per_head,
                                   cudaStream_t stream);

int trtdsl_decode_attention_quant(const void* q, int64_t q_stride, const void* kv_cache, int64_t num_blocks,
                                  const int* seq_lens, const int* past_lens, const int* cu_seqlens, int batch,
                                  const int* block_tables, int64_t block_table_stride, void* out,
                                  int64_t out_stride, int num_heads, int num_kv_heads, int head_dim,
                                  int layer_idx, int tokens_per_block, float softmax_scale, int max_kv_len,
                                  int kv_chunk, void* workspace, size_t workspace_bytes, int dtype, int kv_dtype,
                                  const float* kv_scales, int scales_per_head, cudaStream_t stream);

#ifdef __cplusplus
}
#endif

/* Quantized GEMMs (plugins_cuda/src/quant_gemm.cu; formats of trtdsl/quantization/numerics.py).
 * Weights are [n, k] int8 codes or [n, k / 2] packed int4 (low nibble = even column), scales float32
 * [n, num_groups]; group_size 0 means one group per row. x / out are contiguous [m, k] / [m, n]. */
#ifdef __cplusplus
extern "C" {
#endif

/* y = x W^T for 1 <= m <= 16 (decode): weights streamed once, dequantized in registers. Needs
 * k % 16 (int8) or k % 32 (int4) == 0, group_size a multiple of that, x and qweight 16-byte aligned. */
int trtdsl_weight_only_gemv(const void* x, const void* qweight, const float* scales, void* out, int64_t m,
                            int64_t n, int64_t k, int bits, int group_size, int num_groups, int dtype,
                            cudaStream_t stream);

/* W (dtype [n, k]) = codes * scales, for the large-m path (then a dense GEMM). Any k and group. */
int trtdsl_weight_only_dequantize(const void* qweight, const float* scales, void* out, int64_t n, int64_t k,
                                  int bits, int group_size, int num_groups, int dtype, cudaStream_t stream);

/* e4m3 codes of x / scale[0] (saturating) into out [out_rows, k]; rows >= rows are zero padding. */
int trtdsl_quantize_fp8(const void* x, const float* scale, void* out, int64_t rows, int64_t out_rows, int64_t k,
                        int dtype, cudaStream_t stream);

/* Per-row int8 codes into out [out_rows, k] (padding rows zero) and scales [rows]. */
int trtdsl_quantize_per_token_int8(const void* x, void* out, float* scales, int64_t rows, int64_t out_rows,
                                   int64_t k, int dtype, cudaStream_t stream);

/* SmoothQuant decode GEMV (plugins_cuda/src/int8_gemv.cu): out [m, n] = (float(acc) * x_scales[m]) *
 * w_scales[n] with acc = xq [m, k] . weight [n, k] over int8 codes summed exactly in int32, i.e. bitwise
 * the _int_mm + trtdsl_int8_gemm_epilogue path. 1 <= m <= 8, k % 16 == 0 (k <= 133000), xq and weight
 * 16-byte aligned; config 0..5 (kQuantGemvConfigs, 0 = 1); out fp32 / fp16 / bf16. */
int trtdsl_int8_gemv(const void* xq, const void* weight, const float* x_scales, const float* w_scales, void* out,
                     int64_t m, int64_t n, int64_t k, int config, int dtype, cudaStream_t stream);

/* out [m, n] = (float(acc[m, n]) * x_scales[m]) * w_scales[n]; acc int32 with row stride acc_stride. */
int trtdsl_int8_gemm_epilogue(const int32_t* acc, int64_t acc_stride, const float* x_scales,
                              const float* w_scales, void* out, int64_t m, int64_t n, int dtype,
                              cudaStream_t stream);

/* Weight-only GEMM with optional additive zeros (asymmetric format: w = code * scale + zero, zeros
 * float32 [n, num_groups] or NULL) and a forced GEMV launch shape (config 0 = automatic, 1..5 see
 * kQuantGemvConfigs in quant_gemm.cuh). trtdsl_weight_only_gemv / _dequantize are these with
 * zeros = NULL, config = 0. */
int trtdsl_weight_only_gemv_zp(const void* x, const void* qweight, const float* scales, const float* zeros, void* out,
                               int64_t m, int64_t n, int64_t k, int bits, int group_size, int num_groups, int config,
                               int dtype, cudaStream_t stream);
int trtdsl_weight_only_dequantize_zp(const void* qweight, const float* scales, const float* zeros, void* out,
                                     int64_t n, int64_t k, int bits, int group_size, int num_groups, int dtype,
                                     cudaStream_t stream);

/* int4 weight-only decode GEMV over the pre-shuffled tile-16 layout (trtdsl/quantization/int4_tiles.py:
 * qpacked [ceil(rows / 16)][k / 128][2][32] 16-byte vectors, sz [tiles][num_groups][8] float4 {s, s', z, z'}
 * with zeros or float2 {s, s'} without, float16 instead of float32 when sz_half; rows = n, or 2 n with
 * swiglu). out [m, n] = x . W^T, or with swiglu (gate and up rows interleaved by the pack) silu(gate) * up,
 * each rounded to dtype first. 1 <= m <= 8, k % 128 == 0, group_size 64, a multiple of 128 or 0 (per
 * channel); x / qpacked 16-byte aligned, sz to its vector (16 / 8 bytes, half that when sz_half);
 * config 0..6 (wo_gemv_packed.cuh); dtype fp16 / bf16. */
int trtdsl_weight_only_gemv_packed(const void* x, const void* qpacked, const void* sz, int has_zeros, int sz_half,
                                   void* out, int64_t m, int64_t n, int64_t k, int group_size, int num_groups,
                                   int swiglu, int config, int dtype, cudaStream_t stream);

/* The same GEMV with the deferred RMSNorm (wo_gemv_packed.cuh, trtdsl/passes/deferred_norm.py); null pointers
 * leave a part out. Producer (residual, gamma, scaled [m, n], ssq_out [m, ceil(n / 16)] float32; all four, no
 * swiglu): out = T(T(x . W^T) + residual), scaled = T(out * gamma), ssq_out = each 16-row tile's sum of
 * out^2 (rows >= n count 0). Consumer (ssq_in [m, ssq_tiles], ssq_tiles * 16 == k; eps >= 0): the sums are
 * multiplied by rsqrt(sum(ssq_in[row]) / k + eps) before they are rounded (and before the SwiGLU). */
int trtdsl_weight_only_gemv_packed_norm(const void* x, const void* qpacked, const void* sz, int has_zeros, int sz_half,
                                        void* out, int64_t m, int64_t n, int64_t k, int group_size, int num_groups,
                                        int swiglu, int config, int dtype, const void* residual, const void* gamma,
                                        void* scaled, float* ssq_out, const float* ssq_in, int64_t ssq_tiles,
                                        float eps, cudaStream_t stream);

/* Dequantize a tile-16 pack into out [rows, k] (fp16 / bf16, canonical row order; swiglu packs back to
 * [gate rows | up rows]): bitwise trtdsl_weight_only_dequantize_zp of the canonical tensors. */
int trtdsl_weight_only_dequantize_packed(const void* qpacked, const void* sz, int has_zeros, int sz_half, void* out,
                                         int64_t rows, int64_t k, int group_size, int num_groups, int swiglu, int dtype,
                                         cudaStream_t stream);

/* Dynamic per-row e4m3 codes of x (scale max|x_row| / 448) into out [out_rows, k] (padding rows zero)
 * and the float32 scales [rows]. */
int trtdsl_quantize_per_token_fp8(const void* x, void* out, float* scales, int64_t rows, int64_t out_rows, int64_t k,
                                  int dtype, cudaStream_t stream);

/* FP8 decode GEMV (plugins_cuda/src/fp8_gemv.cu): out [m, n] = (sum_k xq[m, k] * weight[n, k]) *
 * (x_scale[m * x_scale_stride] * w_scale[n * w_scale_stride]) for 1 <= m <= 16, xq / weight e4m3
 * (xq from trtdsl_quantize_fp8 or _per_token_fp8), strides 0 (per tensor) or 1; fp32 accumulation of
 * exact products; out fp32 / fp16 / bf16. k % 16 == 0, xq and weight 16-byte aligned. config 0..5:
 * CUDA-core launch shapes; 20..23: the tensor-core kernel (fp8_gemv_tc.cuh: e4m3 mma, partial sums of
 * 64..256 products promoted to fp32), which runs config 1 instead for m > 8 or below compute capability 8.9. */
/* lowrank_c [m, rank] and lowrank_w [rank, n] (both or neither, 1 <= rank <= 64, dtype): the low-rank
 * branch's c . lowrank_w[:, n] (fp32, j order) rounded to dtype, added to each rounded output and rounded
 * again; then bias: nullable [n] in dtype, added the same way (what the separate layers do). */
int trtdsl_fp8_gemv(const void* xq, const void* weight, const float* x_scale, int64_t x_scale_stride,
                    const float* w_scale, int64_t w_scale_stride, void* out, const void* bias, const void* lowrank_c,
                    const void* lowrank_w, int64_t rank, int64_t m, int64_t n, int64_t k, int config, int dtype,
                    cudaStream_t stream);

/* Launch configs beyond the "1..5" above: 8..11 are the int4 tensor-core decode kernel (wo_gemv_tc.cuh, kWoTcConfigs; trtdsl_weight_only_gemv_zp
 * with bits 4 only, any group that is a multiple of 32). */

/* FP8 decode GEMV with the static activation quantizer fused in (plugins_cuda/src/fp8_gemv_q.cu):
 * trtdsl_quantize_fp8(x, input_scale) followed by trtdsl_fp8_gemv(..., x_scale = input_scale, stride 0)
 * in one launch, bitwise the same output (same codes, products and summation order for the same
 * config). x / out fp16 or bf16 (dtype) [m, k] / [m, n], 1 <= m <= 16, k % 16 == 0, x and weight
 * 16-byte aligned; input_scale [1]. Configs 20..23 run config 1 (the tensor-core kernel reads codes). */
int trtdsl_fp8_gemv_static(const void* x, const float* input_scale, const void* weight, const float* w_scale,
                           int64_t w_scale_stride, void* out, int64_t m, int64_t n, int64_t k, int config, int dtype,
                           cudaStream_t stream);

#ifdef __cplusplus
}
#endif

/* Dense decode GEMV (plugins_cuda/src/dense_gemv.cu): out [m, n] = x [m, k] @ weight [n, k]^T for
 * 1 <= m <= 8, fp16 / bf16 (dtype code 1 / 2) with fp32 accumulation, one launch (no split-K reduce
 * kernel). x, weight, out contiguous; k % 8 == 0; x and weight 16-byte aligned. config 0 picks the
 * launch shape; 1..5 force one (the benchmark's sweep, see dense_gemv.cuh). */
#ifdef __cplusplus
extern "C" {
#endif

int trtdsl_dense_gemv(const void* x, const void* weight, void* out, int64_t m, int64_t n, int64_t k, int config,
                      int dtype, cudaStream_t stream);

#ifdef __cplusplus
}
#endif

/* Fused decode step (plugins_cuda/src/decode_fused.cu): every sequence has seq_lens <= 1. RoPE of the
 * new token's q and k (rope_style 0 neox, 1 gptj; rotary_dim 0 = none), its k/v written to the paged
 * cache at position past_lens[s], and attention over positions 0..past_lens[s], in one launch without
 * split-K (no workspace). out is [tokens, num_heads * head_dim]; rows of empty sequences are untouched.
 * out_scale null: out holds dtype values; else a float [1] on the device, and out holds the e4m3 codes of
 * each value (rounded to dtype) / *out_scale, saturating: the static fp8 GEMM's quantizer fused in.
 * splits (1..8): blocks sharing each (sequence, kv head)'s key tiles, > 1 as a thread-block cluster that
 * merges through distributed shared memory (sm_90+ only; kErrLaunch elsewhere).
 * kv_dtype: dtype (a float cache: kv_scales null, k_rotation 0, k_bias null) or fp8 e4m3 / int8 codes
 * with kv_scales [2] or [2, num_kv_heads], written as trtdsl_rope_kv_write_quant writes them (k_rotation,
 * k_bias [num_kv_heads, head_dim] or null) and read with the K scale on the scores, V scale on the output. */
#ifdef __cplusplus
extern "C" {
#endif

int trtdsl_decode_fused(const void* qkv, int64_t qkv_stride, void* kv_cache, int64_t num_blocks,
                        const int* position_ids, const int* seq_lens, const int* past_lens, const int* cu_seqlens,
                        int batch, const int* block_tables, int64_t block_table_stride, const float* rope_cos_sin,
                        int rotary_dim, int rope_style, void* out, int64_t out_stride, const float* out_scale,
                        int splits, int num_heads,
                        int num_kv_heads, int head_dim, int layer_idx, int tokens_per_block, float softmax_scale,
                        int dtype, int kv_dtype, const float* kv_scales, int scales_per_head, int k_rotation,
                        const float* k_bias, cudaStream_t stream);

#ifdef __cplusplus
}
#endif

/* Quantizing RMSNorm / SwiGLU (plugins_cuda/src/norm_quant.cu): trtdsl_rmsnorm / trtdsl_swiglu with
 * the static fp8 quantizer fused in. out holds e4m3 codes of y / input_scale[0] (y rounded to dtype
 * first, IEEE division, saturating at +-448): bitwise trtdsl_quantize_fp8 of what trtdsl_rmsnorm /
 * trtdsl_swiglu write for the same inputs. residual_out (with residual) is the sum in dtype, as there.
 * Strides in elements (out's in bytes = codes); dtype 0 / 1 / 2 for x, residual, weight, in. */
#ifdef __cplusplus
extern "C" {
#endif

/* mean (nullable, [hidden] in dtype): codes of (normed - mean) / input_scale, each difference rounded to dtype
 * as a separate subtraction would (a centered fp8 GEMM input, QuantConfig.fp8_center_inputs). */
int trtdsl_rmsnorm_fp8(const void* x, const void* residual, const void* weight, const float* input_scale,
                       const void* mean, void* out, void* residual_out, int64_t rows, int64_t hidden, int64_t x_stride,
                       int64_t residual_stride, int64_t out_stride, int64_t residual_out_stride, float eps, int dtype,
                       cudaStream_t stream);

int trtdsl_swiglu_fp8(const void* in, const float* input_scale, void* out, int64_t rows, int64_t inter,
                      int64_t in_stride, int64_t out_stride, int dtype, cudaStream_t stream);

/* The low-rank split of a centered fp8 GEMM input (QuantConfig.fp8_lowrank; lowrank_quant.cuh) after the
 * RMSNorm / SwiGLU: d = normed - mean, c = d basis (basis [k, rank] row-major, c_out [rows, rank]),
 * out = codes of (d - c basis^T) / input_scale, each step rounded to dtype as the separate layers round
 * (c's sum in the kernel's order). fp16 / bf16; rank 2, 4 or 8; k a multiple of 8 with 16-byte aligned
 * rows, mean and basis; at most 4096 values per RMSNorm row, 32768 per SwiGLU row (which needs sm_90):
 * else kErrUnsupported; k <= 49152. The SwiGLU's blocks > 0: a block-diagonal basis (QuantConfig.fp8_lowrank_blocks)
 * given compactly, basis [inter, rank] holding chunk b's own `rank` columns in its rows, chunk b = vectors
 * [b * per, (b + 1) * per) of 8 values, per = ceil(inter / 8 / blocks) <= 512, every chunk non-empty;
 * c_out [rows, blocks * rank] (chunk b's entries at b * rank); rank 1 too; no cluster (sm_80+). */
int trtdsl_rmsnorm_fp8_lowrank(const void* x, const void* residual, const void* weight, const float* input_scale,
                               const void* mean, const void* basis, int64_t rank, void* out, void* c_out,
                               void* residual_out, int64_t rows, int64_t hidden, int64_t x_stride,
                               int64_t residual_stride, int64_t out_stride, int64_t residual_out_stride, float eps,
                               int dtype, cudaStream_t stream);
int trtdsl_swiglu_fp8_lowrank(const void* in, const float* input_scale, const void* mean, const void* basis,
                              int64_t rank, void* out, void* c_out, int64_t rows, int64_t inter, int64_t in_stride,
                              int64_t out_stride, int blocks, int dtype, cudaStream_t stream);

#ifdef __cplusplus
}
#endif
