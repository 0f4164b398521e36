// RMSNorm with optional fused residual add:  r = x + residual;  out = r * rsqrt(mean(r^2) + eps) * w.
// One block per row. The summed row is kept in shared memory as float so the second pass
// (scale and store) does not re-read device memory: the kernel moves each byte once.
#pragma once
#include "trtdsl/common.cuh"
#include "trtdsl/pdl.cuh"

namespace trtdsl {

// The row's first pass, shared by every RMSNorm kernel so their sums agree bit for bit: r = x (+ residual,
// rounded to T and stored to res_out) into row_cache as float, and this thread's share of sum(r^2),
// vector by vector from threadIdx.x in steps of blockDim.x.
template <typename T, int VEC, bool RESIDUAL>
__device__ __forceinline__ float rmsnorm_row_pass(const T* __restrict__ xr, const T* res, T* res_out, float* row_cache,
                                                  int64_t nvec) {
  float sumsq = 0.f;
  for (int64_t i = threadIdx.x; i < nvec; i += blockDim.x) {
    Vec<T, VEC> xv = load_vec<T, VEC>(xr + i * VEC);
    Vec<T, VEC> rv;
    if (RESIDUAL) rv = load_vec<T, VEC>(res + i * VEC);
#pragma unroll
    for (int k = 0; k < VEC; ++k) {
      float val = to_float(xv.v[k]);
      if (RESIDUAL) {
        // The new residual is stored in T, so normalize the rounded value (what the next layer sees).
        rv.v[k] = from_float<T>(val + to_float(rv.v[k]));
        val = to_float(rv.v[k]);
      }
      row_cache[i * VEC + k] = val;
      sumsq += val * val;
    }
    if (RESIDUAL) store_vec<T, VEC>(res_out + i * VEC, rv);
  }
  return sumsq;
}

// Store: how a normalized value leaves the kernel (StoreT, common.cuh; norm_quant.cuh's StoreFp8).
template <typename T, int VEC, bool RESIDUAL, typename Store>
__global__ void rmsnorm_kernel(const T* __restrict__ x, const T* residual, const T* __restrict__ weight,
                               typename Store::Arg out_scale, typename Store::Out* out, T* residual_out,
                               int64_t hidden, int64_t x_stride, int64_t res_stride, int64_t out_stride,
                               int64_t res_out_stride, float eps) {
  extern __shared__ float row_cache[];
  __shared__ float scratch[32];
  pdl_prefetch_l2_range(weight, hidden * static_cast<int64_t>(sizeof(T)));  // to L2 while the predecessor runs
  Store::prefetch(out_scale, hidden);
  pdl_wait();  // x / residual come from the previous kernel, which may still read residual_out (pdl.cuh)
  pdl_launch_dependents();
  const int64_t row = blockIdx.x;
  const T* xr = x + row * x_stride;
  const int64_t nvec = hidden / VEC;
  // This thread's first weight vector, the store's scale and its per-channel constants now, so their
  // latency overlaps the row sum.
  const Store store(out_scale);
  using Channels = typename Store::template Channels<VEC>;
  Vec<T, VEC> w_first;
  Channels c_first{};
  if (threadIdx.x < nvec) {
    w_first = load_vec<T, VEC>(weight + threadIdx.x * VEC);
    c_first = store.template channels<VEC>(threadIdx.x * VEC);
  }
  float sumsq = rmsnorm_row_pass<T, VEC, RESIDUAL>(xr, RESIDUAL ? residual + row * res_stride : nullptr,
                                                   RESIDUAL ? residual_out + row * res_out_stride : nullptr,
                                                   row_cache, nvec);
  sumsq = block_sum(sumsq, scratch);  // its barrier also publishes row_cache
  const float inv = rsqrtf(sumsq / static_cast<float>(hidden) + eps);
  typename Store::Out* outr = out + row * out_stride;
  for (int64_t i = threadIdx.x; i < nvec; i += blockDim.x) {
    const Vec<T, VEC> wv = i == threadIdx.x ? w_first : load_vec<T, VEC>(weight + i * VEC);
    const Channels cv = i == threadIdx.x ? c_first : store.template channels<VEC>(i * VEC);
    Vec<typename Store::Out, VEC> ov;
#pragma unroll
    for (int k = 0; k < VEC; ++k) ov.v[k] = store(row_cache[i * VEC + k] * inv * to_float(wv.v[k]), cv, k);
    store_vec<typename Store::Out, VEC>(outr + i * VEC, ov);
  }
}

// Largest row (in floats) the shared-memory row cache accepts; Hopper allows 227 KB per block.
constexpr int64_t kRmsnormMaxHidden = 48 * 1024;

template <typename T, int VEC, bool RES, typename Store>
int launch_rmsnorm_v(const T* x, const T* res, const T* w, typename Store::Arg scale, typename Store::Out* out, T* res_out,
                     int64_t rows, int64_t hidden, int64_t xs, int64_t rs, int64_t os, int64_t ros, float eps,
                     cudaStream_t stream) {
  const size_t smem = static_cast<size_t>(hidden) * sizeof(float);
  auto kernel = rmsnorm_kernel<T, VEC, RES, Store>;
  if (smem > 48 * 1024 &&
      cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(smem)) !=
          cudaSuccess)
    return kErrLaunch;
  const int64_t nvec = hidden / VEC;
  // The row sum's order (and so every output) depends on the thread count: one rule for every store.
  const int threads = nvec >= 1024 ? 1024 : static_cast<int>(((nvec + 31) / 32) * 32);
  return launch_pdl(kernel, dim3(static_cast<unsigned>(rows)), dim3(threads), smem, stream, x, res, w, scale, out,
                    res_out, hidden, xs, rs, os, ros, eps);
}

// 16-byte input vectors (and output vectors of as many values) when every pointer, stride and the
// hidden size allow them, else scalars. ``scale``: the store's Arg (StoreFp8's input scale, StoreFp8Centered's
// scale and mean; unused by StoreT).
template <typename T, typename Store = StoreT<T>>
int launch_rmsnorm(const T* x, const T* res, const T* w, typename Store::Out* out, T* res_out, int64_t rows,
                   int64_t hidden, int64_t xs, int64_t rs, int64_t os, int64_t ros, float eps, cudaStream_t stream,
                   typename Store::Arg scale = typename Store::Arg{}) {
  constexpr int V = 16 / sizeof(T);
  if (rows == 0) return kOk;
  bool vec = hidden % V == 0 && xs % V == 0 && os % V == 0 && aligned16(x) && aligned16(w) &&
             aligned_to(out, V * sizeof(typename Store::Out)) && Store::aligned(scale, 16);
  if (res) vec = vec && rs % V == 0 && ros % V == 0 && aligned16(res) && aligned16(res_out);
  if (res) {
    return vec ? launch_rmsnorm_v<T, V, true, Store>(x, res, w, scale, out, res_out, rows, hidden, xs, rs, os, ros, eps, stream)
               : launch_rmsnorm_v<T, 1, true, Store>(x, res, w, scale, out, res_out, rows, hidden, xs, rs, os, ros, eps, stream);
  }
  return vec ? launch_rmsnorm_v<T, V, false, Store>(x, res, w, scale, out, res_out, rows, hidden, xs, rs, os, ros, eps, stream)
             : launch_rmsnorm_v<T, 1, false, Store>(x, res, w, scale, out, res_out, rows, hidden, xs, rs, os, ros, eps, stream);
}

}  // namespace trtdsl
