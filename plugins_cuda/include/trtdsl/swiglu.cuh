// Fused SwiGLU: out[t, j] = silu(in[t, j]) * in[t, inter + j] (gate first, then up, in one row).
// Grid (token rows, chunks of a row): a decode step has one row of 14336 values (Llama-3-8B), which
// one block walked in ~3 us; chunks of kSwigluChunkThreads vectors (one per thread) spread it over
// ~14 SMs. The elementwise math is float, one rounding at the store, so the split changes no value.
#pragma once
#include "trtdsl/common.cuh"
#include "trtdsl/pdl.cuh"

namespace trtdsl {

template <typename T, int VEC>
__global__ void swiglu_kernel(const T* __restrict__ in, T* __restrict__ out, int64_t inter, int64_t in_stride,
                              int64_t out_stride) {
  pdl_wait();  // in is the previous kernel's output (pdl.cuh)
  pdl_launch_dependents();
  const T* gate = in + static_cast<int64_t>(blockIdx.x) * in_stride;
  const T* up = gate + inter;
  T* o = out + static_cast<int64_t>(blockIdx.x) * out_stride;
  const int64_t stride = static_cast<int64_t>(blockDim.x) * gridDim.y;
  for (int64_t i = static_cast<int64_t>(blockIdx.y) * blockDim.x + threadIdx.x; i < inter / VEC; i += stride) {
    const Vec<T, VEC> g = load_vec<T, VEC>(gate + i * VEC), u = load_vec<T, VEC>(up + i * VEC);
    Vec<T, VEC> r;
#pragma unroll
    for (int k = 0; k < VEC; ++k) {
      const float gf = to_float(g.v[k]);
      r.v[k] = from_float<T>(gf / (1.f + __expf(-gf)) * to_float(u.v[k]));
    }
    store_vec<T, VEC>(o + i * VEC, r);
  }
}

// Threads per block of the SwiGLU kernels (and of swiglu_fp8_kernel, norm_quant.cuh).
constexpr int kSwigluChunkThreads = 128;

// Launch shape of the SwiGLU kernels for rows of n vectors: (rows, chunks) blocks of up to
// kSwigluChunkThreads threads, at most 64 chunks per row (longer rows loop).
inline void swiglu_grid(int64_t rows, int64_t n, dim3& grid, dim3& block) {
  const int threads = n >= kSwigluChunkThreads ? kSwigluChunkThreads : static_cast<int>(((n + 31) / 32) * 32);
  const int64_t chunks = (n + threads - 1) / threads;
  grid = dim3(static_cast<unsigned>(rows), static_cast<unsigned>(chunks < 64 ? chunks : 64));
  block = dim3(threads);
}

template <typename T>
int launch_swiglu(const T* in, T* out, int64_t rows, int64_t inter, int64_t in_stride, int64_t out_stride,
                  cudaStream_t stream) {
  constexpr int V = 16 / sizeof(T);
  if (rows == 0 || inter == 0) return kOk;
  const bool vec = inter % V == 0 && in_stride % V == 0 && out_stride % V == 0 && aligned16(in) && aligned16(out);
  dim3 grid, block;
  swiglu_grid(rows, vec ? inter / V : inter, grid, block);
  return launch_pdl(vec ? swiglu_kernel<T, V> : swiglu_kernel<T, 1>, grid, block, 0, stream, in, out, inter,
                    in_stride, out_stride);
}

}  // namespace trtdsl
