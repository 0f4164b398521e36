"""Benchmark the trtdsl CUDA kernels; writes benchmarks/results/kernels_<device>.json.

Numbers: median times via CUDA events; context attention vs torch SDPA (flash backend) at 512..8k
tokens; achieved bandwidth of decode attention and RMSNorm against a device-to-device copy measured
in the same run. Usage: ``python benchmarks/bench_kernels.py [--out DIR]`` on a CUDA machine."""

from __future__ import annotations

import argparse
import json
import os
import re
from pathlib import Path

import sys

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without install
from benchmarks.common import cuda_time_ms  # noqa: E402
from trtdsl.plugins import cuda as K  # noqa: E402


def median_ms(fn, warmup: int = 5, iters: int = 30) -> float:
    return cuda_time_ms(fn, warmup=warmup, iters=iters)["median_ms"]


def copy_bandwidth() -> dict:
    x = torch.randn(512 * 1024 * 1024 // 2, device="cuda", dtype=torch.float16)  # 512 MiB
    y = torch.empty_like(x)
    ms = median_ms(lambda: y.copy_(x))
    return {"bytes": 2 * x.numel() * 2, "ms": ms, "gbps": 2 * x.numel() * 2 / ms / 1e6}


def bench_rmsnorm(copy_gbps: float) -> list[dict]:
    rows = []
    for tokens, hidden in [(16384, 4096), (16384, 8192)]:
        x = torch.randn(tokens, hidden, device="cuda", dtype=torch.bfloat16)
        res, w = torch.randn_like(x), torch.randn(hidden, device="cuda", dtype=torch.bfloat16)
        ms = median_ms(lambda: K.rmsnorm(x, w, 1e-6, residual=res, residual_out=res))
        nbytes = 4 * x.numel() * 2  # read x, residual; write out, residual
        rows.append({"tokens": tokens, "hidden": hidden, "fused_residual": True, "ms": ms,
                     "gbps": nbytes / ms / 1e6, "frac_of_copy": nbytes / ms / 1e6 / copy_gbps})
    return rows


def bench_swiglu(copy_gbps: float) -> list[dict]:
    x = torch.randn(8192, 2 * 14336, device="cuda", dtype=torch.bfloat16)
    ms = median_ms(lambda: K.swiglu(x))
    ms_torch = median_ms(lambda: F.silu(x[:, :14336]) * x[:, 14336:])
    nbytes = x.numel() * 2 * 3 // 2
    return [{"tokens": 8192, "inter": 14336, "ms": ms, "torch_ms": ms_torch, "gbps": nbytes / ms / 1e6,
             "frac_of_copy": nbytes / ms / 1e6 / copy_gbps}]


def paged_cache(tokens_total, batch, kvh, d, tpb, dtype):
    """A pool with shuffled block ids and a filled cache for `batch` sequences of `tokens_total`."""
    nblk = -(-tokens_total // tpb)
    perm = torch.randperm(batch * nblk, device="cuda").to(torch.int32)
    bt = perm.view(batch, nblk).contiguous()
    cache = torch.randn(1, batch * nblk, 2, kvh, tpb, d, device="cuda", dtype=dtype)
    return bt, cache


def bench_context(h: int, kvh: int, d: int = 128, dtype=torch.bfloat16) -> list[dict]:
    from torch.nn.attention import SDPBackend, sdpa_kernel
    rows, tpb = [], 64
    for n in [512, 1024, 2048, 4096, 8192]:
        bt, cache = paged_cache(n, 1, kvh, d, tpb, dtype)
        q = torch.randn(n, h * d, device="cuda", dtype=dtype)
        meta = dict(seq_lens=torch.tensor([n], dtype=torch.int32, device="cuda"),
                    past_lens=torch.zeros(1, dtype=torch.int32, device="cuda"),
                    cu_seqlens=torch.tensor([0, n], dtype=torch.int32, device="cuda"), block_tables=bt, kv_cache=cache)
        kw = dict(num_heads=h, num_kv_heads=kvh, head_dim=d, layer_idx=0, tokens_per_block=tpb, softmax_scale=d ** -0.5)
        ms = median_ms(lambda: K.context_attention(q, **meta, **kw, max_q_len=n))
        qkv = torch.randn(n, (h + 2 * kvh) * d, device="cuda", dtype=dtype)
        pos = torch.arange(n, dtype=torch.int32, device="cuda")
        table = torch.randn(n, d, device="cuda")
        ms_full = median_ms(lambda: K.paged_attention(qkv, pos, meta["seq_lens"], meta["past_lens"], meta["cu_seqlens"],
                                                      bt, cache, table, **kw, rotary_dim=d, rope_style="neox",
                                                      max_q_len=n, max_kv_len=n))
        qs, ks, vs = (torch.randn(1, h, n, d, device="cuda", dtype=dtype) for _ in range(3))
        with sdpa_kernel(SDPBackend.FLASH_ATTENTION):
            ms_sdpa = median_ms(lambda: F.scaled_dot_product_attention(qs, ks, vs, is_causal=True))
        flops = 4 * n * n * d * h / 2
        rows.append({"tokens": n, "heads": h, "kv_heads": kvh, "head_dim": d, "dtype": str(dtype), "ms": ms,
                     "paged_attention_ms": ms_full, "sdpa_flash_ms": ms_sdpa, "speedup_vs_sdpa": ms_sdpa / ms,
                     "tflops": flops / ms / 1e9})
    return rows


def bench_decode(copy_gbps: float, batch=8, h=32, kvh=8, d=128, dtype=torch.bfloat16) -> list[dict]:
    rows, tpb = [], 64
    for kv in [4096, 16384, 32768]:
        bt, cache = paged_cache(kv, batch, kvh, d, tpb, dtype)
        q = torch.randn(batch, h * d, device="cuda", dtype=dtype)
        meta = dict(seq_lens=torch.ones(batch, dtype=torch.int32, device="cuda"),
                    past_lens=torch.full((batch,), kv - 1, dtype=torch.int32, device="cuda"),
                    cu_seqlens=torch.arange(batch + 1, dtype=torch.int32, device="cuda"), block_tables=bt,
                    kv_cache=cache)
        kw = dict(num_heads=h, num_kv_heads=kvh, head_dim=d, layer_idx=0, tokens_per_block=tpb,
                  softmax_scale=d ** -0.5, max_kv_len=kv)
        ws = torch.empty(K.decode_workspace(batch, h, kvh, d, kv)[1], dtype=torch.uint8, device="cuda")
        ms = median_ms(lambda: K.decode_attention(q, **meta, **kw, workspace=ws), iters=50)
        nbytes = batch * kv * kvh * d * 2 * 2
        rows.append({"batch": batch, "kv_len": kv, "heads": h, "kv_heads": kvh, "head_dim": d, "ms": ms,
                     "gbps": nbytes / ms / 1e6, "frac_of_copy": nbytes / ms / 1e6 / copy_gbps})
    return rows


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default=str(Path(__file__).parent / "results"))
    args = ap.parse_args()
    K.build_plugins(verbose=True)
    name = torch.cuda.get_device_name()
    copy = copy_bandwidth()
    res = {"device": name, "torch": torch.__version__, "cuda": torch.version.cuda, "copy_bandwidth": copy}
    res["rmsnorm"] = bench_rmsnorm(copy["gbps"])
    res["swiglu"] = bench_swiglu(copy["gbps"])
    res["context_attention_mha"] = bench_context(32, 32)
    res["context_attention_gqa"] = bench_context(32, 8)
    res["decode_attention"] = bench_decode(copy["gbps"])
    tag = re.sub(r"[^A-Za-z0-9]+", "_", name).strip("_").lower()
    out = Path(args.out) / f"kernels_{tag}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(res, indent=2))
    if os.environ.get("OUT"):
        Path(os.environ["OUT"], out.name).write_text(json.dumps(res, indent=2))
    print(f"copy {copy['gbps']:.0f} GB/s")
    for r in res["context_attention_mha"] + res["context_attention_gqa"]:
        print(f"ctx h{r['heads']}/{r['kv_heads']} n={r['tokens']:5d}: {r['ms']:.3f} ms ({r['tflops']:.0f} TF) "
              f"full {r['paged_attention_ms']:.3f}  sdpa {r['sdpa_flash_ms']:.3f}  x{r['speedup_vs_sdpa']:.2f}")
    for r in res["decode_attention"]:
        print(f"decode kv={r['kv_len']}: {r['ms']:.3f} ms {r['gbps']:.0f} GB/s = {r['frac_of_copy']:.0%} of copy")
    for r in res["rmsnorm"] + res["swiglu"]:
        print(f"{r}")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
