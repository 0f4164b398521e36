"""Torch bindings of the trtdsl CUDA kernels.

Each function checks device, dtype, contiguity and shapes (raising PluginError with the tensor's
name), then calls the C launcher on the current CUDA stream. Nothing here synchronizes with the host
or reads device values, so every call can be captured in a CUDA graph; attention grids are sized
from the caller's host-side bounds ``max_q_len`` / ``max_kv_len``."""

from __future__ import annotations

import ctypes
from functools import lru_cache
from typing import Any

import torch

from trtdsl.errors import PluginError

from ._lib import call, register_signatures

__all__ = ["rmsnorm", "swiglu", "rope_kv_write", "context_attention", "decode_attention", "decode_fused",
           "decode_fused_splits", "fused_decode_shape", "paged_attention"]

_DTYPE_CODES = {torch.float32: 0, torch.float16: 1, torch.bfloat16: 2}
#: quantized K/V cache dtype -> the C ABI's dtype code (plugins_cuda/include/trtdsl/common.cuh)
KV_CODE_DTYPES = {torch.float8_e4m3fn: 3, torch.int8: 4}
_HALF_TYPES = (torch.float16, torch.bfloat16)
_ROPE_STYLES = {"neox": 0, "gptj": 1}


def _stream(t: torch.Tensor) -> int:
    return torch.cuda.current_stream(t.device).cuda_stream


def _check(op: str, name: str, t: torch.Tensor, device: torch.device | None = None, dtypes=None,
           ndim: int | None = None, contiguous: bool = True) -> None:
    if not isinstance(t, torch.Tensor):
        raise PluginError(f"{op}: {name} must be a torch.Tensor, got {type(t).__name__}")
    if t.device.type != "cuda":
        raise PluginError(f"{op}: {name} must be a CUDA tensor, got device {t.device}")
    if device is not None and t.device != device:
        raise PluginError(f"{op}: {name} is on {t.device} but the other inputs are on {device}")
    if dtypes is not None and t.dtype not in dtypes:
        names = ", ".join(str(d).replace("torch.", "") for d in dtypes)
        raise PluginError(f"{op}: {name} has dtype {str(t.dtype).replace('torch.', '')}; expected one of {names}")
    if ndim is not None and t.dim() != ndim:
        raise PluginError(f"{op}: {name} must be {ndim}-D, got shape {tuple(t.shape)}")
    if contiguous and not t.is_contiguous():
        raise PluginError(f"{op}: {name} must be contiguous (call .contiguous())")


def _check_meta(op: str, device: torch.device, **tensors: torch.Tensor) -> None:
    for name, t in tensors.items():
        _check(op, name, t, device, (torch.int32,))


def _check_norm_inputs(op: str, x: torch.Tensor, weight: torch.Tensor, residual: torch.Tensor | None) -> int:
    """The checks every RMSNorm binding shares (x, its ``[hidden]`` weight and an optional residual of
    x's shape, one dtype); returns hidden."""
    _check(op, "x", x, dtypes=_DTYPE_CODES)
    hidden = x.shape[-1] if x.dim() else 0
    _check(op, "weight", weight, x.device, (x.dtype,), ndim=1)
    if weight.shape[0] != hidden:
        raise PluginError(f"{op}: weight has {weight.shape[0]} elements but x's last dim is {hidden}")
    if residual is not None:
        _check(op, "residual", residual, x.device, (x.dtype,))
        if residual.shape != x.shape:
            raise PluginError(f"{op}: residual has shape {tuple(residual.shape)}, expected {tuple(x.shape)}")
    return hidden


def _check_swiglu_input(op: str, x: torch.Tensor) -> int:
    """x ``[..., 2 * inter]`` (gate then up) for a SwiGLU binding; returns inter."""
    _check(op, "x", x, dtypes=_DTYPE_CODES)
    if x.dim() == 0 or x.shape[-1] % 2:
        raise PluginError(f"{op}: x's last dim must be even (gate then up), got shape {tuple(x.shape)}")
    return x.shape[-1] // 2


def rmsnorm(x: torch.Tensor, weight: torch.Tensor, eps: float = 1e-6, residual: torch.Tensor | None = None,
            out: torch.Tensor | None = None, residual_out: torch.Tensor | None = None):
    """``x * rsqrt(mean(x^2) + eps) * weight`` over the last dim; with ``residual``, normalizes
    ``x + residual`` and returns ``(out, x + residual)``. ``residual_out`` may alias ``residual``."""
    op = "rmsnorm"
    hidden = _check_norm_inputs(op, x, weight, residual)
    out = torch.empty_like(x) if out is None else out
    _check(op, "out", out, x.device, (x.dtype,))
    if out.shape != x.shape:
        raise PluginError(f"{op}: out has shape {tuple(out.shape)}, expected {tuple(x.shape)}")
    rows = x.numel() // max(hidden, 1)
    if residual is not None:
        residual_out = torch.empty_like(x) if residual_out is None else residual_out
        _check(op, "residual_out", residual_out, x.device, (x.dtype,))
    if rows:
        res_out = residual_out.data_ptr() if residual is not None and residual_out is not None else None
        call("trtdsl_rmsnorm", x.data_ptr(), residual.data_ptr() if residual is not None else None,
             weight.data_ptr(), out.data_ptr(), res_out,
             rows, hidden, hidden, hidden, hidden, hidden, float(eps), _DTYPE_CODES[x.dtype], _stream(x))
    return (out, residual_out) if residual is not None else out


def swiglu(x: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
    """``silu(gate) * up`` of ``x [..., 2 * inter]`` laid out gate then up; returns ``[..., inter]``."""
    op = "swiglu"
    inter = _check_swiglu_input(op, x)
    out = x.new_empty(*x.shape[:-1], inter) if out is None else out
    _check(op, "out", out, x.device, (x.dtype,))
    if out.shape != (*x.shape[:-1], inter):
        raise PluginError(f"{op}: out has shape {tuple(out.shape)}, expected {(*x.shape[:-1], inter)}")
    rows = x.numel() // max(2 * inter, 1)
    if rows and inter:
        call("trtdsl_swiglu", x.data_ptr(), out.data_ptr(), rows, inter, 2 * inter, inter,
             _DTYPE_CODES[x.dtype], _stream(x))
    return out


def _check_step(op, qkv, position_ids, seq_lens, past_lens, cu_seqlens, block_tables, kv_cache,
                num_heads, num_kv_heads, head_dim, layer_idx, tokens_per_block, dtypes,
                cache_dtypes: tuple | None = None) -> None:
    """Shared checks of the packed/paged step inputs (docs/batch_interface.md). The cache has qkv's
    dtype unless ``cache_dtypes`` says otherwise (a quantized cache)."""
    _check(op, "qkv", qkv, dtypes=dtypes, ndim=2)
    dev = qkv.device
    _check_meta(op, dev, position_ids=position_ids, seq_lens=seq_lens, past_lens=past_lens,
                cu_seqlens=cu_seqlens, block_tables=block_tables)
    batch = seq_lens.shape[0]
    if past_lens.shape != (batch,) or cu_seqlens.shape != (batch + 1,) or block_tables.dim() != 2 \
            or block_tables.shape[0] != batch:
        raise PluginError(f"{op}: seq_lens {tuple(seq_lens.shape)}, past_lens {tuple(past_lens.shape)}, cu_seqlens "
                          f"{tuple(cu_seqlens.shape)} and block_tables {tuple(block_tables.shape)} disagree on batch")
    if position_ids.shape != (qkv.shape[0],):
        raise PluginError(f"{op}: position_ids has shape {tuple(position_ids.shape)}, expected ({qkv.shape[0]},)")
    if num_heads % num_kv_heads:
        raise PluginError(f"{op}: num_heads {num_heads} is not a multiple of num_kv_heads {num_kv_heads}")
    if qkv.shape[1] != (num_heads + 2 * num_kv_heads) * head_dim:
        raise PluginError(f"{op}: qkv has {qkv.shape[1]} features, expected (num_heads + 2 * num_kv_heads) * "
                          f"head_dim = {(num_heads + 2 * num_kv_heads) * head_dim}")
    _check(op, "kv_cache", kv_cache, dev, cache_dtypes or (qkv.dtype,), ndim=6)
    want = (2, num_kv_heads, tokens_per_block, head_dim)
    if tuple(kv_cache.shape[2:]) != want or not 0 <= layer_idx < kv_cache.shape[0]:
        raise PluginError(f"{op}: kv_cache has shape {tuple(kv_cache.shape)}; expected [num_layers > {layer_idx}, "
                          f"num_blocks, {', '.join(map(str, want))}]")


def _check_rope(op: str, qkv: torch.Tensor, rope_cos_sin: torch.Tensor, rotary_dim: int, rope_style: str,
                head_dim: int) -> None:
    """The RoPE arguments shared by the kernels that rotate q/k (style, rotary dim, cos/sin table)."""
    if rope_style not in _ROPE_STYLES:
        raise PluginError(f"{op}: rope_style {rope_style!r} is not 'neox' or 'gptj'")
    if rotary_dim < 0 or rotary_dim % 2 or rotary_dim > head_dim:
        raise PluginError(f"{op}: rotary_dim {rotary_dim} must be even and in [0, head_dim={head_dim}]")
    if rotary_dim:
        _check(op, "rope_cos_sin", rope_cos_sin, qkv.device, (torch.float32,), ndim=2)
        if rope_cos_sin.shape[1] != rotary_dim:
            raise PluginError(f"{op}: rope_cos_sin has {rope_cos_sin.shape[1]} columns, expected rotary_dim={rotary_dim}")


def rope_kv_write(qkv, position_ids, seq_lens, past_lens, cu_seqlens, block_tables, kv_cache, rope_cos_sin, *,
                  num_heads: int, num_kv_heads: int, head_dim: int, layer_idx: int, tokens_per_block: int,
                  rotary_dim: int, rope_style: str = "neox", q_out: torch.Tensor | None = None,
                  k_out: torch.Tensor | None = None) -> torch.Tensor:
    """Rotate q and k, write k/v of every token to the paged cache; return rotated q ``[tokens, H * D]``.

    ``q_out`` may be ``qkv`` itself (rotation in place, q keeps its place in the row)."""
    op = "rope_kv_write"
    _check_step(op, qkv, position_ids, seq_lens, past_lens, cu_seqlens, block_tables, kv_cache, num_heads,
                num_kv_heads, head_dim, layer_idx, tokens_per_block, _DTYPE_CODES)
    _check_rope(op, qkv, rope_cos_sin, rotary_dim, rope_style, head_dim)
    tokens = qkv.shape[0]
    q_stride = num_heads * head_dim
    if q_out is None:
        q_out = qkv.new_empty(tokens, num_heads * head_dim)
    elif q_out.data_ptr() == qkv.data_ptr():
        q_stride = qkv.stride(0)
    else:
        _check(op, "q_out", q_out, qkv.device, (qkv.dtype,))
        if q_out.shape != (tokens, num_heads * head_dim):
            raise PluginError(f"{op}: q_out has shape {tuple(q_out.shape)}, expected ({tokens}, {num_heads * head_dim})")
    if k_out is not None:
        _check(op, "k_out", k_out, qkv.device, (qkv.dtype,))
        if k_out.shape != (tokens, num_kv_heads * head_dim):
            raise PluginError(f"{op}: k_out has shape {tuple(k_out.shape)}, expected ({tokens}, {num_kv_heads * head_dim})")
    code = _DTYPE_CODES[qkv.dtype]
    if tokens:
        call("trtdsl_rope_kv_write", qkv.data_ptr(), qkv.stride(0), q_out.data_ptr(), q_stride,
             k_out.data_ptr() if k_out is not None else None, num_kv_heads * head_dim, kv_cache.data_ptr(),
             kv_cache.shape[1], position_ids.data_ptr(), past_lens.data_ptr(), cu_seqlens.data_ptr(),
             seq_lens.shape[0], block_tables.data_ptr(), block_tables.stride(0),
             rope_cos_sin.data_ptr() if rotary_dim else None, rotary_dim, _ROPE_STYLES[rope_style], tokens,
             num_heads, num_kv_heads, head_dim, layer_idx, tokens_per_block, code, code, _stream(qkv))
    return q_out


def _attention_args(op, q, q_stride, seq_lens, past_lens, cu_seqlens, block_tables, kv_cache, out,
                    num_heads, num_kv_heads, head_dim, layer_idx, tokens_per_block, softmax_scale):
    if q.dtype not in _HALF_TYPES:
        raise PluginError(f"{op}: the attention kernels take float16/bfloat16, got {q.dtype}; use "
                          "trtdsl.plugins.attention_reference for float32")
    if head_dim not in (64, 128):
        raise PluginError(f"{op}: head_dim {head_dim} is not supported by the CUDA kernels (64 or 128)")
    code = _DTYPE_CODES[q.dtype]
    return (q.data_ptr(), q_stride, kv_cache.data_ptr(), kv_cache.shape[1], seq_lens.data_ptr(),
            past_lens.data_ptr(), cu_seqlens.data_ptr(), seq_lens.shape[0], block_tables.data_ptr(),
            block_tables.stride(0), out.data_ptr(), out.stride(0), num_heads, num_kv_heads, head_dim, layer_idx,
            tokens_per_block, float(softmax_scale)), code


def _check_q(op, q, kv_cache, num_heads, head_dim) -> None:
    # q may be a row-strided view (e.g. the q columns of qkv): only the feature dim must be dense.
    _check(op, "q", q, kv_cache.device, _HALF_TYPES, ndim=2, contiguous=False)
    if q.shape[1] != num_heads * head_dim or q.stride(1) != 1:
        raise PluginError(f"{op}: q must be [tokens, {num_heads * head_dim}] with unit feature stride, got shape "
                          f"{tuple(q.shape)} strides {q.stride()}")
    _check(op, "kv_cache", kv_cache, q.device, (q.dtype,), ndim=6)


def context_attention(q, seq_lens, past_lens, cu_seqlens, block_tables, kv_cache, *, num_heads: int,
                      num_kv_heads: int, head_dim: int, layer_idx: int, tokens_per_block: int,
                      softmax_scale: float, max_q_len: int, out: torch.Tensor | None = None) -> torch.Tensor:
    """Causal attention of every (already rotated) query token over its sequence's paged K/V.

    The cache must already hold this step's keys (see rope_kv_write). ``max_q_len`` bounds seq_lens."""
    op = "context_attention"
    _check_q(op, q, kv_cache, num_heads, head_dim)
    _check_meta(op, q.device, seq_lens=seq_lens, past_lens=past_lens, cu_seqlens=cu_seqlens,
                block_tables=block_tables)
    out = q.new_empty(q.shape[0], num_heads * head_dim) if out is None else out
    args, code = _attention_args(op, q, q.stride(0), seq_lens, past_lens, cu_seqlens, block_tables, kv_cache,
                                 out, num_heads, num_kv_heads, head_dim, layer_idx, tokens_per_block, softmax_scale)
    call("trtdsl_context_attention", *args, int(max_q_len), code, code, _stream(q))
    return out


def decode_workspace(batch: int, num_heads: int, num_kv_heads: int, head_dim: int,
                     max_kv_len: int) -> tuple[int, int]:
    """``(kv_chunk, workspace_bytes)`` the decode kernel uses for these bounds."""
    chunk, nbytes = ctypes.c_int(0), ctypes.c_size_t(0)
    call("trtdsl_decode_attention_workspace", batch, num_heads, num_kv_heads, head_dim, max_kv_len,
         ctypes.byref(chunk), ctypes.byref(nbytes))
    return chunk.value, nbytes.value


def decode_attention(q, seq_lens, past_lens, cu_seqlens, block_tables, kv_cache, *, num_heads: int,
                     num_kv_heads: int, head_dim: int, layer_idx: int, tokens_per_block: int,
                     softmax_scale: float, max_kv_len: int, out: torch.Tensor | None = None,
                     workspace: torch.Tensor | None = None) -> torch.Tensor:
    """Split-K attention of one query token per sequence (seq_lens <= 1) over its paged K/V.

    ``max_kv_len`` bounds ``past_lens + 1``; the split workspace is allocated here unless given
    (a uint8 tensor of at least ``decode_workspace(...)[1]`` bytes)."""
    op = "decode_attention"
    _check_q(op, q, kv_cache, num_heads, head_dim)
    _check_meta(op, q.device, seq_lens=seq_lens, past_lens=past_lens, cu_seqlens=cu_seqlens,
                block_tables=block_tables)
    out = q.new_empty(q.shape[0], num_heads * head_dim) if out is None else out
    args, code = _attention_args(op, q, q.stride(0), seq_lens, past_lens, cu_seqlens, block_tables, kv_cache,
                                 out, num_heads, num_kv_heads, head_dim, layer_idx, tokens_per_block, softmax_scale)
    chunk, nbytes = decode_workspace(seq_lens.shape[0], num_heads, num_kv_heads, head_dim, int(max_kv_len))
    if workspace is None:
        workspace = torch.empty(nbytes, dtype=torch.uint8, device=q.device)
    elif workspace.device != q.device or workspace.numel() * workspace.element_size() < nbytes:
        raise PluginError(f"{op}: workspace must be a {nbytes}-byte tensor on {q.device}")
    call("trtdsl_decode_attention", *args, int(max_kv_len), chunk, workspace.data_ptr(), nbytes, code, code,
         _stream(q))
    return out


def paged_attention(qkv, position_ids, seq_lens, past_lens, cu_seqlens, block_tables, kv_cache, rope_cos_sin, *,
                    num_heads: int, num_kv_heads: int, head_dim: int, layer_idx: int, tokens_per_block: int,
                    softmax_scale: float, rotary_dim: int, rope_style: str, max_q_len: int,
                    max_kv_len: int, out_scale: torch.Tensor | None = None) -> torch.Tensor:
    """The ``trtdsl.attention`` plugin on CUDA: same semantics as ``paged_attention_reference``.
    With ``out_scale`` (float32 ``[1]``, a static fp8 GEMM's input scale) it returns the e4m3 codes of
    that output over the scale, bitwise ``quant_ops.quantize_fp8(out, out_scale)``; the fused decode
    kernel writes them itself (one launch fewer), the other paths quantize after the attention.

    Decode steps (``max_q_len == 1``: every sequence has at most one new token) with a short
    ``max_kv_len``, many sequences, or (sm_90+) few enough sequences for clusters run the fused
    one-launch kernel (``decode_fused``); the others RoPE + cache write, then the split-K decode
    kernel; other steps RoPE + cache write, then the context kernel. ``max_q_len`` / ``max_kv_len`` are host-side upper bounds of
    ``seq_lens`` / ``past_lens + seq_lens`` (no device value is read, so the call is graph-capturable)."""
    op = "paged_attention"
    _check_step(op, qkv, position_ids, seq_lens, past_lens, cu_seqlens, block_tables, kv_cache, num_heads,
                num_kv_heads, head_dim, layer_idx, tokens_per_block, _HALF_TYPES)
    if max_q_len < 1 or max_kv_len < max_q_len:
        raise PluginError(f"{op}: need 1 <= max_q_len ({max_q_len}) <= max_kv_len ({max_kv_len})")
    if out_scale is not None:
        _check_static_scale(op, "out_scale", out_scale, qkv.device)
    kw: dict[str, Any] = dict(num_heads=num_heads, num_kv_heads=num_kv_heads, head_dim=head_dim, layer_idx=layer_idx,
              tokens_per_block=tokens_per_block)
    if max_q_len == 1 and _use_fused_decode(seq_lens.shape[0], num_heads, num_kv_heads, max_kv_len, qkv.device):
        return decode_fused(qkv, position_ids, seq_lens, past_lens, cu_seqlens, block_tables, kv_cache, rope_cos_sin,
                            softmax_scale=softmax_scale, rotary_dim=rotary_dim, rope_style=rope_style,
                            out_scale=out_scale, max_kv_len=max_kv_len, splits=FUSED_DECODE_SPLITS, **kw)
    out = _unfused_attention(qkv, position_ids, seq_lens, past_lens, cu_seqlens, block_tables, kv_cache, rope_cos_sin,
                             softmax_scale=softmax_scale, rotary_dim=rotary_dim, rope_style=rope_style,
                             max_q_len=max_q_len, max_kv_len=max_kv_len, **kw)
    if out_scale is None:
        return out
    from .quant_ops import quantize_fp8
    return quantize_fp8(out, out_scale)


def _check_scales(op: str, kv_scales: torch.Tensor, num_kv_heads: int, device: torch.device) -> int:
    """``kv_scales`` float32 ``[2]`` or ``[2, num_kv_heads]``; returns whether it is per head."""
    _check(op, "kv_scales", kv_scales, device, (torch.float32,))
    if tuple(kv_scales.shape) == (2,):
        return 0
    if tuple(kv_scales.shape) == (2, num_kv_heads):
        return 1
    raise PluginError(f"{op}: kv_scales has shape {tuple(kv_scales.shape)}; expected (2,) or (2, {num_kv_heads})")


def _check_k_bias(op: str, k_bias: torch.Tensor | None, num_kv_heads: int, head_dim: int,
                  device: torch.device) -> None:
    """``k_bias`` (the ``trtdsl.attention_quant_kv`` input of ``kv_cache_center_k``): None, or float32
    ``[num_kv_heads, head_dim]`` contiguous on qkv's device (the kernel reads it as a flat array)."""
    if k_bias is None:
        return
    _check(op, "k_bias", k_bias, device, (torch.float32,))
    if tuple(k_bias.shape) != (num_kv_heads, head_dim):
        raise PluginError(f"{op}: k_bias has shape {tuple(k_bias.shape)}; expected "
                          f"({num_kv_heads}, {head_dim}) (num_kv_heads, head_dim)")


def _check_static_scale(op: str, name: str, scale: torch.Tensor, device: torch.device) -> None:
    """A float32 tensor on ``device`` holding one value: a static per-tensor fp8 scale."""
    _check(op, name, scale, device, (torch.float32,))
    if scale.numel() != 1:
        raise PluginError(f"{op}: {name} must hold one value (a static per-tensor scale), got shape "
                          f"{tuple(scale.shape)}")


def _unfused_attention(qkv, position_ids, seq_lens, past_lens, cu_seqlens, block_tables, kv_cache, rope_cos_sin, *,
                       softmax_scale: float, rotary_dim: int, rope_style: str, max_q_len: int, max_kv_len: int,
                       **kw: Any) -> torch.Tensor:
    """RoPE + cache write, then the split-K decode kernel (``max_q_len == 1``) or the context kernel."""
    if rotary_dim:
        q = rope_kv_write(qkv, position_ids, seq_lens, past_lens, cu_seqlens, block_tables, kv_cache, rope_cos_sin,
                          rotary_dim=rotary_dim, rope_style=rope_style, **kw)
    else:
        # No rotation: only K/V need writing, the attention reads q straight out of qkv.
        rope_kv_write(qkv, position_ids, seq_lens, past_lens, cu_seqlens, block_tables, kv_cache, rope_cos_sin,
                      rotary_dim=0, rope_style=rope_style, q_out=qkv, **kw)
        q = qkv[:, : kw["num_heads"] * kw["head_dim"]]
    meta = (seq_lens, past_lens, cu_seqlens, block_tables, kv_cache)
    if max_q_len == 1:
        return decode_attention(q, *meta, softmax_scale=softmax_scale, max_kv_len=max_kv_len, **kw)
    return context_attention(q, *meta, softmax_scale=softmax_scale, max_q_len=max_q_len, **kw)


# Fused decode: one launch (RoPE + cache write + attention, no split-K) wins while one block per
# (sequence, kv head) gives the GPU enough parallel work: always from 64 such blocks on (batch 8 x 8 kv
# heads: 1.2-2.1x at 128..8192 tokens), and below that up to 512 tokens (batch 1: 1.4x at 512, 0.98x at
# 1024, 0.3x at 8192, where split-K spreads one sequence over all SMs). Measured on an H100, 32/8 heads,
# d 128, bf16: benchmarks/results/decode_attention_h100.json. On sm_90+ the fused kernel also spreads
# a few sequences over the SMs itself (thread-block clusters, decode_fused_splits), and then beats
# split-K at every context (batch 1: 8.5 / 14.9 / 21.8 us against 15.2 / 18.4 / 29.6 at 1k / 4k / 8k;
# decode_attention_h100.json).
_FUSED_DECODE_MAX_KV = 512
_FUSED_DECODE_MIN_BLOCKS = 64

_DECODE_FUSED_ARGTYPES = [ctypes.c_void_p, ctypes.c_int64, ctypes.c_void_p, ctypes.c_int64, ctypes.c_void_p,
                          ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int, ctypes.c_void_p,
                          ctypes.c_int64, ctypes.c_void_p, ctypes.c_int, ctypes.c_int, ctypes.c_void_p,
                          ctypes.c_int64, ctypes.c_void_p, ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_int,
                          ctypes.c_int, ctypes.c_int,  # splits, num_heads, ..., tokens_per_block
                          ctypes.c_float, ctypes.c_int, ctypes.c_int,
                          ctypes.c_void_p, ctypes.c_int, ctypes.c_int, ctypes.c_void_p,  # kv_scales .. k_bias
                          ctypes.c_void_p]


_FUSED_MAX_SPLITS = 8  # kFusedMaxSplits: the portable thread-block cluster size
# Blocks per (sequence, kv head) of the fused decode kernel that paged_attention asks for: None =
# decode_fused_splits's rule; an int forces that count, in the dispatch too (1: the dispatch and kernel
# as before clusters; same-process A/B timings, profile_decode.py).
FUSED_DECODE_SPLITS: int | None = None
_FUSED_TILE_KEYS = 32  # kFusedBN
_FUSED_WARPS = 4       # kFusedWarps
_FUSED_ROWS = 16       # kFusedRows: query heads of one kv head per block


def fused_decode_shape(batch: int, num_heads: int, num_kv_heads: int, max_kv_len: int) -> tuple[int, int]:
    """(blocks of the fused decode kernel with one block per sequence and kv head group, key tiles of
    the longest sequence) for these host-side bounds."""
    groups = -(-(num_heads // num_kv_heads) // _FUSED_ROWS)
    return max(1, batch * num_kv_heads * groups), (max(1, max_kv_len) - 1) // _FUSED_TILE_KEYS + 1


@lru_cache(maxsize=None)
def _sm_info(device: torch.device) -> tuple[int, int]:
    """(compute capability major, SM count) of a CUDA device."""
    props = torch.cuda.get_device_properties(device)
    return props.major, props.multi_processor_count


def decode_fused_splits(batch: int, num_heads: int, num_kv_heads: int, max_kv_len: int,
                        device: torch.device | str | int) -> int:
    """Blocks per (sequence, kv head) for ``decode_fused`` (a thread-block cluster when > 1): one
    while each warp of a single block attends at most 2 key tiles (a cluster's launch and two cluster
    barriers cost about what 1.5 tiles do), else enough for one tile per warp, at most 8 (a portable
    cluster) and at most half the SMs in all: past that the clusters slow down sharply. 1 below sm_90.
    H100, 32/8 heads, us per layer for 1 / 2 / 4 / 8 blocks (decode_attention_h100.json): batch 1,
    128 tokens 5.7 / 7.5 / 7.2 / 7.6, 512 tokens 10.0 / 9.0 / 7.3 / 7.6, 8192 tokens 96.6 / 55.7 / 32.5
    / 21.5; batch 2 at 8192 97.3 / 55.1 / 34.8 / 46.4 (128 blocks); batch 4 at 4096 51.1 / 33.0 / 44.2
    / 45.0; batch 8: 1 block as fast or faster at every context."""
    major, sms = _sm_info(torch.device(device))
    if major < 9:
        return 1
    blocks, tiles = fused_decode_shape(batch, num_heads, num_kv_heads, max_kv_len)
    room = (sms // 2) // blocks
    if room < 2 or tiles <= 2 * _FUSED_WARPS:
        return 1
    return min(_FUSED_MAX_SPLITS, room, -(-tiles // _FUSED_WARPS))


def _use_fused_decode(batch: int, num_heads: int, num_kv_heads: int, max_kv_len: int,
                      device: torch.device) -> bool:
    """Whether a decode step of these host-side bounds takes the fused kernel (see the constants above)."""
    splits = FUSED_DECODE_SPLITS or decode_fused_splits(batch, num_heads, num_kv_heads, max_kv_len, device)
    return max_kv_len <= _FUSED_DECODE_MAX_KV or batch * num_kv_heads >= _FUSED_DECODE_MIN_BLOCKS or splits > 1


register_signatures({"trtdsl_decode_fused": _DECODE_FUSED_ARGTYPES})


def decode_fused(qkv, position_ids, seq_lens, past_lens, cu_seqlens, block_tables, kv_cache, rope_cos_sin, *,
                 num_heads: int, num_kv_heads: int, head_dim: int, layer_idx: int, tokens_per_block: int,
                 softmax_scale: float, rotary_dim: int, rope_style: str = "neox",
                 out: torch.Tensor | None = None, out_scale: torch.Tensor | None = None,
                 max_kv_len: int | None = None, splits: int | None = None,
                 kv_scales: torch.Tensor | None = None, k_rotation: bool = False,
                 k_bias: torch.Tensor | None = None) -> torch.Tensor:
    """One-launch decode step: RoPE of q/k, k/v written to the cache, attention; ``[tokens, H * D]``.
    With ``out_scale`` (float32 ``[1]``) the output is e4m3: the codes of each value (rounded to
    qkv's dtype) over the scale, bitwise what ``quant_ops.quantize_fp8`` makes of the plain output.

    ``splits`` blocks (1..8; sm_90+ for more than 1) share each (sequence, kv head)'s key tiles as one
    thread-block cluster; ``None`` picks :func:`decode_fused_splits` from ``max_kv_len`` (a host-side
    bound of ``past_lens + 1``; without it, 1). Every sequence must have ``seq_lens <= 1`` (not
    checked on the device). Same semantics as ``paged_attention_reference`` restricted to decode steps;
    ``paged_attention`` picks this kernel through ``_use_fused_decode``. Rows of empty sequences
    (and padding tokens) are left as they are in ``out``.

    A quantized cache (fp8 e4m3 / int8 ``kv_cache``, with ``kv_scales``, ``k_rotation`` and ``k_bias`` as
    ``kv_quant_ops.paged_attention_quant_kv`` takes them) makes it the decode step of
    ``trtdsl.attention_quant_kv``: the same codes as ``trtdsl_rope_kv_write_quant`` writes."""
    op = "decode_fused"
    quantized = kv_scales is not None
    _check_step(op, qkv, position_ids, seq_lens, past_lens, cu_seqlens, block_tables, kv_cache, num_heads,
                num_kv_heads, head_dim, layer_idx, tokens_per_block, _HALF_TYPES,
                tuple(KV_CODE_DTYPES) if quantized else None)
    per_head = 0
    if quantized:
        per_head = _check_scales(op, kv_scales, num_kv_heads, qkv.device)
        _check_k_bias(op, k_bias, num_kv_heads, head_dim, qkv.device)
    elif k_rotation or k_bias is not None:
        raise PluginError(f"{op}: k_rotation and k_bias need a quantized cache (kv_scales)")
    if head_dim not in (64, 128):
        raise PluginError(f"{op}: head_dim {head_dim} is not supported by the CUDA kernels (64 or 128)")
    _check_rope(op, qkv, rope_cos_sin, rotary_dim, rope_style, head_dim)
    if splits is None:
        splits = 1 if max_kv_len is None else decode_fused_splits(seq_lens.shape[0], num_heads, num_kv_heads,
                                                                   max_kv_len, qkv.device)
    elif not 1 <= splits <= _FUSED_MAX_SPLITS:
        raise PluginError(f"{op}: splits must lie in 1..{_FUSED_MAX_SPLITS}, got {splits}")
    elif splits > 1 and _sm_info(qkv.device)[0] < 9:
        raise PluginError(f"{op}: splits > 1 needs thread-block clusters (sm_90+), this device has "
                          f"sm_{''.join(map(str, torch.cuda.get_device_capability(qkv.device)))}")
    out_dtype = qkv.dtype
    if out_scale is not None:
        _check_static_scale(op, "out_scale", out_scale, qkv.device)
        out_dtype = torch.float8_e4m3fn
    if out is None:
        out = torch.empty(qkv.shape[0], num_heads * head_dim, dtype=out_dtype, device=qkv.device)
    _check(op, "out", out, qkv.device, (out_dtype,), ndim=2)
    if out.shape != (qkv.shape[0], num_heads * head_dim):
        raise PluginError(f"{op}: out has shape {tuple(out.shape)}, expected ({qkv.shape[0]}, {num_heads * head_dim})")
    code = _DTYPE_CODES[qkv.dtype]
    kv_code = KV_CODE_DTYPES[kv_cache.dtype] if quantized else code
    call(
        "trtdsl_decode_fused", qkv.data_ptr(), qkv.stride(0), kv_cache.data_ptr(), kv_cache.shape[1], position_ids.data_ptr(),
        seq_lens.data_ptr(), past_lens.data_ptr(), cu_seqlens.data_ptr(), seq_lens.shape[0], block_tables.data_ptr(),
        block_tables.stride(0), rope_cos_sin.data_ptr() if rotary_dim else None, rotary_dim, _ROPE_STYLES[rope_style],
        out.data_ptr(), out.stride(0), out_scale.data_ptr() if out_scale is not None else None, int(splits), num_heads,
        num_kv_heads, head_dim, layer_idx, tokens_per_block, float(softmax_scale), code, kv_code,
        kv_scales.data_ptr() if quantized else None, per_head, int(k_rotation),
        None if k_bias is None else k_bias.data_ptr(), _stream(qkv))
    return out
