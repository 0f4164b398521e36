"""GPU tests of the int4 decode GEMV over the tile-16 layout (``quant_ops.weight_only_gemv_packed``,
``wo_gemv_packed.cuh``) against the plain-torch reference of ``trtdsl.weight_only_gemm`` on the canonical
tensors the pack was made from: every launch config, 1..8 rows, odd n (partial tiles), k of 1..112 k
blocks, groups 64 / 128 / 256 / per channel with and without zeros, float32 and float16 scales, both
dtypes; SwiGLU fused into the
GEMV against the reference GEMV's output rounded to the dtype followed by silu(gate) * up."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from trtdsl.errors import PluginError
from trtdsl.quantization.int4_tiles import pack_int4_tiles
from trtdsl.quantization.numerics import half_grid

from test_quant_gemm import DTYPES, TOL, cuda, rel_err, weight_only_inputs, weight_only_ref

# TOL: the canonical tensor-core GEMVs' (test_quant_gemm.py): both sides sum exact code x activation products
# in fp32 (another order), but the kernel's biased codes (code + 1032 for fp16) make the mma's sums large and
# the zero term cancels them, so a lone output of a short k can be a few fp16 ulps off (1.06e-3 of 1e-3
# measured for k = 256, n = 1 with float16-valued scales on an H100).
# k blocks per step of each launch shape (wo_gemv_packed.cuh's kPackedShapes)
STEP = {0: 1, 1: 1, 2: 2, 3: 2, 4: 1, 5: 1, 6: 1, 7: 1, 8: 2, 9: 1, 10: 1, 11: 1, 12: 1}


def _run_all_configs(x, qp, sz, n, group, swiglu, ref, k):
    from trtdsl.plugins.cuda.quant_ops import WO_PACKED_CONFIGS, weight_only_gemv_packed
    for config in WO_PACKED_CONFIGS:
        if (k // 128) % STEP[config]:
            with pytest.raises(PluginError, match="status 7"):
                weight_only_gemv_packed(x, qp, sz, n, group, swiglu, config)
            continue
        out = weight_only_gemv_packed(x, qp, sz, n, group, swiglu, config)
        assert out.shape == (x.shape[0], n) and out.dtype == x.dtype
        assert rel_err(out.float(), ref) < TOL[x.dtype], config


def _inputs(m, k, n, group, dtype, zp, half):
    """weight_only_inputs, scales and zeros rounded to float16 values when ``half`` (half_scales)."""
    x, qweight, scales, zeros = weight_only_inputs(m, k, n, 4, group, dtype, zp)
    if half:
        scales, zeros = half_grid(scales, zeros)
    return x, qweight, scales, zeros


@cuda
@pytest.mark.parametrize("half", [False, True])
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("zp", [False, True])
@pytest.mark.parametrize("group", [64, 128, 256, 0])
@pytest.mark.parametrize("k,n", [(256, 1), (640, 17), (1024, 40), (4096, 33), (14336, 64)])
@pytest.mark.parametrize("m", [1, 3, 8])
def test_packed_gemv_matches_reference(m, k, n, group, zp, dtype, half):
    if group and k % group:
        pytest.skip("groups must divide k in the tile-16 layout")
    x, qweight, scales, zeros = _inputs(m, k, n, group, dtype, zp, half)
    qp, sz = pack_int4_tiles(qweight, scales, zeros, group, half=half)
    ref = weight_only_ref(x.float(), qweight, scales, zeros, 4, group, k)
    _run_all_configs(x, qp, sz, n, group, False, ref, k)


@cuda
@pytest.mark.parametrize("half", [False, True])
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("group", [64, 128])
@pytest.mark.parametrize("k,inter", [(512, 8), (1024, 24), (4096, 40)])
@pytest.mark.parametrize("m", [1, 5])
def test_packed_gemv_swiglu(m, k, inter, group, dtype, half):
    x, qweight, scales, zeros = _inputs(m, k, 2 * inter, group, dtype, True, half)
    qp, sz = pack_int4_tiles(qweight, scales, zeros, group, swiglu=True, half=half)
    gate_up = weight_only_ref(x.float(), qweight, scales, zeros, 4, group, k).to(dtype).float()
    ref = F.silu(gate_up[:, :inter]) * gate_up[:, inter:]
    _run_all_configs(x, qp, sz, inter, group, True, ref, k)


@cuda
def test_packed_gemv_rejects_bad_inputs():
    from trtdsl.plugins.cuda.quant_ops import WO_PACKED_CONFIGS, weight_only_gemv_packed
    x, qweight, scales, zeros = weight_only_inputs(1, 256, 32, 4, 128, torch.bfloat16, zp=True)
    qp, sz = pack_int4_tiles(qweight, scales, zeros, 128)
    with pytest.raises(PluginError, match="config"):
        weight_only_gemv_packed(x, qp, sz, 32, 128, config=len(WO_PACKED_CONFIGS))
    with pytest.raises(PluginError, match=r"1\.\.8"):
        weight_only_gemv_packed(x.expand(9, 256).contiguous(), qp, sz, 32, 128)
    with pytest.raises(PluginError, match="qpacked"):
        weight_only_gemv_packed(x, qp, sz, 48, 128)  # 3 tiles expected
    misaligned = torch.empty(257, device="cuda", dtype=x.dtype)[1:].view(1, 256).copy_(x)
    with pytest.raises(PluginError, match="status 7"):  # kErrUnsupported: x not 16-byte aligned
        weight_only_gemv_packed(misaligned, qp, sz, 32, 128)
    with pytest.raises(PluginError, match="dtype"):
        weight_only_gemv_packed(x.float(), qp, sz, 32, 128)


@cuda
@pytest.mark.parametrize("half", [False, True])
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("swiglu", [False, True])
@pytest.mark.parametrize("group,zp", [(64, True), (128, False), (0, True), (256, True)])
def test_dequantize_packed_is_the_canonical_dequantization(group, zp, swiglu, dtype, half):
    from trtdsl.plugins.cuda.quant_ops import dequantize_packed, dequantize_weight
    rows, k = (48, 512) if swiglu else (40, 512)
    _, qweight, scales, zeros = _inputs(1, k, rows, group, dtype, zp, half)
    qp, sz = pack_int4_tiles(qweight, scales, zeros, group, swiglu=swiglu, half=half)
    got = dequantize_packed(qp, sz, rows, k, group, dtype, swiglu=swiglu)
    want = dequantize_weight(qweight, scales, 4, group, k, dtype, zeros)
    torch.testing.assert_close(got, want, rtol=0, atol=0)


@cuda
@pytest.mark.parametrize("swiglu", [False, True])
@pytest.mark.parametrize("m", [1, 8, 9, 16, 17, 40])
def test_int4_tile_gemm_every_row_count(m, swiglu):
    """The plugin's CUDA path: one GEMV launch up to 8 rows, two up to 16, dequantize + cuBLAS beyond
    (then SwiGLU): all against the reference of the layers it replaces, over [2, m, k] activations."""
    from trtdsl.passes.int4_tile_gemm import int4_tile_gemm_reference
    from trtdsl.plugins.cuda.quant_ops import int4_tile_gemm
    k, rows, group = 1024, 96, 64
    x, qweight, scales, zeros = _inputs(m, k, rows, group, torch.bfloat16, True, half=True)
    qp, sz = pack_int4_tiles(qweight, scales, zeros, group, swiglu=swiglu, half=True)
    n = rows // 2 if swiglu else rows
    fields = {"out_features": n, "in_features": k, "group_size": group, "swiglu": swiglu}
    x3 = torch.stack([x, x.flip(0)])
    ref = int4_tile_gemm_reference([x3.float().cpu(), qp.cpu(), sz.cpu()], {**fields})
    out = int4_tile_gemm(x3, qp, sz, n, k, group, swiglu)
    assert out.shape == (2, m, n) and out.dtype == torch.bfloat16
    assert rel_err(out.float().cpu(), ref) < 1e-2


@cuda
def test_int4_tile_gemm_is_graph_capturable():
    from trtdsl.plugins.cuda.quant_ops import int4_tile_gemm
    x, qweight, scales, zeros = weight_only_inputs(1, 512, 64, 4, 128, torch.bfloat16, zp=True)
    qp, sz = pack_int4_tiles(qweight, scales, zeros, 128, swiglu=True)
    want = int4_tile_gemm(x, qp, sz, 32, 512, 128, swiglu=True)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = int4_tile_gemm(x, qp, sz, 32, 512, 128, swiglu=True)
    graph.replay()
    torch.cuda.synchronize()
    torch.testing.assert_close(out, want, rtol=0, atol=0)
