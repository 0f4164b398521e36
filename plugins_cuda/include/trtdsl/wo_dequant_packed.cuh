// Dequantize a tile-16 int4 pack (wo_gemv_packed.cuh's layout) into T [rows, k] in the CANONICAL row
// order, for the large-M path (dequantize + cuBLAS): value = code * s (+ z), each step rounded as
// numerics.dequantize_weight / quant_gemm.cuh's dequant_value compute it, so the output is bitwise the
// canonical tensors' dequantization. swiglu packs (gate and up rows interleaved per tile) are written
// back as [gate rows | up rows]. One thread per 16-byte vector (32 codes of one row): four 16-byte stores.
// Included only by src/wo_dequant_packed.cu.
#pragma once
#include "trtdsl/quant_gemm.cuh"

namespace trtdsl {

template <typename T, bool ZP, typename S>
__global__ void wo_dequant_packed_kernel(const uint4* __restrict__ qp, const S* __restrict__ sz,
                                         T* __restrict__ out, int rows, int k, int group, int num_groups,
                                         bool swiglu) {
  const int kbs = k >> 7;
  const int64_t vec = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;  // (tile, kb, h, lane)
  const int tiles = (rows + 15) / 16;
  if (vec >= static_cast<int64_t>(tiles) * kbs * 64) return;
  const int lane = static_cast<int>(vec & 31), h = static_cast<int>((vec >> 5) & 1);
  const int kb = static_cast<int>((vec >> 6) % kbs), tile = static_cast<int>((vec >> 6) / kbs);
  const int g = lane >> 2, t = lane & 3, r = 8 * h + g;
  const int row = swiglu ? (h ? rows / 2 : 0) + 8 * tile + g : 16 * tile + r;
  if ((swiglu ? 16 * tile + r : row) >= rows) return;  // padding rows of the last tile
  const uint4 v = qp[vec];
  constexpr int kSz = ZP ? 4 : 2;
#pragma unroll
  for (int w = 0; w < 4; ++w) {
    const int k0 = 128 * kb + 32 * w + 8 * t;
    const int grp = group ? k0 / group : 0;
    const S* p = sz + ((static_cast<int64_t>(tile) * num_groups + grp) * 8 + g) * kSz;
    const float s = to_float(p[h]);
    float code[8];
    dequant8<4>(v, w, code);  // word w's 8 codes in k order
    Vec<T, 8> o;
#pragma unroll
    for (int j = 0; j < 8; ++j) {
      float val = __fmul_rn(code[j], s);
      if constexpr (ZP) val = __fadd_rn(val, to_float(p[2 + h]));
      o.v[j] = from_float<T>(val);
    }
    store_vec<T, 8>(out + static_cast<int64_t>(row) * k + k0, o);
  }
}

template <typename T, typename S>
int launch_wo_dequant_packed(const void* qp, const void* sz, bool zeros, T* out, int rows, int k, int group,
                             int num_groups, bool swiglu, cudaStream_t stream) {
  const int64_t vecs = static_cast<int64_t>((rows + 15) / 16) * (k >> 7) * 64;
  const int threads = 256;
  const auto blocks = static_cast<unsigned>((vecs + threads - 1) / threads);
  const auto* q = static_cast<const uint4*>(qp);
  const auto* s = static_cast<const S*>(sz);
  if (zeros)
    wo_dequant_packed_kernel<T, true, S><<<blocks, threads, 0, stream>>>(q, s, out, rows, k, group, num_groups, swiglu);
  else
    wo_dequant_packed_kernel<T, false, S><<<blocks, threads, 0, stream>>>(q, s, out, rows, k, group, num_groups, swiglu);
  return launch_status();
}

}  // namespace trtdsl
