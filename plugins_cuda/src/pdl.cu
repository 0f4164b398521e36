// The programmatic-dependent-launch switch (pdl.cuh): process-wide on purpose, it is a measurement
// knob (env TRTDSL_PDL, or trtdsl_set_pdl for A/B timings in one process), not model state.
#include <atomic>
#include <cstdlib>
#include <cstring>

#include "trtdsl/pdl.cuh"

namespace {

std::atomic<int> g_enabled{-1};  // -1: not read from the environment yet
constexpr int kMaxDevices = 64;
std::atomic<int> g_sm90[kMaxDevices];  // per device: 0 unknown, 1 sm_90+, 2 older

int enabled() {
  int v = g_enabled.load(std::memory_order_relaxed);
  if (v < 0) {
    const char* env = std::getenv("TRTDSL_PDL");
    v = (env && (std::strcmp(env, "0") == 0 || std::strcmp(env, "off") == 0)) ? 0 : 1;
    int expected = -1;
    if (!g_enabled.compare_exchange_strong(expected, v)) v = expected;  // a concurrent setter won
  }
  return v;
}

}  // namespace

extern "C" int trtdsl_set_pdl(int on) {
  const int previous = enabled();
  g_enabled.store(on ? 1 : 0);
  return previous;
}

extern "C" int trtdsl_pdl_enabled(void) { return enabled(); }

namespace trtdsl {

bool pdl_active() {
  if (!enabled()) return false;
  int dev = 0;
  if (cudaGetDevice(&dev) != cudaSuccess || dev < 0 || dev >= kMaxDevices) return false;
  int known = g_sm90[dev].load(std::memory_order_relaxed);
  if (known == 0) {
    int major = 0;
    if (cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, dev) != cudaSuccess) return false;
    known = major >= 9 ? 1 : 2;
    g_sm90[dev].store(known, std::memory_order_relaxed);
  }
  return known == 1;
}

}  // namespace trtdsl
