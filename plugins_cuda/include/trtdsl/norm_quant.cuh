// RMSNorm (optionally after a residual add) and SwiGLU writing e4m3 codes of y / input_scale: the static
// fp8 GEMM's activation quantizer fused into the kernel that makes its input (one launch instead of two).
//
// Bitwise contract: the codes equal trtdsl_quantize_fp8 applied to what rmsnorm.cuh / swiglu.cuh write
// for the same inputs. So each value is computed with the same expression, thread count and vector
// width as there (the RMSNorm row sum's order depends on both), rounded to T as that kernel stores it,
// widened back, then divided with IEEE division (__fdiv_rn) and converted saturating at +-448, as
// quantize_fp8_kernel does. The sum output of the residual variant is stored in T like rmsnorm.cuh's.
#pragma once
#include "trtdsl/common.cuh"
#include "trtdsl/fp8_code.cuh"
#include "trtdsl/pdl.cuh"
#include "trtdsl/swiglu.cuh"

namespace trtdsl {

template <typename T, int VEC, bool RESIDUAL>
__global__ void rmsnorm_fp8_kernel(const T* __restrict__ x, const T* residual, const T* __restrict__ weight,
                                   const float* __restrict__ input_scale, Fp8* __restrict__ out, T* residual_out,
                                   int64_t hidden, int64_t x_stride, int64_t res_stride, int64_t out_stride,
                                   int64_t res_out_stride, float eps) {
  extern __shared__ float row_cache[];
  __shared__ float scratch[32];
  pdl_prefetch_l2_range(weight, hidden * static_cast<int64_t>(sizeof(T)));  // to L2 while the predecessor runs
  if (threadIdx.x == 0) pdl_prefetch_l2(input_scale);
  pdl_wait();  // x / residual come from the previous kernel, which may still read residual_out (pdl.cuh)
  pdl_launch_dependents();
  const int64_t row = blockIdx.x;
  const T* xr = x + row * x_stride;
  const int64_t nvec = hidden / VEC;
  // This thread's first weight vector (and the scale) now, so their latency overlaps the row sum.
  Vec<T, VEC> w_first;
  if (threadIdx.x < nvec) w_first = load_vec<T, VEC>(weight + threadIdx.x * VEC);
  const float s = __ldg(input_scale);
  float sumsq = 0.f;
  for (int64_t i = threadIdx.x; i < nvec; i += blockDim.x) {
    Vec<T, VEC> xv = load_vec<T, VEC>(xr + i * VEC);
    Vec<T, VEC> rv;
    if (RESIDUAL) rv = load_vec<T, VEC>(residual + row * res_stride + i * VEC);
#pragma unroll
    for (int k = 0; k < VEC; ++k) {
      float val = to_float(xv.v[k]);
      if (RESIDUAL) {  // normalize the sum as stored in T, as rmsnorm_kernel does
        rv.v[k] = from_float<T>(val + to_float(rv.v[k]));
        val = to_float(rv.v[k]);
      }
      row_cache[i * VEC + k] = val;
      sumsq += val * val;
    }
    if (RESIDUAL) store_vec<T, VEC>(residual_out + row * res_out_stride + i * VEC, rv);
  }
  sumsq = block_sum(sumsq, scratch);  // its barrier also publishes row_cache
  const float inv = rsqrtf(sumsq / static_cast<float>(hidden) + eps);
  Fp8* outr = out + row * out_stride;
  for (int64_t i = threadIdx.x; i < nvec; i += blockDim.x) {
    const Vec<T, VEC> wv = i == threadIdx.x ? w_first : load_vec<T, VEC>(weight + i * VEC);
    Vec<Fp8, VEC> ov;
#pragma unroll
    for (int k = 0; k < VEC; ++k) ov.v[k] = quantize_rounded<T>(row_cache[i * VEC + k] * inv * to_float(wv.v[k]), s);
    store_vec<Fp8, VEC>(outr + i * VEC, ov);
  }
}

template <typename T, int VEC, bool RES>
int launch_rmsnorm_fp8_v(const T* x, const T* res, const T* w, const float* scale, Fp8* out, T* res_out,
                         int64_t rows, int64_t hidden, int64_t xs, int64_t rs, int64_t os, int64_t ros, float eps,
                         cudaStream_t stream) {
  const size_t smem = static_cast<size_t>(hidden) * sizeof(float);
  auto kernel = rmsnorm_fp8_kernel<T, VEC, RES>;
  if (smem > 48 * 1024 &&
      cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(smem)) !=
          cudaSuccess)
    return kErrLaunch;
  const int64_t nvec = hidden / VEC;
  // The thread count of launch_rmsnorm_v: the row sum's order (and so the codes) depends on it.
  const int threads = nvec >= 1024 ? 1024 : static_cast<int>(((nvec + 31) / 32) * 32);
  return launch_pdl(kernel, dim3(static_cast<unsigned>(rows)), dim3(threads), smem, stream, x, res, w, scale, out,
                    res_out, hidden, xs, rs, os, ros, eps);
}

inline bool aligned_to(const void* p, uintptr_t bytes) { return (reinterpret_cast<uintptr_t>(p) % bytes) == 0; }

// 16-byte input vectors (and VEC-byte code vectors) where pointers, strides and the size allow, as
// launch_rmsnorm decides for the same inputs; else scalars.
template <typename T>
int launch_rmsnorm_fp8(const T* x, const T* res, const T* w, const float* scale, Fp8* out, T* res_out, int64_t rows,
                       int64_t hidden, int64_t xs, int64_t rs, int64_t os, int64_t ros, float eps,
                       cudaStream_t stream) {
  constexpr int V = 16 / sizeof(T);
  if (rows == 0) return kOk;
  bool vec = hidden % V == 0 && xs % V == 0 && os % V == 0 && aligned16(x) && aligned16(w) && aligned_to(out, V);
  if (res) vec = vec && rs % V == 0 && ros % V == 0 && aligned16(res) && aligned16(res_out);
  if (res) {
    return vec ? launch_rmsnorm_fp8_v<T, V, true>(x, res, w, scale, out, res_out, rows, hidden, xs, rs, os, ros, eps, stream)
               : launch_rmsnorm_fp8_v<T, 1, true>(x, res, w, scale, out, res_out, rows, hidden, xs, rs, os, ros, eps, stream);
  }
  return vec ? launch_rmsnorm_fp8_v<T, V, false>(x, res, w, scale, out, res_out, rows, hidden, xs, rs, os, ros, eps, stream)
             : launch_rmsnorm_fp8_v<T, 1, false>(x, res, w, scale, out, res_out, rows, hidden, xs, rs, os, ros, eps, stream);
}

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
