// RMSNorm (optionally after a residual add) and SwiGLU writing e4m3 codes of y / input_scale: the static
// fp8 GEMM's activation quantizer fused into the kernel that makes its input (one launch instead of two).
//
// Bitwise contract: the codes equal trtdsl_quantize_fp8 applied to what rmsnorm.cuh / swiglu.cuh write
// for the same inputs, because they are those files' own kernels and launchers with another store
// (StoreFp8 instead of StoreT): each value is rounded to T as the plain kernel stores it, widened back,
// then divided with IEEE division (__fdiv_rn) and converted saturating at +-448, as quantize_fp8_kernel
// does (fp8_code.cuh).
#pragma once
#include "trtdsl/common.cuh"
#include "trtdsl/fp8_code.cuh"
#include "trtdsl/pdl.cuh"
#include "trtdsl/rmsnorm.cuh"
#include "trtdsl/swiglu.cuh"

namespace trtdsl {

// The store of the e4m3 codes of each T value / *scale (launch_rmsnorm / launch_swiglu<T, StoreFp8<T>>).
template <typename T> struct StoreFp8 {
  using Out = Fp8;
  using Arg = const float*;
  template <int VEC> using Channels = NoChannels;
  float scale;
  __device__ static void prefetch(Arg s, int64_t = 0) { if (threadIdx.x == 0) pdl_prefetch_l2(s); }  // a constant
  static bool aligned(Arg, uintptr_t) { return true; }
  __device__ explicit StoreFp8(Arg s) : scale(__ldg(s)) {}
  template <int VEC> __device__ NoChannels channels(int64_t) const { return {}; }
  __device__ Out operator()(float y) const { return quantize_rounded<T>(y, scale); }
  __device__ Out operator()(float y, NoChannels, int) const { return quantize_rounded<T>(y, scale); }
};

// The input scale and the per-channel mean [hidden] (in T) of a centered fp8 GEMM input.
template <typename T> struct CenteredFp8Arg {
  const float* scale;
  const T* mean;
};

// e4m3 codes of (y - mean[col]) / *scale with both roundings of the unfused graph: y rounded to T (the
// norm's stored value), the difference rounded to T (the subtraction layer's), then quantize_rounded.
// The mean goes to L2 before pdl_wait and into registers as vectors with the norm's weight (Channels),
// so its latency overlaps the row sum instead of following it.
template <typename T> struct StoreFp8Centered {
  using Out = Fp8;
  using Arg = CenteredFp8Arg<T>;
  template <int VEC> using Channels = Vec<T, VEC>;
  float scale;
  const T* mean;
  __device__ static void prefetch(Arg a, int64_t channels = 0) {
    if (threadIdx.x == 0) pdl_prefetch_l2(a.scale);
    pdl_prefetch_l2_range(a.mean, channels * static_cast<int64_t>(sizeof(T)));
  }
  static bool aligned(Arg a, uintptr_t bytes) { return aligned_to(a.mean, bytes); }
  __device__ explicit StoreFp8Centered(Arg a) : scale(__ldg(a.scale)), mean(a.mean) {}
  template <int VEC> __device__ Vec<T, VEC> channels(int64_t col0) const { return load_vec<T, VEC>(mean + col0); }
  template <int VEC> __device__ Out operator()(float y, const Vec<T, VEC>& m, int k) const {
    return quantize_rounded<T>(to_float<T>(from_float<T>(y)) - to_float<T>(m.v[k]), scale);
  }
};

// out[t, j] = codes of silu(in[t, j]) * in[t, inter + j] / *scale: swiglu.cuh's kernel and launcher with
// the store StoreFp8.
template <typename T>
int launch_swiglu_fp8(const T* in, const float* scale, Fp8* out, int64_t rows, int64_t inter, int64_t in_stride,
                      int64_t out_stride, cudaStream_t stream) {
  return launch_swiglu<T, StoreFp8<T>>(in, out, rows, inter, in_stride, out_stride, stream, scale);
}

}  // namespace trtdsl
