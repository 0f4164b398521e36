"""What the FP8 GEMV's epilogue terms cost on their own: m = 1, the 8B's four GEMM shapes, no epilogue /
bias / bias + low-rank term of rank 4 and 8 (``quant_ops.fp8_gemv(..., bias=, lowrank=)``, config 1).

Weights are cold (copies rotating past the 50 MB L2), each variant a CUDA graph of 48 calls, the median
of 7 replays (``common.graph_time_ms``), three rounds. ``TRTDSL_PDL=0`` times it without programmatic
dependent launch.

    python benchmarks/bench_fp8_epilogue.py          # -> benchmarks/results/fp8_gemv_epilogue_pdl1.json

(The committed ``fp8_gemv_epilogue_pdl{0,1}.json`` came from this script's first version, which wrote
only the device name and the medians.)
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import graph_time_ms  # noqa: E402
from trtdsl.plugins.cuda.quant_ops import fp8_gemv  # noqa: E402
from trtdsl.quantization.numerics import FP8_MAX, quantize_fp8  # noqa: E402

SHAPES = [("qkv", 4096, 6144), ("o", 4096, 4096), ("gate_up", 4096, 28672), ("down", 14336, 4096)]


def main() -> None:
    torch.manual_seed(0)
    scale = 4 / FP8_MAX
    res: dict[str, dict[str, list[float]]] = {}
    for name, k, n in SHAPES:
        copies = max(2, int(200e6 // (k * n)) + 1)
        ws = [quantize_fp8(torch.randn(n, k, device="cuda"), torch.full((n, 1), scale, device="cuda"))
              for _ in range(copies)]
        wscale = torch.full((n,), scale, device="cuda")
        s = torch.full((1,), scale, device="cuda")
        xq = quantize_fp8(torch.randn(1, k, device="cuda"), s)
        bias = torch.randn(n, device="cuda").bfloat16()
        variants: dict[str, dict] = {"none": {}, "bias": {"bias": bias}}
        for r in (4, 8):
            variants[f"bias+lr{r}"] = {"bias": bias, "lowrank": (torch.randn(1, r, device="cuda").bfloat16(),
                                                              torch.randn(r, n, device="cuda").bfloat16())}
        out: dict[str, list[float]] = {}
        for _ in range(3):
            for v, kw in variants.items():
                calls = [lambda w=ws[i % copies], kw=kw: fp8_gemv(xq, w, s, wscale, torch.bfloat16, 1, **kw)
                         for i in range(48)]
                out.setdefault(v, []).append(round(graph_time_ms(calls, iters=7) * 1000, 2))
        res[name] = out
        print(name, out, flush=True)
    pdl = os.environ.get("TRTDSL_PDL", "1")
    doc = {"benchmark": "fp8_gemv_epilogue", "device": torch.cuda.get_device_name(), "torch": torch.__version__,
           "cuda": torch.version.cuda, "pdl": pdl, "shapes": {n: [k, m] for n, k, m in SHAPES},
           "us_per_call_median_of_7_x3": res}
    path = Path(__file__).resolve().parent / "results" / f"fp8_gemv_epilogue_pdl{pdl}.json"
    path.write_text(json.dumps(doc, indent=1) + "\n")


if __name__ == "__main__":
    main()
