"""Torch binding of paged attention over a quantized (fp8 e4m3 / int8) K/V cache: the CUDA
implementation of ``trtdsl.attention_quant_kv`` (reference: trtdsl/quantization/kv_cache.py).

RoPE + quantize-on-write (``trtdsl_rope_kv_write_quant``; with ``k_rotation`` the Hadamard rotation
of q and k too; with ``k_bias`` the mean key subtracted from K before its code), then an attention
kernel reading codes and applying the K scale to the scores and the V scale to the output: the context
kernel, and for decode steps split-K + combine (``*_quant`` launchers,
plugins_cuda/include/trtdsl/kv_quant.cuh) or, where it wins (``one_launch_decode_splits``), the fused
decode kernel (``ops.decode_fused`` on the quantized cache: RoPE, quantizing write and attention in one
launch, thread-block clusters where few sequences leave SMs idle). No host synchronization:
graph-capturable like ``ops.paged_attention``."""

from __future__ import annotations

import torch

from trtdsl.errors import PluginError

from . import ops
from ._lib import call
from .ops import (_DTYPE_CODES, _HALF_TYPES, _ROPE_STYLES, KV_CODE_DTYPES, _check_k_bias, _check_rope,
                  _check_scales, _check_static_scale, _check_step, _stream, decode_workspace)

__all__ = ["paged_attention_quant_kv", "one_launch_decode_splits", "KV_CODE_DTYPES", "ONE_LAUNCH_DECODE"]

#: False: decode steps always take RoPE + split-K + combine, never the fused kernel (A/B timings,
#: benchmarks/bench_kv_quant_attention.py).
ONE_LAUNCH_DECODE = True


def one_launch_decode_splits(batch: int, num_heads: int, num_kv_heads: int, max_kv_len: int,
                             device: torch.device) -> int:
    """Blocks per (sequence, kv head) of the fused decode kernel for a decode step over a quantized cache
    (``ops.decode_fused_splits``), or 0 for RoPE + split-K + combine. Each warp of the fused kernel
    widens its tiles' codes through shared memory one tile after the other, so it wins while every warp
    has at most 4 tiles or there are >= 1024 warps (8 per SM) in all, and loses to split-K's thousands of
    warps otherwise. Measured on an H100 with its attention alone after the RoPE kernel (fp8 cache, 32 / 8
    heads, us per layer, one launch / split-K, 2026-12-06 10:33 UTC): batch 1 at 128 / 4k / 16k tokens
    11.1 / 24.0 / 68.6 against 23.0 / 26.3 / 51.1; batch 8 at 1k 35.7 against 25.1; batch 32 at 4k 232
    against 246."""
    if not ONE_LAUNCH_DECODE:
        return 0
    splits = ops.FUSED_DECODE_SPLITS or ops.decode_fused_splits(batch, num_heads, num_kv_heads, max_kv_len, device)
    blocks, tiles = ops.fused_decode_shape(batch, num_heads, num_kv_heads, max_kv_len)
    warps = blocks * splits * ops._FUSED_WARPS
    tiles_per_warp = -(-tiles // (splits * ops._FUSED_WARPS))
    return splits if tiles_per_warp <= 4 or warps >= 1024 else 0


def paged_attention_quant_kv(qkv, position_ids, seq_lens, past_lens, cu_seqlens, block_tables, kv_cache,
                             rope_cos_sin, kv_scales, *, num_heads: int, num_kv_heads: int, head_dim: int,
                             layer_idx: int, tokens_per_block: int, softmax_scale: float, rotary_dim: int,
                             rope_style: str, max_q_len: int, max_kv_len: int,
                             k_rotation: bool = False, k_bias: torch.Tensor | None = None,
                             out_scale: torch.Tensor | None = None) -> torch.Tensor:
    """``trtdsl.attention_quant_kv`` on CUDA: ``[tokens, num_heads * head_dim]`` in qkv's dtype.

    ``k_bias`` (float32 ``[num_kv_heads, head_dim]``, in the rotated basis with ``k_rotation``) is
    subtracted from every key before it is quantized and not added back: the scores of a query all
    shift by ``q . k_bias``, which the softmax cancels. With ``out_scale`` (float32 ``[1]``, a static fp8
    GEMM's input scale) it returns the output's e4m3 codes, bitwise ``quant_ops.quantize_fp8(out,
    out_scale)``: the fused decode kernel writes them itself, the other paths quantize after."""
    op = "paged_attention_quant_kv"
    _check_step(op, qkv, position_ids, seq_lens, past_lens, cu_seqlens, block_tables, kv_cache, num_heads,
                num_kv_heads, head_dim, layer_idx, tokens_per_block, _HALF_TYPES, tuple(KV_CODE_DTYPES))
    _check_rope(op, qkv, rope_cos_sin, rotary_dim, rope_style, head_dim)
    if head_dim not in (64, 128):
        raise PluginError(f"{op}: head_dim {head_dim} is not supported by the CUDA kernels (64 or 128)")
    if max_q_len < 1 or max_kv_len < max_q_len:
        raise PluginError(f"{op}: need 1 <= max_q_len ({max_q_len}) <= max_kv_len ({max_kv_len})")
    per_head = _check_scales(op, kv_scales, num_kv_heads, qkv.device)
    _check_k_bias(op, k_bias, num_kv_heads, head_dim, qkv.device)
    if out_scale is not None:
        _check_static_scale(op, "out_scale", out_scale, qkv.device)
    code, kv_code = _DTYPE_CODES[qkv.dtype], KV_CODE_DTYPES[kv_cache.dtype]
    tokens, batch, stream = qkv.shape[0], seq_lens.shape[0], _stream(qkv)
    splits = one_launch_decode_splits(batch, num_heads, num_kv_heads, max_kv_len, qkv.device)
    if max_q_len == 1 and splits:  # the fused decode kernel: RoPE, quantizing write and attention
        return ops.decode_fused(qkv, position_ids, seq_lens, past_lens, cu_seqlens, block_tables, kv_cache,
                                rope_cos_sin, num_heads=num_heads, num_kv_heads=num_kv_heads, head_dim=head_dim,
                                layer_idx=layer_idx, tokens_per_block=tokens_per_block, softmax_scale=softmax_scale,
                                rotary_dim=rotary_dim, rope_style=rope_style, splits=splits, kv_scales=kv_scales,
                                k_rotation=k_rotation, k_bias=k_bias, out_scale=out_scale)
    q = qkv.new_empty(tokens, num_heads * head_dim)
    out = qkv.new_empty(tokens, num_heads * head_dim)
    if tokens == 0:
        return out if out_scale is None else out.to(torch.float8_e4m3fn)
    call("trtdsl_rope_kv_write_quant", qkv.data_ptr(), qkv.stride(0), q.data_ptr(), q.stride(0),
         kv_cache.data_ptr(), kv_cache.shape[1], position_ids.data_ptr(), past_lens.data_ptr(),
         cu_seqlens.data_ptr(), batch, block_tables.data_ptr(), block_tables.stride(0),
         rope_cos_sin.data_ptr() if rotary_dim else None, rotary_dim, _ROPE_STYLES[rope_style], tokens,
         num_heads, num_kv_heads, head_dim, layer_idx, tokens_per_block, code, kv_code, kv_scales.data_ptr(),
         per_head, int(k_rotation), None if k_bias is None else k_bias.data_ptr(), stream)
    common = (q.data_ptr(), q.stride(0), kv_cache.data_ptr(), kv_cache.shape[1], seq_lens.data_ptr(),
              past_lens.data_ptr(), cu_seqlens.data_ptr(), batch, block_tables.data_ptr(), block_tables.stride(0),
              out.data_ptr(), out.stride(0), num_heads, num_kv_heads, head_dim, layer_idx, tokens_per_block,
              float(softmax_scale))
    if max_q_len == 1:
        chunk, nbytes = decode_workspace(batch, num_heads, num_kv_heads, head_dim, int(max_kv_len))
        workspace = torch.empty(nbytes, dtype=torch.uint8, device=qkv.device)
        call("trtdsl_decode_attention_quant", *common, int(max_kv_len), chunk, workspace.data_ptr(), nbytes, code,
             kv_code, kv_scales.data_ptr(), per_head, stream)
    else:
        call("trtdsl_context_attention_quant", *common, int(max_q_len), code, kv_code, kv_scales.data_ptr(),
             per_head, stream)
    if out_scale is None:
        return out
    from .quant_ops import quantize_fp8
    return quantize_fp8(out, out_scale)
