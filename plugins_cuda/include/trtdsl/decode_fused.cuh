// Fused decode step of the trtdsl.attention plugin: RoPE of the new token's q and k, its K/V written
// to the paged cache, and attention over the whole sequence, in ONE launch and without split-K.
// A block owns (sequence, kv head, <= 16 query heads of that kv head); its warps stride over the
// 32-key tiles of the sequence (tile w, w + W, ...) and merge their partial (o, m, l) in shared
// memory at the end, so no workspace and no combine kernel are needed. For short contexts this
// beats rope_kv + split-K + combine (three launches, ~11 us per layer on an H100 at 128 tokens).
//
// Read-after-write: the new token's K/V are never read back from global memory. Tiles are loaded
// with the kv end at `past` (position `past` is zero-filled by cp.async) and the warp whose tile
// holds `past` patches that row in shared memory from the block's rotated copy. So the cache write
// (done by the group-0 block only) and every read are independent, and MQA groups > 16 (several
// blocks per kv head) stay race-free.
//
// Split over a cluster (sm_90+, fp.splits > 1): the blocks of one (sequence, kv head, group) form a
// thread-block cluster of `splits` blocks along z that share the key tiles (tile t goes to warp
// (t / splits) % W of block t % splits, so a short context spreads over SMs before warps). Each block
// merges its warps into one partial (o, m, l); after a cluster barrier every block merges a slice of
// the output from all partials through distributed shared memory (DSMEM). One sequence then uses up
// to 8x the SMs, still in one launch, with no workspace. splits == 1 is the single-block kernel, bit
// for bit.
#pragma once
#include <cooperative_groups.h>

#include "trtdsl/context_attention.cuh"
#include "trtdsl/fp8_code.cuh"
#include "trtdsl/pdl.cuh"

namespace trtdsl {

struct DecodeFusedParams {
  AttentionParams a;          // a.q = qkv rows [tokens, (H + 2 KVH) * D], a.q_stride = qkv row stride
  const int* position_ids;    // [tokens]: RoPE angles row of each token
  const float* cos_sin;       // [positions, rotary_dim] cos then sin; null when rotary_dim == 0
  int rotary_dim; int neox;
  // Non-null: a.out holds e4m3 codes of each output value, as stored in T, divided by *out_scale
  // (fp8_code.cuh), i.e. the static fp8 GEMM's quantizer fused in; null: a.out holds T values.
  const float* out_scale;
  int splits;                 // blocks per (sequence, kv head, group) sharing its key tiles; > 1: a cluster
};

namespace attn {
constexpr int kFusedBN = 32, kFusedWarps = 4, kFusedRows = 16;
template <int D> __host__ __device__ constexpr int fused_kv_smem() { return kFusedWarps * 2 * 2 * kFusedBN * (D + 8) * 2; }
// KV stages, then the rotated q rows and the new token's k and v (2-byte elements).
template <int D> __host__ __device__ constexpr int fused_smem_bytes() { return fused_kv_smem<D>() + (kFusedRows + 2) * D * 2; }
// The end-of-kernel merge reuses the KV stages: per warp 16 rows of o[D] plus (m, l), then the block's
// partial (16 rows of o[D], m, l) that the cluster's blocks read.
template <int D> __host__ __device__ constexpr int fused_merge_bytes() { return kFusedWarps * kFusedRows * (D + 2) * 4; }
template <int D> __host__ __device__ constexpr int fused_partial_bytes() { return kFusedRows * (D + 2) * 4; }
constexpr int kFusedMaxSplits = 8;  // the portable cluster size

// This worker's key tiles: first, first + stride, ... (count of them) out of past / BN + 1.
struct FusedTiles { int first, stride, count; };
__device__ __forceinline__ FusedTiles fused_tiles(int past, int worker, int workers) {
  const int ntiles = past / kFusedBN + 1;
  return {worker, workers, worker < ntiles ? (ntiles - 1 - worker) / workers + 1 : 0};
}
}  // namespace attn

// Rotate the group's q heads and the kv head's k into shared memory (v copied); group 0 also writes
// k/v to the cache slot of position `pos`. Same pair order and _rn roundings as rope_kv_kernel, so
// the cached K is bit-identical to the unfused path.
template <typename T, int D>
__device__ __forceinline__ void fused_rope_load(const DecodeFusedParams& fp, int s, int tok, int pos, int kh,
                                                int g0, int nq, bool write_cache, T* sQ, T* sK, T* sV) {
  const AttentionParams& p = fp.a;
  const int G = p.num_heads / p.num_kv_heads, half_rot = fp.rotary_dim / 2, npairs = D / 2;
  const T* row = static_cast<const T*>(p.q) + tok * p.q_stride;
  const float* cs = fp.rotary_dim ? fp.cos_sin + static_cast<int64_t>(fp.position_ids[tok]) * fp.rotary_dim
                                  : nullptr;
  const int tpb = p.tokens_per_block;
  const int64_t head_stride = static_cast<int64_t>(tpb) * D;
  const int blk = write_cache ? p.block_tables[s * p.bt_stride + pos / tpb] : 0;
  T* kslot = const_cast<T*>(static_cast<const T*>(p.cache_layer)) +
             (static_cast<int64_t>(blk) * 2 * p.num_kv_heads + kh) * head_stride + static_cast<int64_t>(pos % tpb) * D;
  T* vslot = kslot + p.num_kv_heads * head_stride;
  const int total = (nq + 2) * npairs;
  for (int idx = threadIdx.x; idx < total; idx += blockDim.x) {
    const int h = idx / npairs, j = idx % npairs;
    int i0, i1;
    if (j < half_rot) { i0 = fp.neox ? j : 2 * j; i1 = fp.neox ? j + half_rot : 2 * j + 1; }
    else { i0 = fp.rotary_dim + 2 * (j - half_rot); i1 = i0 + 1; }
    const int src_head = h < nq ? kh * G + g0 + h : (h == nq ? p.num_heads + kh : p.num_heads + p.num_kv_heads + kh);
    const T* x = row + src_head * D;
    T y0 = x[i0], y1 = x[i1];
    if (j < half_rot && h <= nq) {
      const float c = cs[j], sn = cs[half_rot + j], x0 = to_float(y0), x1 = to_float(y1);
      y0 = from_float<T>(__fsub_rn(__fmul_rn(x0, c), __fmul_rn(x1, sn)));
      y1 = from_float<T>(__fadd_rn(__fmul_rn(x1, c), __fmul_rn(x0, sn)));
    }
    T* dst = h < nq ? sQ + h * D : (h == nq ? sK : sV);
    dst[i0] = y0; dst[i1] = y1;
    if (write_cache && h >= nq) {
      T* slot = h == nq ? kslot : vslot;
      slot[i0] = y0; slot[i1] = y1;
    }
  }
}

// Issues the copy of a warp's first key tile (if it has one) into its stage 0, as one cp.async group.
template <typename T, int D>
__device__ __forceinline__ void fused_load_first_tile(const AttentionParams& p, T* wsm, const attn::FusedTiles& tl,
                                                      int s, int kh, int past, int lane) {
  using namespace attn;
  constexpr int TILE = kFusedBN * (D + 8);
  if (tl.count)
    load_kv_tile<T, D, kFusedBN>(wsm, wsm + TILE, static_cast<const T*>(p.cache_layer), p.block_tables + s * p.bt_stride,
                                 tl.first * kFusedBN, past, kh, p.num_kv_heads, p.tokens_per_block, lane, 32);
  cp_async_commit();
}

// One warp's share of the kv range (its FusedTiles), the first tile's copy already issued by
// fused_load_first_tile. The tile holding `past` gets the new token's row patched in from shared memory
// and is masked past it.
template <typename T, int D>
__device__ __forceinline__ void fused_warp_attend(attn::WarpState<D>& st, const AttentionParams& p, T* wsm,
                                                  const T* sK, const T* sV, const attn::FusedTiles& tl, int s,
                                                  int kh, int past, int lane) {
  using namespace attn;
  constexpr int LD = D + 8, TILE = kFusedBN * LD, CH = D / 8;
  const T* cache = static_cast<const T*>(p.cache_layer);
  const int* bt_row = p.block_tables + s * p.bt_stride;
  for (int it = 0; it < tl.count; ++it) {
    if (it + 1 < tl.count) {
      T* nxt = wsm + ((it + 1) & 1) * 2 * TILE;
      load_kv_tile<T, D, kFusedBN>(nxt, nxt + TILE, cache, bt_row, (tl.first + (it + 1) * tl.stride) * kFusedBN, past,
                                   kh, p.num_kv_heads, p.tokens_per_block, lane, 32);
    }
    cp_async_commit();
    cp_async_wait<1>();
    __syncwarp();
    T* cur = wsm + (it & 1) * 2 * TILE;
    const int key0 = (tl.first + it * tl.stride) * kFusedBN;
    if (key0 + kFusedBN > past) {  // the last tile: it holds the new token at row past - key0
      const int r = past - key0;
      if (lane < 2 * CH) {
        const T* src = (lane < CH ? sK : sV) + (lane % CH) * 8;
        T* dst = cur + (lane < CH ? 0 : TILE) + r * LD + (lane % CH) * 8;
        *reinterpret_cast<uint4*>(dst) = *reinterpret_cast<const uint4*>(src);
      }
      __syncwarp();
      attend_tile<T, D, kFusedBN, true>(st, cur, cur + TILE, key0, past, past, p.scale_log2, lane);
    } else {
      attend_tile<T, D, kFusedBN, false>(st, cur, cur + TILE, key0, 0, 0, p.scale_log2, lane);
    }
    __syncwarp();
  }
}

// Stores output value idx = r * D + d of the block's query rows: as T, or its e4m3 code over *fp.out_scale.
template <typename T> struct FusedOut {
  T* out;
  Fp8* codes;
  float code_scale;
  bool quantize;
  __device__ void operator()(int idx, float v) const {
    if (quantize) codes[idx] = quantize_rounded<T>(v, code_scale);
    else out[idx] = from_float<T>(v);
  }
};

#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
// The cluster's second merge: block `split` of `splits` produces every splits-th slice of blockDim
// outputs from the partials (o [16][D], then (m, l) [16][2]) of every block, read through DSMEM.
template <typename T, int D>
__device__ __forceinline__ void fused_cluster_merge(float* part, int nq, int split, int splits, const FusedOut<T>& store) {
  namespace cg = cooperative_groups;
  cg::cluster_group cluster = cg::this_cluster();
  cluster.sync();  // every block's partial is written (and visible cluster-wide)
  for (int idx = split * blockDim.x + threadIdx.x; idx < nq * D; idx += splits * blockDim.x) {
    const int r = idx / D;
    float mx = -INFINITY;
    for (int b = 0; b < splits; ++b) mx = fmaxf(mx, cluster.map_shared_rank(part, b)[attn::kFusedRows * D + 2 * r]);
    float num = 0.f, den = 0.f;  // block 0 always holds tile 0, so mx is finite; empty blocks weigh 0
    for (int b = 0; b < splits; ++b) {
      const float* pb = cluster.map_shared_rank(part, b);
      const float wgt = exp2f(pb[attn::kFusedRows * D + 2 * r] - mx);
      num += pb[idx] * wgt;
      den += pb[attn::kFusedRows * D + 2 * r + 1] * wgt;
    }
    store(idx, num / den);
  }
  cluster.sync();  // the other blocks read this block's partial until here
}
#endif

// The end of a fused decode block: its warps' partials (o scaled by v_scale, m, l) merged through
// shared memory (reusing the K/V stages), then stored (splits == 1) or, in a cluster, kept as the
// block's partial for fused_cluster_merge. Every thread of the block calls it.
template <typename T, int D>
__device__ __forceinline__ void fused_merge_store(attn::WarpState<D>& st, uint8_t* smem_raw, int nq, int split,
                                                  int splits, float v_scale, const FusedOut<T>& store) {
  using namespace attn;
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, gr0 = lane >> 2, gr1 = gr0 + 8;
  reduce_l(st);
  __syncthreads();  // every warp is done with the K/V stages: reuse them as merge scratch
  float* sO = reinterpret_cast<float*>(smem_raw);           // [W][16][D]
  float* sML = sO + kFusedWarps * kFusedRows * D;          // [W][16][2]
  float* part = sML + kFusedWarps * kFusedRows * 2;        // the block's partial: [16][D], then [16][2]
  const int c2 = (lane & 3) * 2;
#pragma unroll
  for (int h = 0; h < 2; ++h) {
    const int r = warp * kFusedRows + (h ? gr1 : gr0);
#pragma unroll
    for (int i = 0; i < D / 8; ++i)
      *reinterpret_cast<float2*>(sO + r * D + i * 8 + c2) =
          make_float2(st.o[i][2 * h] * v_scale, st.o[i][2 * h + 1] * v_scale);
    if ((lane & 3) == 0) *reinterpret_cast<float2*>(sML + r * 2) = make_float2(st.m[h], st.l[h]);
  }
  __syncthreads();
  for (int idx = threadIdx.x; idx < nq * D; idx += blockDim.x) {
    const int r = idx / D, d = idx % D;
    float mx = -INFINITY;
#pragma unroll
    for (int w = 0; w < kFusedWarps; ++w) mx = fmaxf(mx, sML[(w * kFusedRows + r) * 2]);
    float num = 0.f, den = 0.f;  // idle warps hold m = -inf, l = 0, o = 0: weight 0
    if (mx != -INFINITY) {       // (a block of a cluster may hold no tile at all: partial 0 / 0 at m = -inf)
#pragma unroll
      for (int w = 0; w < kFusedWarps; ++w) {
        const float* ml = sML + (w * kFusedRows + r) * 2;
        const float a = exp2f(ml[0] - mx);
        num += sO[(w * kFusedRows + r) * D + d] * a;
        den += ml[1] * a;
      }
    }
    if (splits == 1) {
      store(idx, num / den);
    } else {
      part[idx] = num;
      if (d == 0) { part[kFusedRows * D + 2 * r] = mx; part[kFusedRows * D + 2 * r + 1] = den; }
    }
  }
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  if (splits > 1) fused_cluster_merge<T, D>(part, nq, split, splits, store);
#endif
}

template <typename T, int D>
__global__ void __launch_bounds__(attn::kFusedWarps * 32) decode_fused_kernel(DecodeFusedParams fp) {
  using namespace attn;
  static_assert(fused_merge_bytes<D>() + fused_partial_bytes<D>() <= fused_kv_smem<D>(),
                "merge scratch must fit in the KV stages");
  constexpr int TILE = kFusedBN * (D + 8);
  const AttentionParams& p = fp.a;
  extern __shared__ __align__(16) uint8_t smem_raw[];
  T* kv_smem = reinterpret_cast<T*>(smem_raw);
  T* sQ = kv_smem + fused_kv_smem<D>() / 2;
  T* sK = sQ + kFusedRows * D;
  T* sV = sK + D;
  // PDL (pdl.cuh): wait for q / k / v (and this step's metadata), then let the o_proj GEMV launch and
  // prefetch its weights to L2 while the attention runs.
  if (fp.out_scale && threadIdx.x == 0) pdl_prefetch_l2(fp.out_scale);
  pdl_wait();
  pdl_launch_dependents();
  const int s = blockIdx.x, G = p.num_heads / p.num_kv_heads, groups = (G + kFusedRows - 1) / kFusedRows;
  const int kh = blockIdx.y / groups, grp = blockIdx.y % groups, g0 = grp * kFusedRows, split = blockIdx.z;
  if (p.seq_lens[s] == 0) return;  // a sequence without a new token this step (the whole cluster returns)
  const int nq = min(kFusedRows, G - g0), past = p.past_lens[s], tok = p.cu_seqlens[s];
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, gr0 = lane >> 2, gr1 = gr0 + 8;
  // Worker warp * splits + split: consecutive tiles go to different blocks first.
  const FusedTiles tiles = fused_tiles(past, warp * fp.splits + split, kFusedWarps * fp.splits);
  T* wsm = kv_smem + warp * 4 * TILE;
  // The first past K/V tile is copied while the RoPE reads q / k / v: the two latencies overlap (the
  // tile never holds position `past`, which this kernel writes: it is zero-filled and patched later).
  fused_load_first_tile<T, D>(p, wsm, tiles, s, kh, past, lane);
  fused_rope_load<T, D>(fp, s, tok, past, kh, g0, nq, grp == 0 && split == 0, sQ, sK, sV);
  __syncthreads();
  WarpState<D> st;
  init_state<T, D>(st, gr0 < nq ? sQ + gr0 * D : nullptr, gr1 < nq ? sQ + gr1 * D : nullptr, lane);
  fused_warp_attend<T, D>(st, p, wsm, sK, sV, tiles, s, kh, past, lane);
  const int64_t out0 = tok * p.out_stride + (kh * G + g0) * D;
  const FusedOut<T> store{static_cast<T*>(p.out) + out0, static_cast<Fp8*>(p.out) + out0,
                          fp.out_scale ? *fp.out_scale : 1.f, fp.out_scale != nullptr};
  fused_merge_store<T, D>(st, smem_raw, nq, split, fp.splits, 1.f, store);
}

template <typename T, int D>
int launch_decode_fused(const DecodeFusedParams& fp, cudaStream_t stream) {
  using namespace attn;
  const AttentionParams& p = fp.a;
  if (p.batch == 0) return kOk;
  const int G = p.num_heads / p.num_kv_heads, groups = (G + kFusedRows - 1) / kFusedRows;
  if (static_cast<int64_t>(p.num_kv_heads) * groups > 65535 || fp.splits < 1 || fp.splits > kFusedMaxSplits)
    return kErrShape;
  constexpr int smem = fused_smem_bytes<D>();
  auto kernel = decode_fused_kernel<T, D>;
  if (smem > 48 * 1024 && cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, smem) != cudaSuccess)
    return kErrLaunch;
  return launch_pdl_cluster(kernel, dim3(p.batch, p.num_kv_heads * groups, fp.splits), dim3(kFusedWarps * 32),
                            dim3(1, 1, fp.splits), smem, stream, fp);
}

// Decode attention in one launch over the cache as it is (the step's K/V already written, q already
// rotated: rope_kv_kernel's outputs), for a float or a quantized cache (KV_T = int8 / fp8 e4m3 codes,
// widened to T through KvPipeline, the K scale folded into the softmax scale and the V scale into the
// output, as decode_attention_kernel does): decode_fused_kernel's tiles, clusters and merge without its
// RoPE. For quantized caches it replaces split-K + combine (two launches and a workspace).
template <typename T, int D, typename KV_T>
__global__ void __launch_bounds__(attn::kFusedWarps * 32) decode_attend_kernel(AttentionParams p, int splits) {
  using namespace attn;
  using Pipe = KvPipeline<T, KV_T, D, kFusedBN>;
  constexpr int TILE = Pipe::TILE;
  extern __shared__ __align__(16) uint8_t smem_raw[];
  pdl_wait();  // q and the cache row of this step come from the previous kernel (pdl.cuh)
  pdl_launch_dependents();
  const int s = blockIdx.x, G = p.num_heads / p.num_kv_heads, groups = (G + kFusedRows - 1) / kFusedRows;
  const int kh = blockIdx.y / groups, g0 = (blockIdx.y % groups) * kFusedRows, split = blockIdx.z;
  if (p.seq_lens[s] == 0) return;  // the whole cluster returns
  const int nq = min(kFusedRows, G - g0), kv_len = p.past_lens[s] + 1, tok = p.cu_seqlens[s];
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, gr0 = lane >> 2, gr1 = gr0 + 8;
  const FusedTiles tiles = fused_tiles(kv_len - 1, warp * splits + split, kFusedWarps * splits);
  const Pipe pipe{smem_raw + warp * Pipe::kBytes};  // this warp's own stages
  const KV_T* cache = static_cast<const KV_T*>(p.cache_layer);
  const int* bt_row = p.block_tables + s * p.bt_stride;
  if (tiles.count)
    pipe.issue(0, cache, bt_row, tiles.first * kFusedBN, kv_len, kh, p.num_kv_heads, p.tokens_per_block, lane, 32);
  cp_async_commit();
  const T* q = static_cast<const T*>(p.q) + tok * p.q_stride + (kh * G + g0) * D;
  WarpState<D> st;
  init_state<T, D>(st, gr0 < nq ? q + gr0 * D : nullptr, gr1 < nq ? q + gr1 * D : nullptr, lane);
  const float scale_log2 = p.scale_log2 * kv_code_scale<KV_T>(p.kv_scales, p.scales_per_head, 0, kh, p.num_kv_heads);
  const float v_scale = kv_code_scale<KV_T>(p.kv_scales, p.scales_per_head, 1, kh, p.num_kv_heads);
  for (int it = 0; it < tiles.count; ++it) {
    if (it + 1 < tiles.count)
      pipe.issue((it + 1) & 1, cache, bt_row, (tiles.first + (it + 1) * tiles.stride) * kFusedBN, kv_len, kh,
                 p.num_kv_heads, p.tokens_per_block, lane, 32);
    cp_async_commit();
    cp_async_wait<1>();
    __syncwarp();
    const T* cur = pipe.ready(it & 1, lane, 32);
    if constexpr (Pipe::kCodes) __syncwarp();
    const int key0 = (tiles.first + it * tiles.stride) * kFusedBN;
    if (key0 + kFusedBN > kv_len)
      attend_tile<T, D, kFusedBN, true>(st, cur, cur + TILE, key0, kv_len - 1, kv_len - 1, scale_log2, lane);
    else
      attend_tile<T, D, kFusedBN, false>(st, cur, cur + TILE, key0, 0, 0, scale_log2, lane);
    __syncwarp();
  }
  T* out = static_cast<T*>(p.out) + tok * p.out_stride + (kh * G + g0) * D;
  fused_merge_store<T, D>(st, smem_raw, nq, split, splits, v_scale, FusedOut<T>{out, nullptr, 1.f, false});
}

template <typename T, int D, typename KV_T>
int launch_decode_attend(const AttentionParams& p, int splits, cudaStream_t stream) {
  using namespace attn;
  if (p.batch == 0) return kOk;
  const int G = p.num_heads / p.num_kv_heads, groups = (G + kFusedRows - 1) / kFusedRows;
  if (p.batch > 65535 || static_cast<int64_t>(p.num_kv_heads) * groups > 65535 || splits < 1 ||
      splits > kFusedMaxSplits)
    return kErrShape;
  constexpr int smem = kFusedWarps * KvPipeline<T, KV_T, D, kFusedBN>::kBytes;
  static_assert(fused_merge_bytes<D>() + fused_partial_bytes<D>() <= smem, "merge scratch must fit in the stages");
  auto kernel = decode_attend_kernel<T, D, KV_T>;
  if (smem > 48 * 1024 && cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, smem) != cudaSuccess)
    return kErrLaunch;
  return launch_pdl_cluster(kernel, dim3(p.batch, p.num_kv_heads * groups, splits), dim3(kFusedWarps * 32),
                            dim3(1, 1, splits), smem, stream, p, splits);
}

}  // namespace trtdsl
