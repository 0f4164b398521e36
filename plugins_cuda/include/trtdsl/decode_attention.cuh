// Paged decode attention: one query token per sequence, split-K over the kv range.
// Each warp is one split: it owns the (up to 16) query heads of one kv head (GQA rows share every
// K/V byte) and streams BN-key tiles of its chunk through its own shared memory, then writes an
// unnormalized partial (o, m, l). decode_combine merges the splits. Memory-bound: tensor cores
// only keep the arithmetic off the critical path; bandwidth comes from many warps in flight.
#pragma once
#include "trtdsl/context_attention.cuh"
#include "trtdsl/pdl.cuh"

namespace trtdsl {

namespace attn {
constexpr int kDecBN = 32, kDecWarps = 4;
template <typename T, int D, typename KV_T = T> constexpr int dec_smem_bytes() {
  return kDecWarps * KvPipeline<T, KV_T, D, kDecBN>::kBytes;  // one pipeline per warp
}
}  // namespace attn

template <typename T, int D, typename KV_T = T>
__global__ void __launch_bounds__(128) decode_attention_kernel(AttentionParams p) {
  using namespace attn;
  using Pipe = KvPipeline<T, KV_T, D, kDecBN>;
  constexpr int TILE = Pipe::TILE;
  extern __shared__ __align__(16) uint8_t smem_raw[];
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  const Pipe pipe{smem_raw + warp * Pipe::kBytes};  // this warp's own stages
  pdl_wait();  // q (the RoPE kernel's output) and the cache row it wrote (pdl.cuh)
  pdl_launch_dependents();
  const int s = blockIdx.z, G = p.num_heads / p.num_kv_heads, groups = (G + 15) / 16;
  const int kh = blockIdx.y / groups, g0 = (blockIdx.y % groups) * 16;
  if (p.seq_lens[s] == 0) return;
  const int kv_len = p.past_lens[s] + 1, split = blockIdx.x * kDecWarps + warp;
  const int k_begin = split * p.kv_chunk;
  if (k_begin >= kv_len) return;  // splits are sized from the host's max_kv_len bound
  const int k_end = min(kv_len, k_begin + p.kv_chunk);
  const int tok = p.cu_seqlens[s], gr0 = g0 + (lane >> 2), gr1 = gr0 + 8;
  const T* q = static_cast<const T*>(p.q) + tok * p.q_stride + kh * G * D;
  WarpState<D> st;
  init_state<T, D>(st, gr0 < G ? q + gr0 * D : nullptr, gr1 < G ? q + gr1 * D : nullptr, lane);
  const KV_T* cache = static_cast<const KV_T*>(p.cache_layer);
  const int* bt_row = p.block_tables + s * p.bt_stride;
  const int ntiles = (k_end - k_begin + kDecBN - 1) / kDecBN;
  // Codes times scale: the K scale multiplies every score, the V scale the (linear) partial output.
  const float scale_log2 = p.scale_log2 * kv_code_scale<KV_T>(p.kv_scales, p.scales_per_head, 0, kh, p.num_kv_heads);
  const float v_scale = kv_code_scale<KV_T>(p.kv_scales, p.scales_per_head, 1, kh, p.num_kv_heads);
  pipe.issue(0, cache, bt_row, k_begin, k_end, kh, p.num_kv_heads, p.tokens_per_block, lane, 32);
  cp_async_commit();
  for (int it = 0; it < ntiles; ++it) {
    if (it + 1 < ntiles)
      pipe.issue((it + 1) & 1, cache, bt_row, k_begin + (it + 1) * kDecBN, k_end, kh, p.num_kv_heads,
                 p.tokens_per_block, lane, 32);
    cp_async_commit();
    cp_async_wait<1>();
    __syncwarp();
    const T* cur = pipe.ready(it & 1, lane, 32);
    if constexpr (Pipe::kCodes) __syncwarp();
    const int key0 = k_begin + it * kDecBN;
    if (key0 + kDecBN > k_end)
      attend_tile<T, D, kDecBN, true>(st, cur, cur + TILE, key0, k_end - 1, k_end - 1, scale_log2, lane);
    else
      attend_tile<T, D, kDecBN, false>(st, cur, cur + TILE, key0, 0, 0, scale_log2, lane);
    __syncwarp();
  }
  reduce_l(st);
  const int c2 = (lane & 3) * 2;
#pragma unroll
  for (int h = 0; h < 2; ++h) {
    const int gi = h ? gr1 : gr0;
    if (gi >= G) continue;
    const int64_t slot = (static_cast<int64_t>(s) * p.num_heads + kh * G + gi) * p.max_splits + split;
    float* o = p.ws_o + slot * D;
#pragma unroll
    for (int i = 0; i < D / 8; ++i)
      *reinterpret_cast<float2*>(o + i * 8 + c2) = make_float2(st.o[i][2 * h] * v_scale, st.o[i][2 * h + 1] * v_scale);
    if ((lane & 3) == 0) *reinterpret_cast<float2*>(p.ws_ml + slot * 2) = make_float2(st.m[h], st.l[h]);
  }
}

// Merge the splits of one (sequence, head): out = sum_i o_i 2^(m_i - M) / sum_i l_i 2^(m_i - M).
template <typename T, int D>
__global__ void decode_combine_kernel(AttentionParams p) {
  pdl_wait();  // the splits' partials
  pdl_launch_dependents();
  const int s = blockIdx.y, h = blockIdx.x, d = threadIdx.x;
  if (p.seq_lens[s] == 0) return;
  const int nsplit = (p.past_lens[s] + 1 + p.kv_chunk - 1) / p.kv_chunk;
  const int64_t slot0 = (static_cast<int64_t>(s) * p.num_heads + h) * p.max_splits;
  float mx = -INFINITY;
  for (int i = 0; i < nsplit; ++i) mx = fmaxf(mx, p.ws_ml[(slot0 + i) * 2]);
  float acc = 0.f, den = 0.f;
  for (int i = 0; i < nsplit; ++i) {
    const float w = exp2f(p.ws_ml[(slot0 + i) * 2] - mx);
    den += p.ws_ml[(slot0 + i) * 2 + 1] * w;
    acc += p.ws_o[(slot0 + i) * D + d] * w;
  }
  T* out = static_cast<T*>(p.out) + p.cu_seqlens[s] * p.out_stride + h * D;
  out[d] = from_float<T>(acc / den);
}

// Split size for a batch: enough warps to cover every SM several times, at least one tile each.
inline int decode_kv_chunk(int batch, int num_heads, int num_kv_heads, int max_kv_len, int num_sms) {
  using namespace attn;
  const int G = num_heads / num_kv_heads;
  const int64_t units = static_cast<int64_t>(batch) * num_kv_heads * ((G + 15) / 16);
  const int64_t target_warps = static_cast<int64_t>(num_sms) * 32;
  int64_t splits = (target_warps + units - 1) / units;
  const int64_t max_tiles = (max_kv_len + kDecBN - 1) / kDecBN;
  if (splits > max_tiles) splits = max_tiles;
  if (splits < 1) splits = 1;
  int64_t chunk = (max_kv_len + splits - 1) / splits;
  chunk = ((chunk + 4 * kDecBN - 1) / (4 * kDecBN)) * (4 * kDecBN);  // >= 4 tiles keeps the pipeline busy
  return static_cast<int>(chunk);
}

template <typename T, int D, typename KV_T = T>
int launch_decode_attention(const AttentionParams& p, int max_kv_len, cudaStream_t stream) {
  using namespace attn;
  if (p.batch == 0 || max_kv_len <= 0) return kOk;
  const int G = p.num_heads / p.num_kv_heads, groups = (G + 15) / 16;
  const int splits = (max_kv_len + p.kv_chunk - 1) / p.kv_chunk;
  if (splits > p.max_splits) return kErrWorkspace;
  constexpr int smem = dec_smem_bytes<T, D, KV_T>();
  auto kernel = decode_attention_kernel<T, D, KV_T>;
  if (smem > 48 * 1024 && cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, smem) != cudaSuccess)
    return kErrLaunch;
  if (p.batch > 65535 || static_cast<int64_t>(p.num_kv_heads) * groups > 65535) return kErrShape;
  dim3 grid((splits + kDecWarps - 1) / kDecWarps, p.num_kv_heads * groups, p.batch);
  const int st = launch_pdl(kernel, grid, dim3(kDecWarps * 32), smem, stream, p);
  if (st != kOk) return st;
  return launch_pdl(decode_combine_kernel<T, D>, dim3(p.num_heads, p.batch), dim3(D), 0, stream, p);
}

}  // namespace trtdsl
