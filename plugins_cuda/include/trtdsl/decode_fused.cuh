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
//
// Quantized cache (KV_T = int8 / fp8 e4m3 codes): the RoPE stage also does rope_kv_kernel's quantizing
// write (optionally the Hadamard rotation of q and k and the mean key subtracted, same expressions, so
// the same codes), the block keeps the new token's codes, tiles go through KvPipeline (raw codes copied,
// widened to T), and the K scale multiplies the scores, the V scale the output.
#pragma once
#include <cooperative_groups.h>

#include "trtdsl/context_attention.cuh"
#include "trtdsl/fp8_code.cuh"
#include "trtdsl/pdl.cuh"
#include "trtdsl/rope_kv.cuh"

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
  // Quantized cache only (a.kv_scales, a.scales_per_head hold its scales): 1 = Hadamard-rotate q and k
  // after RoPE; k_bias [KVH, D] (or null) subtracted from K before its code (rope_kv.cuh).
  int k_rotation;
  const float* k_bias;
};

namespace attn {
constexpr int kFusedBN = 32, kFusedWarps = 4, kFusedRows = 16;
// Every warp's KvPipeline (two stages), then the rotated q rows (T), the new token's k and v (as stored
// in the cache), and for a quantized cache the fp32 staging of the rotation ((16 + 1) heads).
template <typename T, typename KV_T, int D> __host__ __device__ constexpr int fused_pipes_bytes() {
  return kFusedWarps * KvPipeline<T, KV_T, D, kFusedBN>::kBytes;
}
template <typename T, typename KV_T, int D> __host__ __device__ constexpr int fused_smem_bytes() {
  return fused_pipes_bytes<T, KV_T, D>() + kFusedRows * D * static_cast<int>(sizeof(T)) +
         2 * D * static_cast<int>(sizeof(KV_T)) + (std::is_same<T, KV_T>::value ? 0 : (kFusedRows + 1) * D * 4);
}
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

// rope_kv_kernel's in-place fast Walsh-Hadamard transform of the staged q and k heads, then 1 / sqrt(D):
// q rounded to T into sQ, k quantized from fp32 (after the bias) into sK and the cache slot.
template <typename T, typename C, int D>
__device__ __forceinline__ void fused_rotate_staged(float* staged, int nq, const float* bias, float ks,
                                                    bool write_cache, T* sQ, C* sK, C* kslot) {
  hadamard_rows(staged, nq + 1, D);
  const float norm = rsqrtf(static_cast<float>(D));
  for (int idx = threadIdx.x; idx < (nq + 1) * D; idx += blockDim.x) {
    const int h = idx / D, i = idx % D;
    const float y = staged[idx] * norm;
    if (h < nq) {
      sQ[idx] = from_float<T>(y);
    } else {  // the rotated key stays fp32 before the bias, as in rope_kv_kernel
      const C code = bias ? centered_key_to_cache<C>(y, bias[i], ks) : float_to_cache<C>(y, ks);
      sK[i] = code;
      if (write_cache) kslot[i] = code;
    }
  }
  __syncthreads();
}

// Rotate the group's q heads and the kv head's k into shared memory (v copied); group 0 also writes
// k/v to the cache slot of position `pos`. Same pair order and _rn roundings as rope_kv_kernel, so
// the cached K is bit-identical to the unfused path. A quantized cache (C = codes) keeps the new
// token's codes in sK / sV, computed as rope_kv_kernel computes them (with fp.k_rotation: q and k staged
// in fp32, Walsh-Hadamard transformed, q rounded to T, k quantized from fp32; fp.k_bias subtracted
// from k first). Every thread of the block calls it; it ends with the block synchronized.
template <typename T, typename C, int D>
__device__ __forceinline__ void fused_rope_load(const DecodeFusedParams& fp, int s, int tok, int pos, int kh,
                                                int g0, int nq, bool write_cache, T* sQ, C* sK, C* sV,
                                                float* staged) {
  const AttentionParams& p = fp.a;
  const int G = p.num_heads / p.num_kv_heads, half_rot = fp.rotary_dim / 2, npairs = D / 2;
  const T* row = static_cast<const T*>(p.q) + tok * p.q_stride;
  const float* cs = fp.rotary_dim ? fp.cos_sin + static_cast<int64_t>(fp.position_ids[tok]) * fp.rotary_dim
                                  : nullptr;
  const int tpb = p.tokens_per_block;
  const int64_t head_stride = static_cast<int64_t>(tpb) * D;
  const int blk = write_cache ? p.block_tables[s * p.bt_stride + pos / tpb] : 0;
  C* kslot = const_cast<C*>(static_cast<const C*>(p.cache_layer)) +
             (static_cast<int64_t>(blk) * 2 * p.num_kv_heads + kh) * head_stride + static_cast<int64_t>(pos % tpb) * D;
  C* vslot = kslot + p.num_kv_heads * head_stride;
  const float ks = kv_code_scale<C>(p.kv_scales, p.scales_per_head, 0, kh, p.num_kv_heads);
  const float vs = kv_code_scale<C>(p.kv_scales, p.scales_per_head, 1, kh, p.num_kv_heads);
  const float* bias = IsQuantCode<C>::value && fp.k_bias ? fp.k_bias + kh * D : nullptr;
  const bool rotate = IsQuantCode<C>::value && fp.k_rotation;
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
    if (rotate && h <= nq) {  // rounded to T first, as the reference's RoPE output is
      staged[h * D + i0] = to_float(y0);
      staged[h * D + i1] = to_float(y1);
      continue;
    }
    if (h < nq) {
      sQ[h * D + i0] = y0; sQ[h * D + i1] = y1;
      continue;
    }
    C c0, c1;
    if (h == nq && bias) {
      c0 = centered_key_to_cache<C>(to_float(y0), bias[i0], ks);
      c1 = centered_key_to_cache<C>(to_float(y1), bias[i1], ks);
    } else {
      c0 = to_cache<T, C>(y0, h == nq ? ks : vs);
      c1 = to_cache<T, C>(y1, h == nq ? ks : vs);
    }
    C* dst = h == nq ? sK : sV;
    dst[i0] = c0; dst[i1] = c1;
    if (write_cache) {
      C* slot = h == nq ? kslot : vslot;
      slot[i0] = c0; slot[i1] = c1;
    }
  }
  __syncthreads();
  if constexpr (IsQuantCode<C>::value) {
    if (rotate) fused_rotate_staged<T, C, D>(staged, nq, bias, ks, write_cache, sQ, sK, kslot);
  }
}

// Issues the copy of a warp's first key tile (if it has one) into its stage 0, as one cp.async group.
template <typename T, typename KV_T, int D>
__device__ __forceinline__ void fused_load_first_tile(const AttentionParams& p, const attn::KvPipeline<T, KV_T, D, attn::kFusedBN>& pipe,
                                                      const attn::FusedTiles& tl, int s, int kh, int past, int lane) {
  if (tl.count)
    pipe.issue(0, static_cast<const KV_T*>(p.cache_layer), p.block_tables + s * p.bt_stride, tl.first * attn::kFusedBN,
               past, kh, p.num_kv_heads, p.tokens_per_block, lane, 32);
  attn::cp_async_commit();
}

// One warp's share of the kv range (its FusedTiles), the first tile's copy already issued by
// fused_load_first_tile. The tile holding `past` gets the new token's row (sK / sV, as stored in the
// cache) patched into its stage before it is widened, and is masked past it. scale_log2 includes a
// quantized cache's K scale.
template <typename T, typename KV_T, int D>
__device__ __forceinline__ void fused_warp_attend(attn::WarpState<D>& st, const AttentionParams& p,
                                                  const attn::KvPipeline<T, KV_T, D, attn::kFusedBN>& pipe,
                                                  const KV_T* sK, const KV_T* sV, const attn::FusedTiles& tl, int s,
                                                  int kh, int past, float scale_log2, int lane) {
  using namespace attn;
  using Pipe = KvPipeline<T, KV_T, D, kFusedBN>;
  constexpr int TILE = Pipe::TILE, CH = D * static_cast<int>(sizeof(KV_T)) / 16;  // 16-byte chunks of a row
  const KV_T* cache = static_cast<const KV_T*>(p.cache_layer);
  const int* bt_row = p.block_tables + s * p.bt_stride;
  for (int it = 0; it < tl.count; ++it) {
    if (it + 1 < tl.count)
      pipe.issue((it + 1) & 1, cache, bt_row, (tl.first + (it + 1) * tl.stride) * kFusedBN, past, kh, p.num_kv_heads,
                 p.tokens_per_block, lane, 32);
    cp_async_commit();
    cp_async_wait<1>();
    __syncwarp();
    const int key0 = (tl.first + it * tl.stride) * kFusedBN;
    const bool last = key0 + kFusedBN > past;  // the tile holding the new token, at row past - key0
    if (last && lane < 2 * CH) {
      const int r = past - key0, c = lane % CH;
      const uint4* src = reinterpret_cast<const uint4*>(lane < CH ? sK : sV) + c;
      *(reinterpret_cast<uint4*>(lane < CH ? pipe.k_row(it & 1, r) : pipe.v_row(it & 1, r)) + c) = *src;
    }
    __syncwarp();
    const T* cur = pipe.ready(it & 1, lane, 32);
    if constexpr (Pipe::kCodes) __syncwarp();
    if (last)
      attend_tile<T, D, kFusedBN, true>(st, cur, cur + TILE, key0, past, past, scale_log2, lane);
    else
      attend_tile<T, D, kFusedBN, false>(st, cur, cur + TILE, key0, 0, 0, scale_log2, lane);
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

template <typename T, int D, typename KV_T>
__global__ void __launch_bounds__(attn::kFusedWarps * 32) decode_fused_kernel(DecodeFusedParams fp) {
  using namespace attn;
  using Pipe = KvPipeline<T, KV_T, D, kFusedBN>;
  static_assert(fused_merge_bytes<D>() + fused_partial_bytes<D>() <= fused_pipes_bytes<T, KV_T, D>(),
                "merge scratch must fit in the K/V stages");
  const AttentionParams& p = fp.a;
  extern __shared__ __align__(16) uint8_t smem_raw[];
  T* sQ = reinterpret_cast<T*>(smem_raw + fused_pipes_bytes<T, KV_T, D>());
  KV_T* sK = reinterpret_cast<KV_T*>(sQ + kFusedRows * D);
  KV_T* sV = sK + D;
  float* staged = reinterpret_cast<float*>(sV + D);
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
  const Pipe pipe{smem_raw + warp * Pipe::kBytes};  // this warp's own stages
  // The first past K/V tile is copied while the RoPE reads q / k / v: the two latencies overlap (the
  // tile never holds position `past`, which this kernel writes: it is zero-filled and patched later).
  fused_load_first_tile<T, KV_T, D>(p, pipe, tiles, s, kh, past, lane);
  fused_rope_load<T, KV_T, D>(fp, s, tok, past, kh, g0, nq, grp == 0 && split == 0, sQ, sK, sV, staged);
  WarpState<D> st;
  init_state<T, D>(st, gr0 < nq ? sQ + gr0 * D : nullptr, gr1 < nq ? sQ + gr1 * D : nullptr, lane);
  // Codes times scale: the K scale multiplies every score, the V scale the (linear) output.
  const float scale_log2 = p.scale_log2 * kv_code_scale<KV_T>(p.kv_scales, p.scales_per_head, 0, kh, p.num_kv_heads);
  const float v_scale = kv_code_scale<KV_T>(p.kv_scales, p.scales_per_head, 1, kh, p.num_kv_heads);
  fused_warp_attend<T, KV_T, D>(st, p, pipe, sK, sV, tiles, s, kh, past, scale_log2, lane);
  const int64_t out0 = tok * p.out_stride + (kh * G + g0) * D;
  const FusedOut<T> store{static_cast<T*>(p.out) + out0, static_cast<Fp8*>(p.out) + out0,
                          fp.out_scale ? *fp.out_scale : 1.f, fp.out_scale != nullptr};
  fused_merge_store<T, D>(st, smem_raw, nq, split, fp.splits, v_scale, store);
}

template <typename T, int D, typename KV_T>
int launch_decode_fused(const DecodeFusedParams& fp, cudaStream_t stream) {
  using namespace attn;
  const AttentionParams& p = fp.a;
  if (p.batch == 0) return kOk;
  const int G = p.num_heads / p.num_kv_heads, groups = (G + kFusedRows - 1) / kFusedRows;
  if (static_cast<int64_t>(p.num_kv_heads) * groups > 65535 || fp.splits < 1 || fp.splits > kFusedMaxSplits)
    return kErrShape;
  if (std::is_same<T, KV_T>::value && (fp.k_rotation || fp.k_bias)) return kErrShape;  // quantized caches only
  constexpr int smem = fused_smem_bytes<T, KV_T, D>();
  auto kernel = decode_fused_kernel<T, D, KV_T>;
  if (smem > 48 * 1024 && cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, smem) != cudaSuccess)
    return kErrLaunch;
  return launch_pdl_cluster(kernel, dim3(p.batch, p.num_kv_heads * groups, fp.splits), dim3(kFusedWarps * 32),
                            dim3(1, 1, fp.splits), smem, stream, fp);
}

}  // namespace trtdsl
