"""int4 weight-only GEMMs in the pre-shuffled tile-16 layout, with the SwiGLU after gate_up fused in.

:func:`pack_int4_gemms` rewrites each 4-bit ``trtdsl.weight_only_gemm`` whose codes, scales and zeros
are constants (and whose shape the layout takes: ``in_features % 128 == 0``, group 64, a multiple of 128
or per channel) into one ``trtdsl.int4_tile_gemm`` layer reading the same weights repacked by
:func:`trtdsl.quantization.int4_tiles.pack_int4_tiles` (a permutation: no value changes). When the GEMM's
only reader is a ``trtdsl.swiglu`` (the MLP's gate_up), the pack interleaves gate and up rows and the
layer writes the SwiGLU's output itself (field ``swiglu``). Scales and zeros that are float16 values
(``QuantConfig.half_scales``) are packed as float16.

=============================  ===================================================  ====================
plugin                         inputs                                               fields
=============================  ===================================================  ====================
``trtdsl.int4_tile_gemm``      ``x [..., k]`` float, ``qpacked`` int8 (bytes)       ``out_features``,
                               ``[tiles, k / 128, 1024]``, ``sz`` float32 or        ``in_features``,
                               float16 ``[tiles, groups, 8, 4]`` (zeros) or         ``group_size``,
                               ``[.., 2]``                                          ``swiglu``
=============================  ===================================================  ====================

Output ``x.shape[:-1] + (out_features,)`` in x's dtype. The reference unpacks to the canonical tensors
and runs ``weight_only_gemm``'s reference (then, with ``swiglu``, ``trtdsl.swiglu``'s on that rounded
output): bit for bit the layers it replaced, on the CPU. Why: the decode GEMV over this layout reads
each warp's weights, scales and zeros as whole lines and drops the SwiGLU launch (docs/quant_kernels.md).

Runs where the SwiGLU fusion does (the torch backend: it has the CUDA kernel); TensorRT and ONNX builds
keep ``trtdsl.weight_only_gemm``.
"""

from __future__ import annotations

import torch

from .. import functional as F
from ..dtypes import DType
from ..errors import DTypeError, ShapeError
from ..ir.network import Layer, LayerKind, Network
from ..ir.symbolic import dim_equal
from ..plugins.registry import PluginSpec, register_plugin, registered_plugins
from ..quantization.graph import constant_source
from ..quantization.int4_tiles import (int4_tiles_supported, is_half_exact, pack_int4_tiles, packed_shapes,
                                       unpack_int4_tiles)
from ..quantization.plugins import WEIGHT_ONLY_GEMM, check_plugin, weight_only_gemm_reference
from . import fused_plugins
from .dce import eliminate_dead_code
from .graph import consumers, output_ids, sync_bookkeeping, toposort

__all__ = ["INT4_TILE_GEMM", "int4_tile_gemm_reference", "pack_int4_gemms", "tile_gemm_shape"]

INT4_TILE_GEMM = "trtdsl.int4_tile_gemm"
_FLOAT = (DType.float32, DType.float16, DType.bfloat16)


def _rows(fields: dict) -> int:
    """Weight rows of the pack: the outputs, or gate and up rows with ``swiglu``."""
    return int(fields["out_features"]) * (2 if fields["swiglu"] else 1)


def _check(cond: bool, problem: str, ins: list, kind: type = ShapeError) -> None:
    check_plugin(cond, INT4_TILE_GEMM, problem, ins, kind)


def tile_gemm_shape(ins: list, fields: dict) -> list:
    """The plugin's shape rule (also the first three inputs of :mod:`.deferred_norm`'s plugins)."""
    _check(len(ins) == 3, f"expects 3 inputs (x, qpacked, sz), got {len(ins)}", ins)
    x, qp, sz = ins
    k, group = int(fields["in_features"]), int(fields["group_size"])
    q_shape, sz_shape = packed_shapes(_rows(fields), k, 1 if group == 0 else k // group)
    _check(x.dtype in _FLOAT, f"x must be float32/float16/bfloat16, got {x.dtype.value}", ins, DTypeError)
    _check(qp.dtype is DType.int8 and sz.dtype in (DType.float32, DType.float16),
           "qpacked must be int8 bytes and sz float32 or float16", ins, DTypeError)
    _check(x.ndim >= 1 and dim_equal(x.shape[-1], k), f"x must be [..., {k}]", ins)
    _check(int4_tiles_supported(k, group), f"in_features {k} / group_size {group} are not a tile-16 shape", ins)
    _check(tuple(qp.shape) == q_shape, f"qpacked must be {list(q_shape)}", ins)
    _check(tuple(sz.shape[:3]) == sz_shape and sz.shape[3] in (2, 4),
           f"sz must be [{sz_shape[0]}, {sz_shape[1]}, 8, 2 | 4]", ins)
    return [(x.dtype, tuple(x.shape[:-1]) + (int(fields["out_features"]),))]


def int4_tile_gemm_reference(ins: list, fields: dict, hints: dict | None = None) -> torch.Tensor:
    """Unpack to the canonical codes, scales and zeros; ``weight_only_gemm``'s reference; then, with
    ``swiglu``, ``trtdsl.swiglu``'s reference on that output (what the two layers computed)."""
    x, qp, sz = ins
    qweight, scales, zeros = unpack_int4_tiles(qp, sz, _rows(fields), swiglu=bool(fields["swiglu"]))
    canonical = [x, qweight, scales] + ([] if zeros is None else [zeros])
    y = weight_only_gemm_reference(canonical, {"bits": 4, "group_size": fields["group_size"],
                                               "in_features": fields["in_features"]})
    return fused_plugins.swiglu_reference([y], {}, {}) if fields["swiglu"] else y


def register() -> None:
    """Register the plugin (idempotent: kernels attached to an existing spec survive)."""
    if INT4_TILE_GEMM not in registered_plugins():
        register_plugin(PluginSpec(INT4_TILE_GEMM, tile_gemm_shape, int4_tile_gemm_reference,
                                   doc="int4 weight-only GEMM over the tile-16 layout, optionally with SwiGLU"))


register()


def _constants(gemm: Layer) -> list[torch.Tensor] | None:
    """Values of the GEMM's qweight, scales (and zeros) when all are constants."""
    values = []
    for t in gemm.inputs[1:]:
        src = constant_source(t)
        value = None if src is None else src.attrs.get("value")
        if not isinstance(value, torch.Tensor) or tuple(value.shape) != tuple(t.shape):
            return None
        values.append(value)
    return values


def _swiglu_reader(gemm: Layer, users: dict[int, list[Layer]], outs: set[int]) -> Layer | None:
    out = gemm.outputs[0]
    readers = users.get(id(out), [])
    if id(out) in outs or len(readers) != 1:
        return None
    r = readers[0]
    is_swiglu = r.kind is LayerKind.PLUGIN and r.attrs.get("name") == fused_plugins.SWIGLU
    return r if is_swiglu and r.inputs[0] is out and isinstance(out.shape[-1], int) and out.shape[-1] % 16 == 0 \
        else None


def _pack_one(net: Network, gemm: Layer, users: dict[int, list[Layer]], outs: set[int]) -> bool:
    fields = gemm.attrs.get("fields", {})
    k, group = int(fields.get("in_features", 0)), int(fields.get("group_size", -1))
    if fields.get("bits") != 4 or len(gemm.inputs) not in (3, 4) or not int4_tiles_supported(k, group):
        return False
    values = _constants(gemm)
    if values is None:
        return False
    swiglu = _swiglu_reader(gemm, users, outs)
    qweight, scales = values[:2]
    zeros = values[2] if len(values) == 3 else None
    half = is_half_exact(scales, zeros)  # QuantConfig.half_scales: float16 scales, half their bytes
    qp, sz = pack_int4_tiles(qweight, scales, zeros, group, swiglu=swiglu is not None, half=half)
    names = [t.name for t in gemm.inputs[1:3]]
    with net.scope():
        packed = [F.constant(qp, DType.int8, name=f"{names[0]}.tiles"),
                  F.constant(sz, DType.float16 if half else DType.float32, name=f"{names[1]}.tiles")]
    n = qweight.shape[0]
    gemm.inputs = [gemm.inputs[0], *packed]
    gemm.attrs = {"name": INT4_TILE_GEMM, "version": "1",
                  "fields": {"out_features": n // 2 if swiglu else n, "in_features": k, "group_size": group,
                             "swiglu": swiglu is not None}}
    if swiglu is not None:  # the GEMM writes the SwiGLU's output; the SwiGLU layer goes
        result = swiglu.outputs[0]
        result.producer = gemm
        gemm.outputs = [result]
        swiglu.inputs, swiglu.outputs = [], []
    return True


def pack_int4_gemms(net: Network) -> int:
    """Rewrite the network's constant-weight int4 weight-only GEMMs (in place); returns how many."""
    users = consumers(net)
    outs = output_ids(net)
    gemms = [la for la in net.layers if la.kind is LayerKind.PLUGIN and la.attrs.get("name") == WEIGHT_ONLY_GEMM]
    packed = sum(_pack_one(net, gemm, users, outs) for gemm in gemms)
    if packed:
        net.layers = [la for la in net.layers if la.outputs]  # the fused SwiGLUs
        toposort(net)  # the new constants were appended after their readers
        eliminate_dead_code(net)  # the canonical constants
        sync_bookkeeping(net)
    return packed

