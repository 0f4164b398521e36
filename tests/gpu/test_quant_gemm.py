"""GPU tests of the quantized GEMM kernels (``trtdsl.plugins.cuda.quant_ops``) against the plain-torch
plugin references of ``trtdsl.quantization.plugins``, on fresh random codes, scales, zeros and
activations. The decode GEMVs (weight-only with and without zeros, FP8 with static / dynamic activation
scales) at every row count 1..16 and every launch config, odd n, group sizes 32 / 64 / 128 / per-channel
with a shorter last group; the large-M paths (dequantize + cuBLAS, cuBLASLt) at M = 17, 300."""

from __future__ import annotations

import pytest
import torch

from trtdsl.errors import PluginError
from trtdsl.quantization import numerics
from trtdsl.quantization.plugins import (FP8_GEMM, INT8_GEMM, WEIGHT_ONLY_GEMM, fp8_gemm_reference,
                                         int8_gemm_reference, weight_only_gemm_reference)

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
fp8 = pytest.mark.skipif(not torch.cuda.is_available() or torch.cuda.get_device_capability() < (8, 9),
                         reason="needs an sm_89+ GPU for FP8")
DTYPES = [torch.float16, torch.bfloat16]
ROWS = [1, 3, 17, 300]
# (in_features k, out_features n) of Llama-3-8B's GEMMs: qkv/o, gate/up, down, lm_head.
BIG = [(4096, 4096), (4096, 14336), (14336, 4096), (4096, 128256)]


def rel_err(out: torch.Tensor, ref: torch.Tensor) -> float:
    assert out.shape == ref.shape and out.dtype == ref.dtype
    assert torch.isfinite(out).all(), "non-finite values in the kernel output"
    return ((out.double() - ref.double()).norm() / ref.double().norm().clamp_min(1e-30)).item()


# Both sides accumulate in fp32; what differs is summation order, one output rounding and (large-M
# weight-only path) weights rounded to x's dtype before cuBLAS.
TOL = {torch.float16: 2e-3, torch.bfloat16: 1e-2}


def weight_only_inputs(m: int, k: int, n: int, bits: int, group: int, dtype: torch.dtype, zp: bool = False):
    """Random codes over the whole int range (including the unused -8 / -128), random scales; with
    ``zp`` the fourth tensor is random additive zeros of either sign (else None)."""
    lo, hi = (-8, 8) if bits == 4 else (-128, 128)
    codes = torch.randint(lo, hi, (n, k), dtype=torch.int8, device="cuda")
    qweight = numerics.pack_int4(codes) if bits == 4 else codes
    scales = torch.rand(n, numerics.num_groups(k, group), device="cuda") * 0.02 + 1e-3
    zeros = (torch.rand_like(scales) - 0.5) * 0.1 if zp else None
    x = torch.randn(m, k, device="cuda", dtype=dtype)
    return x, qweight, scales, zeros


def weight_only_ref(x, qweight, scales, zeros, bits, group, k):
    ins = [x, qweight, scales] + ([zeros] if zeros is not None else [])
    return weight_only_gemm_reference(ins, {"bits": bits, "group_size": group, "in_features": k})


def check_weight_only(m, k, n, bits, group, dtype, zp=False):
    from trtdsl.plugins.cuda.quant_ops import weight_only_gemm
    x, qweight, scales, zeros = weight_only_inputs(m, k, n, bits, group, dtype, zp)
    out = weight_only_gemm(x, qweight, scales, bits, group, k, zeros)
    ref = weight_only_ref(x, qweight, scales, zeros, bits, group, k)
    assert rel_err(out, ref) < TOL[dtype], (m, k, n, bits, group, dtype, zp)


# ---------------------------------------------------------------- argument checks (run on CPU too)

def test_cpu_tensors_are_rejected_with_plugin_error():
    from trtdsl.plugins.cuda.quant_ops import int8_gemm, weight_only_gemm
    x = torch.randn(2, 64)
    with pytest.raises(PluginError, match="x must be a CUDA tensor"):
        weight_only_gemm(x, torch.zeros(8, 32, dtype=torch.int8), torch.ones(8, 1), 4, 64, 64)
    with pytest.raises(PluginError, match="CUDA tensor"):
        int8_gemm(x, torch.zeros(8, 64, dtype=torch.int8), torch.ones(8))


def test_registration_attaches_the_three_plugins():
    from trtdsl.plugins.cuda.register import register_cuda_implementations
    from trtdsl.plugins.registry import get_plugin
    register_cuda_implementations()
    for name in (WEIGHT_ONLY_GEMM, FP8_GEMM, INT8_GEMM):
        impl = get_plugin(name).implementations.get("cuda")
        assert callable(impl) and impl is not get_plugin(name).reference


# ---------------------------------------------------------------- weight-only int8 / int4

@cuda
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("bits,group", [(4, 64), (4, 128), (8, 64), (8, 128), (8, 0), (4, 0)])
@pytest.mark.parametrize("m", ROWS + [4, 8, 16])
def test_weight_only_small_shapes(m, bits, group, dtype):
    check_weight_only(m, 1024, 200, bits, group, dtype)


@cuda
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("k,n,bits,group", [
    (96, 40, 8, 64),    # GEMV path with a short last group (96 = 64 + 32)
    (200, 37, 8, 64),   # k % 16 != 0 -> dequantize path, scalar kernel
    (192, 24, 4, 48),   # group not a multiple of 32 codes -> dequantize path
    (130, 9, 4, 0),     # per-channel, odd n
])
@pytest.mark.parametrize("m", [1, 3, 17])
def test_weight_only_odd_shapes(m, k, n, bits, group, dtype):
    check_weight_only(m, k, n, bits, group, dtype)


@cuda
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("bits,group", [(4, 128), (8, 64)])
@pytest.mark.parametrize("k,n", BIG)
@pytest.mark.parametrize("m", ROWS)
def test_weight_only_llama_shapes(m, k, n, bits, group, dtype):
    check_weight_only(m, k, n, bits, group, dtype)


@cuda
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("bits", [4, 8])
@pytest.mark.parametrize("m", [1, 2, 3, 5, 8, 9, 16])
def test_gemv_kernel_every_row_count(m, bits, dtype):
    """The decode kernel itself up to its 16-row limit (the dispatcher uses it only to GEMV_MAX_M)."""
    from trtdsl.plugins.cuda.quant_ops import GEMV_KERNEL_MAX_M, gemv_supported, weight_only_gemv
    k, n, group = 2048, 1000, 64
    x, qweight, scales, _ = weight_only_inputs(m, k, n, bits, group, dtype)
    assert gemv_supported(x, bits, group, k, max_m=GEMV_KERNEL_MAX_M)
    out = weight_only_gemv(x, qweight, scales, bits, group, k // group)
    ref = weight_only_gemm_reference([x, qweight, scales], {"bits": bits, "group_size": group, "in_features": k})
    assert rel_err(out, ref) < TOL[dtype]


@cuda
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("group", [128, 0, 64])  # 64: the dequantize-in-T path (one shape)
@pytest.mark.parametrize("zp", [False, True])
@pytest.mark.parametrize("m", [1, 9])           # one / two activation tiles
def test_tensor_core_gemv_every_config(m, zp, group, dtype):
    """Every int4 tensor-core launch shape on an odd shape: k = 1184 ends in a partial k block of 128,
    n = 40 in a partial tile. Against the fp32 reference before output rounding: the k-block path
    (exact codes times x, fp32 sums) stays within about one output rounding."""
    from trtdsl.plugins.cuda.quant_ops import WO_TC1_CONFIGS, WO_TC_CONFIGS, weight_only_gemv
    k, n = 1184, 40
    x, qweight, scales, zeros = weight_only_inputs(m, k, n, 4, group, dtype, zp)
    ref = weight_only_ref(x.float(), qweight, scales, zeros, 4, group, k)
    tol = TOL[dtype] if group == 64 else {torch.float16: 1e-3, torch.bfloat16: 5e-3}[dtype]
    for config in WO_TC_CONFIGS + WO_TC1_CONFIGS:  # 16..19 take no k % 128 != 0: they run config 11
        out = weight_only_gemv(x, qweight, scales, 4, group, numerics.num_groups(k, group), zeros, config=config)
        assert rel_err(out.float(), ref) < tol, config


@cuda
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("group", [128, 0])
@pytest.mark.parametrize("zp", [False, True])
@pytest.mark.parametrize("k,n", [(1152, 40), (4096, 33), (14336, 64), (640, 17)])
@pytest.mark.parametrize("m", [1, 2, 5, 8])
def test_one_row_tensor_core_configs(m, k, n, zp, group, dtype):
    """The one-row kernel (configs 16..19): k = 1152 is 9 k blocks (steps of 2 do not divide it: the
    general kernel runs), n = 33 / 40 / 64 end in a partial or whole 16-row tile, k = 14336 leaves
    warps with less work; group 128 (vector loads of a step's scales) and per channel (the general
    kernel); the same tolerance as the general kernel's k-block path. Scales and zeros offset by one
    float (no 8 / 16-byte vector loads possible) take the general kernel too."""
    from trtdsl.plugins.cuda.quant_ops import WO_TC1_CONFIGS, weight_only_gemv
    x, qweight, scales, zeros = weight_only_inputs(m, k, n, 4, group, dtype, zp)
    ref = weight_only_ref(x.float(), qweight, scales, zeros, 4, group, k)
    groups = numerics.num_groups(k, group)
    tol = {torch.float16: 1e-3, torch.bfloat16: 5e-3}[dtype]
    for config in WO_TC1_CONFIGS:
        out = weight_only_gemv(x, qweight, scales, 4, group, groups, zeros, config=config)
        assert rel_err(out.float(), ref) < tol, config

    def shifted(t):  # the same values one float past a 16-byte boundary
        return None if t is None else torch.empty(t.numel() + 1, device="cuda")[1:].view_as(t).copy_(t)

    for config in WO_TC1_CONFIGS:
        out = weight_only_gemv(x, qweight, shifted(scales), 4, group, groups, shifted(zeros), config=config)
        assert rel_err(out.float(), ref) < tol, ("unaligned scales", config)


@cuda
def test_dequantize_matches_numerics():
    from trtdsl.plugins.cuda.quant_ops import dequantize_weight
    for bits, group in [(4, 64), (8, 48), (4, 0)]:
        _, qweight, scales, _ = weight_only_inputs(1, 320, 24, bits, group, torch.float32)
        codes = numerics.unpack_int4(qweight) if bits == 4 else qweight
        ref = numerics.dequantize_weight(codes, scales, group)
        out = dequantize_weight(qweight, scales, bits, group, 320, torch.float32)
        torch.testing.assert_close(out, ref, rtol=0, atol=0)


@cuda
def test_weight_only_gemv_is_graph_capturable():
    from trtdsl.plugins.cuda.quant_ops import weight_only_gemm
    x, qweight, scales, _ = weight_only_inputs(2, 512, 64, 4, 128, torch.bfloat16)
    weight_only_gemm(x, qweight, scales, 4, 128, 512)  # build + warm up outside the capture
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = weight_only_gemm(x, qweight, scales, 4, 128, 512)
    x.copy_(torch.randn_like(x))
    graph.replay()
    torch.testing.assert_close(out, weight_only_gemm(x, qweight, scales, 4, 128, 512), rtol=0, atol=0)


# ---------------------------------------------------------------- FP8

def fp8_inputs(m, k, n, dtype, per_channel):
    x = torch.randn(m, k, device="cuda", dtype=dtype)
    w = (torch.randn(n, k, device="cuda") * 64).clamp(-448, 448).to(torch.float8_e4m3fn)
    w_scale = torch.rand(n if per_channel else 1, device="cuda") * 0.01 + 1e-3
    x_scale = (x.float().abs().amax() / 400).reshape(1)  # a few values saturate at +-448
    return [x, w, w_scale, x_scale]


@fp8
def test_fp8_quantizer_matches_numerics_bitwise():
    from trtdsl.plugins.cuda.quant_ops import quantize_fp8
    for dtype in DTYPES:
        x = torch.randn(37, 160, device="cuda", dtype=dtype) * 30
        scale = torch.tensor([0.05], device="cuda")
        out = quantize_fp8(x, scale, pad_rows_to=16)
        assert out.shape == (48, 160) and (out[37:].view(torch.uint8) == 0).all()
        assert torch.equal(out[:37].view(torch.uint8), numerics.quantize_fp8(x, scale).view(torch.uint8))


@fp8
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("per_channel", [False, True])
@pytest.mark.parametrize("k,n", [(256, 96)] + BIG)
@pytest.mark.parametrize("m", ROWS)
def test_fp8_gemm(m, k, n, per_channel, dtype):
    from trtdsl.plugins.cuda.quant_ops import fp8_gemm
    ins = fp8_inputs(m, k, n, dtype, per_channel)
    assert rel_err(fp8_gemm(*ins), fp8_gemm_reference(ins, {})) < TOL[dtype]
    dyn = ins[:3]  # the dynamic per-token format (no input_scale)
    assert rel_err(fp8_gemm(*dyn), fp8_gemm_reference(dyn, {})) < TOL[dtype]


@fp8
def test_fp8_padded_rows_match_unpadded():
    from trtdsl.plugins.cuda.quant_ops import fp8_gemm
    ins = fp8_inputs(1, 512, 64, torch.bfloat16, True)
    torch.testing.assert_close(fp8_gemm(*ins, pad_rows_to=16), fp8_gemm(*ins), rtol=0, atol=0)


# ---------------------------------------------------------------- INT8 SmoothQuant

@cuda
def test_int8_quantizer_matches_numerics_bitwise():
    """k = 1000: scalar loads; 14336 / 4104: 16-byte loads (1024 threads, some with a second vector)."""
    from trtdsl.plugins.cuda.quant_ops import quantize_per_token_int8
    for dtype in DTYPES + [torch.float32]:
        for k in (1000, 14336, 4104):
            x = torch.randn(5, k, device="cuda", dtype=dtype) * torch.logspace(-3, 2, 5, device="cuda")[:, None].to(dtype)
            x[2] = 0  # an all-zero row takes the 1e-8 floor
            codes, scales = quantize_per_token_int8(x, min_rows=24)
            ref_codes, ref_scales = numerics.quantize_per_token_int8(x)
            assert codes.shape == (24, k) and (codes[5:] == 0).all()
            assert torch.equal(codes[:5], ref_codes) and torch.equal(scales, ref_scales), (dtype, k)


@cuda
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("k,n", [(256, 96)] + BIG)
@pytest.mark.parametrize("m", ROWS)
def test_int8_gemm(m, k, n, dtype):
    from trtdsl.plugins.cuda.quant_ops import int8_gemm
    x = torch.randn(m, k, device="cuda", dtype=dtype)
    w = torch.randint(-127, 128, (n, k), dtype=torch.int8, device="cuda")
    w_scale = torch.rand(n, device="cuda") * 0.01 + 1e-4
    out = int8_gemm(x, w, w_scale)
    ref = int8_gemm_reference([x, w, w_scale], {})
    # Same codes, exact int32 accumulators, same float32 scale products: only the cast may differ.
    assert rel_err(out, ref) < 1e-3


@cuda
@pytest.mark.parametrize("config", [None, 0, 1, 2, 3, 4, 5])
@pytest.mark.parametrize("m", range(1, 9))
def test_int8_gemv_is_bitwise_the_int_mm_path(m, config):
    """The SmoothQuant GEMV sums the same int8 codes exactly in int32 and scales them in the epilogue's
    order, so every output equals the _int_mm path's bit for bit (fp16 / bf16 / fp32 outputs, k = 4112
    and 272 (the last 16-byte vectors of a thread's stride), n = 40 and 6144)."""
    from trtdsl.plugins.cuda.quant_ops import int8_gemm, int8_gemv, quantize_per_token_int8
    dtype = [torch.float16, torch.bfloat16, torch.float32][m % 3]
    for k, n in ((272, 40), (4112, 6144)):
        x = torch.randn(m, k, device="cuda", dtype=dtype)
        w = torch.randint(-127, 128, (n, k), dtype=torch.int8, device="cuda")
        w_scale = torch.rand(n, device="cuda") * 0.01 + 1e-4
        codes, x_scales = quantize_per_token_int8(x)
        out = int8_gemv(codes, w, x_scales, w_scale, dtype, config)
        assert torch.equal(out, int8_gemm(x, w, w_scale, gemv_max_m=0)), (k, n)


@cuda
def test_int8_gemm_runs_the_gemv_for_any_n():
    """Odd n (no cuBLASLt) still runs at decode sizes; larger m keeps _int_mm's divisibility error."""
    from trtdsl.plugins.cuda.quant_ops import int8_gemm
    x = torch.randn(3, 256, device="cuda", dtype=torch.bfloat16)
    w = torch.randint(-127, 128, (37, 256), dtype=torch.int8, device="cuda")
    w_scale = torch.rand(37, device="cuda") * 0.01 + 1e-4
    assert rel_err(int8_gemm(x, w, w_scale), int8_gemm_reference([x, w, w_scale], {})) < 1e-3
    with pytest.raises(PluginError, match="divisible by 8"):
        int8_gemm(torch.randn(9, 256, device="cuda", dtype=torch.bfloat16), w, w_scale)


def test_int8_gemv_rejects_bad_arguments():
    from trtdsl.plugins.cuda.quant_ops import int8_gemv
    xq = torch.zeros(2, 32, dtype=torch.int8)
    with pytest.raises(PluginError, match="xq must be a CUDA tensor"):
        int8_gemv(xq, torch.zeros(8, 32, dtype=torch.int8), torch.ones(2, 1), torch.ones(8), torch.float16)


@cuda
def test_int8_gemm_is_graph_capturable():
    from trtdsl.plugins.cuda.quant_ops import int8_gemm
    x = torch.randn(3, 256, device="cuda", dtype=torch.float16)
    w = torch.randint(-127, 128, (64, 256), dtype=torch.int8, device="cuda")
    ws = torch.rand(64, device="cuda") * 0.01
    int8_gemm(x, w, ws)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = int8_gemm(x, w, ws)
    x.copy_(torch.randn_like(x))
    graph.replay()
    torch.testing.assert_close(out, int8_gemm(x, w, ws), rtol=0, atol=0)


# ---------------------------------------------------------------- through the plugin registry

@cuda
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_registered_implementations_match_references(dtype):
    from trtdsl.plugins.cuda.register import register_cuda_implementations
    from trtdsl.plugins.registry import get_plugin
    register_cuda_implementations()
    x, qweight, scales, _ = weight_only_inputs(3, 256, 48, 4, 64, torch.float32)
    x = x.to(dtype).reshape(1, 3, 256)  # [batch, tokens, k]: leading dims are kept
    fields = {"bits": 4, "group_size": 64, "in_features": 256}
    cases = [(WEIGHT_ONLY_GEMM, [x, qweight, scales], fields, weight_only_gemm_reference),
             (INT8_GEMM, [x, torch.randint(-127, 128, (48, 256), dtype=torch.int8, device="cuda"),
                          torch.rand(48, device="cuda") * 0.01], {}, int8_gemm_reference)]
    if torch.cuda.get_device_capability() >= (8, 9):
        f = fp8_inputs(3, 256, 48, torch.float32, True)
        cases.append((FP8_GEMM, [x, *f[1:]], {}, fp8_gemm_reference))
    for name, ins, flds, reference in cases:
        out = get_plugin(name).implementations["cuda"](ins, flds, {})
        ref = reference(ins, flds, {})
        assert out.shape == (1, 3, 48) and rel_err(out, ref) < 1e-2, name


# ---------------------------------------------------------------- decode GEMVs: every m, every config

CONFIGS = [None, 0, 1, 2, 3, 4, 5]  # None: the quant_ops table; 0: the C++ prior; 1..5 forced (CUDA cores)
GROUPS = [32, 64, 128, 0]  # with k = 352: 11 groups; 6 (last 32); 3 (last 96); per-channel


def test_gemv_config_tables_name_valid_configs():
    from trtdsl.plugins.cuda import quant_ops as Q
    cuda_core = range(1, Q.NUM_GEMV_CONFIGS + 1)
    assert all(c in (*cuda_core, *Q.FP8_TC_CONFIGS) for c in Q.FP8_GEMV_CONFIG.values())
    assert all(c in cuda_core and mt <= Q.INT8_GEMV_MAX_M and cls in (0, 1, 2)
               for (mt, cls), c in Q.INT8_GEMV_CONFIG.items())
    assert Q.gemv_config("int8", 1, 4096) == 4 and Q.gemv_config("int8", 1, 6144) == 1
    # tensor-core configs only for int4 keys
    tensor_core = (*Q.WO_TC_CONFIGS, *Q.WO_TC1_CONFIGS)
    assert all(c in cuda_core or (key[0] == 4 and c in tensor_core) for key, c in Q.WO_GEMV_CONFIG.items())
    assert set(Q.TC1_STEP) == set(Q.WO_TC1_CONFIGS)
    assert all(c in Q.WO_TC1_CONFIGS and mt in (1, 2, 4, 8) and cls in (0, 1, 2)
               for (mt, cls, _), c in Q.TC1_CONFIG.items())
    assert [Q.tc1_n_class(n) for n in (37, 4096, 4097, 6144, 8191, 8192, 128256)] == [0, 0, 1, 1, 1, 2, 2]
    assert Q.gemv_config("wo", 1, 4096, 4, 4096, 128) == 17 and Q.gemv_config("wo", 1, 6144, 4, 4096, 128) == 16
    assert Q.gemv_config("wo", 3, 4096, 4, 14336, 128) == 18 and Q.gemv_config("wo", 9, 4096, 4, 14336, 128) == 11
    for m in range(1, Q.GEMV_KERNEL_MAX_M + 1):
        for n in (37, 4096, 128256):
            for k, group in ((0, 0), (4096, 128), (Q.LONG_K, 128), (1152, 128), (4096, 64)):
                config = Q.gemv_config("wo", m, n, 4, k, group)
                assert config in (*cuda_core, *tensor_core)
                if config in Q.WO_TC1_CONFIGS:  # only where the one-row kernel runs
                    assert m <= 8 and group == 128 and (k // 128) % Q.TC1_STEP[config] == 0
            assert Q.gemv_config("wo", m, n, 8) in cuda_core
            assert Q.gemv_config("fp8", m, n) in (cuda_core if m > 8 else (*cuda_core, *Q.FP8_TC_CONFIGS))


def test_tensor_core_configs_belong_to_their_kernel():
    from trtdsl.plugins.cuda.quant_ops import FP8_TC_CONFIGS, WO_TC1_CONFIGS, WO_TC_CONFIGS, _check_config
    _check_config("op", WO_TC_CONFIGS[0], WO_TC_CONFIGS, "int4")
    with pytest.raises(PluginError, match="config must be 0..5, got 8"):
        _check_config("op", WO_TC_CONFIGS[0])
    with pytest.raises(PluginError, match=r"config must be 0..5 or 20..23 \(fp8 tensor cores\), got 16"):
        _check_config("op", WO_TC1_CONFIGS[0], FP8_TC_CONFIGS, "fp8")


def test_fp8_gemv_rejects_bad_arguments():
    from trtdsl.plugins.cuda.quant_ops import fp8_gemv
    xq = torch.zeros(2, 32, dtype=torch.float8_e4m3fn)
    with pytest.raises(PluginError, match="xq must be a CUDA tensor"):
        fp8_gemv(xq, torch.zeros(8, 32, dtype=torch.float8_e4m3fn), torch.ones(1), torch.ones(8), torch.float16)


@cuda
@pytest.mark.parametrize("zp", [False, True])
@pytest.mark.parametrize("bits", [4, 8])
@pytest.mark.parametrize("config", CONFIGS)
@pytest.mark.parametrize("m", range(1, 17))
def test_weight_only_gemv_every_row_count_and_config(m, config, bits, zp):
    from trtdsl.plugins.cuda.quant_ops import GEMV_KERNEL_MAX_M, gemv_supported, weight_only_gemv
    dtype = DTYPES[m % 2]
    group = GROUPS[m % 4]
    k, n = 352, 37  # odd n: blocks of 2 / 4 / 8 rows all end in a partial block
    x, qweight, scales, zeros = weight_only_inputs(m, k, n, bits, group, dtype, zp)
    assert gemv_supported(x, bits, group, k, max_m=GEMV_KERNEL_MAX_M)
    out = weight_only_gemv(x, qweight, scales, bits, group, numerics.num_groups(k, group), zeros, config)
    assert rel_err(out, weight_only_ref(x, qweight, scales, zeros, bits, group, k)) < TOL[dtype]


@cuda
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("bits,group", [(4, 128), (4, 32), (8, 64)])
@pytest.mark.parametrize("m", [1, 5, 8, 13, 16, 17, 300])
def test_weight_only_zero_points_through_dispatch(m, bits, group, dtype):
    """GEMV (m <= GEMV_MAX_M) and dequantize + cuBLAS paths with the asymmetric format."""
    check_weight_only(m, 1024, 200, bits, group, dtype, zp=True)
    check_weight_only(m, 192, 24, bits, 48 if bits == 8 else 64, dtype, zp=True)  # dequant kernel paths


@cuda
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("k,n", BIG[:3])
@pytest.mark.parametrize("m", [1, 8, 16])
def test_weight_only_zero_points_llama_shapes(m, k, n, dtype):
    check_weight_only(m, k, n, 4, 128, dtype, zp=True)


@cuda
def test_dequantize_with_zeros_matches_numerics_bitwise():
    from trtdsl.plugins.cuda.quant_ops import dequantize_weight
    for bits, group, k in [(4, 64, 320), (8, 48, 320), (4, 0, 320), (8, 64, 200), (4, 128, 330)]:
        _, qweight, scales, zeros = weight_only_inputs(1, k, 24, bits, group, torch.float32, zp=True)
        codes = numerics.unpack_int4(qweight) if bits == 4 else qweight
        ref = numerics.dequantize_weight(codes, scales, group, zeros)
        out = dequantize_weight(qweight, scales, bits, group, k, torch.float32, zeros)
        torch.testing.assert_close(out, ref, rtol=0, atol=0)


@cuda
def test_quantize_per_token_fp8_matches_numerics_bitwise():
    from trtdsl.plugins.cuda.quant_ops import quantize_per_token_fp8
    for dtype in DTYPES + [torch.float32]:
        for k in (1000, 14336, 4104):  # scalar and 16-byte loads, as for int8
            x = torch.randn(6, k, device="cuda", dtype=dtype) * torch.logspace(-3, 2, 6, device="cuda")[:, None].to(dtype)
            x[2] = 0  # an all-zero row takes the 1e-8 floor
            codes, scales = quantize_per_token_fp8(x, pad_rows_to=8)
            ref_codes, ref_scales = numerics.quantize_per_token_fp8(x)
            assert codes.shape == (8, k) and (codes[6:].view(torch.uint8) == 0).all()
            assert torch.equal(scales, ref_scales)
            assert torch.equal(codes[:6].view(torch.uint8), ref_codes.view(torch.uint8)), (dtype, k)


@cuda
@pytest.mark.parametrize("config", CONFIGS + [20, 21, 22, 23])  # 20..23: tensor cores (m > 8: config 1)
@pytest.mark.parametrize("m", range(1, 17))
def test_fp8_gemv_every_row_count_and_config(m, config):
    """Static / dynamic activation scales x per-tensor / per-channel weight scales, fp16 / bf16 / fp32
    outputs, odd n: the exact fp8 products summed in fp32 differ from the reference only in order."""
    from trtdsl.plugins.cuda.quant_ops import fp8_gemv, quantize_fp8, quantize_per_token_fp8
    dtype = [torch.float16, torch.bfloat16, torch.float32][m % 3]
    dynamic, per_channel = bool(m % 2), bool((m // 2) % 2)
    x, w, w_scale, x_scale = fp8_inputs(m, 272, 37, dtype, per_channel)
    if dynamic:
        xq, xs = quantize_per_token_fp8(x)
        ins = [x, w, w_scale]
    else:
        xq, xs = quantize_fp8(x, x_scale), x_scale
        ins = [x, w, w_scale, x_scale]
    out = fp8_gemv(xq, w, xs, w_scale, dtype, config)
    assert rel_err(out, fp8_gemm_reference(ins, {})) < TOL.get(dtype, 1e-5)


@cuda
@pytest.mark.parametrize("dynamic", [False, True])
@pytest.mark.parametrize("k,n", BIG)
@pytest.mark.parametrize("m", [1, 8])
def test_fp8_gemv_llama_shapes(m, k, n, dynamic):
    from trtdsl.plugins.cuda.quant_ops import fp8_gemm
    ins = fp8_inputs(m, k, n, torch.bfloat16, True)
    ins = ins[:3] if dynamic else ins
    assert rel_err(fp8_gemm(*ins), fp8_gemm_reference(ins, {})) < TOL[torch.bfloat16]


@fp8
@pytest.mark.parametrize("config", [20, 21, 22, 23])
@pytest.mark.parametrize("k,n", [(4096, 6144), (14336, 96), (4112, 40)])
@pytest.mark.parametrize("m", [1, 3, 8])
def test_fp8_tensor_core_gemv_long_k(m, k, n, config):
    """The tensor-core kernel's fp32 outputs over long k, against float64 sums of the same codes and next to the
    CUDA-core kernel's (config 1): its per-step partial sums (64..256 products on the tensor core, then
    fp32) must not cost more than a few times the CUDA-core kernel's reordering error."""
    from trtdsl.plugins.cuda.quant_ops import fp8_gemv, quantize_fp8
    x, w, w_scale, x_scale = fp8_inputs(m, k, n, torch.float32, True)
    xq = quantize_fp8(x, x_scale)
    ref = (xq.double() @ w.double().T) * (x_scale.double() * w_scale.double())  # exact sums
    tc_err = rel_err(fp8_gemv(xq, w, x_scale, w_scale, torch.float32, config).double(), ref)
    cuda_core_err = rel_err(fp8_gemv(xq, w, x_scale, w_scale, torch.float32, 1).double(), ref)
    assert tc_err < max(4 * cuda_core_err, 1e-6), (tc_err, cuda_core_err)
    bf16 = fp8_gemv(xq, w, x_scale, w_scale, torch.bfloat16, config)
    assert rel_err(bf16.double(), ref) < TOL[torch.bfloat16]


@fp8
def test_fp8_static_gemv_runs_cuda_cores_for_tensor_core_configs():
    """The in-kernel quantizer reads 16-bit activations, which the tensor-core kernel cannot: configs
    20..23 run config 1, bitwise."""
    from trtdsl.plugins.cuda.quant_ops import fp8_gemv_static
    x, w, w_scale, x_scale = fp8_inputs(2, 512, 40, torch.bfloat16, True)
    want = fp8_gemv_static(x, w, x_scale, w_scale, 1)
    for config in (20, 23):
        assert torch.equal(fp8_gemv_static(x, w, x_scale, w_scale, config), want)


@cuda
def test_fp8_dynamic_gemv_is_graph_capturable():
    from trtdsl.plugins.cuda.quant_ops import fp8_gemm
    x, w, ws, _ = fp8_inputs(3, 512, 64, torch.bfloat16, True)
    fp8_gemm(x, w, ws)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = fp8_gemm(x, w, ws)
    x.copy_(torch.randn_like(x))
    graph.replay()
    torch.testing.assert_close(out, fp8_gemm(x, w, ws), rtol=0, atol=0)


@cuda
def test_registered_kernels_take_zero_point_and_dynamic_formats(monkeypatch):
    """The 4-input weight-only and 3-input FP8 formats run kernels, not the references."""
    import trtdsl.quantization.plugins as qp
    from trtdsl.plugins.cuda.register import register_cuda_implementations
    from trtdsl.plugins.registry import get_plugin
    register_cuda_implementations()
    wo_ref, fp8_ref = qp.weight_only_gemm_reference, qp.fp8_gemm_reference

    def forbidden(*args, **kwargs):
        raise AssertionError("the torch reference ran instead of a kernel")

    monkeypatch.setattr(qp, "weight_only_gemm_reference", forbidden)
    monkeypatch.setattr(qp, "fp8_gemm_reference", forbidden)
    for m in (2, 40):
        x, qweight, scales, zeros = weight_only_inputs(m, 256, 48, 4, 64, torch.bfloat16, zp=True)
        fields = {"bits": 4, "group_size": 64, "in_features": 256}
        out = get_plugin(WEIGHT_ONLY_GEMM).implementations["cuda"]([x, qweight, scales, zeros], fields, {})
        assert rel_err(out, wo_ref([x, qweight, scales, zeros], fields)) < TOL[torch.bfloat16]
        if torch.cuda.get_device_capability() >= (8, 9):
            ins = fp8_inputs(m, 256, 48, torch.bfloat16, True)[:3]
            out = get_plugin(FP8_GEMM).implementations["cuda"](ins, {}, {})
            assert rel_err(out, fp8_ref(ins, {})) < TOL[torch.bfloat16]


# ---------------------------------------------------------------- int4 tensor-core decode kernel

# (k, group): partial last k block of 128 (576 = 4.5 blocks) with a shorter last group; groups that
# are multiples of 128 (codes in the mma, scales in fp32) and 32 / 64 / 96 (weights dequantized in T
# before the mma); per-channel with k % 128 != 0.
TC_SHAPES = [(576, 128), (1536, 64), (576, 32), (352, 0), (1536, 128), (1056, 96), (640, 256), (1536, 0)]


@cuda
@pytest.mark.parametrize("zp", [False, True])
@pytest.mark.parametrize("config", [8, 9, 10, 11])
@pytest.mark.parametrize("m", range(1, 17))
def test_int4_tensor_core_gemv_every_row_count_and_config(m, config, zp):
    """Every m (one or two activation tiles of 8), every launch shape, odd n (partial row tiles),
    fp16 / bf16. Tolerance TOL: relative to the output's norm; the codes-in-mma path differs from the
    reference in summation order only, the dequantize-in-T path also rounds each weight to T (~2^-9
    relative for bf16, 2^-12 for fp16, random sign: a few 1e-3 of the norm at most)."""
    from trtdsl.plugins.cuda.quant_ops import weight_only_gemv
    dtype = DTYPES[(m + config) % 2]
    k, group = TC_SHAPES[(m + 3 * config) % len(TC_SHAPES)]
    n = 203 if m % 3 else 37
    x, qweight, scales, zeros = weight_only_inputs(m, k, n, 4, group, dtype, zp)
    out = weight_only_gemv(x, qweight, scales, 4, group, numerics.num_groups(k, group), zeros, config)
    assert rel_err(out, weight_only_ref(x, qweight, scales, zeros, 4, group, k)) < TOL[dtype], (k, group, dtype)


@cuda
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("k,group", TC_SHAPES)
def test_int4_tensor_core_gemv_all_shapes(k, group, dtype):
    from trtdsl.plugins.cuda.quant_ops import weight_only_gemv
    for m, zp in ((1, True), (8, False), (16, True)):
        x, qweight, scales, zeros = weight_only_inputs(m, k, 75, 4, group, dtype, zp)
        out = weight_only_gemv(x, qweight, scales, 4, group, numerics.num_groups(k, group), zeros, 9)
        assert rel_err(out, weight_only_ref(x, qweight, scales, zeros, 4, group, k)) < TOL[dtype], (m, zp)


@cuda
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("k,n", BIG[:3])
@pytest.mark.parametrize("m", [1, 2, 8, 16])
def test_int4_tensor_core_gemv_llama_shapes(m, k, n, dtype):
    """int4_awq's format (zeros, group 128) on the 8B shapes, the table's pick and the first config."""
    from trtdsl.plugins.cuda.quant_ops import weight_only_gemv
    x, qweight, scales, zeros = weight_only_inputs(m, k, n, 4, 128, dtype, zp=True)
    ref = weight_only_ref(x, qweight, scales, zeros, 4, 128, k)
    for config in (None, 8):
        out = weight_only_gemv(x, qweight, scales, 4, 128, k // 128, zeros, config)
        assert rel_err(out, ref) < TOL[dtype], config


@cuda
def test_int4_tensor_core_gemv_is_graph_capturable():
    from trtdsl.plugins.cuda.quant_ops import weight_only_gemv
    x, qweight, scales, zeros = weight_only_inputs(3, 512, 64, 4, 128, torch.bfloat16, zp=True)
    weight_only_gemv(x, qweight, scales, 4, 128, 4, zeros, 9)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = weight_only_gemv(x, qweight, scales, 4, 128, 4, zeros, 9)
    x.copy_(torch.randn_like(x))
    graph.replay()
    torch.testing.assert_close(out, weight_only_gemv(x, qweight, scales, 4, 128, 4, zeros, 9), rtol=0, atol=0)


# ---------------------------------------------------------------- FP8 GEMV with the quantizer fused in

@fp8
@pytest.mark.parametrize("config", CONFIGS)
@pytest.mark.parametrize("m", range(1, 17))
def test_fp8_gemv_static_is_the_two_kernel_path_bitwise(m, config):
    """Same e4m3 codes (saturating values included), same products and summation order as
    quantize_fp8 + fp8_gemv with the same config: equal bits, not just close."""
    from trtdsl.plugins.cuda.quant_ops import fp8_gemv, fp8_gemv_static, quantize_fp8
    dtype = DTYPES[m % 2]
    x, w, w_scale, x_scale = fp8_inputs(m, 272 if m % 3 else 4096, 37, dtype, per_channel=bool(m % 4))
    fused = fp8_gemv_static(x, w, x_scale, w_scale, config)
    two = fp8_gemv(quantize_fp8(x, x_scale), w, x_scale, w_scale, dtype, config)
    assert torch.equal(fused.view(torch.int16), two.view(torch.int16))
    assert rel_err(fused, fp8_gemm_reference([x, w, w_scale, x_scale], {})) < TOL[dtype]


@fp8
def test_fp8_gemm_static_decode_is_one_launch(monkeypatch):
    """With FP8_FUSE_STATIC_QUANT the dispatcher's static path at m <= FP8_GEMV_MAX_M runs the fused
    kernel (one kernel in the profile); fp32 activations still take the two-kernel path."""
    from trtdsl.plugins.cuda import quant_ops
    from trtdsl.plugins.cuda.quant_ops import FP8_GEMV_MAX_M, fp8_gemm
    monkeypatch.setattr(quant_ops, "FP8_FUSE_STATIC_QUANT", True)
    ins = fp8_inputs(FP8_GEMV_MAX_M, 512, 64, torch.bfloat16, True)
    fp8_gemm(*ins)
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as prof:
        fp8_gemm(*ins)
        torch.cuda.synchronize()
    kernels = [e.name for e in prof.events() if e.device_type == torch.autograd.DeviceType.CUDA]
    assert len(kernels) == 1 and "fp8_gemv_kernel" in kernels[0], kernels
    ins32 = [ins[0].float(), *ins[1:]]
    assert rel_err(fp8_gemm(*ins32), fp8_gemm_reference(ins32, {})) < 1e-5


@fp8
def test_fp8_gemv_static_rejects_bad_arguments():
    from trtdsl.plugins.cuda.quant_ops import fp8_gemv_static
    x, w, ws, xs = fp8_inputs(2, 64, 8, torch.bfloat16, True)
    with pytest.raises(PluginError, match="input_scale must have 1 value"):
        fp8_gemv_static(x, w, xs.expand(2).contiguous(), ws)
    with pytest.raises(PluginError, match="x has dtype float32"):
        fp8_gemv_static(x.float(), w, xs, ws)
