// Status strings and ABI version of the trtdsl kernel library.
#include "trtdsl/common.cuh"
#include "trtdsl/plugins.h"

extern "C" const char* trtdsl_error_string(int status) {
  switch (status) {
    case trtdsl::kOk: return "ok";
    case trtdsl::kErrNullPointer: return "a required pointer is null";
    case trtdsl::kErrDtype: return "unsupported dtype (attention kernels take fp16/bf16 with a cache of the same dtype)";
    case trtdsl::kErrHeadDim: return "unsupported head_dim (attention kernels take 64 or 128)";
    case trtdsl::kErrShape: return "invalid sizes (negative, non-divisible heads, odd rotary_dim, or too large)";
    case trtdsl::kErrLaunch: return "CUDA kernel launch failed";
    case trtdsl::kErrWorkspace: return "decode workspace too small for max_kv_len / kv_chunk";
    case trtdsl::kErrUnsupported: return "unsupported configuration";
    default: return "unknown trtdsl status";
  }
}

extern "C" int trtdsl_abi_version(void) { return 1; }
