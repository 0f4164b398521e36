// Warp-level flash-attention building blocks on mma.sync m16n8k16 (fp16/bf16 in, fp32 accumulate),
// shared by the context and the decode kernels. A warp owns 16 query rows; K/V tiles of BN keys sit
// in shared memory as [key][D + 8] (the 16-byte row pad makes ldmatrix rows hit distinct banks).
#pragma once
#include "trtdsl/kv_quant.cuh"

namespace trtdsl {
namespace attn {

__device__ __forceinline__ uint32_t smem_addr(const void* p) {
  return static_cast<uint32_t>(__cvta_generic_to_shared(p));
}

// 16-byte async copy; when `pred` is false nothing is read and the destination is zero-filled,
// so tiles past the end of a sequence hold zeros (P * V stays finite).
__device__ __forceinline__ void cp_async16(void* dst, const void* src, bool pred) {
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(smem_addr(dst)), "l"(src),
               "r"(pred ? 16 : 0));
}
__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;\n" ::); }
template <int N> __device__ __forceinline__ void cp_async_wait() {
  asm volatile("cp.async.wait_group %0;\n" ::"n"(N));
}

__device__ __forceinline__ void ldsm_x4(uint32_t (&r)[4], const void* p) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3]) : "r"(smem_addr(p)));
}
__device__ __forceinline__ void ldsm_x4_t(uint32_t (&r)[4], const void* p) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0,%1,%2,%3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3]) : "r"(smem_addr(p)));
}

template <typename T> struct Mma;
template <> struct Mma<__half> {
  static __device__ __forceinline__ void run(float (&c)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1) {
    asm volatile("mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
                 "{%0,%1,%2,%3};\n"
                 : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
                 : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
  }
  static __device__ __forceinline__ uint32_t pack(float x, float y) {
    __half2 h = __floats2half2_rn(x, y);
    return *reinterpret_cast<uint32_t*>(&h);
  }
};
template <> struct Mma<__nv_bfloat16> {
  static __device__ __forceinline__ void run(float (&c)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1) {
    asm volatile("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
                 "{%0,%1,%2,%3};\n"
                 : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
                 : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
  }
  static __device__ __forceinline__ uint32_t pack(float x, float y) {
    __nv_bfloat162 h = __floats2bfloat162_rn(x, y);
    return *reinterpret_cast<uint32_t*>(&h);
  }
};

// FP8 (e4m3 x e4m3) mma.sync m16n8k32 with fp32 accumulators (sm_89+): each .b32 operand holds 4 codes.
// A: a0 / a2 = row g at k 4t..4t+3 / 4t+16..4t+19, a1 / a3 = row g + 8 at the same k; B: b0 / b1 =
// column g at k 4t.. / 4t+16..; C as in the 16-bit mma. On older targets (the compute_80 PTX) it traps:
// the launchers run it only on devices of compute capability 8.9 or more.
__device__ __forceinline__ void mma_e4m3(float (&c)[4], uint32_t a0, uint32_t a1, uint32_t a2, uint32_t a3,
                                         uint32_t b0, uint32_t b1) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 890
  asm volatile("mma.sync.aligned.m16n8k32.row.col.f32.e4m3.e4m3.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
               "{%0,%1,%2,%3};\n"
               : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
               : "r"(a0), "r"(a1), "r"(a2), "r"(a3), "r"(b0), "r"(b1));
#else
  __trap();
#endif
}

// Per-warp running state of 16 query rows. Thread (g = lane / 4, c = lane % 4) holds rows g and g+8.
template <int D> struct WarpState {
  uint32_t q[D / 16][4];  // A fragments of Q, loaded once
  float o[D / 8][4];      // unnormalized output accumulators
  float m[2];             // running max of the scaled scores (log2 domain)
  float l[2];             // running sum of exp2, partial over this thread's columns (reduced at the end)
};

template <typename T, int D>
__device__ __forceinline__ void init_state(WarpState<D>& st, const T* row0, const T* row1, int lane) {
  const int c2 = (lane & 3) * 2;
#pragma unroll
  for (int kk = 0; kk < D / 16; ++kk) {
    // A-fragment layout of m16n8k16: {row g, k 0-7}, {row g+8, k 0-7}, {row g, k 8-15}, {row g+8, k 8-15}.
    st.q[kk][0] = row0 ? *reinterpret_cast<const uint32_t*>(row0 + kk * 16 + c2) : 0u;
    st.q[kk][1] = row1 ? *reinterpret_cast<const uint32_t*>(row1 + kk * 16 + c2) : 0u;
    st.q[kk][2] = row0 ? *reinterpret_cast<const uint32_t*>(row0 + kk * 16 + 8 + c2) : 0u;
    st.q[kk][3] = row1 ? *reinterpret_cast<const uint32_t*>(row1 + kk * 16 + 8 + c2) : 0u;
  }
#pragma unroll
  for (int i = 0; i < D / 8; ++i) st.o[i][0] = st.o[i][1] = st.o[i][2] = st.o[i][3] = 0.f;
  st.m[0] = st.m[1] = -INFINITY;
  st.l[0] = st.l[1] = 0.f;
}

// Attend the warp's rows to one tile of BN keys (absolute index key0.. in sK/sV).
// MASK: keys past a row's limit (lim0 / lim1: last visible key of rows g / g+8) get -inf.
template <typename T, int D, int BN, bool MASK>
__device__ __forceinline__ void attend_tile(WarpState<D>& st, const T* sK, const T* sV, int key0, int lim0,
                                            int lim1, float scale_log2, int lane) {
  constexpr int LD = D + 8;
  float s[BN / 8][4];
#pragma unroll
  for (int i = 0; i < BN / 8; ++i) s[i][0] = s[i][1] = s[i][2] = s[i][3] = 0.f;
  // S = Q K^T. ldmatrix x4 matrices: (keys +0, d +0), (keys +0, d +8), (keys +8, d +0), (keys +8, d +8).
  const int krow = (lane >> 4) * 8 + (lane & 7), kcol = ((lane >> 3) & 1) * 8;
#pragma unroll
  for (int kk = 0; kk < D / 16; ++kk) {
#pragma unroll
    for (int nn = 0; nn < BN / 16; ++nn) {
      uint32_t b[4];
      ldsm_x4(b, sK + (nn * 16 + krow) * LD + kk * 16 + kcol);
      Mma<T>::run(s[2 * nn], st.q[kk], b[0], b[1]);
      Mma<T>::run(s[2 * nn + 1], st.q[kk], b[2], b[3]);
    }
  }
  // Online softmax in the log2 domain (exp2 is one MUFU op).
  const int c2 = (lane & 3) * 2;
  float mx[2] = {-INFINITY, -INFINITY};
#pragma unroll
  for (int i = 0; i < BN / 8; ++i) {
#pragma unroll
    for (int e = 0; e < 4; ++e) {
      float v = s[i][e] * scale_log2;
      if (MASK && key0 + i * 8 + c2 + (e & 1) > (e < 2 ? lim0 : lim1)) v = -INFINITY;
      s[i][e] = v;
      mx[e >> 1] = fmaxf(mx[e >> 1], v);
    }
  }
  float base[2];
#pragma unroll
  for (int r = 0; r < 2; ++r) {
    mx[r] = fmaxf(mx[r], __shfl_xor_sync(0xffffffffu, mx[r], 1));
    mx[r] = fmaxf(mx[r], __shfl_xor_sync(0xffffffffu, mx[r], 2));
    const float m_new = fmaxf(st.m[r], mx[r]);
    base[r] = m_new == -INFINITY ? 0.f : m_new;  // a fully masked row so far must not make NaNs
    const float alpha = exp2f(st.m[r] - base[r]);
    st.m[r] = m_new;
    st.l[r] *= alpha;
#pragma unroll
    for (int i = 0; i < D / 8; ++i) { st.o[i][2 * r] *= alpha; st.o[i][2 * r + 1] *= alpha; }
  }
#pragma unroll
  for (int i = 0; i < BN / 8; ++i) {
#pragma unroll
    for (int e = 0; e < 4; ++e) {
      s[i][e] = exp2f(s[i][e] - base[e >> 1]);
      st.l[e >> 1] += s[i][e];
    }
  }
  // O += P V. The C fragments of two adjacent key octets are exactly the A fragment of one k16 slice.
  const int vrow = ((lane >> 3) & 1) * 8 + (lane & 7), vcol = (lane >> 4) * 8;
#pragma unroll
  for (int kk = 0; kk < BN / 16; ++kk) {
    uint32_t a[4];
    a[0] = Mma<T>::pack(s[2 * kk][0], s[2 * kk][1]);
    a[1] = Mma<T>::pack(s[2 * kk][2], s[2 * kk][3]);
    a[2] = Mma<T>::pack(s[2 * kk + 1][0], s[2 * kk + 1][1]);
    a[3] = Mma<T>::pack(s[2 * kk + 1][2], s[2 * kk + 1][3]);
#pragma unroll
    for (int dn = 0; dn < D / 16; ++dn) {
      uint32_t b[4];
      ldsm_x4_t(b, sV + (kk * 16 + vrow) * LD + dn * 16 + vcol);
      Mma<T>::run(st.o[2 * dn], a, b[0], b[1]);
      Mma<T>::run(st.o[2 * dn + 1], a, b[2], b[3]);
    }
  }
}

// Finish the row sums across the 4 threads of a row quad.
template <int D> __device__ __forceinline__ void reduce_l(WarpState<D>& st) {
#pragma unroll
  for (int r = 0; r < 2; ++r) {
    st.l[r] += __shfl_xor_sync(0xffffffffu, st.l[r], 1);
    st.l[r] += __shfl_xor_sync(0xffffffffu, st.l[r], 2);
  }
}

// Copy keys [key0, key0 + BN) of one kv head from the paged cache into sK / sV (zero past kv_end).
// Threads tid = 0..nthreads-1 share the work; each 16-byte chunk is one cp.async. key0 is a
// multiple of BN, so when tpb is a multiple of BN the whole tile lies in one cache block: one
// block-table lookup per tile instead of an integer division and a lookup per chunk.
template <typename T, int D, int BN>
__device__ __forceinline__ void load_kv_tile(T* sK, T* sV, const T* cache_layer, const int* bt_row, int key0,
                                             int kv_end, int kh, int num_kv_heads, int tpb, int tid,
                                             int nthreads) {
  constexpr int CH = D / 8, LD = D + 8;
  const int64_t head_stride = static_cast<int64_t>(tpb) * D;
  const int64_t v_off = num_kv_heads * head_stride;
  if (tpb % BN == 0) {
    const int64_t base = (static_cast<int64_t>(bt_row[key0 / tpb]) * 2 * num_kv_heads + kh) * head_stride +
                         static_cast<int64_t>(key0 % tpb) * D;
    for (int c = tid; c < BN * CH; c += nthreads) {
      const int r = c / CH, col = (c % CH) * 8;
      const bool ok = key0 + r < kv_end;
      const int64_t off = ok ? base + r * D + col : 0;
      cp_async16(sK + r * LD + col, cache_layer + off, ok);
      cp_async16(sV + r * LD + col, cache_layer + off + v_off, ok);
    }
    return;
  }
  for (int c = tid; c < BN * CH; c += nthreads) {
    const int r = c / CH, col = (c % CH) * 8, key = key0 + r;
    const bool ok = key < kv_end;
    int64_t off = 0;
    if (ok) {
      const int64_t blk = bt_row[key / tpb];
      off = (blk * 2 * num_kv_heads + kh) * head_stride + static_cast<int64_t>(key % tpb) * D + col;
    }
    cp_async16(sK + r * LD + col, cache_layer + off, ok);
    cp_async16(sV + r * LD + col, cache_layer + off + v_off, ok);
  }
}

// A quantized cache (KV_T = int8 / fp8 e4m3 codes) goes through shared memory twice: cp.async copies
// the raw codes of a tile ([key][D] bytes, 16 codes per copy, zero-filled past kv_end = code 0 =
// value 0) while the previous tile is attended, then widen_kv_codes turns them into T (exact) in the
// [key][D + 8] layout attend_tile reads. The K and V scales are applied by the caller.
template <typename KV_T, int D, int BN>
__device__ __forceinline__ void load_kv_codes(KV_T* rK, KV_T* rV, const KV_T* cache_layer, const int* bt_row,
                                              int key0, int kv_end, int kh, int num_kv_heads, int tpb, int tid,
                                              int nthreads) {
  static_assert(sizeof(KV_T) == 1, "codes are one byte");
  constexpr int CH = D / 16;
  const int64_t head_stride = static_cast<int64_t>(tpb) * D;
  const int64_t v_off = num_kv_heads * head_stride;
  for (int c = tid; c < BN * CH; c += nthreads) {
    const int r = c / CH, col = (c % CH) * 16, key = key0 + r;
    const bool ok = key < kv_end;
    int64_t off = 0;
    if (ok) {
      const int64_t blk = bt_row[key / tpb];
      off = (blk * 2 * num_kv_heads + kh) * head_stride + static_cast<int64_t>(key % tpb) * D + col;
    }
    cp_async16(rK + r * D + col, cache_layer + off, ok);
    cp_async16(rV + r * D + col, cache_layer + off + v_off, ok);
  }
}

template <typename T, typename KV_T, int D, int BN>
__device__ __forceinline__ void widen_kv_codes(T* sK, T* sV, const KV_T* rK, const KV_T* rV, int tid, int nthreads) {
  constexpr int CH = D / 8, LD = D + 8;
  for (int c = tid; c < BN * CH; c += nthreads) {
    const int r = c / CH, col = (c % CH) * 8;
    const Vec<KV_T, 8> kc = load_vec<KV_T, 8>(rK + r * D + col), vc = load_vec<KV_T, 8>(rV + r * D + col);
    Vec<T, 8> k8, v8;
#pragma unroll
    for (int i = 0; i < 8; ++i) { k8.v[i] = code_to<T>(kc.v[i]); v8.v[i] = code_to<T>(vc.v[i]); }
    store_vec<T, 8>(sK + r * LD + col, k8);
    store_vec<T, 8>(sV + r * LD + col, v8);
  }
}

// Shared-memory pipeline of K/V tiles for a cache of element type KV_T: two stages. A float cache
// (KV_T == T) copies tiles straight into two T stages; a code cache copies raw codes into two byte
// stages and widens the current one into a single T tile. `kBytes` is what one pipeline needs.
template <typename T, typename KV_T, int D, int BN>
struct KvPipeline {
  static constexpr bool kCodes = !std::is_same<T, KV_T>::value;
  static constexpr int LD = D + 8, TILE = BN * LD, RAW = BN * D;
  static constexpr int kBytes = kCodes ? 2 * 2 * RAW + 2 * TILE * 2 : 2 * 2 * TILE * 2;
  uint8_t* base;
  __device__ T* tiles() const { return reinterpret_cast<T*>(base + (kCodes ? 2 * 2 * RAW : 0)); }
  __device__ KV_T* raw(int stage) const { return reinterpret_cast<KV_T*>(base) + stage * 2 * RAW; }
  // Start copying keys [key0, key0 + BN) into `stage` (cp.async: commit and wait as for load_kv_tile).
  __device__ void issue(int stage, const KV_T* cache, const int* bt_row, int key0, int kv_end, int kh,
                        int num_kv_heads, int tpb, int tid, int nthreads) const {
    if constexpr (kCodes)
      load_kv_codes<KV_T, D, BN>(raw(stage), raw(stage) + RAW, cache, bt_row, key0, kv_end, kh, num_kv_heads, tpb,
                                 tid, nthreads);
    else
      load_kv_tile<T, D, BN>(tiles() + stage * 2 * TILE, tiles() + stage * 2 * TILE + TILE, cache, bt_row, key0,
                             kv_end, kh, num_kv_heads, tpb, tid, nthreads);
  }
  // Row r of a stage's K / V as copied, before ready() (raw codes, or the T tile of a float cache): where
  // a caller patches in a row it holds itself (the fused decode kernel's new token).
  __device__ KV_T* k_row(int stage, int r) const {
    if constexpr (kCodes) return raw(stage) + r * D;
    else return tiles() + stage * 2 * TILE + r * LD;
  }
  __device__ KV_T* v_row(int stage, int r) const {
    if constexpr (kCodes) return raw(stage) + RAW + r * D;
    else return tiles() + stage * 2 * TILE + TILE + r * LD;
  }
  // The K tile (V follows at + TILE) of a landed stage. For codes this widens them, and the caller
  // must synchronize (the threads that widen are the ones that attend) before reading the tile.
  __device__ const T* ready(int stage, int tid, int nthreads) const {
    if constexpr (kCodes) {
      widen_kv_codes<T, KV_T, D, BN>(tiles(), tiles() + TILE, raw(stage), raw(stage) + RAW, tid, nthreads);
      return tiles();
    } else {
      return tiles() + stage * 2 * TILE;
    }
  }
};

}  // namespace attn
}  // namespace trtdsl
