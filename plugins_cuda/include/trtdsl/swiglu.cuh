// Fused SwiGLU: out[t, j] = silu(in[t, j]) * in[t, inter + j] (gate first, then up, in one row).
// Grid (token rows, chunks of a row): a decode step has one row of 14336 values (Llama-3-8B), which
// one block walked in ~3 us; chunks of kSwigluChunkThreads vectors (one per thread) spread it over
// ~14 SMs. The elementwise math is float, one rounding at the store, so the split changes no value.
#pragma once
#include "trtdsl/common.cuh"
#include "trtdsl/pdl.cuh"

namespace trtdsl {

// Store: StoreT (T values) or norm_quant.cuh's StoreFp8 (e4m3 codes of those values / *out_scale).
template <typename T, int VEC, typename Store>
__global__ void swiglu_kernel(const T* __restrict__ in, const float* __restrict__ out_scale,
                              typename Store::Out* __restrict__ out, int64_t inter, int64_t in_stride,
                              int64_t out_stride) {
  Store::prefetch(out_scale);
  pdl_wait();  // in is the previous kernel's output (pdl.cuh)
  pdl_launch_dependents();
  const Store store(out_scale);
  const T* gate = in + static_cast<int64_t>(blockIdx.x) * in_stride;
  const T* up = gate + inter;
  typename Store::Out* o = out + static_cast<int64_t>(blockIdx.x) * out_stride;
  const int64_t stride = static_cast<int64_t>(blockDim.x) * gridDim.y;
  for (int64_t i = static_cast<int64_t>(blockIdx.y) * blockDim.x + threadIdx.x; i < inter / VEC; i += stride) {
    const Vec<T, VEC> g = load_vec<T, VEC>(gate + i * VEC), u = load_vec<T, VEC>(up + i * VEC);
    Vec<typename Store::Out, VEC> r;
#pragma unroll
    for (int k = 0; k < VEC; ++k) {
      const float gf = to_float(g.v[k]);
      r.v[k] = store(gf / (1.f + __expf(-gf)) * to_float(u.v[k]));
    }
    store_vec<typename Store::Out, VEC>(o + i * VEC, r);
  }
}

// Threads per block of the SwiGLU kernels.
constexpr int kSwigluChunkThreads = 128;

// Launch shape of the SwiGLU kernels for rows of n vectors: (rows, chunks) blocks of up to
// kSwigluChunkThreads threads, at most 64 chunks per row (longer rows loop).
inline void swiglu_grid(int64_t rows, int64_t n, dim3& grid, dim3& block) {
  const int threads = n >= kSwigluChunkThreads ? kSwigluChunkThreads : static_cast<int>(((n + 31) / 32) * 32);
  const int64_t chunks = (n + threads - 1) / threads;
  grid = dim3(static_cast<unsigned>(rows), static_cast<unsigned>(chunks < 64 ? chunks : 64));
  block = dim3(threads);
}

// 16-byte input vectors (and output vectors of as many values) when the pointers, strides and inter
// allow them, else scalars. ``scale``: the store's (StoreFp8's input scale; unused by StoreT).
template <typename T, typename Store = StoreT<T>>
int launch_swiglu(const T* in, typename Store::Out* out, int64_t rows, int64_t inter, int64_t in_stride,
                  int64_t out_stride, cudaStream_t stream, const float* scale = nullptr) {
  constexpr int V = 16 / sizeof(T);
  if (rows == 0 || inter == 0) return kOk;
  const bool vec = inter % V == 0 && in_stride % V == 0 && out_stride % V == 0 && aligned16(in) &&
                   aligned_to(out, V * sizeof(typename Store::Out));
  dim3 grid, block;
  swiglu_grid(rows, vec ? inter / V : inter, grid, block);
  return launch_pdl(vec ? swiglu_kernel<T, V, Store> : swiglu_kernel<T, 1, Store>, grid, block, 0, stream, in, scale,
                    out, inter, in_stride, out_stride);
}

}  // namespace trtdsl
