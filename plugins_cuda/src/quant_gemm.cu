// C launchers of the quantized GEMM kernels (quant_gemm.cuh): validate, dispatch on dtype / bits, launch.
#include "trtdsl/plugins.h"
#include "trtdsl/quant_gemm.cuh"

using namespace trtdsl;

namespace {

constexpr int64_t kMaxInt = 0x7fffffff;

// group_size 0 (per-channel) is one group spanning the row.
inline bool resolve_group(int64_t k, int& group, int num_groups) {
  if (group == 0) group = static_cast<int>(k);
  return group > 0 && num_groups == (k + group - 1) / group;
}

}  // namespace

extern "C" int trtdsl_weight_only_gemv_zp(const void* x, const void* qweight, const float* scales,
                                          const float* zeros, void* out, int64_t m, int64_t n, int64_t k, int bits,
                                          int group_size, int num_groups, int config, int dtype,
                                          cudaStream_t stream) {
  if (!x || !qweight || !scales || !out) return kErrNullPointer;
  if (m < 1 || n < 1 || k < 1 || n > kMaxInt || k > kMaxInt || !resolve_group(k, group_size, num_groups))
    return kErrShape;
  const int mi = static_cast<int>(m), ni = static_cast<int>(n), ki = static_cast<int>(k);
  if (bits == 4 && config >= kWoTc1FirstConfig && config <= kWoTc1LastConfig) {  // the one-row kernel (1..8 rows)
#define TRTDSL_TC1(T)                                                                                             \
  {                                                                                                               \
    const int st = zeros ? launch_wo_gemv_tc1<T, true>(static_cast<const T*>(x), qweight, scales, zeros,          \
                                                      static_cast<T*>(out), mi, ni, ki, group_size, num_groups,   \
                                                      config, stream)                                             \
                         : launch_wo_gemv_tc1<T, false>(static_cast<const T*>(x), qweight, scales, nullptr,       \
                                                       static_cast<T*>(out), mi, ni, ki, group_size, num_groups,  \
                                                       config, stream);                                           \
    if (st != kErrUnsupported) return st;                                                                         \
  }
    if (dtype == kFloat16) TRTDSL_TC1(__half)
    else if (dtype == kBFloat16) TRTDSL_TC1(__nv_bfloat16)
    else return kErrDtype;
#undef TRTDSL_TC1
    config = kWoTc1Fallback;  // a shape the one-row kernel does not take: the general tensor-core kernel
  }
  if (bits == 4 && config >= kWoTcFirstConfig) {  // the tensor-core kernel
#define TRTDSL_TC(T)                                                                                              \
  return zeros ? launch_wo_gemv_tc<T, true>(static_cast<const T*>(x), qweight, scales, zeros, static_cast<T*>(out), \
                                            mi, ni, ki, group_size, num_groups, config, stream)                   \
               : launch_wo_gemv_tc<T, false>(static_cast<const T*>(x), qweight, scales, nullptr,                  \
                                             static_cast<T*>(out), mi, ni, ki, group_size, num_groups, config, stream)
    if (dtype == kFloat16) TRTDSL_TC(__half);
    if (dtype == kBFloat16) TRTDSL_TC(__nv_bfloat16);
#undef TRTDSL_TC
    return kErrDtype;
  }
#define TRTDSL_GEMV(T, B)                                                                                        \
  return zeros ? launch_wo_gemv<T, B, true>(static_cast<const T*>(x), qweight, scales, zeros, static_cast<T*>(out), \
                                            mi, ni, ki, group_size, num_groups, config, stream)                   \
               : launch_wo_gemv<T, B, false>(static_cast<const T*>(x), qweight, scales, nullptr,                  \
                                             static_cast<T*>(out), mi, ni, ki, group_size, num_groups, config, stream)
  if (bits == 8) {
    if (dtype == kFloat16) TRTDSL_GEMV(__half, 8);
    if (dtype == kBFloat16) TRTDSL_GEMV(__nv_bfloat16, 8);
  } else if (bits == 4) {
    if (dtype == kFloat16) TRTDSL_GEMV(__half, 4);
    if (dtype == kBFloat16) TRTDSL_GEMV(__nv_bfloat16, 4);
  } else {
    return kErrUnsupported;
  }
#undef TRTDSL_GEMV
  return kErrDtype;
}

extern "C" int trtdsl_weight_only_gemv(const void* x, const void* qweight, const float* scales, void* out,
                                       int64_t m, int64_t n, int64_t k, int bits, int group_size,
                                       int num_groups, int dtype, cudaStream_t stream) {
  return trtdsl_weight_only_gemv_zp(x, qweight, scales, nullptr, out, m, n, k, bits, group_size, num_groups, 0,
                                    dtype, stream);
}

extern "C" int trtdsl_weight_only_gemv_packed_norm(const void* x, const void* qpacked, const void* sz, int has_zeros,
                                                   int sz_half, void* out, int64_t m, int64_t n, int64_t k,
                                                   int group_size, int num_groups, int swiglu, int config, int dtype,
                                                   const void* residual, const void* gamma, void* scaled,
                                                   float* ssq_out, const float* ssq_in, int64_t ssq_tiles, float eps,
                                                   cudaStream_t stream) {
  if (!x || !qpacked || !sz || !out) return kErrNullPointer;
  if (m < 1 || m > 8 || n < 1 || n > kMaxInt / 2 || k < 128 || k > kMaxInt || k % 128 ||
      !resolve_group(k, group_size, num_groups) || (swiglu && n % 8))
    return kErrShape;
  if (group_size != 64 && group_size % 128) return kErrUnsupported;
  if (config < 0 || config >= kWoPackedConfigs) return kErrUnsupported;
  const uintptr_t sz_align = (has_zeros ? 16 : 8) / (sz_half ? 2 : 1);  // one row pair's vector of a group
  if (!aligned16(x) || !aligned16(qpacked) || reinterpret_cast<uintptr_t>(sz) % sz_align) return kErrUnsupported;
  const bool producer = residual || gamma || scaled || ssq_out;
  if (producer && (!residual || !gamma || !scaled || !ssq_out)) return kErrNullPointer;  // all four or none
  if (producer && swiglu) return kErrUnsupported;  // the SwiGLU's outputs are not a residual stream
  if (ssq_in && (ssq_tiles * 16 != k || !(eps >= 0.f))) return kErrShape;
  const int mi = static_cast<int>(m), ni = static_cast<int>(n), ki = static_cast<int>(k);
#define TRTDSL_PACKED(T, S)                                                                                        \
  {                                                                                                                \
    PackedNorm<T> norm;                                                                                            \
    norm.residual = static_cast<const T*>(residual);                                                               \
    norm.gamma = static_cast<const T*>(gamma);                                                                     \
    norm.scaled = static_cast<T*>(scaled);                                                                         \
    norm.ssq_out = ssq_out;                                                                                        \
    norm.ssq_in = ssq_in;                                                                                          \
    norm.ssq_tiles = static_cast<int>(ssq_in ? ssq_tiles : 0);                                                     \
    norm.eps = eps;                                                                                                \
    return launch_wo_gemv_packed<T, S>(static_cast<const T*>(x), qpacked, sz, has_zeros != 0, static_cast<T*>(out), \
                                       mi, ni, ki, group_size, num_groups, swiglu != 0, config, norm, stream);      \
  }
  if (dtype == kFloat16) {
    if (sz_half) TRTDSL_PACKED(__half, __half);
    TRTDSL_PACKED(__half, float);
  }
  if (dtype == kBFloat16) {
    if (sz_half) TRTDSL_PACKED(__nv_bfloat16, __half);
    TRTDSL_PACKED(__nv_bfloat16, float);
  }
#undef TRTDSL_PACKED
  return kErrDtype;
}

extern "C" int trtdsl_weight_only_gemv_packed(const void* x, const void* qpacked, const void* sz, int has_zeros,
                                              int sz_half, void* out, int64_t m, int64_t n, int64_t k, int group_size,
                                              int num_groups, int swiglu, int config, int dtype,
                                              cudaStream_t stream) {
  return trtdsl_weight_only_gemv_packed_norm(x, qpacked, sz, has_zeros, sz_half, out, m, n, k, group_size, num_groups,
                                             swiglu, config, dtype, nullptr, nullptr, nullptr, nullptr, nullptr, 0,
                                             0.f, stream);
}

extern "C" int trtdsl_weight_only_dequantize_zp(const void* qweight, const float* scales, const float* zeros,
                                                void* out, int64_t n, int64_t k, int bits, int group_size,
                                                int num_groups, int dtype, cudaStream_t stream) {
  if (!qweight || !scales || !out) return kErrNullPointer;
  if (n < 0 || k < 1 || k > kMaxInt || (bits == 4 && k % 2) || !resolve_group(k, group_size, num_groups))
    return kErrShape;
  if (n == 0) return kOk;
  const int8_t* q = static_cast<const int8_t*>(qweight);
  const int ni = static_cast<int>(n), ki = static_cast<int>(k);
#define TRTDSL_DQ(T, B) \
  return launch_wo_dequant<T, B>(q, scales, zeros, static_cast<T*>(out), ni, ki, group_size, num_groups, stream)
  if (bits == 8) {
    if (dtype == kFloat32) TRTDSL_DQ(float, 8);
    if (dtype == kFloat16) TRTDSL_DQ(__half, 8);
    if (dtype == kBFloat16) TRTDSL_DQ(__nv_bfloat16, 8);
  } else if (bits == 4) {
    if (dtype == kFloat32) TRTDSL_DQ(float, 4);
    if (dtype == kFloat16) TRTDSL_DQ(__half, 4);
    if (dtype == kBFloat16) TRTDSL_DQ(__nv_bfloat16, 4);
  } else {
    return kErrUnsupported;
  }
#undef TRTDSL_DQ
  return kErrDtype;
}

extern "C" int trtdsl_weight_only_dequantize(const void* qweight, const float* scales, void* out, int64_t n,
                                             int64_t k, int bits, int group_size, int num_groups, int dtype,
                                             cudaStream_t stream) {
  return trtdsl_weight_only_dequantize_zp(qweight, scales, nullptr, out, n, k, bits, group_size, num_groups, dtype,
                                          stream);
}

extern "C" int trtdsl_quantize_per_token_fp8(const void* x, void* out, float* scales, int64_t rows,
                                             int64_t out_rows, int64_t k, int dtype, cudaStream_t stream) {
  if (!x || !out || !scales) return kErrNullPointer;
  if (rows < 0 || out_rows < rows || out_rows > kMaxInt || k < 1 || k > kMaxInt) return kErrShape;
  if (out_rows == 0) return kOk;
  auto* o = static_cast<__nv_fp8_storage_t*>(out);
  const int r = static_cast<int>(rows), ki = static_cast<int>(k), grid = static_cast<int>(out_rows);
  switch (dtype) {
    case kFloat32: return launch_quantize_per_token<float, Fp8Code>(static_cast<const float*>(x), o, scales, r, grid, ki, stream);
    case kFloat16: return launch_quantize_per_token<__half, Fp8Code>(static_cast<const __half*>(x), o, scales, r, grid, ki, stream);
    case kBFloat16: return launch_quantize_per_token<__nv_bfloat16, Fp8Code>(static_cast<const __nv_bfloat16*>(x), o, scales, r, grid, ki, stream);
    default: return kErrDtype;
  }
}

extern "C" int trtdsl_quantize_fp8(const void* x, const float* scale, void* out, int64_t rows, int64_t out_rows,
                                   int64_t k, int dtype, cudaStream_t stream) {
  if (!x || !scale || !out) return kErrNullPointer;
  if (rows < 0 || out_rows < rows || out_rows > kMaxInt || k < 1 || k > kMaxInt) return kErrShape;
  if (out_rows == 0) return kOk;
  auto* o = static_cast<__nv_fp8_storage_t*>(out);
  const int r = static_cast<int>(rows), ki = static_cast<int>(k);
  const dim3 grid(static_cast<unsigned>(out_rows), static_cast<unsigned>((k + kQuantCols - 1) / kQuantCols));
  switch (dtype) {
    case kFloat32: return launch_pdl(quantize_fp8_kernel<float>, dim3(grid), dim3(256), 0, stream, static_cast<const float*>(x), scale, o, r, ki);
    case kFloat16: return launch_pdl(quantize_fp8_kernel<__half>, dim3(grid), dim3(256), 0, stream, static_cast<const __half*>(x), scale, o, r, ki);
    case kBFloat16: return launch_pdl(quantize_fp8_kernel<__nv_bfloat16>, dim3(grid), dim3(256), 0, stream, static_cast<const __nv_bfloat16*>(x), scale, o, r, ki);
    default: return kErrDtype;
  }
}

extern "C" int trtdsl_quantize_per_token_int8(const void* x, void* out, float* scales, int64_t rows,
                                              int64_t out_rows, int64_t k, int dtype, cudaStream_t stream) {
  if (!x || !out || !scales) return kErrNullPointer;
  if (rows < 0 || out_rows < rows || out_rows > kMaxInt || k < 1 || k > kMaxInt) return kErrShape;
  if (out_rows == 0) return kOk;
  auto* o = static_cast<int8_t*>(out);
  const int r = static_cast<int>(rows), ki = static_cast<int>(k), grid = static_cast<int>(out_rows);
  switch (dtype) {
    case kFloat32: return launch_quantize_per_token<float, Int8Code>(static_cast<const float*>(x), o, scales, r, grid, ki, stream);
    case kFloat16: return launch_quantize_per_token<__half, Int8Code>(static_cast<const __half*>(x), o, scales, r, grid, ki, stream);
    case kBFloat16: return launch_quantize_per_token<__nv_bfloat16, Int8Code>(static_cast<const __nv_bfloat16*>(x), o, scales, r, grid, ki, stream);
    default: return kErrDtype;
  }
}

extern "C" int trtdsl_int8_gemm_epilogue(const int32_t* acc, int64_t acc_stride, const float* x_scales,
                                         const float* w_scales, void* out, int64_t m, int64_t n, int dtype,
                                         cudaStream_t stream) {
  if (!acc || !x_scales || !w_scales || !out) return kErrNullPointer;
  if (m < 0 || m > kMaxInt || n < 1 || n > kMaxInt || acc_stride < n) return kErrShape;
  if (m == 0) return kOk;
  const int grid = static_cast<int>(m), ni = static_cast<int>(n);
  switch (dtype) {
    case kFloat32: int8_epilogue_kernel<float><<<grid, 256, 0, stream>>>(acc, acc_stride, x_scales, w_scales, static_cast<float*>(out), ni); break;
    case kFloat16: int8_epilogue_kernel<__half><<<grid, 256, 0, stream>>>(acc, acc_stride, x_scales, w_scales, static_cast<__half*>(out), ni); break;
    case kBFloat16: int8_epilogue_kernel<__nv_bfloat16><<<grid, 256, 0, stream>>>(acc, acc_stride, x_scales, w_scales, static_cast<__nv_bfloat16*>(out), ni); break;
    default: return kErrDtype;
  }
  return launch_status();
}
