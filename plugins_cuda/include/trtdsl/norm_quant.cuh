// RMSNorm (optionally after a residual add) and SwiGLU writing e4m3 codes of y / input_scale: the static
// fp8 GEMM's activation quantizer fused into the kernel that makes its input (one launch instead of two).
//
// Bitwise contract: the codes equal trtdsl_quantize_fp8 applied to what rmsnorm.cuh / swiglu.cuh write
// for the same inputs. The RMSNorm is rmsnorm.cuh's own kernel and launcher with another store
// (StoreFp8); SwiGLU uses swiglu.cuh's expression. Each value is rounded to T as the plain kernel
// stores it, widened back, then divided with IEEE division (__fdiv_rn) and converted saturating at
// +-448, as quantize_fp8_kernel does (fp8_code.cuh).
#pragma once
#include "trtdsl/common.cuh"
#include "trtdsl/fp8_code.cuh"
#include "trtdsl/pdl.cuh"
#include "trtdsl/rmsnorm.cuh"
#include "trtdsl/swiglu.cuh"

namespace trtdsl {

// rmsnorm.cuh's kernel storing the e4m3 codes of each T value / *scale (launch_rmsnorm<T, StoreFp8<T>>).
template <typename T> struct StoreFp8 {
  using Out = Fp8;
  float scale;
  __device__ static void prefetch(const float* s) { if (threadIdx.x == 0) pdl_prefetch_l2(s); }  // a constant
  __device__ explicit StoreFp8(const float* s) : scale(__ldg(s)) {}
  __device__ Out operator()(float y) const { return quantize_rounded<T>(y, scale); }
};

// out[t, j] = codes of silu(in[t, j]) * in[t, inter + j] / input_scale; swiglu_kernel's expression.
template <typename T, int VEC>
__global__ void swiglu_fp8_kernel(const T* __restrict__ in, const float* __restrict__ input_scale,
                                  Fp8* __restrict__ out, int64_t inter, int64_t in_stride, int64_t out_stride) {
  if (threadIdx.x == 0) pdl_prefetch_l2(input_scale);
  pdl_wait();  // in is the previous kernel's output (pdl.cuh)
  pdl_launch_dependents();
  const float s = __ldg(input_scale);
  const T* gate = in + static_cast<int64_t>(blockIdx.x) * in_stride;
  const T* up = gate + inter;
  Fp8* o = out + static_cast<int64_t>(blockIdx.x) * out_stride;
  const int64_t stride = static_cast<int64_t>(blockDim.x) * gridDim.y;  // grid: swiglu_grid (swiglu.cuh)
  for (int64_t i = static_cast<int64_t>(blockIdx.y) * blockDim.x + threadIdx.x; i < inter / VEC; i += stride) {
    const Vec<T, VEC> g = load_vec<T, VEC>(gate + i * VEC), u = load_vec<T, VEC>(up + i * VEC);
    Vec<Fp8, VEC> r;
#pragma unroll
    for (int k = 0; k < VEC; ++k) {
      const float gf = to_float(g.v[k]);
      r.v[k] = quantize_rounded<T>(gf / (1.f + __expf(-gf)) * to_float(u.v[k]), s);
    }
    store_vec<Fp8, VEC>(o + i * VEC, r);
  }
}

template <typename T>
int launch_swiglu_fp8(const T* in, const float* scale, Fp8* out, int64_t rows, int64_t inter, int64_t in_stride,
                      int64_t out_stride, cudaStream_t stream) {
  constexpr int V = 16 / sizeof(T);
  if (rows == 0 || inter == 0) return kOk;
  const bool vec = inter % V == 0 && in_stride % V == 0 && out_stride % V == 0 && aligned16(in) && aligned_to(out, V);
  dim3 grid, block;
  swiglu_grid(rows, vec ? inter / V : inter, grid, block);
  return launch_pdl(vec ? swiglu_fp8_kernel<T, V> : swiglu_fp8_kernel<T, 1>, grid, block, 0, stream, in, scale, out,
                    inter, in_stride, out_stride);
}

}  // namespace trtdsl
