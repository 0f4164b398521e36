"""Per-layer time of one decode step's attention (RoPE + K/V cache write + attention) over a bf16 K/V
cache against an fp8 / int8 cache (``trtdsl.attention_quant_kv``'s CUDA path: codes written by the RoPE
kernel, widened to bf16 in the attention kernel), with and without the Hadamard-rotated keys. Each cache
runs the kernels ``paged_attention`` / ``paged_attention_quant_kv`` dispatch to (bf16: the fused decode
kernel where it is picked, else RoPE + split-K; codes: the fused kernel with the quantizing write
where ``one_launch_decode_splits`` picks it, else RoPE + split-K); ``*_split_k_us`` times the codes through RoPE +
split-K + combine (``kv_quant_ops.ONE_LAUNCH_DECODE = False``), as before the one-launch kernel. Same
shapes and timing method as bench_decode_attention.py (32 / 8 heads, head_dim 128, 64-token shuffled
blocks; median of CUDA-event timings of CUDA-graph replays, one call per layer of a multi-layer cache),
in the same run.

Usage: ``python benchmarks/bench_kv_quant_attention.py`` on a CUDA machine; writes
benchmarks/results/kv_quant_attention_<device>.json."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_decode_attention import CACHE_BUDGET, D, H, KVH, TPB, graph_us_per_layer, make_case  # noqa: E402
from common import device_slug, write_result  # noqa: E402

from trtdsl.plugins.cuda import ops  # noqa: E402
from trtdsl.plugins.cuda import kv_quant_ops  # noqa: E402
from trtdsl.plugins.cuda.kv_quant_ops import paged_attention_quant_kv  # noqa: E402

CODES = {"fp8": torch.float8_e4m3fn, "int8": torch.int8}


def quantized(step: dict, cache: torch.Tensor, scales: torch.Tensor, layer: int, ctx: int,
              rotation: bool) -> torch.Tensor:
    args = [step[k] for k in ("qkv", "position_ids", "seq_lens", "past_lens", "cu_seqlens", "block_tables")]
    return paged_attention_quant_kv(*args, cache, step["rope_cos_sin"], scales, num_heads=H, num_kv_heads=KVH,
                                    head_dim=D, layer_idx=layer, tokens_per_block=TPB, softmax_scale=D ** -0.5,
                                    rotary_dim=D, rope_style="neox", max_q_len=1, max_kv_len=ctx,
                                    k_rotation=rotation)


def run_case(batch: int, ctx: int) -> dict:
    per_layer = batch * (-(-ctx // TPB)) * TPB * KVH * D * 2 * 2
    layers = max(1, min(8, CACHE_BUDGET // per_layer))
    step = make_case(batch, ctx, layers)

    def bf16(layer: int) -> torch.Tensor:  # the op itself: whichever kernels it dispatches to
        return ops.paged_attention(**step, num_heads=H, num_kv_heads=KVH, head_dim=D, layer_idx=layer,
                                   tokens_per_block=TPB, softmax_scale=D ** -0.5, rotary_dim=D, rope_style="neox",
                                   max_q_len=1, max_kv_len=ctx)

    row: dict = dict(batch=batch, context=ctx, layers_in_graph=layers,
                     bf16_fused=ops._use_fused_decode(batch, H, KVH, ctx, torch.device("cuda")),
                     codes_one_launch_splits=kv_quant_ops.one_launch_decode_splits(batch, H, KVH, ctx,
                                                                                   torch.device("cuda")),
                     bf16_us=round(graph_us_per_layer(bf16, layers), 2))
    bf16_cache = step["kv_cache"]
    for name, dtype in CODES.items():
        qmax = 448.0 if name == "fp8" else 127.0
        scales = (bf16_cache.float().abs().amax(dim=(0, 1, 4, 5)) / qmax).contiguous()  # [2, KVH]
        codes = (bf16_cache.float() / scales.reshape(1, 1, 2, KVH, 1, 1)).clamp(-qmax, qmax)
        cache = (codes.round() if name == "int8" else codes).to(dtype)
        for rotation in (False, True):
            us = graph_us_per_layer(lambda layer: quantized(step, cache, scales, layer, ctx, rotation), layers)
            key = f"{name}{'_hadamard' if rotation else ''}"
            row[f"{key}_us"] = round(us, 2)
            row[f"{key}_speedup_vs_bf16"] = round(row["bf16_us"] / us, 3)
        kv_quant_ops.ONE_LAUNCH_DECODE = False
        try:
            row[f"{name}_split_k_us"] = round(graph_us_per_layer(
                lambda layer: quantized(step, cache, scales, layer, ctx, False), layers), 2)
        finally:
            kv_quant_ops.ONE_LAUNCH_DECODE = True
    kv_bytes = batch * ctx * KVH * D * 2
    row["bf16_kv_gbps"] = round(kv_bytes * 2 / (row["bf16_us"] * 1e-6) / 1e9, 1)
    row["fp8_kv_gbps"] = round(kv_bytes / (row["fp8_us"] * 1e-6) / 1e9, 1)
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batches", default="1,8,32")
    ap.add_argument("--contexts", default="1024,4096,16384")
    ap.add_argument("--name", help="result file name (default kv_quant_attention_<device>)")
    args = ap.parse_args()
    rows = []
    for batch in map(int, args.batches.split(",")):
        for ctx in map(int, args.contexts.split(",")):
            rows.append(run_case(batch, ctx))
            torch.cuda.empty_cache()  # the case's caches are gone with run_case's frame
            print(rows[-1], flush=True)
    path = write_result(args.name or f"kv_quant_attention_{device_slug()}", dict(
        shape=dict(num_heads=H, num_kv_heads=KVH, head_dim=D, tokens_per_block=TPB, dtype="bfloat16",
                   rope="neox, full rotary"),
        method="median of 30 CUDA-event timings of CUDA-graph replays; graph = one call per layer of a "
               "multi-layer cache; time per layer; each cache through the kernels its op dispatches to "
               "(bf16_fused: the fused kernel, else RoPE + split-K; codes_one_launch_splits: the fused "
               "kernel with that many blocks per sequence and kv head, 0 = RoPE + split-K); "
               "*_split_k_us: the codes through RoPE + split-K + combine",
        rows=rows))
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
