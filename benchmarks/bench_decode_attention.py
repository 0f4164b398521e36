"""Per-layer time of the whole decode attention (RoPE + K/V cache write + attention) of one decode
step: the unfused path (rope_kv_write, split-K decode_attention + combine: 3 launches) against the
fused one-launch kernel (decode_fused) with the cluster size paged_attention picks
(``decode_fused_splits``) and with fixed ones (``--splits``; 1 = one block per sequence and kv head). 32 query / 8 kv heads, head_dim 128, bf16, 64-token blocks
(shuffled), every sequence at the same context. Each timing is the median of CUDA-event timings of
CUDA-graph replays; a graph holds one call per layer of a small multi-layer cache (different layers,
so consecutive calls do not re-read one layer's K/V from L2), and the time is divided by the layers.

Usage: ``python benchmarks/bench_decode_attention.py`` on a CUDA machine; writes
benchmarks/results/decode_attention_<device>.json (and $OUT/ when set)."""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without install
sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import device_slug, write_result  # noqa: E402

from trtdsl.plugins.attention_reference import rope_cos_sin_table  # noqa: E402
from trtdsl.plugins.cuda import ops  # noqa: E402

H, KVH, D, TPB = 32, 8, 128, 64
CACHE_BUDGET = 4 << 30  # bytes of K/V cache per case: sets how many layers a graph cycles through


def make_case(batch: int, ctx: int, layers: int) -> dict:
    nblk = -(-ctx // TPB)
    bt = torch.randperm(batch * nblk, dtype=torch.int32).view(batch, nblk)  # shuffled, disjoint
    cache = torch.randn(layers, batch * nblk, 2, KVH, TPB, D, device="cuda", dtype=torch.bfloat16)
    inv_freq = 1.0 / (10000 ** (torch.arange(0, D, 2, dtype=torch.float64) / D))
    i32 = dict(dtype=torch.int32, device="cuda")
    return dict(qkv=torch.randn(batch, (H + 2 * KVH) * D, device="cuda", dtype=torch.bfloat16),
                position_ids=torch.full((batch,), ctx - 1, **i32), seq_lens=torch.ones(batch, **i32),
                past_lens=torch.full((batch,), ctx - 1, **i32), cu_seqlens=torch.arange(batch + 1, **i32),
                block_tables=bt.cuda(), kv_cache=cache, rope_cos_sin=rope_cos_sin_table(inv_freq, ctx).cuda())


def unfused(step: dict, layer: int, ctx: int, workspace: torch.Tensor) -> torch.Tensor:
    kw = dict(num_heads=H, num_kv_heads=KVH, head_dim=D, layer_idx=layer, tokens_per_block=TPB)
    meta = [step[k] for k in ("position_ids", "seq_lens", "past_lens", "cu_seqlens", "block_tables", "kv_cache",
                              "rope_cos_sin")]
    q = ops.rope_kv_write(step["qkv"], *meta, rotary_dim=D, rope_style="neox", **kw)
    return ops.decode_attention(q, *meta[1:6], softmax_scale=D ** -0.5, max_kv_len=ctx, workspace=workspace, **kw)


def fused(step: dict, layer: int, ctx: int, splits: int | None = None) -> torch.Tensor:
    """``splits`` None: what paged_attention runs (decode_fused_splits of the context bound)."""
    return ops.decode_fused(**step, num_heads=H, num_kv_heads=KVH, head_dim=D, layer_idx=layer, tokens_per_block=TPB,
                            softmax_scale=D ** -0.5, rotary_dim=D, rope_style="neox", max_kv_len=ctx, splits=splits)


def graph_us_per_layer(fn, layers: int, iters: int = 30) -> float:
    for layer in range(layers):  # warm up (and build the library) outside the capture
        fn(layer)
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        for layer in range(layers):
            fn(layer)
    for _ in range(3):
        graph.replay()
    times = []
    for _ in range(iters):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        graph.replay()
        b.record()
        b.synchronize()
        times.append(a.elapsed_time(b) * 1e3 / layers)
    return statistics.median(times)


def run_case(batch: int, ctx: int, split_counts: list[int]) -> dict:
    per_layer = batch * (-(-ctx // TPB)) * TPB * KVH * D * 2 * 2
    layers = max(1, min(8, CACHE_BUDGET // per_layer))
    step = make_case(batch, ctx, layers)
    _, nbytes = ops.decode_workspace(batch, H, KVH, D, ctx)
    ws = torch.empty(nbytes, dtype=torch.uint8, device="cuda")
    ref = unfused({k: v.clone() for k, v in step.items()}, 0, ctx, ws)
    new = fused({k: v.clone() for k, v in step.items()}, 0, ctx)
    diff = ((new.float() - ref.float()).norm() / ref.float().norm()).item()
    old_us = graph_us_per_layer(lambda layer: unfused(step, layer, ctx, ws), layers)
    new_us = graph_us_per_layer(lambda layer: fused(step, layer, ctx), layers)
    # The same kernel with a fixed number of blocks per (sequence, kv head) (1 = one block, no cluster).
    by_splits = {str(n): round(graph_us_per_layer(lambda layer: fused(step, layer, ctx, n), layers), 2)
                 for n in split_counts}
    kv_bytes = batch * ctx * KVH * D * 2 * 2
    row = dict(batch=batch, context=ctx, layers_in_graph=layers, unfused_us=round(old_us, 2),
               fused_us=round(new_us, 2), fused_splits=ops.decode_fused_splits(batch, H, KVH, ctx, "cuda"),
               fused_us_by_splits=by_splits, speedup=round(old_us / new_us, 3), fused_vs_unfused_rel_diff=diff,
               fused_kv_gbps=round(kv_bytes / (new_us * 1e-6) / 1e9, 1),
               dispatch="fused" if ops._use_fused_decode(batch, H, KVH, ctx, torch.device("cuda")) else "split-k")
    del step, ws
    torch.cuda.empty_cache()
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batches", default="1,8,32,64")
    ap.add_argument("--contexts", default="128,256,512,1024,2048,4096,8192")
    ap.add_argument("--splits", default="1,2,4,8", help="fixed cluster sizes timed besides the automatic one")
    ap.add_argument("--name", help="result file name (default decode_attention_<device>)")
    args = ap.parse_args()
    rows = []
    split_counts = [int(n) for n in args.splits.split(",") if n]
    for batch in map(int, args.batches.split(",")):
        for ctx in map(int, args.contexts.split(",")):
            rows.append(run_case(batch, ctx, split_counts))
            print(rows[-1], flush=True)
    path = write_result(args.name or f"decode_attention_{device_slug()}", dict(
        shape=dict(num_heads=H, num_kv_heads=KVH, head_dim=D, tokens_per_block=TPB, dtype="bfloat16",
                   rope="neox, full rotary"),
        method="median of 30 CUDA-event timings of CUDA-graph replays; graph = one call per layer of a "
               "multi-layer cache; time per layer", fused_max_kv_threshold=ops._FUSED_DECODE_MAX_KV, rows=rows))
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
