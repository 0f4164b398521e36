"""Plain-torch reference of the ``trtdsl.attention`` plugin (see docs/batch_interface.md).

It is the semantics the CUDA kernels are tested against, and what the torch executor runs where no
kernel exists (CPU). It is written for clarity, one sequence at a time, not for speed."""

from __future__ import annotations

import torch

__all__ = ["apply_rope", "rope_cos_sin_table", "paged_attention_reference"]


def rope_cos_sin_table(inv_freq: torch.Tensor, max_positions: int) -> torch.Tensor:
    """``[max_positions, rotary_dim]`` float32 table: cos of each position's angles, then sin."""
    positions = torch.arange(max_positions, dtype=torch.float64)
    angles = torch.outer(positions, inv_freq.to(torch.float64))
    return torch.cat([angles.cos(), angles.sin()], dim=-1).to(torch.float32)


def apply_rope(x: torch.Tensor, cos_sin: torch.Tensor, rotary_dim: int, style: str) -> torch.Tensor:
    """Rotate the first ``rotary_dim`` features of ``x [tokens, heads, head_dim]``.

    ``cos_sin [tokens, rotary_dim]`` holds each token's cos (first half) and sin (second half).
    ``style="neox"`` rotates halves (HF Llama's rotate_half); ``"gptj"`` rotates interleaved pairs."""
    if rotary_dim == 0:
        return x
    half = rotary_dim // 2
    cos = cos_sin[:, None, :half].float()
    sin = cos_sin[:, None, half:rotary_dim].float()
    rot, rest = x[..., :rotary_dim].float(), x[..., rotary_dim:]
    if style == "neox":
        x1, x2 = rot[..., :half], rot[..., half:]
        out = torch.cat([x1 * cos - x2 * sin, x2 * cos + x1 * sin], dim=-1)
    elif style == "gptj":
        x1, x2 = rot[..., 0::2], rot[..., 1::2]
        out = torch.stack([x1 * cos - x2 * sin, x2 * cos + x1 * sin], dim=-1).flatten(-2)
    else:
        raise ValueError(f"unknown rope_style {style!r}; expected 'neox' or 'gptj'")
    return torch.cat([out.to(x.dtype), rest], dim=-1)


def paged_attention_reference(
    qkv: torch.Tensor,
    position_ids: torch.Tensor,
    seq_lens: torch.Tensor,
    past_lens: torch.Tensor,
    cu_seqlens: torch.Tensor,
    block_tables: torch.Tensor,
    kv_cache: torch.Tensor,
    rope_cos_sin: torch.Tensor,
    *,
    num_heads: int,
    num_kv_heads: int,
    head_dim: int,
    layer_idx: int,
    tokens_per_block: int,
    softmax_scale: float,
    rotary_dim: int = 0,
    rope_style: str = "neox",
) -> torch.Tensor:
    """Causal attention over a packed batch with a paged K/V cache; writes this step's K/V."""
    num_tokens = qkv.shape[0]
    q, k, v = qkv.view(num_tokens, num_heads + 2 * num_kv_heads, head_dim).split(
        [num_heads, num_kv_heads, num_kv_heads], dim=1)
    if rotary_dim:
        cs = rope_cos_sin[position_ids.long()]
        q, k = apply_rope(q, cs, rotary_dim, rope_style), apply_rope(k, cs, rotary_dim, rope_style)
    out = torch.empty(num_tokens, num_heads, head_dim, dtype=qkv.dtype, device=qkv.device)
    cache = kv_cache[layer_idx]
    group = num_heads // num_kv_heads
    for s in range(seq_lens.shape[0]):
        start, n, past = int(cu_seqlens[s]), int(seq_lens[s]), int(past_lens[s])
        if n == 0:
            continue
        total = past + n
        pos = torch.arange(past, total, device=qkv.device)
        blocks = block_tables[s, pos // tokens_per_block].long()
        offsets = pos % tokens_per_block
        cache[blocks, 0, :, offsets] = k[start:start + n].to(cache.dtype)
        cache[blocks, 1, :, offsets] = v[start:start + n].to(cache.dtype)
        all_pos = torch.arange(total, device=qkv.device)
        all_blocks = block_tables[s, all_pos // tokens_per_block].long()
        keys = cache[all_blocks, 0, :, all_pos % tokens_per_block].float()  # [total, kvh, d]
        values = cache[all_blocks, 1, :, all_pos % tokens_per_block].float()
        keys = keys.repeat_interleave(group, dim=1)
        values = values.repeat_interleave(group, dim=1)
        scores = torch.einsum("qhd,khd->hqk", q[start:start + n].float(), keys) * softmax_scale
        causal = all_pos[None, :] <= pos[:, None]  # [n, total]
        scores = scores.masked_fill(~causal, float("-inf"))
        probs = scores.softmax(dim=-1)
        out[start:start + n] = torch.einsum("hqk,khd->qhd", probs, values).to(qkv.dtype)
    return out.view(num_tokens, num_heads * head_dim)
