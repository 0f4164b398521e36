"""Graph passes over a :class:`~trtdsl.Network`, applied in place by the builder.

Every pass keeps the network's inputs, outputs (names and tensors) and each surviving layer's
``module_path``, and is tested against the unoptimized network's outputs.

>>> stats = optimize(net, fold=True, fuse_elementwise=True)
>>> stats
{'dead_code': 3, 'folded': 2, 'scale_fold': 0, 'add_rms_norm': 0, 'swiglu': 0, 'fp8_activations': 0, 'int4_tiles': 0, 'deferred_norms': 0, 'pointwise': 5, 'layers': 41}
"""

from __future__ import annotations

from ..ir.network import Network
from .dce import eliminate_dead_code
from .fold import fold_constants
from .fusion import fuse_add_rms_norm, fuse_elementwise, fuse_swiglu
from .graph import toposort
from .scale_fold import fold_channel_scales


def fuse_fp8_activations(net: Network) -> int:
    """See :func:`trtdsl.passes.fp8_act_fuse.fuse_fp8_activations` (imported on use: it needs the
    quantization plugins, whose package imports this one)."""
    from .fp8_act_fuse import fuse_fp8_activations as fuse
    return fuse(net)

__all__ = ["optimize", "eliminate_dead_code", "fold_constants", "fuse_elementwise", "fuse_add_rms_norm",
           "fuse_swiglu", "fold_channel_scales", "toposort", "fuse_fp8_activations"]


def optimize(net: Network, *, fold: bool = True, max_fold_elements: int = 1 << 16,
             fuse_elementwise: bool = False, fuse_add_rms_norm: bool = False,
             fuse_swiglu: bool = False, fold_scales: bool = True,
             fuse_fp8_activations: bool | None = None, pack_int4: bool | None = None,
             defer_norms: bool | None = None) -> dict[str, int]:
    """Run the passes in their order (DCE, folding, DCE, channel-scale folding, norm fusion, SwiGLU
    fusion, fp8 activation fusion, int4 tile packing, norm deferral, pointwise fusion); returns per-pass
    counts. The fp8 activation fusion (:mod:`.fp8_act_fuse`: static fp8 GEMM inputs quantized by the norm /
    SwiGLU that makes them) runs, by default (``None``), wherever the norm or SwiGLU fusion does, i.e.
    where the backend has fused kernels; ``pack_int4`` (:mod:`.int4_tile_gemm`: int4 weight-only GEMMs
    repacked for the tile-16 GEMV, the SwiGLU after gate_up fused in) by default where the SwiGLU fusion
    runs; ``defer_norms`` (:mod:`.deferred_norm`: an add + RMSNorm between two int4 tile GEMMs moved into
    them) by default where the packing runs. Norm fusion runs first so the pointwise pass cannot swallow
    its residual add; channel scales fold before the SwiGLU fusion, which would hide the pattern they fold
    through."""
    from . import fusion
    stats = {"dead_code": eliminate_dead_code(net), "folded": 0, "scale_fold": 0, "add_rms_norm": 0,
             "swiglu": 0, "fp8_activations": 0, "int4_tiles": 0, "deferred_norms": 0, "pointwise": 0}
    if fold:
        stats["folded"] = fold_constants(net, max_fold_elements)
        stats["dead_code"] += eliminate_dead_code(net)
    if fold_scales:
        stats["scale_fold"] = fold_channel_scales(net)
    if fuse_add_rms_norm:
        stats["add_rms_norm"] = fusion.fuse_add_rms_norm(net)
    if fuse_swiglu:  # before the pointwise pass, which would otherwise take its multiplies
        stats["swiglu"] = fusion.fuse_swiglu(net)
    run_fp8 = (fuse_add_rms_norm or fuse_swiglu) if fuse_fp8_activations is None else fuse_fp8_activations
    if run_fp8:
        from .fp8_act_fuse import fuse_fp8_activations as fuse_fp8  # imports the quantization plugins
        stats["fp8_activations"] = fuse_fp8(net)
    run_pack = fuse_swiglu if pack_int4 is None else pack_int4
    if run_pack:
        from .int4_tile_gemm import pack_int4_gemms  # imports the quantization plugins
        stats["int4_tiles"] = pack_int4_gemms(net)
    if run_pack if defer_norms is None else defer_norms:
        from .deferred_norm import defer_rms_norms
        stats["deferred_norms"] = defer_rms_norms(net)
    if fuse_elementwise:
        stats["pointwise"] = fusion.fuse_elementwise(net)
    stats["layers"] = len(net.layers)
    return stats
