// RoPE + K/V cache write for one packed step (first half of the trtdsl.attention semantics).
// Token t of sequence s (found by binary search over cu_seqlens on the device: no host sync) is
// rotated with the angles of position_ids[t]; its k and v go to cache position p = past_lens[s] + i.
// A quantized cache (CacheT = fp8 e4m3 / int8) stores saturate(value / scale) per K/V head
// (trtdsl/quantization/kv_cache.py's arithmetic: IEEE division, round to nearest even); with
// k_rotation the rotated q and k of each head are multiplied by the orthonormal Hadamard matrix
// first (staged in shared memory, transformed by butterfly passes: every output reads the whole head).
// An optional k_bias [KVH, D] (kv_cache_center_k: the calibrated mean key, rotated basis with
// k_rotation) is subtracted from K, in fp32 after RoPE and the rotation, before the division; never
// from q or V, and never added back (softmax cancels the constant shift q . k_bias of a row's scores).
#pragma once
#include "trtdsl/kv_quant.cuh"
#include "trtdsl/pdl.cuh"

namespace trtdsl {

struct RopeKvParams {
  const void* qkv; int64_t qkv_stride;  // [tokens, (H + 2 KVH) * D], row stride in elements
  void* q_out; int64_t q_out_stride;    // rotated q [tokens, H * D]; may alias qkv (in place)
  void* k_out; int64_t k_out_stride;    // optional rotated k [tokens, KVH * D]; may be null
  void* cache_layer;                    // kv_cache[layer_idx]: [num_blocks, 2, KVH, tpb, D]
  const int* position_ids; const int* past_lens; const int* cu_seqlens; int batch;
  const int* block_tables; int64_t bt_stride;
  const float* cos_sin; int rotary_dim; int neox;
  int num_heads, num_kv_heads, head_dim, tokens_per_block;
  const float* kv_scales = nullptr;     // quantized cache: K scales then V scales, per head or one each
  int scales_per_head = 0;
  int k_rotation = 0;                   // 1: Hadamard-rotate q and k after RoPE (power-of-two head_dim)
  const float* k_bias = nullptr;        // quantized cache: [KVH, D] subtracted from K before its code
};

// K's code with the bias subtracted first: __fsub_rn, so --use_fast_math cannot fuse it with an
// earlier multiply and the fp32 difference is the reference's `k.float() - k_bias` bit for bit.
template <typename CacheT>
__device__ __forceinline__ CacheT centered_key_to_cache(float k, float bias, float scale) {
  return float_to_cache<CacheT>(__fsub_rn(k, bias), scale);
}

// Sequence owning packed token t: the last s with cu_seqlens[s] <= t (skips empty sequences).
__device__ __forceinline__ int find_sequence(const int* cu_seqlens, int batch, int t) {
  int lo = 0, hi = batch - 1;
  while (lo < hi) {
    const int mid = (lo + hi + 1) >> 1;
    if (cu_seqlens[mid] <= t) lo = mid; else hi = mid - 1;
  }
  return lo;
}

// In-place fast Walsh-Hadamard transform of `rows` staged rows of d (a power of two) floats by the
// block: log2(d) butterfly passes give (x H)[i] = sum_j x[j] (-1)^popcount(i & j), unnormalized (the
// caller applies 1/sqrt(d)). Synchronizes the block before and after.
__device__ __forceinline__ void hadamard_rows(float* staged, int rows, int d) {
  const int half = d / 2;
  for (int len = 1; len < d; len <<= 1) {
    __syncthreads();
    for (int idx = threadIdx.x; idx < rows * half; idx += blockDim.x) {
      const int h = idx / half, b = idx % half;
      const int i = (b / len) * 2 * len + b % len;
      float* x = staged + h * d;
      const float a = x[i], c = x[i + len];
      x[i] = a + c;
      x[i + len] = a - c;
    }
  }
  __syncthreads();
}

template <typename T, typename CacheT>
__global__ void rope_kv_kernel(RopeKvParams p) {
  extern __shared__ float staged[];  // k_rotation: RoPE'd q and k heads, [(H + KVH) * D]
  pdl_wait();  // qkv and the step's metadata come from earlier kernels (pdl.cuh)
  pdl_launch_dependents();
  const int t = blockIdx.x;
  if (t >= p.cu_seqlens[p.batch]) return;  // padding tokens of a graph-sized step
  const int s = find_sequence(p.cu_seqlens, p.batch, t);
  const int pos = p.past_lens[s] + (t - p.cu_seqlens[s]);
  const int D = p.head_dim, half_rot = p.rotary_dim / 2, npairs = D / 2;
  const float* cs = p.cos_sin + static_cast<int64_t>(p.position_ids[t]) * p.rotary_dim;
  const int blk = p.block_tables[s * p.bt_stride + pos / p.tokens_per_block];
  const int64_t head_stride = static_cast<int64_t>(p.tokens_per_block) * D;
  CacheT* kslot = static_cast<CacheT*>(p.cache_layer) +
                  static_cast<int64_t>(blk) * 2 * p.num_kv_heads * head_stride +
                  static_cast<int64_t>(pos % p.tokens_per_block) * D;
  CacheT* vslot = kslot + p.num_kv_heads * head_stride;
  const T* src = static_cast<const T*>(p.qkv) + t * p.qkv_stride;
  const int total = (p.num_heads + 2 * p.num_kv_heads) * npairs;
  for (int idx = threadIdx.x; idx < total; idx += blockDim.x) {
    const int h = idx / npairs, j = idx % npairs;
    // Element pair handled by this thread: rotated pairs first, then the untouched tail in pairs.
    int i0, i1;
    if (j < half_rot) { i0 = p.neox ? j : 2 * j; i1 = p.neox ? j + half_rot : 2 * j + 1; }
    else { i0 = p.rotary_dim + 2 * (j - half_rot); i1 = i0 + 1; }
    const T* xh = src + h * D;
    T y0 = xh[i0], y1 = xh[i1];
    if (j < half_rot && h < p.num_heads + p.num_kv_heads) {
      const float c = cs[j], sn = cs[half_rot + j];
      const float x0 = to_float(y0), x1 = to_float(y1);
      // Explicit _rn ops stop FMA contraction: the same roundings as the torch reference (mul, mul,
      // sub), so the cached K matches it bit for bit instead of differing by one ulp now and then.
      y0 = from_float<T>(__fsub_rn(__fmul_rn(x0, c), __fmul_rn(x1, sn)));
      y1 = from_float<T>(__fadd_rn(__fmul_rn(x1, c), __fmul_rn(x0, sn)));
    }
    if (p.k_rotation && h < p.num_heads + p.num_kv_heads) {
      staged[h * D + i0] = to_float(y0);  // rounded to T first, as the reference's RoPE output is
      staged[h * D + i1] = to_float(y1);
    } else if (h < p.num_heads) {
      T* q = static_cast<T*>(p.q_out) + t * p.q_out_stride + h * D;
      q[i0] = y0; q[i1] = y1;
    } else if (h < p.num_heads + p.num_kv_heads) {
      const int kh = h - p.num_heads;
      const float inv = kv_code_scale<CacheT>(p.kv_scales, p.scales_per_head, 0, kh, p.num_kv_heads);
      if (p.k_bias) {  // y rounded to T first: the reference subtracts from its RoPE output in T
        const float* bias = p.k_bias + kh * D;
        kslot[kh * head_stride + i0] = centered_key_to_cache<CacheT>(to_float(y0), bias[i0], inv);
        kslot[kh * head_stride + i1] = centered_key_to_cache<CacheT>(to_float(y1), bias[i1], inv);
      } else {
        kslot[kh * head_stride + i0] = to_cache<T, CacheT>(y0, inv);
        kslot[kh * head_stride + i1] = to_cache<T, CacheT>(y1, inv);
      }
      if (p.k_out) {
        T* k = static_cast<T*>(p.k_out) + t * p.k_out_stride + kh * D;
        k[i0] = y0; k[i1] = y1;
      }
    } else {
      const int vh = h - p.num_heads - p.num_kv_heads;
      const float inv = kv_code_scale<CacheT>(p.kv_scales, p.scales_per_head, 1, vh, p.num_kv_heads);
      vslot[vh * head_stride + i0] = to_cache<T, CacheT>(y0, inv);
      vslot[vh * head_stride + i1] = to_cache<T, CacheT>(y1, inv);
    }
  }
  if (!p.k_rotation) return;
  const int rows = p.num_heads + p.num_kv_heads;
  hadamard_rows(staged, rows, D);
  const float norm = rsqrtf(static_cast<float>(D));
  for (int idx = threadIdx.x; idx < rows * D; idx += blockDim.x) {
    const int h = idx / D, i = idx % D;
    const float y = staged[idx] * norm;
    if (h < p.num_heads) {
      static_cast<T*>(p.q_out)[t * p.q_out_stride + h * D + i] = from_float<T>(y);
    } else {
      const int kh = h - p.num_heads;
      const float inv = kv_code_scale<CacheT>(p.kv_scales, p.scales_per_head, 0, kh, p.num_kv_heads);
      // The rotated key stays fp32 before the bias, as the reference's `k.float() @ H - k_bias`.
      kslot[kh * head_stride + i] = p.k_bias ? centered_key_to_cache<CacheT>(y, p.k_bias[kh * D + i], inv)
                                             : float_to_cache<CacheT>(y, inv);
    }
  }
}

template <typename T, typename CacheT = T>
int launch_rope_kv(const RopeKvParams& p, int num_tokens, cudaStream_t stream) {
  if (num_tokens == 0) return kOk;
  const int total = (p.num_heads + 2 * p.num_kv_heads) * (p.head_dim / 2);
  const int threads = total >= 512 ? 512 : ((total + 31) / 32) * 32;
  const size_t smem = p.k_rotation ? sizeof(float) * (p.num_heads + p.num_kv_heads) * p.head_dim : 0;
  if (smem > 48 * 1024) return kErrShape;
  return launch_pdl(rope_kv_kernel<T, CacheT>, dim3(num_tokens), dim3(threads), smem, stream, p);
}

}  // namespace trtdsl
