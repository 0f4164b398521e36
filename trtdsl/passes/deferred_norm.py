"""The RMSNorm between two int4 tile GEMMs, deferred into them (no kernel of its own at decode).

A pre-norm decoder computes ``h = r + o_proj(a)``, ``y = qkv(rms_norm(h) * gamma)`` (and the same around
the MLP). ``rms_norm``'s row scale ``rsqrt(mean(h^2) + eps)`` is one number per token, so it commutes with
the GEMM: ``y = (W (h * gamma)) * rsqrt(mean(h^2) + eps)``. :func:`defer_rms_norms` rewrites each
``trtdsl.add_rms_norm`` whose branch input comes from an ``trtdsl.int4_tile_gemm`` (``P``) and whose normed
output is read only by tile GEMMs (``C``) into two plugins:

==================================  ========================================  ===================================
plugin                              inputs                                    outputs
==================================  ========================================  ===================================
``trtdsl.int4_tile_gemm_add_norm``  ``x, qpacked, sz`` (P's), ``residual``,   ``scaled [..., n]``, ``total [...,
                                    ``gamma [n]``                             n]``, ``ssq [..., n / 16]`` float32
``trtdsl.int4_tile_gemm_normed``    ``scaled, qpacked, sz`` (C's), ``ssq``    C's output
==================================  ========================================  ===================================

Fields: ``int4_tile_gemm``'s (``out_features``, ``in_features``, ``group_size``, ``swiglu``), ``epsilon``
and ``max_deferred_rows``. Semantics, for ``rows`` tokens (the product of x's leading dims):

* ``rows <= max_deferred_rows`` (decode: the tile GEMV's rows): ``total = T(P(x) + residual)``;
  ``scaled = T(total * gamma)``; ``ssq`` = each 16-output tile's sum of ``total^2`` in float32; the
  consumer's float32 sums times ``rsqrt(sum(ssq) / n + eps)``, rounded to T (with ``swiglu``, gate and up
  each, then ``silu(gate) * up`` as ``trtdsl.swiglu`` computes it).
* more rows (prefill, large batches: a cuBLAS GEMM whose cost dwarfs a norm kernel): ``scaled`` is
  ``add_rms_norm``'s normed output itself, ``ssq`` zeros, and the consumer is the plain tile GEMM.

The pair agrees on the regime because both see the same ``rows``; ``scaled`` and ``ssq`` have no other
readers. Against the unfused layers the decode regime differs only in rounding: the norm rounds ``h *
scale * gamma`` to T once, here ``h * gamma`` is rounded and the scale multiplies the float32 sums.

Why (docs/quant_kernels.md "Deferred norm"): at batch 1 the two norm kernels of an 8B layer cost about 4
us of its ~69 (launch, a dependent load of the whole row, a block-wide sum); the producer's epilogue
already holds its outputs and the consumer's blocks only need one float per producer tile.
Runs where the int4 tile packing does (the torch backend), on float32 / bfloat16 activations: with
float16 ones ``h * gamma`` could overflow where the normalized value does not (residual streams of a few
thousand exist), so those keep the norm kernel.
"""

from __future__ import annotations

import torch

from ..dtypes import DType
from ..errors import DTypeError
from ..ir.network import Layer, LayerKind, Network, Tensor
from ..ir.symbolic import dim_equal
from ..plugins.registry import PluginSpec, register_plugin, registered_plugins
from ..quantization.int4_tiles import TILE_ROWS, num_tiles, unpack_int4_tiles
from ..quantization.plugins import check_plugin, weight_only_gemm_reference
from . import fused_plugins
from .graph import consumers, output_ids, sync_bookkeeping, toposort
from .int4_tile_gemm import INT4_TILE_GEMM, int4_tile_gemm_reference, tile_gemm_shape

__all__ = ["ADD_NORM", "NORMED", "MAX_DEFERRED_ROWS", "defer_rms_norms", "add_norm_reference",
           "normed_reference"]

ADD_NORM = "trtdsl.int4_tile_gemm_add_norm"
NORMED = "trtdsl.int4_tile_gemm_normed"
# Rows the tile GEMV takes (two launches of 8: quant_ops.int4_tile_gemm); more run cuBLAS and the norm kernel.
MAX_DEFERRED_ROWS = 16


def _rows(x: torch.Tensor) -> int:
    return x.numel() // x.shape[-1] if x.shape[-1] else 0


def _add_norm_shape(ins: list, fields: dict) -> list:
    check_plugin(len(ins) == 5, ADD_NORM, f"expects 5 inputs (x, qpacked, sz, residual, gamma), got {len(ins)}",
                 ins)
    ((dtype, shape),) = tile_gemm_shape(ins[:3], fields)
    residual, gamma = ins[3], ins[4]
    n = int(fields["out_features"])
    check_plugin(not fields["swiglu"], ADD_NORM, "a SwiGLU's outputs are not a residual stream", ins)
    check_plugin(residual.dtype is dtype and gamma.dtype is dtype, ADD_NORM,
                 f"residual and gamma must be {dtype.value} like x", ins, DTypeError)
    check_plugin(residual.ndim == len(shape) and all(dim_equal(a, b) for a, b in zip(residual.shape, shape)),
                 ADD_NORM, f"residual must have the GEMM's output shape {shape}", ins)
    check_plugin(_is_row(gamma, n), ADD_NORM, f"gamma must be [{n}] (or [1, .., {n}])", ins)
    return [(dtype, shape), (dtype, shape), (DType.float32, tuple(shape[:-1]) + (num_tiles(n),))]


def _normed_shape(ins: list, fields: dict) -> list:
    check_plugin(len(ins) == 4, NORMED, f"expects 4 inputs (scaled, qpacked, sz, ssq), got {len(ins)}", ins)
    out = tile_gemm_shape(ins[:3], fields)
    x, ssq = ins[0], ins[3]
    k = int(fields["in_features"])
    check_plugin(ssq.dtype is DType.float32, NORMED, "ssq must be float32 (a producer's tile sums)", ins,
                 DTypeError)
    want = tuple(x.shape[:-1]) + (num_tiles(k),)
    check_plugin(ssq.ndim == len(want) and all(dim_equal(a, b) for a, b in zip(ssq.shape, want)), NORMED,
                 f"ssq must be {want}: the tile sums of the {k} features x was made from", ins)
    return out


def _float_sums(x: torch.Tensor, qpacked: torch.Tensor, sz: torch.Tensor, fields: dict) -> torch.Tensor:
    """The tile GEMM's float32 sums before rounding (gate rows then up rows for a SwiGLU pack)."""
    swiglu = bool(fields["swiglu"])
    rows = int(fields["out_features"]) * (2 if swiglu else 1)
    qweight, scales, zeros = unpack_int4_tiles(qpacked, sz, rows, swiglu=swiglu)
    canonical = [x.float(), qweight, scales] + ([] if zeros is None else [zeros])
    return weight_only_gemm_reference(canonical, {"bits": 4, "group_size": fields["group_size"],
                                                  "in_features": fields["in_features"]})


def add_norm_reference(ins: list, fields: dict, hints: dict | None = None) -> list:
    """``[scaled, total, ssq]`` (module docstring), on any device, any float dtype."""
    x, qpacked, sz, residual, gamma = ins
    y = int4_tile_gemm_reference([x, qpacked, sz], fields)
    if _rows(x) > int(fields["max_deferred_rows"]):
        normed, total = fused_plugins.add_rms_norm_reference(
            [y, residual, gamma], {"axes": (y.ndim - 1,), "epsilon": fields["epsilon"]}, {})
        ssq = torch.zeros(*y.shape[:-1], num_tiles(y.shape[-1]), dtype=torch.float32, device=y.device)
        return [normed, total, ssq]
    total = y + residual
    scaled = (total.float() * gamma.float()).to(total.dtype)
    n = total.shape[-1]
    squares = torch.nn.functional.pad(total.float().square(), (0, num_tiles(n) * TILE_ROWS - n))
    ssq = squares.view(*total.shape[:-1], num_tiles(n), TILE_ROWS).sum(-1)
    return [scaled, total, ssq]


def normed_reference(ins: list, fields: dict, hints: dict | None = None) -> torch.Tensor:
    """The consumer (module docstring): float32 sums times the row scale, rounded; SwiGLU after that."""
    x, qpacked, sz, ssq = ins
    if _rows(x) > int(fields["max_deferred_rows"]):
        return int4_tile_gemm_reference([x, qpacked, sz], fields)
    scale = torch.rsqrt(ssq.sum(-1, keepdim=True) / int(fields["in_features"]) + float(fields["epsilon"]))
    y = (_float_sums(x, qpacked, sz, fields) * scale).to(x.dtype)
    return fused_plugins.swiglu_reference([y], {}, {}) if fields["swiglu"] else y


def register() -> None:
    """Register both plugins (idempotent: kernels attached to an existing spec survive)."""
    known = registered_plugins()
    if ADD_NORM not in known:
        register_plugin(PluginSpec(ADD_NORM, _add_norm_shape, add_norm_reference,
                                   doc="int4 tile GEMM + residual add, the RMSNorm's gamma and tile sums of squares"))
    if NORMED not in known:
        register_plugin(PluginSpec(NORMED, _normed_shape, normed_reference,
                                   doc="int4 tile GEMM of a deferred-norm input, the row scale from the tile sums"))


register()


def _is_row(gamma: Tensor, n: int) -> bool:
    """``[n]``, or ``[1, .., 1, n]`` (how the norm layers keep their weight)."""
    return gamma.ndim >= 1 and gamma.shape[-1] == n and all(d == 1 for d in gamma.shape[:-1])


def _plain_tile_gemm(layer: Layer | None) -> bool:
    return layer is not None and layer.kind is LayerKind.PLUGIN and layer.attrs.get("name") == INT4_TILE_GEMM \
        and len(layer.inputs) == 3


def _match(norm: Layer, users: dict[int, list[Layer]], outs: set[int]) -> tuple[Layer, Tensor, list[Layer]] | None:
    """(producer GEMM, residual, consumer GEMMs) when ``norm`` (an add_rms_norm) can be deferred."""
    a, b, gamma = norm.inputs
    normed, total = norm.outputs
    if tuple(norm.attrs["fields"]["axes"]) != (total.ndim - 1,) or id(normed) in outs:
        return None
    for branch, residual in ((b, a), (a, b)):
        producer = branch.producer
        if _plain_tile_gemm(producer) and not producer.attrs["fields"]["swiglu"] and id(branch) not in outs \
                and [id(u) for u in users.get(id(branch), [])] == [id(norm)] and branch is not residual:
            break
    else:
        return None
    readers = users.get(id(normed), [])
    n = int(producer.attrs["fields"]["out_features"])
    if not readers or not all(_plain_tile_gemm(r) and r.inputs[0] is normed
                              and all(t is not normed for t in r.inputs[1:])
                              and int(r.attrs["fields"]["in_features"]) == n for r in readers):
        return None
    if not _is_row(gamma, n) or gamma.dtype is not branch.dtype or residual.dtype is not branch.dtype:
        return None
    if branch.dtype is DType.float16:  # h * gamma may pass float16's 65504 where the normalized value would not
        return None
    return producer, residual, readers


def _rewrite(net: Network, norm: Layer, producer: Layer, residual: Tensor, readers: list[Layer]) -> None:
    normed, total = norm.outputs
    eps = float(norm.attrs["fields"]["epsilon"])
    fields = dict(producer.attrs["fields"], epsilon=eps, max_deferred_rows=MAX_DEFERRED_ROWS)
    n = int(fields["out_features"])
    scaled = Tensor(f"{producer.name}:scaled", normed.dtype, normed.shape, net, producer)
    ssq = Tensor(f"{producer.name}:ssq", DType.float32, tuple(total.shape[:-1]) + (num_tiles(n),), net, producer)
    total.producer = producer
    producer.inputs = [*producer.inputs, residual, norm.inputs[2]]
    producer.outputs = [scaled, total, ssq]
    producer.attrs = {"name": ADD_NORM, "version": "1", "fields": fields}
    for reader in readers:
        reader.inputs = [scaled, *reader.inputs[1:], ssq]
        reader.attrs = {"name": NORMED, "version": "1",
                        "fields": dict(reader.attrs["fields"], epsilon=eps, max_deferred_rows=MAX_DEFERRED_ROWS)}
    net.layers.remove(norm)


def defer_rms_norms(net: Network) -> int:
    """Rewrite every deferrable ``trtdsl.add_rms_norm`` (module docstring) in place; returns how many."""
    deferred = 0
    outs = output_ids(net)
    users = consumers(net)
    norms = [la for la in net.layers
             if la.kind is LayerKind.PLUGIN and la.attrs.get("name") == fused_plugins.ADD_RMS_NORM]
    for norm in norms:
        match = _match(norm, users, outs)
        if match is None:
            continue
        _rewrite(net, norm, *match)
        deferred += 1
        users = consumers(net)  # the rewrite moved readers (residual, gamma, the normed value)
    if deferred:
        toposort(net)  # a producer now reads the residual and gamma, which may come after it
        sync_bookkeeping(net)
    return deferred
