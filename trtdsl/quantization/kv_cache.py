"""Quantized K/V cache: the ``trtdsl.attention_quant_kv`` plugin.

It is ``trtdsl.attention`` (docs/batch_interface.md) with the cache pool stored as int8 or fp8 e4m3
and one more input, ``kv_scales`` (float32 ``[2]``: the K scale, then the V scale of this layer; or
``[2, num_kv_heads]``: one K and one V scale per K/V head). K/V
are quantized when written (``code = saturate(value / scale)``, rounded to nearest for int8) and
dequantized when read (``code * scale``), so every query, including those of the step that wrote
them, sees the cache's precision -- exactly what a fused kernel does.

Field ``k_rotation="hadamard"`` (default ``"none"``) multiplies q and k, after RoPE, by the same
orthonormal Hadamard matrix ``H`` of the head dimension before K is stored: ``(qH)(kH)^T = q k^T``, so
the scores are unchanged in exact arithmetic, but fp8's rounding error of a score,
``sum_i q_i k_i e_i``, no longer concentrates on the few channels where q and k are both large
(RoPE's slow-turning pairs), which is where a floating-point code's relative error costs most.
The K scales then bound ``|kH|`` (calibrated on rotated keys). V is stored unrotated: a rotation
keeps the total squared error of ``sum_j p_j v_j`` the same, so it would buy nothing there.

An optional 10th input ``k_bias`` (float32 ``[num_kv_heads, head_dim]``, in the rotated basis with
``k_rotation``) is subtracted from every key before it is quantized and is *not* added back: a
query's scores all shift by the same ``q . k_bias``, which the softmax cancels, so the attention is
unchanged in exact arithmetic. With the calibrated mean key as the bias (``kv_cache_center_k``) the
stored values are the keys' deviations from their mean, much smaller than the keys where a channel
carries a large constant part (RoPE's slow pairs turn little over a context), so a code's error,
relative to the stored value, shrinks with them (SageAttention's K smoothing).

The lead's ``paged_attention_reference`` stores ``k.to(cache.dtype)`` with no scale; this module keeps
its own reference (reusing its RoPE helper) instead of changing it.
"""

from __future__ import annotations

import torch

from ..dtypes import DType
from ..errors import DTypeError, ShapeError
from ..plugins.attention import shape_rule as attention_shape_rule
from ..plugins.attention_reference import apply_rope
from ..plugins.registry import PluginSpec, register_plugin, registered_plugins
from .numerics import FP8_MAX, INT8_MAX

__all__ = ["ATTENTION", "ATTENTION_QUANT_KV", "K_BIAS_INPUT", "KV_CACHE_DTYPES", "K_ROTATIONS", "hadamard",
           "quantize_kv", "dequantize_kv", "quant_kv_attention_reference", "shape_rule", "register"]

ATTENTION = "trtdsl.attention"
ATTENTION_QUANT_KV = "trtdsl.attention_quant_kv"
#: Index of the optional ``k_bias`` input: after the 8 inputs of trtdsl.attention and kv_scales, so
#: also the number of required inputs.
K_BIAS_INPUT = 9
KV_CACHE_DTYPES = {"fp8": DType.fp8, "int8": DType.int8}
KV_QMAX = {DType.fp8: FP8_MAX, DType.int8: float(INT8_MAX)}
K_ROTATIONS = ("none", "hadamard")


def hadamard(d: int) -> torch.Tensor:
    """The orthonormal Sylvester Hadamard matrix of size ``d`` (a power of two), float32:
    ``H[i, j] = (-1)^popcount(i & j) / sqrt(d)``, symmetric, ``H @ H = I``."""
    if d < 1 or d & (d - 1):
        raise ShapeError(f"hadamard: size {d} is not a power of two")
    idx = torch.arange(d)
    bits = torch.bitwise_and(idx[:, None], idx[None, :])
    parity = torch.zeros_like(bits)
    while bool(bits.any()):
        parity ^= bits & 1
        bits = bits >> 1
    return (1.0 - 2.0 * parity.float()) / d ** 0.5


def quantize_kv(x: torch.Tensor, scale: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """Codes of ``x / scale`` in the cache dtype (int8: round to nearest; fp8: e4m3 rounding)."""
    y = x.float() / scale.float()
    if dtype == torch.int8:
        return torch.round(y).clamp(-INT8_MAX, INT8_MAX).to(torch.int8)
    return y.clamp(-FP8_MAX, FP8_MAX).to(dtype)


def dequantize_kv(codes: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    return codes.float() * scale.float()


def quant_kv_attention_reference(ins: list, fields: dict, hints: dict | None = None) -> torch.Tensor:
    """Paged causal attention (docs/batch_interface.md) over an int8/fp8 cache with K/V scales."""
    qkv, position_ids, seq_lens, past_lens, cu_seqlens, block_tables, kv_cache, cos_sin, scales = ins[:K_BIAS_INPUT]
    heads, kv_heads, d = fields["num_heads"], fields["num_kv_heads"], fields["head_dim"]
    tpb, rotary_dim = fields["tokens_per_block"], fields.get("rotary_dim", 0)
    num_tokens = qkv.shape[0]
    q, k, v = qkv.view(num_tokens, heads + 2 * kv_heads, d).split([heads, kv_heads, kv_heads], dim=1)
    if rotary_dim:
        cs = cos_sin[position_ids.long()]
        style = fields.get("rope_style", "neox")
        q, k = apply_rope(q, cs, rotary_dim, style), apply_rope(k, cs, rotary_dim, style)
    if fields.get("k_rotation", "none") == "hadamard":
        rot = hadamard(d).to(qkv.device)
        q, k = q.float() @ rot, k.float() @ rot
    if len(ins) > K_BIAS_INPUT:  # the keys' calibrated mean: scores shift by q . k_bias, softmax cancels it
        k = k.float() - ins[K_BIAS_INPUT].float()
    out = torch.empty(num_tokens, heads, d, dtype=qkv.dtype, device=qkv.device)
    cache = kv_cache[fields["layer_idx"]]
    # [] (per layer) or [kv_heads] (per head) -> broadcast over [tokens, kv_heads, head_dim]
    k_scale, v_scale = scales[0].reshape(-1, 1), scales[1].reshape(-1, 1)
    group = heads // kv_heads
    for s in range(seq_lens.shape[0]):
        start, n, past = int(cu_seqlens[s]), int(seq_lens[s]), int(past_lens[s])
        if n == 0:
            continue
        pos = torch.arange(past, past + n, device=qkv.device)
        blocks = block_tables[s, pos // tpb].long()
        cache[blocks, 0, :, pos % tpb] = quantize_kv(k[start:start + n], k_scale, cache.dtype)
        cache[blocks, 1, :, pos % tpb] = quantize_kv(v[start:start + n], v_scale, cache.dtype)
        all_pos = torch.arange(past + n, device=qkv.device)
        all_blocks = block_tables[s, all_pos // tpb].long()
        keys = dequantize_kv(cache[all_blocks, 0, :, all_pos % tpb], k_scale)
        values = dequantize_kv(cache[all_blocks, 1, :, all_pos % tpb], v_scale)
        keys, values = keys.repeat_interleave(group, dim=1), values.repeat_interleave(group, dim=1)
        scores = torch.einsum("qhd,khd->hqk", q[start:start + n].float(), keys) * fields["softmax_scale"]
        scores = scores.masked_fill(~(all_pos[None, :] <= pos[:, None]), float("-inf"))
        out[start:start + n] = torch.einsum("hqk,khd->qhd", scores.softmax(dim=-1), values).to(qkv.dtype)
    return out.view(num_tokens, heads * d)


def shape_rule(ins: list, fields: dict) -> list:
    """Output dtype and shape of ``trtdsl.attention_quant_kv``; raises on bad inputs or fields."""
    names = ", ".join(f"{t.name!r}: {t.dtype.value}{tuple(t.shape)}" for t in ins)
    if len(ins) not in (K_BIAS_INPUT, K_BIAS_INPUT + 1):
        raise ShapeError(f"{ATTENTION_QUANT_KV}: expects 9 inputs (the 8 of {ATTENTION} and kv_scales) or "
                         f"10 (and k_bias), got {len(ins)}\n  inputs: {names}")
    qkv, kv_cache, scales = ins[0], ins[6], ins[8]
    attention_fields = {k: v for k, v in fields.items() if k not in ("kv_cache_dtype", "k_rotation")}
    out = attention_shape_rule(ins[:8], attention_fields)  # every check of trtdsl.attention
    if fields.get("kv_cache_dtype") != kv_cache.dtype.value:
        raise DTypeError(f"{ATTENTION_QUANT_KV}: field kv_cache_dtype={fields.get('kv_cache_dtype')!r} "
                         f"but the kv_cache input is {kv_cache.dtype.value}\n  inputs: {names}")
    rotation = fields.get("k_rotation", "none")
    if rotation not in K_ROTATIONS:
        raise ShapeError(f"{ATTENTION_QUANT_KV}: k_rotation={rotation!r}; expected one of {K_ROTATIONS}")
    if rotation == "hadamard" and fields["head_dim"] & (fields["head_dim"] - 1):
        raise ShapeError(f"{ATTENTION_QUANT_KV}: k_rotation='hadamard' needs a power-of-two head_dim, "
                         f"got {fields['head_dim']}")
    if kv_cache.dtype not in KV_QMAX:
        raise DTypeError(f"{ATTENTION_QUANT_KV}: kv_cache must be int8 or fp8, got "
                         f"{kv_cache.dtype.value}\n  inputs: {names}")
    if scales.dtype is not DType.float32 or tuple(scales.shape) not in ((2,), (2, fields["num_kv_heads"])):
        raise ShapeError(f"{ATTENTION_QUANT_KV}: kv_scales must be float32 [2] (K, V) or "
                         f"[2, {fields['num_kv_heads']}] (K, V per K/V head)\n  inputs: {names}")
    k_bias = ins[K_BIAS_INPUT] if len(ins) > K_BIAS_INPUT else None
    if k_bias is not None and (k_bias.dtype is not DType.float32 or
                               tuple(k_bias.shape) != (fields["num_kv_heads"], fields["head_dim"])):
        raise ShapeError(f"{ATTENTION_QUANT_KV}: k_bias must be float32 [{fields['num_kv_heads']}, "
                         f"{fields['head_dim']}] (num_kv_heads, head_dim)\n  inputs: {names}")
    return out


def register() -> None:
    """Register ``trtdsl.attention_quant_kv`` (idempotent, keeps an existing spec's kernels)."""
    if ATTENTION_QUANT_KV not in registered_plugins():
        register_plugin(PluginSpec(ATTENTION_QUANT_KV, shape_rule, quant_kv_attention_reference,
                                   mutates=(6,), doc="trtdsl.attention over an int8/fp8 K/V cache"))


register()
