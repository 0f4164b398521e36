// Fused SwiGLU: out[t, j] = silu(in[t, j]) * in[t, inter + j] (gate first, then up, in one row).
// One block per token row; the elementwise math is float, one rounding at the store.
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
  for (int64_t i = threadIdx.x; i < inter / VEC; i += blockDim.x) {
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

template <typename T>
int launch_swiglu(const T* in, T* out, int64_t rows, int64_t inter, int64_t in_stride, int64_t out_stride,
                  cudaStream_t stream) {
  constexpr int V = 16 / sizeof(T);
  if (rows == 0 || inter == 0) return kOk;
  const bool vec = inter % V == 0 && in_stride % V == 0 && out_stride % V == 0 && aligned16(in) && aligned16(out);
  const int64_t n = vec ? inter / V : inter;
  const int threads = n >= 512 ? 512 : static_cast<int>(((n + 31) / 32) * 32);
  return launch_pdl(vec ? swiglu_kernel<T, V> : swiglu_kernel<T, 1>, dim3(static_cast<unsigned>(rows)), dim3(threads),
                    0, stream, in, out, inter, in_stride, out_stride);
}

}  // namespace trtdsl
