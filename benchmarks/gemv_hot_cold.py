"""Are the m = 1 int4 GEMVs bound by DRAM or by latency? Time each on the same weights every call
(L2-hot: the matrix fits the 50 MB L2) and on a new copy per call (cold, as in a model), as CUDA
graphs of 12 back-to-back calls; bf16 ``F.linear`` on the same weights for reference. ``--ncu``
instead runs each kernel three times and exits, for Nsight Compute:

    PYTHONPATH=. python benchmarks/gemv_hot_cold.py                 # prints one line per case
    ncu --kernel-name regex:gemv --section SpeedOfLight --section Occupancy --section WarpStateStats \\
        python benchmarks/gemv_hot_cold.py --ncu

Output of the 2026-12-06 H100 run: ``benchmarks/results/gemv_hot_cold_h100.txt`` (with the Nsight
Compute figures quoted in docs/quant_kernels.md)."""

from __future__ import annotations

import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.bench_quant_gemm import G, int4_zp_weights, nbytes  # noqa: E402  (group 128, with zeros)
from benchmarks.common import graph_time_ms  # noqa: E402
from trtdsl.plugins.cuda import quant_ops as Q  # noqa: E402
from trtdsl.quantization import numerics  # noqa: E402

TIMED = [(4096, 4096, 1), (4096, 4096, 4), (4096, 6144, 1), (14336, 4096, 1), (4096, 28672, 10), (4096, 28672, 1)]
PROFILED = [(14336, 4096, 1), (14336, 4096, 9), (4096, 4096, 1), (4096, 4096, 9), (4096, 28672, 1), (4096, 28672, 10)]


def gemv(x: torch.Tensor, w: tuple, config: int) -> torch.Tensor:
    k = x.shape[1]
    return Q.weight_only_gemv(x, w[0], w[1], 4, G, numerics.num_groups(k, G), w[2], config)


def main() -> None:
    if "--ncu" in sys.argv:
        for k, n, config in PROFILED:
            w, x = int4_zp_weights(k, n), torch.randn(1, k, device="cuda", dtype=torch.bfloat16)
            for _ in range(3):
                gemv(x, w, config)
            torch.cuda.synchronize()
        return
    print(torch.cuda.get_device_name(0), torch.__version__)
    for k, n, config in TIMED:
        copies = [int4_zp_weights(k, n) for _ in range(12)]
        x = torch.randn(1, k, device="cuda", dtype=torch.bfloat16)
        hot = graph_time_ms([lambda: gemv(x, copies[0], config)] * 12)
        cold = graph_time_ms([lambda w=w: gemv(x, w, config) for w in copies])
        size = nbytes(*copies[0])
        print(f"k={k} n={n} cfg={config}: hot {hot * 1e3:.2f} us cold {cold * 1e3:.2f} us "
              f"({size / 1e6:.1f} MB, cold {size / cold / 1e6:.0f} GB/s)", flush=True)
    w = torch.randn(4096, 4096, device="cuda", dtype=torch.bfloat16)
    x = torch.randn(1, 4096, device="cuda", dtype=torch.bfloat16)
    hot = graph_time_ms([lambda: torch.nn.functional.linear(x, w)] * 12)
    print(f"bf16 F.linear 4096x4096 hot {hot * 1e3:.2f} us")


if __name__ == "__main__":
    main()
