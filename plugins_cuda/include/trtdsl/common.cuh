// Shared helpers of the trtdsl CUDA kernels: status codes, dtype codes, conversions, vector access.
// Framework-free on purpose: TensorRT plugins and the torch bindings include the same headers.
#pragma once
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>
#include <stdint.h>

namespace trtdsl {

// Status codes returned by every launcher (mirrored in trtdsl/plugins/cuda/_lib.py).
enum Status : int {
  kOk = 0,
  kErrNullPointer = 1,
  kErrDtype = 2,
  kErrHeadDim = 3,
  kErrShape = 4,
  kErrLaunch = 5,
  kErrWorkspace = 6,
  kErrUnsupported = 7,
};

// dtype codes of the C ABI. fp8/int8 K/V codes are reserved for the quantized-cache hook.
enum DType : int { kFloat32 = 0, kFloat16 = 1, kBFloat16 = 2, kFp8E4M3 = 3, kInt8 = 4 };

template <typename T> __device__ __forceinline__ float to_float(T v);
template <> __device__ __forceinline__ float to_float<float>(float v) { return v; }
template <> __device__ __forceinline__ float to_float<__half>(__half v) { return __half2float(v); }
template <> __device__ __forceinline__ float to_float<__nv_bfloat16>(__nv_bfloat16 v) {
  return __bfloat162float(v);
}

template <typename T> __device__ __forceinline__ T from_float(float v);
template <> __device__ __forceinline__ float from_float<float>(float v) { return v; }
template <> __device__ __forceinline__ __half from_float<__half>(float v) { return __float2half_rn(v); }
template <> __device__ __forceinline__ __nv_bfloat16 from_float<__nv_bfloat16>(float v) {
  return __float2bfloat16_rn(v);
}

// N elements moved as one aligned access (16 bytes when N * sizeof(T) == 16).
template <typename T, int N> struct alignas(sizeof(T) * N) Vec {
  T v[N];
};

template <typename T, int N> __device__ __forceinline__ Vec<T, N> load_vec(const T* p) {
  return *reinterpret_cast<const Vec<T, N>*>(p);
}
template <typename T, int N> __device__ __forceinline__ void store_vec(T* p, const Vec<T, N>& x) {
  *reinterpret_cast<Vec<T, N>*>(p) = x;
}

__device__ __forceinline__ float warp_sum(float v) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}

// Sum over the whole block; every thread gets the result. `scratch` holds 32 floats.
__device__ __forceinline__ float block_sum(float v, float* scratch) {
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  v = warp_sum(v);
  if (lane == 0) scratch[warp] = v;
  __syncthreads();
  const int nwarps = (blockDim.x + 31) >> 5;
  v = lane < nwarps ? scratch[lane] : 0.f;
  v = warp_sum(v);
  __syncthreads();  // scratch may be reused right after
  return v;
}

inline bool aligned16(const void* p) { return (reinterpret_cast<uintptr_t>(p) & 15u) == 0; }
inline bool aligned_to(const void* p, uintptr_t bytes) { return (reinterpret_cast<uintptr_t>(p) % bytes) == 0; }

// How a kernel's float result leaves it (the `Store` of the RMSNorm and SwiGLU kernels): rounded to T.
// norm_quant.cuh's StoreFp8 stores the e4m3 codes of that T value / scale instead, so a quantizing
// kernel is the plain one with another store, and its codes are the plain values quantized, bitwise.
// Arg: what the kernel passes the store's constructor (and prefetch). Channels<VEC>: per-channel constants
// of VEC consecutive columns that the RMSNorm kernel loads once per vector, early, with the norm's weight
// (none here; StoreFp8Centered's mean), and hands to the store with each value.
struct NoChannels {};

template <typename T> struct StoreT {
  using Out = T;
  using Arg = const float*;
  template <int VEC> using Channels = NoChannels;
  __device__ static void prefetch(Arg, int64_t = 0) {}  // the store's constants, before pdl_wait (none here)
  static bool aligned(Arg, uintptr_t) { return true; }   // host: may the kernel load Channels as vectors?
  __device__ explicit StoreT(Arg) {}
  template <int VEC> __device__ NoChannels channels(int64_t) const { return {}; }
  __device__ Out operator()(float y) const { return from_float<T>(y); }
  __device__ Out operator()(float y, NoChannels, int) const { return from_float<T>(y); }
};

inline int launch_status() { return cudaGetLastError() == cudaSuccess ? kOk : kErrLaunch; }

}  // namespace trtdsl
