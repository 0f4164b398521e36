"""Multi-head attention (MHA / GQA / MQA) over a packed batch, and the per-step tensors it reads.

Two backends, picked at construction (or by :meth:`Attention.use_backend` before a network is
built, never inside ``forward``):

- ``"plugin"``: one ``trtdsl.attention`` plugin layer (docs/batch_interface.md): RoPE, the paged K/V
  cache write and causal attention over the cache, for context, generation and mixed steps;
- ``"composite"``: standard ops only, for exporters that cannot carry plugins (ONNX): the context
  phase of a packed batch, with no K/V cache; a block-diagonal causal mask built once per network
  from each token's sequence id and position keeps sequences apart.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

from .. import functional as F
from ..errors import ConfigError
from ..ir.network import Tensor
from ..module import Module
from ..plugins import attention as _attention_plugin  # noqa: F401  (registers the plugin)
from ..plugins.attention import ATTENTION_PLUGIN
from .linear import ColumnLinear, RowLinear

__all__ = ["ATTENTION_BACKENDS", "StepBatch", "Attention", "block_causal_mask", "rope_rows"]

ATTENTION_BACKENDS = ("plugin", "composite")


@dataclass(frozen=True)
class StepBatch:
    """The network tensors of one step that every attention layer shares (created once per network
    by the model's ``build_network``).

    Plugin backend: the step inputs of docs/batch_interface.md plus the ``rope_cos_sin`` constant.
    Composite backend: ``mask`` (bool ``[num_tokens, num_tokens]``) and ``rope_cos``/``rope_sin``
    (``[num_tokens, 1, rotary_dim]`` in the model dtype, Hugging Face layout).
    ``logits_rows`` picks the hidden rows that become logits (last token of each sequence, or all).
    """

    position_ids: Tensor
    logits_rows: Callable[[Tensor], Tensor]
    seq_lens: Tensor | None = None
    past_lens: Tensor | None = None
    cu_seqlens: Tensor | None = None
    block_tables: Tensor | None = None
    kv_cache: Tensor | None = None
    rope_cos_sin: Tensor | None = None
    mask: Tensor | None = None
    rope_cos: Tensor | None = None
    rope_sin: Tensor | None = None

    def plugin_inputs(self, qkv: Tensor) -> list[Tensor]:
        """The attention plugin's inputs, in its order."""
        fields = (self.position_ids, self.seq_lens, self.past_lens, self.cu_seqlens, self.block_tables,
                  self.kv_cache, self.rope_cos_sin)
        if any(t is None for t in fields):
            raise ConfigError("this network was built for the composite attention backend; the "
                              "plugin backend needs the paged step inputs (seq_lens, kv_cache, ...)")
        return [qkv, *fields]  # type: ignore[list-item]


def block_causal_mask(seq_ids: Tensor, position_ids: Tensor) -> Tensor:
    """Bool ``[num_tokens, num_tokens]``: query ``i`` sees key ``j`` iff both belong to the same
    sequence and ``position[j] <= position[i]`` (packed context-phase attention without a cache)."""
    same_seq = F.eq(F.unsqueeze(seq_ids, 1), F.unsqueeze(seq_ids, 0))
    causal = F.le(F.unsqueeze(position_ids, 0), F.unsqueeze(position_ids, 1))
    return F.logical_and(same_seq, causal)


def rope_rows(table: Tensor, position_ids: Tensor, style: str, dtype: Any) -> tuple[Tensor, Tensor]:
    """Each token's cos and sin ``[num_tokens, 1, rotary_dim]`` from the plugin's table, laid out for
    ``F.rotary_embedding`` (halves repeated for ``"neox"``, each angle twice for ``"gptj"``)."""
    rows = F.index_select(table, 0, position_ids)  # [n, rot]: cos | sin
    half = table.shape[1] // 2
    cos, sin = F.slice(rows, 1, 0, half), F.slice(rows, 1, half, 2 * half)
    n = position_ids.shape[0]

    def layout(t: Tensor) -> Tensor:
        pair = F.stack([t, t], -1 if style == "gptj" else 1)  # [n, half, 2] or [n, 2, half]
        return F.cast(F.reshape(pair, n, 1, 2 * half), dtype)

    return layout(cos), layout(sin)


class Attention(Module):
    """Fused-QKV attention: ``dense(attend(qkv(x)))``.

    ``qkv`` holds the q heads, then the k heads, then the v heads (one matmul); ``num_kv_heads``
    below ``num_heads`` is GQA (1 is MQA). RoPE (``rotary_dim > 0``) is applied inside the plugin,
    or by standard ops in the composite backend."""

    def __init__(self, hidden_size: int, num_heads: int, num_kv_heads: int, head_dim: int, *,
                 layer_idx: int, rotary_dim: int = 0, rope_style: str = "neox", qkv_bias: bool = False,
                 dense_bias: bool = False, softmax_scale: float | None = None, backend: str = "plugin",
                 dtype: Any = "float32", tp_size: int = 1, tp_rank: int = 0):
        super().__init__()
        if num_kv_heads <= 0 or num_heads % num_kv_heads:
            raise ConfigError(f"attention: num_heads={num_heads} is not a multiple of "
                              f"num_kv_heads={num_kv_heads}")
        if num_heads % tp_size or num_kv_heads % tp_size:
            raise ConfigError(f"attention: {num_heads} heads / {num_kv_heads} kv heads do not split "
                              f"over tp_size={tp_size}")
        self.num_heads, self.num_kv_heads = num_heads // tp_size, num_kv_heads // tp_size
        self.head_dim, self.layer_idx = head_dim, layer_idx
        self.rotary_dim, self.rope_style = rotary_dim, rope_style
        self.softmax_scale = head_dim ** -0.5 if softmax_scale is None else softmax_scale
        self.qkv = ColumnLinear(hidden_size, (num_heads + 2 * num_kv_heads) * head_dim, qkv_bias, dtype,
                                tp_size, tp_rank)
        self.dense = RowLinear(num_heads * head_dim, hidden_size, dense_bias, dtype, tp_size, tp_rank)
        self.use_backend(backend)

    def use_backend(self, backend: str) -> None:
        """Pick the attention implementation (a build-time choice: call before building)."""
        cores = {"plugin": self._plugin_core, "composite": self._composite_core}
        if backend not in cores:
            raise ConfigError(f"unknown attention backend {backend!r}; expected one of "
                              f"{list(ATTENTION_BACKENDS)}")
        self.backend = backend
        self._core = cores[backend]
        self._rope = self._apply_rope if self.rotary_dim else _no_rope

    def forward(self, x: Tensor, batch: StepBatch) -> Tensor:
        return self.dense(self._core(self.qkv(x), batch))

    def _plugin_core(self, qkv: Tensor, batch: StepBatch) -> Tensor:
        inputs = batch.plugin_inputs(qkv)
        (out,) = F.plugin(ATTENTION_PLUGIN, inputs, num_heads=self.num_heads,
                          num_kv_heads=self.num_kv_heads, head_dim=self.head_dim,
                          layer_idx=self.layer_idx, tokens_per_block=inputs[6].shape[4],
                          softmax_scale=self.softmax_scale, rotary_dim=self.rotary_dim,
                          rope_style=self.rope_style)
        return out

    def _composite_core(self, qkv: Tensor, batch: StepBatch) -> Tensor:
        if batch.mask is None:
            raise ConfigError("composite attention needs a network built with "
                              "attention_backend='composite' (it reads the block-causal mask)")
        n, h, kvh, d = qkv.shape[0], self.num_heads, self.num_kv_heads, self.head_dim
        q, k, v = F.split(qkv, [h * d, kvh * d, kvh * d], dim=-1)
        q = self._rope(F.reshape(q, n, h, d), batch)
        k = self._rope(F.reshape(k, n, kvh, d), batch)
        v = F.reshape(v, n, kvh, d)
        heads_first = (1, 0, 2)  # [n, heads, d] -> [heads, n, d]
        out = F.scaled_dot_product_attention(F.permute(q, *heads_first), F.permute(k, *heads_first),
                                             F.permute(v, *heads_first), attn_mask=batch.mask,
                                             scale=self.softmax_scale, enable_gqa=True)
        return F.reshape(F.permute(out, *heads_first), n, h * d)

    def _apply_rope(self, x: Tensor, batch: StepBatch) -> Tensor:
        return F.rotary_embedding(x, batch.rope_cos, batch.rope_sin, style=self.rope_style)


def _no_rope(x: Tensor, batch: StepBatch) -> Tensor:
    return x
