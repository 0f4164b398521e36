"""Registers the ``trtdsl.attention`` plugin: paged, packed causal attention with fused RoPE and the
K/V cache write (semantics in docs/batch_interface.md).

The shape rule checks the inputs against the attributes at network-construction time, so a model
with a wrong head count fails when it is written, naming the layer, not deep inside a kernel. The
torch reference is :func:`~trtdsl.plugins.attention_reference.paged_attention_reference`; CUDA kernels
register themselves in ``SPEC.implementations["cuda"]``.
"""

from __future__ import annotations

from typing import Any

import torch

from ..dtypes import DType
from ..errors import DTypeError, PluginError, ShapeError
from ..ir.symbolic import dim_equal, shape_repr
from .attention_reference import paged_attention_reference
from .registry import PluginSpec, register_plugin

__all__ = ["ATTENTION_PLUGIN", "INPUT_NAMES", "FIELD_NAMES", "SPEC"]

ATTENTION_PLUGIN = "trtdsl.attention"
INPUT_NAMES = ("qkv", "position_ids", "seq_lens", "past_lens", "cu_seqlens", "block_tables",
               "kv_cache", "rope_cos_sin")
FIELD_NAMES = ("num_heads", "num_kv_heads", "head_dim", "layer_idx", "tokens_per_block",
               "softmax_scale", "rotary_dim", "rope_style")
_RANKS = {"qkv": 2, "position_ids": 1, "seq_lens": 1, "past_lens": 1, "cu_seqlens": 1,
          "block_tables": 2, "kv_cache": 6, "rope_cos_sin": 2}
_FLOATS = (DType.float32, DType.float16, DType.bfloat16)


def _fail(kind: type, problem: str, inputs: list | None = None) -> Exception:
    msg = f"{ATTENTION_PLUGIN}: {problem}"
    if inputs:
        msg += "\n  inputs: " + ", ".join(f"{n}={t.name!r}: {t.dtype.value}{shape_repr(t.shape)}"
                                          for n, t in zip(INPUT_NAMES, inputs))
    return kind(msg)


def _check_fields(fields: dict[str, Any]) -> None:
    missing = [f for f in FIELD_NAMES if f not in fields]
    unknown = [f for f in fields if f not in FIELD_NAMES]
    if missing or unknown:
        raise _fail(PluginError, f"attributes missing {missing}, unknown {unknown}; expected {list(FIELD_NAMES)}")
    h, kvh = fields["num_heads"], fields["num_kv_heads"]
    if kvh <= 0 or h % kvh:
        raise _fail(PluginError, f"num_heads={h} is not a multiple of num_kv_heads={kvh}")
    rot = fields["rotary_dim"]
    if rot < 0 or rot % 2 or rot > fields["head_dim"]:
        raise _fail(PluginError, f"rotary_dim={rot} must be even and in [0, head_dim={fields['head_dim']}]")
    if fields["rope_style"] not in ("neox", "gptj"):
        raise _fail(PluginError, f"rope_style={fields['rope_style']!r}; expected 'neox' or 'gptj'")


def shape_rule(inputs: list, fields: dict[str, Any]) -> list:
    """``[(dtype, shape)]`` of the output ``[num_tokens, num_heads * head_dim]`` (qkv's dtype)."""
    if len(inputs) != len(INPUT_NAMES):
        raise _fail(PluginError, f"takes {len(INPUT_NAMES)} inputs {list(INPUT_NAMES)}, got {len(inputs)}")
    _check_fields(fields)
    named = dict(zip(INPUT_NAMES, inputs))
    for name, rank in _RANKS.items():
        if named[name].ndim != rank:
            raise _fail(ShapeError, f"input {name!r} must have rank {rank}", inputs)
    for name in ("position_ids", "seq_lens", "past_lens", "cu_seqlens", "block_tables"):
        if named[name].dtype is not DType.int32:
            raise _fail(DTypeError, f"input {name!r} must be int32", inputs)
    qkv, cache, table = named["qkv"], named["kv_cache"], named["rope_cos_sin"]
    if qkv.dtype not in _FLOATS:
        raise _fail(DTypeError, "qkv must be float32/float16/bfloat16", inputs)
    if table.dtype is not DType.float32:
        raise _fail(DTypeError, "rope_cos_sin must be float32", inputs)
    h, kvh, d = fields["num_heads"], fields["num_kv_heads"], fields["head_dim"]
    if not dim_equal(qkv.shape[1], (h + 2 * kvh) * d):
        raise _fail(ShapeError, f"qkv has {qkv.shape[1]} features; (num_heads + 2 * num_kv_heads) * "
                    f"head_dim = ({h} + 2 * {kvh}) * {d} = {(h + 2 * kvh) * d}", inputs)
    want = (2, kvh, fields["tokens_per_block"], d)
    if any(isinstance(g, int) and g != w for g, w in zip(cache.shape[2:], want)):
        raise _fail(ShapeError, f"kv_cache dims 2.. must be {want} (2, num_kv_heads, tokens_per_block, "
                    "head_dim)", inputs)
    if not isinstance(cache.shape[0], int) or fields["layer_idx"] >= cache.shape[0]:
        raise _fail(ShapeError, f"layer_idx={fields['layer_idx']} is outside kv_cache's "
                    f"{cache.shape[0]} layers", inputs)
    if fields["rotary_dim"] and not dim_equal(table.shape[1], fields["rotary_dim"]):
        raise _fail(ShapeError, f"rope_cos_sin must be [max_positions, rotary_dim={fields['rotary_dim']}]",
                    inputs)
    return [(qkv.dtype, (qkv.shape[0], h * d))]


def reference(ins: list[torch.Tensor], fields: dict[str, Any], hints: dict[str, Any]) -> torch.Tensor:
    """The torch reference; ``hints`` (grid sizes for kernels) are not needed here."""
    return paged_attention_reference(*ins, **fields)


SPEC = register_plugin(PluginSpec(
    name=ATTENTION_PLUGIN, shape_rule=shape_rule, reference=reference, version="1",
    mutates=(INPUT_NAMES.index("kv_cache"),),
    doc="Packed causal attention over a paged K/V cache with fused RoPE; see docs/batch_interface.md."))
