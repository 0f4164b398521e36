// Context-phase attention: every query token of a packed step attends causally to its sequence's
// paged K/V (which already holds this step's keys, written by rope_kv). Flash-attention style:
// a block takes 64 query rows of one kv head and streams 64-key tiles through shared memory
// (cp.async, two stages). GQA is packed into the rows: row r of sequence s is (token r / G, query
// head kh * G + r % G), so each K/V tile loaded serves all G query heads that read it.
#pragma once
#include "trtdsl/attention_mma.cuh"
#include "trtdsl/pdl.cuh"

namespace trtdsl {

struct AttentionParams {
  const void* q; int64_t q_stride;   // [tokens, H, D] (head stride D), token stride in elements
  const void* cache_layer;           // kv_cache[layer_idx]: [num_blocks, 2, KVH, tpb, D]
  const int* seq_lens; const int* past_lens; const int* cu_seqlens; int batch;
  const int* block_tables; int64_t bt_stride;
  void* out; int64_t out_stride;     // [tokens, H * D], token stride in elements
  int num_heads, num_kv_heads, head_dim, tokens_per_block;
  float scale_log2;                  // softmax_scale * log2(e)
  // decode only: split-K partials
  float* ws_o; float* ws_ml; int kv_chunk; int max_splits;
  // quantized cache (KV_T = int8 / fp8): K scales then V scales, [2] or [2, KVH] (kv_quant.cuh)
  const float* kv_scales; int scales_per_head;
};

namespace attn {
constexpr int kCtxBM = 64, kCtxBN = 64, kCtxWarps = 4;
template <typename T, int D, typename KV_T = T> constexpr int ctx_smem_bytes() {
  return KvPipeline<T, KV_T, D, kCtxBN>::kBytes;
}
}  // namespace attn

template <typename T, int D, typename KV_T = T>
// (128, 3): cap registers so three blocks (12 warps) share an SM; at 189 registers only two fit.
__global__ void __launch_bounds__(128, 3) context_attention_kernel(AttentionParams p) {
  using namespace attn;
  using Pipe = KvPipeline<T, KV_T, D, kCtxBN>;
  constexpr int TILE = Pipe::TILE;
  extern __shared__ __align__(16) uint8_t smem_raw[];
  const Pipe pipe{smem_raw};
  pdl_wait();  // q (the RoPE kernel's output) and the cache rows it wrote (pdl.cuh)
  pdl_launch_dependents();
  const int s = blockIdx.z, kh = blockIdx.y, G = p.num_heads / p.num_kv_heads;
  // Reversed so the longest causal rows (the most tiles) start first and the tail is short.
  const int n = p.seq_lens[s], rows = n * G, m0 = (gridDim.x - 1 - blockIdx.x) * kCtxBM;
  if (m0 >= rows) return;  // grid is sized from the host's max_q_len bound
  const int past = p.past_lens[s], start = p.cu_seqlens[s];
  const int kv_end = past + min(rows - 1, m0 + kCtxBM - 1) / G + 1;
  const int min_lim = past + m0 / G;  // tiles entirely at or below it need no causal mask
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  const int r0 = m0 + warp * 16 + (lane >> 2), r1 = r0 + 8;
  const int warp_max_lim = past + min(rows - 1, m0 + warp * 16 + 15) / G;
  const T* q = static_cast<const T*>(p.q);
  auto qrow = [&](int r) -> const T* {
    return r < rows ? q + (start + r / G) * p.q_stride + (kh * G + r % G) * D : nullptr;
  };
  WarpState<D> st;
  init_state<T, D>(st, qrow(r0), qrow(r1), lane);
  const int lim0 = past + r0 / G, lim1 = past + r1 / G;
  const KV_T* cache = static_cast<const KV_T*>(p.cache_layer);
  const int* bt_row = p.block_tables + s * p.bt_stride;
  const int ntiles = (kv_end + kCtxBN - 1) / kCtxBN;
  // Codes times scale: the K scale multiplies every score, the V scale the output.
  const float scale_log2 = p.scale_log2 * kv_code_scale<KV_T>(p.kv_scales, p.scales_per_head, 0, kh, p.num_kv_heads);
  const float v_scale = kv_code_scale<KV_T>(p.kv_scales, p.scales_per_head, 1, kh, p.num_kv_heads);
  pipe.issue(0, cache, bt_row, 0, kv_end, kh, p.num_kv_heads, p.tokens_per_block, threadIdx.x, blockDim.x);
  cp_async_commit();
  for (int it = 0; it < ntiles; ++it) {
    if (it + 1 < ntiles)
      pipe.issue((it + 1) & 1, cache, bt_row, (it + 1) * kCtxBN, kv_end, kh, p.num_kv_heads, p.tokens_per_block,
                 threadIdx.x, blockDim.x);
    cp_async_commit();  // an empty group on the last tile keeps the wait count uniform
    cp_async_wait<1>();
    __syncthreads();
    const T* cur = pipe.ready(it & 1, threadIdx.x, blockDim.x);
    if constexpr (Pipe::kCodes) __syncthreads();
    const int key0 = it * kCtxBN;
    if (key0 <= warp_max_lim) {  // a warp whose rows all end before this tile skips it
      if (key0 + kCtxBN - 1 > min_lim)
        attend_tile<T, D, kCtxBN, true>(st, cur, cur + TILE, key0, lim0, lim1, scale_log2, lane);
      else
        attend_tile<T, D, kCtxBN, false>(st, cur, cur + TILE, key0, lim0, lim1, scale_log2, lane);
    }
    __syncthreads();  // the next iteration's prefetch overwrites this stage
  }
  reduce_l(st);
  T* out = static_cast<T*>(p.out);
  const int c2 = (lane & 3) * 2;
#pragma unroll
  for (int h = 0; h < 2; ++h) {
    const int r = h ? r1 : r0;
    if (r >= rows) continue;
    const float inv = v_scale / st.l[h];
    T* orow = out + (start + r / G) * p.out_stride + (kh * G + r % G) * D;
#pragma unroll
    for (int i = 0; i < D / 8; ++i)
      *reinterpret_cast<uint32_t*>(orow + i * 8 + c2) = Mma<T>::pack(st.o[i][2 * h] * inv, st.o[i][2 * h + 1] * inv);
  }
}

template <typename T, int D, typename KV_T = T>
int launch_context_attention(const AttentionParams& p, int max_q_len, cudaStream_t stream) {
  using namespace attn;
  const int G = p.num_heads / p.num_kv_heads;
  if (max_q_len <= 0 || p.batch == 0) return kOk;
  constexpr int smem = ctx_smem_bytes<T, D, KV_T>();
  auto kernel = context_attention_kernel<T, D, KV_T>;
  if (smem > 48 * 1024 && cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, smem) != cudaSuccess)
    return kErrLaunch;
  const int64_t mblocks = (static_cast<int64_t>(max_q_len) * G + kCtxBM - 1) / kCtxBM;
  if (mblocks > 0x7fffffff || p.batch > 65535 || p.num_kv_heads > 65535) return kErrShape;
  dim3 grid(static_cast<unsigned>(mblocks), p.num_kv_heads, p.batch);
  return launch_pdl(kernel, grid, dim3(kCtxWarps * 32), smem, stream, p);
}

}  // namespace trtdsl
