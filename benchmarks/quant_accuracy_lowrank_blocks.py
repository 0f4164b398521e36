"""Accuracy prototype: fp8_lowrank with a block-diagonal basis on the SwiGLU outputs (down_proj's input).

The fused SwiGLU split spans a thread-block cluster because ``c = (h - mean) U`` sums over the whole
14336-wide row (docs/quantization.md: its cluster costs ~1.8 us per 8B layer). With a block-diagonal
``U`` -- each contiguous chunk of the input its own leading eigenvectors, zero elsewhere -- every chunk's
coefficients are a sum over that chunk alone, which one thread block can compute. Per chunk, its own
leading directions capture at least the energy the global basis has there, so the split should lose
no accuracy; this measures it. The basis stays an ordinary ``[k, chunks * r]`` matrix, so the network,
GPTQ's projection and the GEMM epilogue are unchanged (the fused kernels run the reference for ranks
they are not built for); only ``quantize._lowrank_basis`` is swapped, for inputs of width ``--width``.

    python benchmarks/quant_accuracy_lowrank_blocks.py --chunk-len 192 --chunk-rank 1 \\
        --stats-cache /tmp/qstats.pt --damp 0.01

Writes ``benchmarks/results/quant_accuracy_fp8_lowrank_blocks_<len>x<rank>_d<damp>.json`` through
quant_accuracy.py (same tokens, calibration and evaluation); the norms' outputs keep the global basis.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import quant_accuracy  # noqa: E402

from trtdsl.quantization import quantize as q  # noqa: E402


def block_diagonal_basis(cov: torch.Tensor, chunk_len: int, rank: int) -> torch.Tensor:
    """``[k, chunks * rank]`` float64: for each ``chunk_len`` slice of the channels (the last one
    shorter), the ``rank`` leading eigenvectors of that slice's covariance, zero outside it."""
    k = cov.shape[0]
    cols = []
    for start in range(0, k, chunk_len):
        end = min(start + chunk_len, k)
        vecs = torch.linalg.eigh(cov[start:end, start:end]).eigenvectors[:, -rank:].flip(1)
        col = torch.zeros(k, vecs.shape[1], dtype=torch.float64)
        col[start:end] = vecs
        cols.append(col)
    return torch.cat(cols, 1)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--chunk-len", type=int, required=True, help="channels per chunk")
    ap.add_argument("--chunk-rank", type=int, required=True, help="leading directions per chunk")
    ap.add_argument("--width", type=int, default=1536, help="input width the blocks apply to (SmolLM2's SwiGLU)")
    ap.add_argument("--damp", type=float, default=0.01, help="GPTQ damping (re-draws the rounding pattern)")
    ap.add_argument("--stats-cache", type=Path, required=True)
    args = ap.parse_args()
    global_basis = q._lowrank_basis

    def basis(stats, group, mean, rank):  # noqa: ANN001, ANN202 (quantize._lowrank_basis's signature)
        if mean.shape[0] != args.width:
            return global_basis(stats, group, mean, rank)
        cov = q._centered_second_moment(stats, group, "fp8_lowrank", mean)
        return block_diagonal_basis(cov, args.chunk_len, args.chunk_rank)

    q._lowrank_basis = basis
    label = (f"fp8 + GPTQ damp {args.damp}, norm and SwiGLU outputs centered, low-rank 4, SwiGLU outputs "
             f"block-diagonal {args.chunk_len} x {args.chunk_rank}")
    options = {"gptq": True, "gptq_damp": args.damp, "fp8_center_inputs": "norm+swiglu", "fp8_lowrank": 4}
    sys.argv = [sys.argv[0], "--only", label, "--case", f"{label}:fp8::{json.dumps(options)}",
                "--stats-cache", str(args.stats_cache),
                "--name", f"quant_accuracy_fp8_lowrank_blocks_{args.chunk_len}x{args.chunk_rank}_d{args.damp}"]
    quant_accuracy.main()


if __name__ == "__main__":
    main()
