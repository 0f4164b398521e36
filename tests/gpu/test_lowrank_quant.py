"""GPU tests of fp8's low-rank branch kernels (``QuantConfig.fp8_lowrank``; ``plugins_cuda/include/trtdsl/
lowrank_quant.cuh``, ``trtdsl.plugins.cuda.lowrank_ops``) and of the FP8 GEMV's low-rank epilogue term.

The quantizing RMSNorm / SwiGLU with the split: with a zero basis (c = 0) their codes are bitwise the
centered plain kernels' (the norm's row sum and rounding are the plain kernel's); with a real basis, c
agrees with torch's fp32 GEMM to one rounding of the dtype and the codes with the torch reference's to
one e4m3 step where rest sits on a rounding boundary. A fused low-rank tiny Llama on the GPU agrees with
the unfused one (and the fusion leaves 8 producers fused)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from trtdsl.errors import PluginError
from trtdsl.quantization.numerics import FP8_MAX, quantize_fp8

fp8 = pytest.mark.skipif(not torch.cuda.is_available() or torch.cuda.get_device_capability() < (8, 9),
                         reason="needs an sm_89+ GPU for FP8")
HALF = [torch.float16, torch.bfloat16]


def _scale_for(y: torch.Tensor) -> torch.Tensor:
    return (y.float().abs().amax() * 1.2 / FP8_MAX).reshape(1).float()


def _basis(k: int, r: int, dtype: torch.dtype, g: torch.Generator) -> torch.Tensor:
    return torch.linalg.qr(torch.randn(k, r, device="cuda", generator=g)).Q.to(dtype).contiguous()


def _split(v: torch.Tensor, mean: torch.Tensor, basis: torch.Tensor, c: torch.Tensor | None = None) -> tuple:
    """Torch's split of the T values v (c from an fp32 GEMM unless given)."""
    d = v - mean
    if c is None:
        c = (d.float() @ basis.float()).to(v.dtype)
    return c, d - (c.float() @ basis.float().T).to(v.dtype)


def _near_codes(got: torch.Tensor, rest: torch.Tensor, scale: torch.Tensor) -> None:
    """Codes equal torch's quantizer of rest but for a few values one e4m3 step away."""
    want = quantize_fp8(rest, scale)
    differ = got.view(torch.uint8) != want.view(torch.uint8)
    assert float(differ.float().mean()) < 0.01
    a, b = got.float()[differ], want.float()[differ]
    assert bool(((a - b).abs() <= 2 ** -3 * torch.maximum(a.abs(), b.abs()) + 2 ** -9).all())


@fp8
@pytest.mark.parametrize("dtype", HALF)
@pytest.mark.parametrize("hidden", [64, 576, 4096])
@pytest.mark.parametrize("rows", [1, 5])
@pytest.mark.parametrize("residual", [False, True])
@pytest.mark.parametrize("rank", [2, 4, 8])
def test_rmsnorm_lowrank_codes(dtype: torch.dtype, hidden: int, rows: int, residual: bool, rank: int) -> None:
    from trtdsl.plugins.cuda import rmsnorm
    from trtdsl.plugins.cuda.fused_quant_ops import rmsnorm_fp8
    from trtdsl.plugins.cuda.lowrank_ops import rmsnorm_fp8_lowrank
    g = torch.Generator(device="cuda").manual_seed(hidden + rows * 7 + rank)
    x = (torch.randn(rows, hidden, device="cuda", generator=g) * 2).to(dtype)
    res = torch.randn(rows, hidden, device="cuda", generator=g).to(dtype) if residual else None
    w = (torch.rand(hidden, device="cuda", generator=g) + 0.5).to(dtype)
    mean = (torch.randn(hidden, device="cuda", generator=g) * 0.5).to(dtype)
    plain = rmsnorm(x, w, 1e-5, residual=res)
    normed = plain[0] if residual else plain
    scale = _scale_for(normed - mean)
    # zero basis: c = 0 and the codes are the centered plain kernel's, bit for bit
    zero = torch.zeros(hidden, rank, device="cuda", dtype=dtype)
    out = rmsnorm_fp8_lowrank(x, w, scale, 1e-5, mean, zero, residual=res)
    assert out is not None
    centered = rmsnorm_fp8(x, w, scale, 1e-5, residual=res, mean=mean)
    assert torch.equal(out[0].view(torch.uint8), (centered[0] if residual else centered).view(torch.uint8))
    assert not out[-1].any()
    if residual:
        assert torch.equal(out[1], plain[1])
    basis = _basis(hidden, rank, dtype, g)
    out = rmsnorm_fp8_lowrank(x, w, scale, 1e-5, mean, basis, residual=res)
    assert out is not None
    c_ref, _ = _split(normed, mean, basis)
    torch.testing.assert_close(out[-1].float(), c_ref.float(), rtol=2 ** -7, atol=1e-3 * float(c_ref.abs().max()))
    _near_codes(out[0], _split(normed, mean, basis, out[-1])[1], scale)


@fp8
@pytest.mark.parametrize("dtype", HALF)
@pytest.mark.parametrize("inter", [48, 1536, 14336])
@pytest.mark.parametrize("rows", [1, 3])
@pytest.mark.parametrize("rank", [2, 4, 8])
def test_swiglu_lowrank_codes(dtype: torch.dtype, inter: int, rows: int, rank: int) -> None:
    from trtdsl.plugins.cuda import swiglu
    from trtdsl.plugins.cuda.lowrank_ops import swiglu_fp8_lowrank
    g = torch.Generator(device="cuda").manual_seed(inter + rows + rank)
    x = (torch.randn(rows, 2 * inter, device="cuda", generator=g) * 2).to(dtype)
    mean = (torch.randn(inter, device="cuda", generator=g) * 0.3).to(dtype)
    v = swiglu(x)
    scale = _scale_for(v - mean)
    zero = torch.zeros(inter, rank, device="cuda", dtype=dtype)
    out = swiglu_fp8_lowrank(x, scale, mean, zero)
    assert out is not None
    assert torch.equal(out[0].view(torch.uint8), quantize_fp8(v - mean, scale).view(torch.uint8))
    basis = _basis(inter, rank, dtype, g)
    codes, c = swiglu_fp8_lowrank(x, scale, mean, basis)
    c_ref, _ = _split(v, mean, basis)
    torch.testing.assert_close(c.float(), c_ref.float(), rtol=2 ** -7, atol=1e-3 * float(c_ref.abs().max()))
    _near_codes(codes, _split(v, mean, basis, c)[1], scale)


@fp8
@pytest.mark.parametrize("dtype", HALF)
@pytest.mark.parametrize("inter,blocks", [(48, 3), (1536, 8), (14336, 8), (14336, 5)])
@pytest.mark.parametrize("rows", [1, 3])
@pytest.mark.parametrize("rank", [1, 2, 4, 8])
def test_swiglu_lowrank_block_diagonal_codes(dtype: torch.dtype, inter: int, blocks: int, rows: int,
                                             rank: int) -> None:
    """blocks > 0 (QuantConfig.fp8_lowrank_blocks): one thread block per chunk, compact basis; c [rows,
    blocks * rank] and the codes as the full block-diagonal basis gives them through torch."""
    from trtdsl.plugins.cuda import swiglu
    from trtdsl.plugins.cuda.lowrank_ops import swiglu_fp8_lowrank
    from trtdsl.quantization.numerics import expand_block_basis, lowrank_block_chunks
    g = torch.Generator(device="cuda").manual_seed(inter + rows + rank + blocks)
    x = (torch.randn(rows, 2 * inter, device="cuda", generator=g) * 2).to(dtype)
    mean = (torch.randn(inter, device="cuda", generator=g) * 0.3).to(dtype)
    v = swiglu(x)
    scale = _scale_for(v - mean)
    zero = torch.zeros(inter, rank, device="cuda", dtype=dtype)
    codes, c = swiglu_fp8_lowrank(x, scale, mean, zero, blocks)
    assert c.shape == (rows, blocks * rank) and not c.any()
    assert torch.equal(codes.view(torch.uint8), quantize_fp8(v - mean, scale).view(torch.uint8))
    compact = torch.cat([_basis(end - start, rank, dtype, g) for start, end in lowrank_block_chunks(inter, blocks)])
    full = expand_block_basis(compact, blocks)
    codes, c = swiglu_fp8_lowrank(x, scale, mean, compact.contiguous(), blocks)
    c_ref, _ = _split(v, mean, full)
    torch.testing.assert_close(c.float(), c_ref.float(), rtol=2 ** -7, atol=1e-3 * float(c_ref.abs().max()))
    _near_codes(codes, _split(v, mean, full, c)[1], scale)


@fp8
def test_unbuilt_inputs_fall_back_and_bad_ones_are_plugin_errors() -> None:
    from trtdsl.plugins.cuda.lowrank_ops import rmsnorm_fp8_lowrank, swiglu_fp8_lowrank
    x = torch.randn(2, 64, device="cuda", dtype=torch.bfloat16)
    w = torch.ones(64, device="cuda", dtype=torch.bfloat16)
    s = torch.ones(1, device="cuda")
    mean = torch.zeros(64, device="cuda", dtype=torch.bfloat16)
    assert rmsnorm_fp8_lowrank(x, w, s, 1e-5, mean, torch.zeros(64, 3, device="cuda", dtype=torch.bfloat16)) is None
    assert rmsnorm_fp8_lowrank(x.float(), w.float(), s, 1e-5, mean.float(),
                               torch.zeros(64, 4, device="cuda")) is None  # fp32: the reference
    wide = torch.randn(1, 8192, device="cuda", dtype=torch.bfloat16)  # over 512 vectors: one block cannot hold it
    assert rmsnorm_fp8_lowrank(wide, wide[0], s, 1e-5, wide[0], torch.zeros(8192, 4, device="cuda",
                                                                           dtype=torch.bfloat16)) is None
    odd = torch.randn(1, 2 * 60, device="cuda", dtype=torch.bfloat16)  # 60 is not a whole number of vectors
    assert swiglu_fp8_lowrank(odd, s, mean[:60], torch.zeros(60, 4, device="cuda", dtype=torch.bfloat16)) is None
    long = torch.randn(1, 2 * 14336, device="cuda", dtype=torch.bfloat16)  # 2 chunks of 896 vectors: over 512
    assert swiglu_fp8_lowrank(long, s, long[0, :14336], torch.zeros(14336, 1, device="cuda", dtype=torch.bfloat16),
                              2) is None
    with pytest.raises(PluginError, match="8 blocks of whole 8-value vectors do not fit a width of 48"):
        swiglu_fp8_lowrank(torch.randn(1, 96, device="cuda", dtype=torch.bfloat16), s, mean[:48],
                           torch.zeros(48, 1, device="cuda", dtype=torch.bfloat16), 8)
    with pytest.raises(PluginError, match="must have 64 rows"):
        rmsnorm_fp8_lowrank(x, w, s, 1e-5, mean, torch.zeros(32, 4, device="cuda", dtype=torch.bfloat16))
    with pytest.raises(PluginError, match="even"):
        swiglu_fp8_lowrank(x[:, :63].contiguous(), s, mean, torch.zeros(31, 4, device="cuda", dtype=torch.bfloat16))


@fp8
@pytest.mark.parametrize("dtype", HALF)
@pytest.mark.parametrize("m", [1, 3, 8, 17])
@pytest.mark.parametrize("r", [4, 9])
def test_fp8_gemm_on_codes_adds_the_lowrank_term_as_layers_would(dtype: torch.dtype, m: int, r: int) -> None:
    """lowrank = (c [m, r], w [r, n]): every GEMV config's epilogue, and cuBLASLt + torch (m = 17),
    equal the plain GEMM + (c @ w) + bias as torch layers, bit for bit where c @ w is exact (small
    integers), and to the rounding of the r-term sum otherwise. The CUDA-core configs hold the term's
    pairs in one warp's lanes where outputs x r fits 32 (m = 1, r = 4) and load them at the tail
    otherwise (r = 9, m > 1): both paths run."""
    from trtdsl.plugins.cuda.fused_quant_ops import fp8_gemm_codes
    from trtdsl.plugins.cuda.quant_ops import FP8_TC_CONFIGS, fp8_gemv
    n, k = 208, 1024  # n % 16 == 0: cuBLASLt takes the 17 rows
    g = torch.Generator(device="cuda").manual_seed(m + 100)
    w = torch.randn(n, k, device="cuda", generator=g)
    ws = w.abs().amax(1) / FP8_MAX
    wq = quantize_fp8(w, ws[:, None])
    x = torch.randn(m, k, device="cuda", generator=g).to(dtype)
    s = _scale_for(x)
    xq = quantize_fp8(x, s)
    bias = (torch.randn(n, device="cuda", generator=g) * 3).to(dtype)
    exact = (torch.randint(-3, 4, (m, r), device="cuda", generator=g).to(dtype),
             torch.randint(-3, 4, (r, n), device="cuda", generator=g).to(dtype))
    rough = (torch.randn(m, r, device="cuda", generator=g).to(dtype),
             torch.randn(r, n, device="cuda", generator=g).to(dtype))
    for config in (1, 2, 3, 4, 5, *FP8_TC_CONFIGS) if m <= 8 else (None,):
        def run(lowrank, config=config):
            if config is None:
                return fp8_gemm_codes(xq, wq, ws, s, dtype, bias=bias, lowrank=lowrank)
            return fp8_gemv(xq, wq, s, ws, dtype, config, bias=bias, lowrank=lowrank)
        plain = fp8_gemm_codes(xq, wq, ws, s, dtype) if config is None else fp8_gemv(xq, wq, s, ws, dtype, config)
        for (c, lw), bitwise in ((exact, True), (rough, False)):
            want = (plain + (c.float() @ lw.float()).to(dtype)) + bias
            got = run((c, lw))
            if bitwise:
                assert torch.equal(got, want), config
            else:
                term = float((c.float() @ lw.float()).abs().max())
                torch.testing.assert_close(got.float(), want.float(), rtol=1e-2, atol=1e-2 * term)
    with pytest.raises(PluginError, match="lowrank needs c"):
        fp8_gemv(xq[:1].contiguous(), wq, s, ws, dtype, 1, lowrank=(exact[0][:1], exact[1][:, :5].contiguous()))


@fp8
def test_fused_lowrank_llama_matches_the_unfused_one_on_the_gpu(tmp_path: Path) -> None:
    """fp8_lowrank with "norm+swiglu": the fused network (8 producers: 2 norms, the SwiGLU and the attention
    per layer) runs the kernels above and agrees with the unfused one on the GPU, prefill and decode."""
    transformers = pytest.importorskip("transformers")
    from test_norm_quant import _greedy_decode, _tiny_bf16_llama
    from trtdsl.backends.torch_executor import TorchExecutor
    from trtdsl.passes import optimize
    from trtdsl.quantization import calibrate, clone_network, prefill_feeds, quantize_network, token_chunks
    net, ids = _tiny_bf16_llama(tmp_path, transformers)
    stats = calibrate(net, list(prefill_feeds(net, token_chunks(ids, 16, 4), 2)), progress=False, hessians=True)
    qnet = quantize_network(net, "fp8", calibration=stats, fp8_center_inputs="norm+swiglu", fp8_lowrank=4)
    unfused = clone_network(qnet)
    optimize(unfused, fuse_add_rms_norm=True, fuse_swiglu=True, fuse_fp8_activations=False)
    assert optimize(qnet, fuse_add_rms_norm=True, fuse_swiglu=True)["fp8_activations"] == 8
    feed = next(iter(prefill_feeds(qnet, token_chunks(ids, 16, 2), 2, device="cuda")))
    want = TorchExecutor(unfused, "cuda").run({k: v.clone() for k, v in feed.items()})["logits"].float()
    got = TorchExecutor(qnet, "cuda").run({k: v.clone() for k, v in feed.items()})["logits"].float()
    assert float((got - want).abs().mean()) < 0.02 * float(want.abs().mean())
    cpu = TorchExecutor(qnet).run({k: v.cpu() for k, v in feed.items()})["logits"].float()
    assert float((got.cpu() - cpu).abs().mean()) < 0.05 * float(cpu.abs().mean())  # the reference on the CPU
    (tok_u, logits_u), (tok_f, logits_f) = _greedy_decode(unfused, ids[:5]), _greedy_decode(qnet, ids[:5])
    same = next((i for i, (a, b) in enumerate(zip(tok_u, tok_f)) if a != b), len(tok_u))
    assert same >= 2, (tok_u, tok_f)  # the prefill's token and one decode step at least
    lu, lf = torch.tensor(logits_u[:same]), torch.tensor(logits_f[:same])  # steps fed the same tokens
    assert float((lu - lf).abs().mean()) < 0.02 * float(lu.abs().mean())
