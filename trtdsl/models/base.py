"""``CausalLM``: what every model family shares: construction from a config, loading Hugging Face
checkpoints through the family's mapping table, and building the step network of
docs/batch_interface.md (inputs, one optimization profile, the ``logits`` output).

A family subclass provides ``ARCHITECTURE``, ``WEIGHT_MAP``, ``IGNORED_WEIGHTS``, ``config_from_hf``
(HF ``config.json`` dict -> :class:`ModelConfig`, once), ``__init__`` (the modules, from the config)
and ``forward(input_ids, batch) -> logits``.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, ClassVar, Mapping, Sequence

import torch

from .. import functional as F
from ..dtypes import DType, dtype_of
from ..errors import ConfigError
from ..ir.network import Network, Tensor
from ..layers.attention import ATTENTION_BACKENDS, Attention, StepBatch, block_causal_mask, rope_rows
from ..layers.rope import rope_cos_sin
from ..module import Module
from .checkpoint import is_gguf, read_hf_config, read_hf_tensors
from .config import ModelConfig
from .convert import WeightRule, convert_checkpoint

__all__ = ["CausalLM", "BUILD_INPUTS", "COMPOSITE_INPUTS", "DEFAULT_MAX_NUM_BLOCKS"]

# Network inputs in order (docs/batch_interface.md). `cu_seqlens` is one longer than `batch`; the IR
# names every dynamic input dim, so its length is the dim `batch_plus_1`.
BUILD_INPUTS = ("input_ids", "position_ids", "seq_lens", "past_lens", "cu_seqlens", "block_tables",
                "last_token_ids", "kv_cache")
# The plugin-free context-only network: `seq_ids[t]` is the index of token t's sequence (tokens of
# one sequence contiguous, positions from 0); `last_token_ids` as above (absent with context_logits).
COMPOSITE_INPUTS = ("input_ids", "position_ids", "seq_ids", "last_token_ids")
DEFAULT_MAX_NUM_BLOCKS = 1 << 20


def _rows_at(index: Tensor) -> Any:
    return lambda h: F.index_select(h, 0, index)


def _all_rows(h: Tensor) -> Tensor:
    return h


class CausalLM(Module):
    """Base class of decoder-only LMs built from a :class:`ModelConfig`."""

    ARCHITECTURE: ClassVar[str] = ""
    WEIGHT_MAP: ClassVar[tuple[WeightRule, ...]] = ()
    IGNORED_WEIGHTS: ClassVar[tuple[str, ...]] = ()  # regexes of non-weight checkpoint entries

    def __init__(self, config: ModelConfig):
        super().__init__()
        if config.architecture != self.ARCHITECTURE:
            raise ConfigError(f"{type(self).__name__} needs architecture {self.ARCHITECTURE!r}, the "
                              f"config says {config.architecture!r}")
        self.config = config

    # -- construction ---------------------------------------------------------------------------------
    @classmethod
    def from_config(cls, config: ModelConfig) -> "CausalLM":
        return cls(config)

    @classmethod
    def config_from_dict(cls, d: Mapping[str, Any]) -> ModelConfig:
        """The config from :meth:`ModelConfig.to_dict` output (as stored in engine files)."""
        return ModelConfig.from_dict(d)

    @classmethod
    def config_from_hf(cls, hf: Mapping[str, Any], dtype: Any = "float32") -> ModelConfig:
        raise NotImplementedError

    @classmethod
    def canonical_hf_names(cls, tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Hook for families whose checkpoints spell names more than one way (GPT-2's prefix)."""
        return tensors

    @classmethod
    def from_hugging_face(cls, path: str | Path, dtype: Any = "float32") -> "CausalLM":
        """Load a Hugging Face checkpoint directory (or a ``.gguf`` file), weights in ``dtype``."""
        if is_gguf(path):
            from .gguf import read_gguf
            hf_config, tensors = read_gguf(path)
        else:
            hf_config, tensors = read_hf_config(path), read_hf_tensors(path)
        model = cls.from_config(cls.config_from_hf(hf_config, dtype))
        model.load_hf_tensors(tensors, source=str(path))
        return model

    def load_hf_tensors(self, tensors: Mapping[str, torch.Tensor], source: str = "checkpoint") -> None:
        """Convert HF-named tensors through ``WEIGHT_MAP`` and load them (one CheckpointError lists
        every missing, unexpected or mis-shaped tensor)."""
        state = convert_checkpoint(self, self.canonical_hf_names(dict(tensors)), self.WEIGHT_MAP,
                                   self.IGNORED_WEIGHTS, self.config.torch_dtype, source)
        self.load_state_dict(state)

    # -- facts the builder and runtime need -----------------------------------------------------------
    @property
    def num_layers(self) -> int:
        return self.config.num_layers

    def kv_cache_shape(self, num_blocks: int, tokens_per_block: int) -> tuple[int, ...]:
        """``[num_layers, num_blocks, 2, num_kv_heads, tokens_per_block, head_dim]``."""
        c = self.config
        return (c.num_layers, num_blocks, 2, c.num_kv_heads, tokens_per_block, c.head_dim)

    def attention_layers(self) -> list[Attention]:
        return [m for m in self.modules() if isinstance(m, Attention)]

    # -- building -------------------------------------------------------------------------------------
    def check_build_limits(self, max_seq_len: int) -> None:
        """Raise ConfigError for limits this model cannot serve (families may add checks)."""
        window = self.config.sliding_window
        if window is not None and window < max_seq_len:
            raise ConfigError(f"{type(self).__name__}: sliding_window={window} is shorter than "
                              f"max_seq_len={max_seq_len}; sliding-window attention is not supported, "
                              f"build with max_seq_len <= {window}")

    def build_network(self, *, max_batch_size: int, max_num_tokens: int, max_seq_len: int,
                      tokens_per_block: int = 32, kv_cache_dtype: Any = None,
                      context_logits: bool = False, attention_backend: str = "plugin",
                      name: str | None = None, max_num_blocks: int | None = None) -> Network:
        """The step network (docs/batch_interface.md) with one optimization profile from the limits.

        Output ``logits``: float32 ``[batch, vocab]`` at ``last_token_ids``, or ``[num_tokens, vocab]``
        with ``context_logits``. ``attention_backend="composite"`` builds the plugin-free,
        context-only network with inputs :data:`COMPOSITE_INPUTS` (no K/V cache).
        ``max_num_blocks`` bounds the K/V pool's ``num_blocks`` (default: :data:`DEFAULT_MAX_NUM_BLOCKS`
        or enough for every sequence at ``max_seq_len``, whichever is larger)."""
        self._check_limits(max_batch_size, max_num_tokens, max_seq_len, tokens_per_block,
                           attention_backend)
        self.check_build_limits(max_seq_len)
        for attn in self.attention_layers():
            attn.use_backend(attention_backend)
        net = Network(name or f"{self.config.architecture}_{attention_backend}")
        builder = self._paged_inputs if attention_backend == "plugin" else self._composite_inputs
        max_blocks_per_seq = math.ceil(max_seq_len / tokens_per_block)
        with net.scope():
            input_ids, batch = builder(net, max_seq_len, tokens_per_block, kv_cache_dtype, context_logits)
            logits = self(input_ids, batch)
        net.mark_output(logits, "logits")
        ranges = {"num_tokens": (1, max(1, min(max_num_tokens, max_batch_size)), max_num_tokens),
                  "batch": (1, max_batch_size, max_batch_size)}
        if attention_backend == "plugin":
            # The pool size is the runtime's choice (it depends on free memory); only the plugin
            # reads this dim, so a generous bound costs nothing.
            opt_blocks = max_batch_size * max_blocks_per_seq
            blocks = max_num_blocks or max(opt_blocks, DEFAULT_MAX_NUM_BLOCKS)
            ranges.update(batch_plus_1=(2, max_batch_size + 1, max_batch_size + 1),
                          max_blocks_per_seq=(1, max_blocks_per_seq, max_blocks_per_seq),
                          num_blocks=(1, min(opt_blocks, blocks), blocks))
        net.add_profile({k: v for k, v in ranges.items()
                         if any(k in s.dynamic_dims.values() for s in net.input_specs.values())})
        net.metadata.update(model_config=self.config.to_dict(), architecture=self.config.architecture,
                            build=dict(max_batch_size=max_batch_size, max_num_tokens=max_num_tokens,
                                       max_seq_len=max_seq_len, tokens_per_block=tokens_per_block,
                                       kv_cache_dtype=dtype_of(kv_cache_dtype or self.config.dtype).value,
                                       context_logits=context_logits,
                                       attention_backend=attention_backend))
        return net

    def _check_limits(self, max_batch_size: int, max_num_tokens: int, max_seq_len: int,
                      tokens_per_block: int, backend: str) -> None:
        problems = [f"{k}={v} must be a positive int" for k, v in
                    (("max_batch_size", max_batch_size), ("max_num_tokens", max_num_tokens),
                     ("max_seq_len", max_seq_len), ("tokens_per_block", tokens_per_block))
                    if not isinstance(v, int) or v <= 0]
        if backend not in ATTENTION_BACKENDS:
            problems.append(f"attention_backend={backend!r}; expected one of {list(ATTENTION_BACKENDS)}")
        if problems:
            raise ConfigError(f"build_network of {type(self).__name__}: " + "; ".join(problems))

    def _paged_inputs(self, net: Network, max_seq_len: int, tokens_per_block: int, kv_cache_dtype: Any,
                      context_logits: bool) -> tuple[Tensor, StepBatch]:
        kv_dtype = dtype_of(kv_cache_dtype or self.config.dtype)
        if kv_dtype not in (DType.float32, DType.float16, DType.bfloat16):
            raise ConfigError(f"kv_cache_dtype={kv_dtype.value}: the attention plugin stores "
                              "float32/float16/bfloat16 caches")
        i32 = DType.int32
        input_ids = net.add_input("input_ids", i32, ["num_tokens"])
        position_ids = net.add_input("position_ids", i32, ["num_tokens"])
        seq_lens = net.add_input("seq_lens", i32, ["batch"])
        past_lens = net.add_input("past_lens", i32, ["batch"])
        cu_seqlens = net.add_input("cu_seqlens", i32, ["batch_plus_1"])
        block_tables = net.add_input("block_tables", i32, ["batch", "max_blocks_per_seq"])
        last_token_ids = net.add_input("last_token_ids", i32, ["batch"])
        kv_shape = list(self.kv_cache_shape(0, tokens_per_block))
        kv_shape[1] = "num_blocks"  # type: ignore[call-overload]
        kv_cache = net.add_input("kv_cache", kv_dtype, kv_shape)
        table = F.constant(rope_cos_sin(self.config.rope, max_seq_len), name="rope_cos_sin")
        batch = StepBatch(position_ids=position_ids,
                          logits_rows=_all_rows if context_logits else _rows_at(last_token_ids),
                          seq_lens=seq_lens, past_lens=past_lens, cu_seqlens=cu_seqlens,
                          block_tables=block_tables, kv_cache=kv_cache, rope_cos_sin=table)
        return input_ids, batch

    def _composite_inputs(self, net: Network, max_seq_len: int, tokens_per_block: int,
                          kv_cache_dtype: Any, context_logits: bool) -> tuple[Tensor, StepBatch]:
        i32 = DType.int32
        input_ids = net.add_input("input_ids", i32, ["num_tokens"])
        position_ids = net.add_input("position_ids", i32, ["num_tokens"])
        seq_ids = net.add_input("seq_ids", i32, ["num_tokens"])
        rows = _all_rows if context_logits else \
            _rows_at(net.add_input("last_token_ids", i32, ["batch"]))
        mask = block_causal_mask(seq_ids, position_ids)
        cos = sin = None
        if self.config.rope is not None:
            table = F.constant(rope_cos_sin(self.config.rope, max_seq_len), name="rope_cos_sin")
            cos, sin = rope_rows(table, position_ids, self.config.rope.style, self.config.dtype)
        batch = StepBatch(position_ids=position_ids, logits_rows=rows, mask=mask, rope_cos=cos,
                          rope_sin=sin)
        return input_ids, batch

    def forward(self, input_ids: Tensor, batch: StepBatch) -> Tensor:  # pragma: no cover
        raise NotImplementedError


def require(hf: Mapping[str, Any], keys: Sequence[str], family: str) -> None:
    """ConfigError naming every key a family needs that ``config.json`` lacks."""
    missing = [k for k in keys if hf.get(k) is None]
    if missing:
        raise ConfigError(f"{family} config.json lacks {missing}")
