"""GPU tests of the deferred RMSNorm (``trtdsl/passes/deferred_norm.py``, wo_gemv_packed.cuh's PackedNorm):
the tile GEMV's producer epilogue (residual add, gamma, tile sums of squares) and consumer epilogue (the row
scale) against the plugins' torch references, every launch config, 1..8 rows, partial tiles, both dtypes,
float32 / float16 tables, SwiGLU; the plugin pair through 1, 2 and 3+ launches' worth of rows (cuBLAS and
the norm kernel beyond 16); bad inputs; an int4_awq Llama on CUDA with and without the pass, graphs on."""

from __future__ import annotations

import pytest
import torch

from trtdsl.errors import PluginError
from trtdsl.quantization.int4_tiles import pack_int4_tiles

from test_int4_packed import STEP, _inputs
from test_quant_gemm import DTYPES, TOL, cuda, rel_err

EPS = 1e-5


def _fields(n, k, group, swiglu=False):
    return {"out_features": n, "in_features": k, "group_size": group, "swiglu": swiglu, "epsilon": EPS,
            "max_deferred_rows": 16}


def _producer_case(m, k, n, group, dtype, half):
    x, qweight, scales, zeros = _inputs(m, k, n, group, dtype, True, half)
    qp, sz = pack_int4_tiles(qweight, scales, zeros, group, half=half)
    residual = torch.randn(m, n, device="cuda").to(dtype)
    gamma = (torch.rand(n, device="cuda") + 0.5).to(dtype)
    return x, qp, sz, residual, gamma


@cuda
@pytest.mark.parametrize("half", [False, True])
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("group", [64, 128])
@pytest.mark.parametrize("k,n", [(256, 40), (1024, 4096), (4096, 72)])
@pytest.mark.parametrize("m", [1, 3, 8])
def test_producer_epilogue(m, k, n, group, dtype, half):
    from trtdsl.passes.deferred_norm import add_norm_reference
    from trtdsl.plugins.cuda.quant_ops import WO_PACKED_CONFIGS, weight_only_gemv_packed
    x, qp, sz, residual, gamma = _producer_case(m, k, n, group, dtype, half)
    scaled_ref, total_ref, ssq_ref = add_norm_reference([x, qp, sz, residual, gamma], _fields(n, k, group))
    for config in WO_PACKED_CONFIGS:
        if (k // 128) % STEP[config]:
            continue
        total, scaled, ssq = weight_only_gemv_packed(x, qp, sz, n, group, config=config, residual=residual,
                                                     gamma=gamma)
        assert total.shape == scaled.shape == (m, n) and ssq.shape == (m, (n + 15) // 16)
        assert rel_err(total.float(), total_ref.float()) < TOL[dtype], config
        assert rel_err(scaled.float(), scaled_ref.float()) < TOL[dtype], config
        assert ssq.dtype == torch.float32 and rel_err(ssq, ssq_ref) < 2 * TOL[dtype], config
        # against the sums of the kernel's own totals: only the order of 16 float additions differs
        want = torch.nn.functional.pad(total.float().square(), (0, ssq.shape[1] * 16 - n)).view(m, -1, 16).sum(-1)
        torch.testing.assert_close(ssq, want, rtol=1e-5, atol=1e-6)


@cuda
@pytest.mark.parametrize("half", [False, True])
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("swiglu", [False, True])
@pytest.mark.parametrize("k,n", [(256, 40), (4096, 1024), (2048, 24)])
@pytest.mark.parametrize("m", [1, 5, 8])
def test_consumer_row_scale(m, k, n, swiglu, dtype, half):
    from trtdsl.passes.deferred_norm import normed_reference
    from trtdsl.plugins.cuda.quant_ops import WO_PACKED_CONFIGS, weight_only_gemv_packed
    group = 64
    rows = 2 * n if swiglu else n
    x, qweight, scales, zeros = _inputs(m, k, rows, group, dtype, True, half)
    qp, sz = pack_int4_tiles(qweight, scales, zeros, group, swiglu=swiglu, half=half)
    ssq = torch.rand(m, k // 16, device="cuda") * (torch.arange(1, m + 1, device="cuda")[:, None] * 4.0)
    ref = normed_reference([x, qp, sz, ssq], _fields(n, k, group, swiglu)).float()
    for config in WO_PACKED_CONFIGS:
        if (k // 128) % STEP[config]:
            continue
        out = weight_only_gemv_packed(x, qp, sz, n, group, swiglu, config, ssq=ssq, eps=EPS)
        assert out.shape == (m, n) and out.dtype == dtype
        assert rel_err(out.float(), ref) < TOL[dtype], config


@cuda
@pytest.mark.parametrize("m", [1, 8, 12, 16, 17, 40])
def test_plugin_pair_every_row_count(m):
    """The pair as the executor runs it (GEMV epilogues up to 16 rows, cuBLAS + the norm kernel beyond),
    on [2, m / 2 | m, k] activations, against the references on the CPU in float32 arithmetic, and the
    pair's result against the unfused add + RMSNorm + GEMM."""
    from trtdsl.passes.deferred_norm import add_norm_reference, normed_reference
    from trtdsl.passes.fused_plugins import add_rms_norm_reference
    from trtdsl.passes.int4_tile_gemm import int4_tile_gemm_reference
    from trtdsl.plugins.cuda.register import _add_norm_cuda, _normed_cuda
    k, n, inter, group, dtype = 512, 256, 64, 64, torch.bfloat16
    x, qp, sz, residual, gamma = _producer_case(m, k, n, group, dtype, True)
    _, qw2, s2, z2 = _inputs(1, n, 2 * inter, group, dtype, True, True)
    qp2, sz2 = pack_int4_tiles(qw2, s2, z2, group, swiglu=True, half=True)
    lead = (2, m // 2) if m % 2 == 0 else (m,)
    ins = [x.view(*lead, k), qp, sz, residual.view(*lead, n), gamma.view(1, n)]
    f1, f2 = _fields(n, k, group), _fields(inter, n, group, swiglu=True)
    scaled, total, ssq = _add_norm_cuda(ins, f1, {})
    out = _normed_cuda([scaled, qp2, sz2, ssq], f2, {})
    cpu = [t.cpu() for t in ins]
    s_ref, t_ref, q_ref = add_norm_reference(cpu, f1)
    ref = normed_reference([s_ref, qp2.cpu(), sz2.cpu(), q_ref], f2)
    assert out.shape == (*lead, inter) and total.shape == (*lead, n)
    assert rel_err(total.float().cpu(), t_ref.float()) < 1e-2
    assert rel_err(out.float().cpu(), ref.float()) < 2e-2
    y = int4_tile_gemm_reference(cpu[:3], {k_: f1[k_] for k_ in ("out_features", "in_features", "group_size",
                                                                 "swiglu")})
    normed, _ = add_rms_norm_reference([y, cpu[3], cpu[4]], {"axes": (len(lead),), "epsilon": EPS}, {})
    unfused = int4_tile_gemm_reference([normed, qp2.cpu(), sz2.cpu()], {**f2})
    assert rel_err(out.float().cpu(), unfused.float()) < 3e-2


@cuda
def test_deferred_norm_rejects_bad_inputs():
    from trtdsl.plugins.cuda.quant_ops import weight_only_gemv_packed
    x, qp, sz, residual, gamma = _producer_case(2, 256, 32, 64, torch.bfloat16, False)
    with pytest.raises(PluginError, match="both residual and gamma"):
        weight_only_gemv_packed(x, qp, sz, 32, 64, residual=residual)
    with pytest.raises(PluginError, match="residual must be"):
        weight_only_gemv_packed(x, qp, sz, 32, 64, residual=residual[:1], gamma=gamma)
    with pytest.raises(PluginError, match="residual has dtype"):
        weight_only_gemv_packed(x, qp, sz, 32, 64, residual=residual.half(), gamma=gamma)
    with pytest.raises(PluginError, match="ssq must be"):
        weight_only_gemv_packed(x, qp, sz, 32, 64, ssq=torch.ones(2, 8, device="cuda"), eps=EPS)
    with pytest.raises(PluginError, match="eps"):
        weight_only_gemv_packed(x, qp, sz, 32, 64, ssq=torch.ones(2, 16, device="cuda"), eps=-1.0)
    _, qp2, sz2, _, _ = _producer_case(2, 256, 64, 64, torch.bfloat16, False)
    with pytest.raises(PluginError, match="SwiGLU"):
        weight_only_gemv_packed(x, qp2, sz2, 32, 64, swiglu=True, residual=residual, gamma=gamma)


@cuda
def test_llama_int4_awq_with_and_without_the_pass(tmp_path):
    """A bf16 int4_awq Llama on CUDA (ModelRunner: CUDA graphs for the decode steps): the deferred norms
    give the same greedy tokens as the add + RMSNorm kernels and logits within bf16 rounding."""
    from transformers import LlamaConfig, LlamaForCausalLM
    from trtdsl.builder import BuildConfig, Builder, load_model
    from trtdsl.runtime.model_runner import ModelRunner
    cfg = LlamaConfig(vocab_size=512, hidden_size=256, intermediate_size=512, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                      tie_word_embeddings=False)
    torch.manual_seed(7)
    LlamaForCausalLM(cfg).eval().save_pretrained(tmp_path / "ckpt")
    model = load_model(tmp_path / "ckpt", "bfloat16")
    common = dict(max_batch_size=4, max_seq_len=128, dtype="bfloat16", quantization="int4_awq",
                  quant_group_size=64, calibration_tokens=128)
    outs = {}
    for name, defer in (("deferred", "auto"), ("kernels", "off")):
        engine = Builder(BuildConfig(**common, defer_norms=defer)).build(model)
        names = [la.attrs.get("name") for la in engine.network.layers]
        assert (names.count("trtdsl.int4_tile_gemm_add_norm") == 3) == (defer == "auto")
        engine.save(tmp_path / name)
        runner = ModelRunner.from_dir(tmp_path / name, device="cuda")
        outs[name] = runner.generate([[1, 7, 42, 3], [5, 9, 11, 2]], max_new_tokens=8, end_id=-1, top_k=1,
                                     output_generation_logits=True)
        runner.close()
    ids_a, ids_b = outs["deferred"]["output_ids"], outs["kernels"]["output_ids"]
    a, b = outs["deferred"]["generation_logits"].float(), outs["kernels"]["generation_logits"].float()
    # Random weights give flat logits, so a rounding difference may flip a near tie later on; compare the
    # steps before the first differing token (the prompt step and the first decode steps at least).
    same = (ids_a == ids_b).all(0).all(0)[-8:].long().cumprod(0).sum().item()
    assert same >= 3, (ids_a, ids_b)
    assert rel_err(a[:, :, :same].cpu(), b[:, :, :same].cpu()) < 2e-2
