"""Serving benchmark: trtdsl's in-flight batching executor vs Hugging Face transformers' own
continuous batching (its ``ContinuousBatchingManager``, what ``generate_batch`` runs), on the same
random weights.

Default (GPU): an 8B-shaped Llama (Llama-3-8B dims) in bf16 with random weights; 256 requests at each
input/output length pair 128/128, 1024/256, 2048/128, all submitted at once (offline throughput).
Reports output tokens/s, time to first token and inter-token latency p50/p99, and the largest number
of sequences of each shape each side's K/V cache holds at the same memory fraction.

    python benchmarks/bench_serving.py                          # GPU, both sides, all shapes
    python benchmarks/bench_serving.py --side hf --shapes 2048/128 --hf-time-limit 480
    python benchmarks/bench_serving.py --tiny                   # CPU smoke run in a few seconds

Each invocation merges its results into ``results/bench_serving_<gpu>.json`` (same device, model
and request count; otherwise it starts the file afresh and says so), so one side or one shape can
get a call of its own. Greedy decoding, no EOS (every request produces exactly its output length),
so both sides do the same work. Timing starts once each side is initialized (weights loaded, K/V
cache allocated, warm-up done) and ends when the last request is answered.
"""

from __future__ import annotations

import argparse
import dataclasses
import gc
import importlib.util
import json
import math
import sys
import time
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import RESULTS, device_facts, device_slug, write_result  # noqa: E402

LLAMA3_8B = dict(vocab_size=128256, hidden_size=4096, intermediate_size=14336, num_hidden_layers=32,
                 num_attention_heads=32, num_key_value_heads=8, max_position_embeddings=8192,
                 rope_theta=500000.0, rms_norm_eps=1e-5)
TINY = dict(vocab_size=256, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
            num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512)
SHAPES = [(128, 128), (1024, 256), (2048, 128)]
TINY_SHAPES = [(16, 8), (48, 4)]
HF_KEY = "transformers_continuous_batching"
# transformers' mask-based attention (sdpa / paged|eager, used when no flash-attn is installed) runs
# ONE dense attention over the whole packed batch with a block-diagonal mask: a step costs
# (query tokens) x (K/V tokens of every request in the step), so decode work grows with the square of
# the batch. The H100 run (transformers 5.17, 256 requests) fits step ≈ a + b·N²·L with
# a/b ≈ 6e6 tokens (ITL 179 ms at 128/128, 782 ms at 1024/256); throughput N/(a + b·N²·L) peaks
# at N = sqrt(a / (b·L)). Used only for the mask-based path; flash keeps transformers' defaults.
SDPA_BATCH_CONSTANT = 6.0e6
MAX_CONCURRENT_HOW = {
    "trtdsl": "K/V pool blocks (kv_cache_free_gpu_mem_fraction of the memory free after the weights "
              "load) // ceil((input + output) / tokens_per_block); the engine's max_batch_size still "
              "caps how many run in one step",
    HF_KEY: "num_blocks of transformers' PagedAttentionCache, sized by its own memory handler from "
            "max_memory_percent of the memory free after the weights load (its budget also covers "
            "its activation peaks and, without flash, the [max_batch_tokens, cache tokens] attention "
            "mask) // ceil((input + output) / block_size)",
}


def _pct(values: list[float], q: float) -> float | None:
    if not values:
        return None
    values = sorted(values)
    return values[min(len(values) - 1, int(round(q * (len(values) - 1))))]


def _summary(tokens: int, wall: float, ttft: list[float], itl: list[float]) -> dict[str, Any]:
    return {"output_tokens": tokens, "wall_s": round(wall, 3),
            "output_tokens_per_s": round(tokens / wall, 1) if wall > 0 else None,
            "ttft_p50_ms": _ms(_pct(ttft, 0.5)), "ttft_p99_ms": _ms(_pct(ttft, 0.99)),
            "itl_p50_ms": _ms(_pct(itl, 0.5)), "itl_p99_ms": _ms(_pct(itl, 0.99))}


def _ms(v: float | None) -> float | None:
    return None if v is None else round(v * 1e3, 3)


def _prompts(n: int, length: int, vocab: int, seed: int) -> list[list[int]]:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(10, vocab, (n, length), generator=g).tolist()


def parse_shapes(text: str) -> list[tuple[int, int]]:
    """``"128/128,2048/128"`` -> [(128, 128), (2048, 128)]."""
    shapes = []
    for item in filter(None, (s.strip() for s in text.split(","))):
        try:
            inp, outp = (int(x) for x in item.split("/"))
        except ValueError:
            raise argparse.ArgumentTypeError(f"--shapes: {item!r} is not INPUT/OUTPUT, e.g. 2048/128") from None
        if inp <= 0 or outp <= 0:
            raise argparse.ArgumentTypeError(f"--shapes: {item!r} needs positive lengths")
        shapes.append((inp, outp))
    if not shapes:
        raise argparse.ArgumentTypeError("--shapes: give at least one INPUT/OUTPUT pair")
    return shapes


def kv_bytes_per_token(cfg: dict[str, Any], itemsize: int) -> int:
    head_dim = cfg["hidden_size"] // cfg["num_attention_heads"]
    return 2 * cfg["num_hidden_layers"] * cfg["num_key_value_heads"] * head_dim * itemsize


def _capacity(blocks: int, block_tokens: int, inp: int, outp: int, bytes_per_token: int) -> dict[str, Any]:
    """How many sequences of one shape a paged cache of ``blocks`` x ``block_tokens`` holds at once."""
    return {"kv_blocks": blocks, "kv_block_tokens": block_tokens, "kv_tokens": blocks * block_tokens,
            "kv_gib": round(blocks * block_tokens * bytes_per_token / 2**30, 2),
            "max_concurrent_sequences": blocks // -(-(inp + outp) // block_tokens)}


def make_hf_model(cfg: dict[str, Any], dtype: torch.dtype, device: str) -> Any:
    from transformers import LlamaConfig, LlamaForCausalLM
    torch.manual_seed(0)
    config = LlamaConfig(**cfg, dtype=dtype)
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


def run_trtdsl(engine: Any, device: str, shapes: list[tuple[int, int]], n: int, cfg: dict[str, Any],
               mem_fraction: float, kv_tokens: int | None, itemsize: int) -> dict[str, Any]:
    from trtdsl.runtime.executor import Executor, GenerationRequest
    out: dict[str, Any] = {}
    # As `trtdsl serve` does: capture every decode bucket before the clock starts.
    ex = Executor(engine, device=device, kv_cache_free_gpu_mem_fraction=mem_fraction,
                  kv_cache_max_tokens=kv_tokens, cuda_graph_capture="startup")
    try:
        tpb, blocks = ex.kv_cache.tokens_per_block, ex.kv_cache.num_blocks
        ex.generate([GenerationRequest([1, 2, 3], 2)])  # warm-up
        for inp, outp in shapes:
            prompts = _prompts(n, inp, cfg["vocab_size"], seed=inp * 7 + outp)
            before = ex.stats().preemptions
            t0 = time.perf_counter()
            ids = [ex.submit(GenerationRequest(p, outp)) for p in prompts]
            results = [ex.result(r) for r in ids]
            wall = time.perf_counter() - t0
            tokens = sum(len(r.output_token_ids) for r in results)
            # The executor stamps each request's first token; ITL is each request's mean gap.
            ttft = [r.time_to_first_token for r in results if r.time_to_first_token is not None]
            key = f"{inp}/{outp}"
            out[key] = {**_summary(tokens, wall, ttft, _itl_from_results(results)),
                        "requests": n, "completed_requests": len(results),
                        **_capacity(blocks, tpb, inp, outp, kv_bytes_per_token(cfg, itemsize)),
                        "preemptions": ex.stats().preemptions - before}
            print(f"trtdsl {key}: {out[key]}", flush=True)
    finally:
        ex.shutdown()
    return out


def _itl_from_results(results: list[Any]) -> list[float]:
    """Mean inter-token latency of each request: (latency - ttft) / (tokens - 1)."""
    return [(r.latency - r.time_to_first_token) / (len(r.output_token_ids) - 1) for r in results
            if r.time_to_first_token is not None and len(r.output_token_ids) > 1]


def flash_installed() -> bool:
    """Whether transformers will pick flash attention for continuous batching (it does so itself)."""
    return any(importlib.util.find_spec(m) is not None for m in ("flash_attn", "flash_attn_interface"))


def sdpa_max_requests(inp: int, outp: int, n: int) -> int:
    """The mask-based path's best decode batch for one shape (see SDPA_BATCH_CONSTANT), multiple of 16."""
    mean_kv = inp + outp / 2
    best = math.sqrt(SDPA_BATCH_CONSTANT / mean_kv)
    return min(n, max(16, 16 * round(best / 16)))


def hf_cb_config(settings: dict[str, Any]) -> Any:
    """A ContinuousBatchingConfig from ``settings``, portable across transformers 5.17 .. 5.23:
    5.17 calls the page ``block_size``, 5.23 ``page_size`` (block_size deprecated)."""
    from transformers.generation.configuration_utils import ContinuousBatchingConfig
    names = {f.name for f in dataclasses.fields(ContinuousBatchingConfig)}
    kwargs = {k: v for k, v in settings.items() if v is not None}
    if "block_size" in kwargs and "page_size" in names:
        kwargs["page_size"] = kwargs.pop("block_size")
    unknown = sorted(set(kwargs) - names)
    if unknown:
        raise SystemExit(f"transformers' ContinuousBatchingConfig has no {unknown}: drop those --hf-* options")
    return ContinuousBatchingConfig(**kwargs)


def _hf_sizing(manager: Any) -> dict[str, Any]:
    """What transformers resolved: attention, cache blocks and tokens, batch limits, CUDA graphs."""
    c = manager.continuous_batching_config
    block = getattr(c, "page_size", None) or getattr(c, "block_size", None)
    graphs = getattr(c, "use_cuda_graph", None)
    return {"attn_implementation": manager.model.config._attn_implementation, "num_blocks": c.num_blocks,
            "block_size": block, "max_batch_tokens": c.max_batch_tokens,
            "max_requests_per_batch": c.max_requests_per_batch,
            "max_memory_percent": c.max_memory_percent,
            "use_cuda_graph": list(graphs) if isinstance(graphs, tuple) else graphs}


def run_hf_shape(model: Any, prompts: list[list[int]], outp: int, settings: dict[str, Any],
                 time_limit: float, bytes_per_token: int, keep_tokens: bool = False) -> dict[str, Any]:
    """One shape through transformers' continuous batching manager. After ``time_limit`` seconds it
    stops and reports the requests completed so far, marked ``partial``. ``keep_tokens`` adds the
    generated ids (for tests)."""
    from transformers import GenerationConfig
    from transformers.generation.continuous_batching.utils import WorkloadHints
    n, inp = len(prompts), len(prompts[0])
    gen = GenerationConfig(max_new_tokens=outp, do_sample=False, eos_token_id=-1, pad_token_id=0)
    hints = WorkloadHints(max_prompt_length=inp, max_generated_length=outp, num_requests=n)
    done: dict[str, Any] = {}
    with model.continuous_batching_context_manager(
            generation_config=gen, continuous_batching_config=hf_cb_config(settings), block=True,
            timeout=60, workload_hints=hints) as manager:
        sizing = _hf_sizing(manager)  # warm-up created the cache: these are the resolved values
        t0 = time.perf_counter()
        deadline = t0 + time_limit
        manager.add_requests(inputs=prompts, max_new_tokens=outp, record_timestamps=True)
        while len(done) < n and (left := deadline - time.perf_counter()) > 0:
            r = manager.get_result(timeout=min(1.0, left))
            if r is None:
                if not manager.is_running():
                    raise RuntimeError(f"transformers' generation thread stopped after {len(done)}/{n} requests")
            elif r.is_finished():
                done[r.request_id] = r
        wall = time.perf_counter() - t0
    failed = [r for r in done.values() if getattr(r, "error", None)]
    if failed:
        raise RuntimeError(f"{len(failed)} requests failed in transformers, first: {failed[0].error}")
    ttft, itl, tokens = [], [], 0
    for r in done.values():
        tokens += len(r.generated_tokens)
        ts = getattr(r, "timestamps", None)
        if ts:
            ttft.append(ts[0] - r.created_time)
            if len(ts) > 1:
                itl.append((ts[-1] - ts[0]) / (len(ts) - 1))
    res = {**_summary(tokens, wall, ttft, itl), "requests": n, "completed_requests": len(done),
           **_capacity(sizing["num_blocks"], sizing["block_size"], inp, outp, bytes_per_token), "config": sizing}
    if keep_tokens:
        res["tokens"] = [list(r.generated_tokens) for r in done.values()]
    if len(done) < n:
        res.update(partial=True, time_limit_s=time_limit,
                   partial_note=f"stopped after {time_limit:g} s with {len(done)}/{n} requests answered: "
                                "tokens/s counts only their tokens (requests still running are left out), "
                                "TTFT/ITL only theirs")
    return res


def run_hf(model: Any, shapes: list[tuple[int, int]], n: int, cfg: dict[str, Any], args: argparse.Namespace,
           itemsize: int, on_result: Any) -> dict[str, Any]:
    out: dict[str, Any] = {}
    if args.hf_attn != "auto":
        model.set_attn_implementation(args.hf_attn)
    mask_based = args.hf_attn in ("sdpa", "paged|eager") or (args.hf_attn == "auto" and not flash_installed())
    for inp, outp in shapes:
        key = f"{inp}/{outp}"
        mrpb = args.hf_max_requests_per_batch
        if mrpb == "auto":
            mrpb = sdpa_max_requests(inp, outp, n) if mask_based else None
        elif mrpb == "default":
            mrpb = None
        settings = {"block_size": args.hf_block_size, "num_blocks": args.hf_num_blocks,
                    "max_batch_tokens": args.hf_max_batch_tokens, "max_requests_per_batch": mrpb,
                    "max_memory_percent": args.mem_fraction}
        prompts = _prompts(n, inp, cfg["vocab_size"], seed=inp * 7 + outp)
        try:
            out[key] = run_hf_shape(model, prompts, outp, settings, args.hf_time_limit,
                                    kv_bytes_per_token(cfg, itemsize))
        except Exception as exc:  # noqa: BLE001 - the reference's failure is a result, not a crash
            out[key] = {"error": f"{type(exc).__name__}: {exc}"}
        print(f"transformers {key}: {out[key]}", flush=True)
        on_result(key, out[key])
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    return out


def _max_requests_arg(text: str) -> int | str:
    if text in ("auto", "default"):
        return text
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value <= 0:
        raise argparse.ArgumentTypeError(f"--hf-max-requests-per-batch: {text!r} is not auto, default or a positive int")
    return value


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tiny", action="store_true", help="tiny fp32 model on the CPU (smoke test)")
    p.add_argument("--requests", type=int, default=None, help="requests per shape (default 256; tiny 6)")
    p.add_argument("--side", choices=("both", "ours", "hf"), default="both", help="which side(s) to run")
    p.add_argument("--skip-hf", action="store_true", help="same as --side ours")
    p.add_argument("--shapes", type=parse_shapes, default=None,
                   help="comma-separated INPUT/OUTPUT pairs (default 128/128,1024/256,2048/128)")
    p.add_argument("--mem-fraction", type=float, default=0.9,
                   help="K/V share of the GPU memory free after the weights load (both sides)")
    p.add_argument("--name", default=None, help="result file name (default bench_serving_<gpu> / _tiny)")
    p.add_argument("--hf-time-limit", type=float, default=None,
                   help="seconds per shape for transformers; then it reports the requests done so far "
                        "as partial (default 420; tiny 120)")
    p.add_argument("--hf-attn", default="auto",
                   help="transformers attention: auto (its own choice: flash if installed, else sdpa), "
                        "sdpa, paged|eager, flash_attention_2, flash_attention_3")
    p.add_argument("--hf-max-requests-per-batch", type=_max_requests_arg, default="auto",
                   help="auto: sized per shape for the mask-based path (see SDPA_BATCH_CONSTANT), "
                        "transformers' default with flash; default: transformers' default; or an int")
    p.add_argument("--hf-block-size", type=int, default=None, help="tokens per cache page (transformers: 256)")
    p.add_argument("--hf-num-blocks", type=int, default=None, help="cache blocks (default: sized from memory)")
    p.add_argument("--hf-max-batch-tokens", type=int, default=None, help="tokens per step (default: sized)")
    return p


def load_previous(name: str, header: dict[str, Any]) -> dict[str, Any]:
    """The existing result file's content when it is from the same device, model and request count."""
    path = RESULTS / f"{name}.json"
    if not path.exists():
        return {}
    old = json.loads(path.read_text())
    facts = device_facts()
    mismatch = [k for k in ("model", "dtype", "requests_per_shape") if old.get(k) != header[k]]
    if old.get("device") != facts.get("device"):
        mismatch.append("device")
    if mismatch:
        print(f"{path.name}: its {', '.join(mismatch)} differ from this run's: starting it afresh", flush=True)
        return {}
    for key in ("benchmark", *facts):  # write_result stamps this run's facts
        old.pop(key, None)
    return old


def _derived(payload: dict[str, Any]) -> None:
    """Throughput ratios and the side-by-side capacity table, from whatever both sides have."""
    ours, hf = payload.get("trtdsl", {}), payload.get(HF_KEY, {})
    ratio, notes, conc = {}, {}, {}
    for key, r in ours.items():
        h = hf.get(key) if isinstance(hf.get(key), dict) else {}
        if r.get("output_tokens_per_s") and h.get("output_tokens_per_s"):
            ratio[key] = round(r["output_tokens_per_s"] / h["output_tokens_per_s"], 2)
            if h.get("partial"):
                notes[key] = ("transformers stopped at its time limit: its tokens/s counts only answered "
                              "requests, so this ratio overstates ours")
        conc[key] = {"trtdsl": r.get("max_concurrent_sequences"), "transformers": h.get("max_concurrent_sequences")}
    payload["throughput_ratio"] = ratio
    if notes:
        payload["throughput_ratio_notes"] = notes
    else:
        payload.pop("throughput_ratio_notes", None)
    payload["max_concurrent_sequences"] = conc
    payload["max_concurrent_how"] = MAX_CONCURRENT_HOW


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = _parser().parse_args(argv)
    side = "ours" if args.skip_hf else args.side
    tiny = args.tiny or not torch.cuda.is_available()
    cfg, all_shapes = (TINY, TINY_SHAPES) if tiny else (LLAMA3_8B, SHAPES)
    shapes = args.shapes or all_shapes
    dtype, tdtype = ("float32", torch.float32) if tiny else ("bfloat16", torch.bfloat16)
    device = "cpu" if tiny else "cuda"
    n = args.requests or (6 if tiny else 256)
    if args.hf_time_limit is None:
        args.hf_time_limit = 120.0 if tiny else 420.0
    if tiny:  # on the CPU transformers sizes its cache (and dense mask) from host RAM: gigabytes
        args.hf_num_blocks = args.hf_num_blocks or 8
        args.hf_max_batch_tokens = args.hf_max_batch_tokens or 256
    name = args.name or ("bench_serving_tiny" if tiny else f"bench_serving_{device_slug()}")
    header = {"model": "tiny llama" if tiny else "llama-3-8b shape, random weights", "dtype": dtype,
              "requests_per_shape": n}
    payload: dict[str, Any] = {**header, "trtdsl": {}, HF_KEY: {}, **load_previous(name, header)}
    payload.setdefault("runs", {})
    if not isinstance(payload.get(HF_KEY), dict) or payload[HF_KEY].get("skipped"):
        payload[HF_KEY] = {}
    itemsize = tdtype.itemsize
    hf_model = make_hf_model(cfg, tdtype, device)

    def save(section: str, key: str, result: dict[str, Any]) -> None:
        payload[section][key] = result
        payload["runs"][section] = {**device_facts(), "argv": sys.argv[1:] if argv is None else argv}
        _derived(payload)
        write_result(name, payload)  # after every shape, so a run cut short keeps what it measured

    if side in ("both", "ours"):
        run_ours(hf_model, side, shapes, all_shapes, n, cfg, dtype, device, args, itemsize, tiny, save)
        if side == "ours":
            return payload
    run_hf(hf_model.to(device), shapes, n, cfg, args, itemsize, lambda k, r: save(HF_KEY, k, r))
    return payload


def run_ours(hf_model: Any, side: str, shapes: list[tuple[int, int]], all_shapes: list[tuple[int, int]], n: int,
             cfg: dict[str, Any], dtype: str, device: str, args: argparse.Namespace, itemsize: int, tiny: bool,
             save: Any) -> None:
    # The engine is built for every shape of the mode, so one-shape runs measure the same engine.
    longest = max(i + o for i, o in all_shapes)
    max_in = max(i for i, _ in all_shapes)
    engine = build_engine(hf_model, dtype, max_batch_size=min(n, 256), max_input_len=max_in,
                          max_seq_len=longest, max_num_tokens=64 if tiny else max(2048, max_in),
                          tokens_per_block=8 if tiny else 32)
    # Our K/V pool is sized from the memory free after OUR weights load: move transformers' copy
    # off the GPU meanwhile, as its own run sizes its cache with only its weights resident.
    hf_model.to("cpu")
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    ours = run_trtdsl(engine, device, shapes, n, cfg, args.mem_fraction,
                      kv_tokens=n * longest if tiny else None, itemsize=itemsize)
    del engine
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    for key, result in ours.items():
        save("trtdsl", key, result)


if __name__ == "__main__":
    print(json.dumps(main(), indent=2))
