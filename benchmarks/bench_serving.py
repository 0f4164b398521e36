"""Serving benchmark: trtdsl's in-flight batching executor vs Hugging Face transformers' own
continuous batching (``model.generate_batch``), on the same random weights.

Default (GPU): an 8B-shaped Llama (Llama-3-8B dims) in bf16 with random weights; 256 requests at each
input/output length pair 128/128, 1024/256, 2048/128, all submitted at once (offline throughput).
Reports output tokens/s, time to first token and inter-token latency p50/p99, and the largest number
of sequences of each shape the K/V cache holds at the same memory fraction.

    python benchmarks/bench_serving.py                # GPU, writes results/bench_serving.json
    python benchmarks/bench_serving.py --tiny         # CPU smoke run in a few seconds

Greedy decoding, no EOS (every request produces exactly its output length), so both sides do the
same work.
"""

from __future__ import annotations

import argparse
import gc
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import write_result  # noqa: E402

LLAMA3_8B = dict(vocab_size=128256, hidden_size=4096, intermediate_size=14336, num_hidden_layers=32,
                 num_attention_heads=32, num_key_value_heads=8, max_position_embeddings=8192,
                 rope_theta=500000.0, rms_norm_eps=1e-5)
TINY = dict(vocab_size=256, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
            num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512)
SHAPES = [(128, 128), (1024, 256), (2048, 128)]
TINY_SHAPES = [(16, 8), (48, 4)]


def _pct(values: list[float], q: float) -> float | None:
    if not values:
        return None
    values = sorted(values)
    return values[min(len(values) - 1, int(round(q * (len(values) - 1))))]


def _summary(tokens: int, wall: float, ttft: list[float], itl: list[float]) -> dict[str, Any]:
    return {"output_tokens": tokens, "wall_s": round(wall, 3), "output_tokens_per_s": round(tokens / wall, 1),
            "ttft_p50_ms": _ms(_pct(ttft, 0.5)), "ttft_p99_ms": _ms(_pct(ttft, 0.99)),
            "itl_p50_ms": _ms(_pct(itl, 0.5)), "itl_p99_ms": _ms(_pct(itl, 0.99))}


def _ms(v: float | None) -> float | None:
    return None if v is None else round(v * 1e3, 3)


def _prompts(n: int, length: int, vocab: int, seed: int) -> list[list[int]]:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(10, vocab, (n, length), generator=g).tolist()


def make_hf_model(cfg: dict[str, Any], dtype: torch.dtype) -> Any:
    from transformers import LlamaConfig, LlamaForCausalLM
    torch.manual_seed(0)
    config = LlamaConfig(**cfg, torch_dtype=dtype)
    device = "cuda" if torch.cuda.is_available() and dtype is not torch.float32 else "cpu"
    default = torch.get_default_dtype()
    torch.set_default_dtype(dtype)  # initialize in the target dtype: no fp32 copy of 8B weights
    try:
        with torch.device(device):
            model = LlamaForCausalLM(config).eval()
    finally:
        torch.set_default_dtype(default)
    return model


def build_engine(hf_model: Any, dtype: str, max_batch_size: int, max_input_len: int, max_seq_len: int,
                 max_num_tokens: int, tokens_per_block: int) -> Any:
    """A trtdsl engine from the HF model's weights, in memory (no 16 GB checkpoint on disk)."""
    from trtdsl.builder import BuildConfig, Builder
    from trtdsl.models import LlamaForCausalLM as TrtLlama
    cfg = TrtLlama.config_from_hf(hf_model.config.to_dict(), dtype)
    model = TrtLlama.from_config(cfg)
    model.load_hf_tensors(hf_model.state_dict(), source="random weights")
    return Builder(BuildConfig(max_batch_size=max_batch_size, max_input_len=max_input_len,
                               max_seq_len=max_seq_len, max_num_tokens=max_num_tokens,
                               tokens_per_block=tokens_per_block, dtype=dtype)).build(model)


def run_trtdsl(engine: Any, device: str, shapes: list[tuple[int, int]], n: int, vocab: int,
               mem_fraction: float, kv_tokens: int | None) -> dict[str, Any]:
    from trtdsl.runtime.executor import Executor, GenerationRequest
    out: dict[str, Any] = {}
    ex = Executor(engine, device=device, kv_cache_free_gpu_mem_fraction=mem_fraction,
                  kv_cache_max_tokens=kv_tokens)
    try:
        tpb, blocks = ex.kv_cache.tokens_per_block, ex.kv_cache.num_blocks
        ex.generate([GenerationRequest([1, 2, 3], 2)])  # warm-up
        for inp, outp in shapes:
            prompts = _prompts(n, inp, vocab, seed=inp * 7 + outp)
            t0 = time.perf_counter()
            ids = [ex.submit(GenerationRequest(p, outp)) for p in prompts]
            results = [ex.result(r) for r in ids]
            wall = time.perf_counter() - t0
            tokens = sum(len(r.output_token_ids) for r in results)
            # The executor stamps each request's first token; ITL is each request's mean gap.
            ttft = [r.time_to_first_token for r in results if r.time_to_first_token is not None]
            per_seq = -(-(inp + outp) // tpb)
            out[f"{inp}/{outp}"] = {**_summary(tokens, wall, ttft, _itl_from_results(results)),
                                    "kv_blocks": blocks, "max_concurrent_sequences": blocks // per_seq,
                                    "preemptions": ex.stats().preemptions}
            print(f"trtdsl {inp}/{outp}: {out[f'{inp}/{outp}']}", flush=True)
    finally:
        ex.shutdown()
    return out


def _itl_from_results(results: list[Any]) -> list[float]:
    """Mean inter-token latency of each request: (latency - ttft) / (tokens - 1)."""
    return [(r.latency - r.time_to_first_token) / (len(r.output_token_ids) - 1) for r in results
            if r.time_to_first_token is not None and len(r.output_token_ids) > 1]


def run_hf(model: Any, shapes: list[tuple[int, int]], n: int, vocab: int,
           on_result: Any = None) -> dict[str, Any]:
    from transformers import GenerationConfig
    out: dict[str, Any] = {}
    for inp, outp in shapes:
        prompts = _prompts(n, inp, vocab, seed=inp * 7 + outp)
        gen = GenerationConfig(max_new_tokens=outp, do_sample=False, eos_token_id=-1, pad_token_id=0)
        try:
            t0 = time.perf_counter()
            try:
                res = model.generate_batch(prompts, generation_config=gen, record_timestamps=True)
            except TypeError:  # older transformers without record_timestamps
                res = model.generate_batch(prompts, generation_config=gen)
            wall = time.perf_counter() - t0
        except Exception as exc:  # noqa: BLE001 - the reference's failure is a result, not a crash
            out[f"{inp}/{outp}"] = {"error": f"{type(exc).__name__}: {exc}"}
            continue
        ttft, itl, tokens = [], [], 0
        for r in res.values():
            tokens += len(r.generated_tokens)
            ts = getattr(r, "timestamps", None)
            if ts:
                ttft.append(ts[0] - r.created_time)
                if len(ts) > 1:
                    itl.append((ts[-1] - ts[0]) / (len(ts) - 1))
        out[f"{inp}/{outp}"] = _summary(tokens, wall, ttft, itl)
        print(f"transformers {inp}/{outp}: {out[f'{inp}/{outp}']}", flush=True)
        if on_result is not None:
            on_result(out)
    return out


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tiny", action="store_true", help="tiny fp32 model on the CPU (smoke test)")
    p.add_argument("--requests", type=int, default=None, help="requests per shape (default 256; tiny 6)")
    p.add_argument("--mem-fraction", type=float, default=0.9, help="K/V share of free GPU memory")
    p.add_argument("--skip-hf", action="store_true", help="do not run the transformers reference")
    p.add_argument("--name", default=None, help="result file name (default bench_serving[_tiny])")
    args = p.parse_args(argv)
    tiny = args.tiny or not torch.cuda.is_available()
    cfg, shapes = (TINY, TINY_SHAPES) if tiny else (LLAMA3_8B, SHAPES)
    dtype, tdtype = ("float32", torch.float32) if tiny else ("bfloat16", torch.bfloat16)
    device = "cpu" if tiny else "cuda"
    n = args.requests or (6 if tiny else 256)
    longest = max(i + o for i, o in shapes)
    hf_model = make_hf_model(cfg, tdtype)
    engine = build_engine(hf_model, dtype, max_batch_size=min(n, 256), max_input_len=max(i for i, _ in shapes),
                          max_seq_len=longest, max_num_tokens=max(2048, max(i for i, _ in shapes)) if not tiny
                          else 64, tokens_per_block=32 if not tiny else 8)
    ours = run_trtdsl(engine, device, shapes, n, cfg["vocab_size"], args.mem_fraction,
                      kv_tokens=n * longest if tiny else None)
    del engine
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    name = args.name or ("bench_serving_tiny" if tiny else "bench_serving")
    payload = {"model": "tiny llama" if tiny else "llama-3-8b shape, random weights", "dtype": dtype,
               "requests_per_shape": n, "trtdsl": ours,
               "transformers_continuous_batching": {"skipped": True}}
    write_result(name, payload)  # ours first, so a reference that runs out of time keeps them

    def save(reference: dict[str, Any]) -> None:
        payload["transformers_continuous_batching"] = reference
        payload["throughput_ratio"] = {k: ours[k]["output_tokens_per_s"] / r["output_tokens_per_s"]
                                       for k, r in reference.items()
                                       if k in ours and isinstance(r, dict) and r.get("output_tokens_per_s")}
        write_result(name, payload)
    if not args.skip_hf:
        save(run_hf(hf_model.to(device), shapes, n, cfg["vocab_size"], on_result=save))
    return payload


if __name__ == "__main__":
    import json
    print(json.dumps(main(), indent=2))
