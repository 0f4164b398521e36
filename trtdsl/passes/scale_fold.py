"""Fold a per-channel activation scale into the quantized GEMM that produces the activation.

Two patterns, both exact rewrites of what AWQ / SmoothQuant leave as a separate multiply:

* ``swiglu(gate_up(x)) * c`` (before down_proj): scale the up half of the gate_up GEMM by ``c``;
* ``attention(qkv(x)) * c`` (before o_proj): attention output channel ``(h, d)`` is a convex
  combination of V channel ``(h // group, d)``, so when ``c`` is the same for every query head of a
  K/V group (AWQ ties it so for GQA models) scaling V's rows of the qkv GEMM by ``c`` is the same
  function. Not done when the K/V cache is quantized (its calibrated V scales would no longer fit).

AWQ and SmoothQuant divide a GEMM's input by per-channel factors ``s``. When the input comes from a
normalization the quantization pass folds ``1/s`` into the norm's weight; the input of ``down_proj``
comes from ``swiglu(gate_up(x))`` instead, so the pass leaves one multiply ``y * c`` before it: one
more kernel per layer in every decode step. Here ``swiglu`` is ``silu(g) * u`` with ``u`` the up
half of the gate_up GEMM's output, so ``c * swiglu(g, u) = silu(g) * (c * u)``: scaling output
channel ``j`` of ``u`` by ``c_j`` is the same function, and a quantized GEMM's output channel is
scaled by scaling that row's dequantization scales (``scales`` and ``zeros`` of the weight-only GEMM,
``weight_scale`` of the fp8 / int8 GEMMs when it is per channel). The multiply then disappears
(AutoAWQ folds the same factor into ``up_proj``'s float weight; after quantization the scales are the
place: rounding ``W / c`` row-wise gives the codes of ``W`` with scales divided by ``c``).

Only exact rewrites are made: the constant must be a per-last-dim vector read by nothing else, the
GEMM's scale constants must be private to it, and every intermediate tensor must have no other reader.
One rounding is added on purpose: a weight-only GEMM whose scales and zeros all hold float16 values
(``QuantConfig.half_scales``) keeps float16 values after the fold, so the int4 tile-16 packing can
still store that table in float16 (:mod:`.int4_tile_gemm`; half the scale bytes the decode GEMV
streams). That moves a folded scale by at most 2^-11 of itself, against int4's quantization step of
1/15 of a group's range.
"""

from __future__ import annotations

import torch

from ..ir.network import Layer, LayerKind, Network, Tensor
from .graph import consumers, output_ids, sync_bookkeeping

__all__ = ["fold_channel_scales"]

ATTENTION = "trtdsl.attention"
WEIGHT_ONLY = "trtdsl.weight_only_gemm"
#: quantized GEMM plugin -> input positions of its per-output-channel dequantization factors.
_SCALED_INPUTS = {WEIGHT_ONLY: (2, 3), "trtdsl.fp8_gemm": (2,), "trtdsl.int8_gemm": (2,)}


def fold_channel_scales(net: Network) -> int:
    """Remove ``swiglu(quantized_gemm(x)) * c`` and ``attention(quantized_gemm(x)) * c`` multiplies
    by scaling the GEMM's up-half / V rows of dequantization scales by ``c``; returns how many were
    folded."""
    from .fusion import swiglu_match  # the matcher of the SwiGLU fusion: one definition of the pattern

    users = consumers(net)
    outs = output_ids(net)
    folded = 0
    for mul in list(net.layers):
        if mul.kind is not LayerKind.ELEMENTWISE or mul.attrs.get("op") != "prod" or id(mul.outputs[0]) in outs:
            continue
        for y, c_t in (mul.inputs, mul.inputs[::-1]):
            c_src = _private_constant(c_t, users)
            if c_src is None or y.producer is None or len(users.get(id(y), [])) != 1:
                continue
            if _is_attention(y.producer):
                gemm_out, rows = _attention_v_rows(y.producer, c_src.attrs["value"])
                changed: tuple[Layer, ...] = (y.producer,)
                readers = [y.producer]
            else:
                match = swiglu_match(y.producer, users)
                if match is None:
                    continue
                gemm_out = match[0].inputs[0]  # the gate slice reads the gate_up GEMM's output
                rows = _up_half_rows(gemm_out, c_src.attrs["value"])
                changed, readers = match, [match[0], match[1]]  # readers: the gate and up slices
            if rows is None or id(gemm_out) in outs or any(id(t) in outs for m in changed for t in m.outputs):
                break  # not an exact rewrite, or a network output would change with the GEMM's rows
            if _scale_gemm_rows(gemm_out, rows, users, readers):
                _bypass(net, mul, y)
                folded += 1
                users = consumers(net)
            break
    if folded:
        sync_bookkeeping(net)
    return folded


def _channel_vector(c: torch.Tensor) -> torch.Tensor | None:
    """``c`` as a vector over the last dim (it broadcasts over the tokens), else None."""
    return c.reshape(-1).float() if all(d == 1 for d in c.shape[:-1]) else None


def _up_half_rows(gemm_out: Tensor, c: torch.Tensor) -> torch.Tensor | None:
    """Per-output-row factors of the gate_up GEMM: 1 for the gate half, ``c`` for the up half."""
    vec, width = _channel_vector(c), gemm_out.shape[-1]
    if vec is None or not isinstance(width, int) or 2 * vec.numel() != width:
        return None
    return torch.cat([torch.ones(vec.numel()), vec])


def _is_attention(layer: Layer | None) -> bool:
    return layer is not None and layer.kind is LayerKind.PLUGIN and layer.attrs.get("name") == ATTENTION


def _attention_v_rows(attn: Layer, c: torch.Tensor) -> tuple[Tensor, torch.Tensor | None]:
    """The qkv tensor ``attn`` reads and per-row factors of its GEMM (``c`` on V's rows, 1 on q and
    k), or None when ``c`` differs between query heads sharing a K/V head."""
    f = attn.attrs["fields"]
    heads, kv_heads, hd = int(f["num_heads"]), int(f["num_kv_heads"]), int(f["head_dim"])
    qkv, vec = attn.inputs[0], _channel_vector(c)
    if vec is None or vec.numel() != heads * hd or qkv.shape[-1] != (heads + 2 * kv_heads) * hd:
        return qkv, None
    per_head = vec.view(kv_heads, heads // kv_heads, hd)
    if not bool((per_head == per_head[:, :1]).all()):
        return qkv, None
    rows = torch.ones((heads + 2 * kv_heads) * hd)
    rows[(heads + kv_heads) * hd:] = per_head[:, 0].reshape(-1)
    return qkv, rows


def _scale_gemm_rows(gemm_out: Tensor, factor: torch.Tensor, users: dict[int, list[Layer]],
                     readers: list[Layer]) -> bool:
    """Scale output row ``j`` of the quantized GEMM producing ``gemm_out`` by ``factor[j]`` when
    ``readers`` are all that read it; False (nothing changed) when that is not an exact rewrite."""
    gemm = gemm_out.producer
    if gemm is None or gemm.kind is not LayerKind.PLUGIN or gemm.attrs.get("name") not in _SCALED_INPUTS:
        return False
    width = gemm_out.shape[-1]
    if {id(layer) for layer in users.get(id(gemm_out), [])} != {id(layer) for layer in readers}:
        return False  # a bias add or another reader sits between: the rows are not the output channels
    positions = [p for p in _SCALED_INPUTS[gemm.attrs["name"]] if p < len(gemm.inputs)]
    sources = [_private_constant(gemm.inputs[p], users) for p in positions]
    if any(src is None or src.attrs["value"].shape[0] != width for src in sources):
        return False  # per-tensor fp8 scale, or a scale constant shared with another layer
    from ..quantization.int4_tiles import is_half_exact  # not at import: the package loads its plugins

    values = [src.attrs["value"] for src in sources if src is not None]
    # A new tensor, never in place: clones of a network share constant values.
    scaled = [v.float() * factor.reshape((width,) + (1,) * (v.ndim - 1)) for v in values]
    if gemm.attrs["name"] == WEIGHT_ONLY and is_half_exact(*values):
        scaled = _half_if_representable(scaled)  # a half table stays one (module docstring)
    for src, value, new in zip(sources, values, scaled):
        assert src is not None
        src.attrs["value"] = new.to(value.dtype)
    return True


def _half_if_representable(tables: list[torch.Tensor]) -> list[torch.Tensor]:
    """``tables`` rounded to float16 values, or unchanged when one would overflow float16 or a
    nonzero value would flush to zero (a whole group's weights lost)."""
    rounded = [t.to(torch.float16).float() for t in tables]
    if all(bool(torch.isfinite(r).all()) and not bool(((r == 0) & (t != 0)).any()) for r, t in zip(rounded, tables)):
        return rounded
    return tables


def _private_constant(t: Tensor, users: dict[int, list[Layer]]) -> Layer | None:
    """The CONSTANT layer behind ``t`` (through single-reader reshapes) if ``t`` is its only use."""
    layer = t.producer
    cur = t
    while layer is not None and layer.kind is LayerKind.SHUFFLE and \
            layer.attrs.get("first_transpose") is None and layer.attrs.get("second_transpose") is None:
        if len(users.get(id(cur), [])) != 1:
            return None
        cur = layer.inputs[0]
        layer = cur.producer
    if layer is None or layer.kind is not LayerKind.CONSTANT or len(users.get(id(cur), [])) != 1:
        return None
    return layer


def _bypass(net: Network, mul: Layer, y: Tensor) -> None:
    """Make every reader of ``mul``'s output read ``y`` and drop ``mul`` (its constant dies in DCE)."""
    out = mul.outputs[0]
    for layer in net.layers:
        layer.inputs = [y if t is out else t for t in layer.inputs]
    net.layers.remove(mul)
    from .dce import eliminate_dead_code
    eliminate_dead_code(net)
