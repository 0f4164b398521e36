"""CUDA attention over a quantized (fp8 e4m3 / int8) K/V cache, against the torch reference of
``trtdsl.attention_quant_kv`` (trtdsl/quantization/kv_cache.py): codes written by the RoPE + write
kernel, prefill (context kernel) and decode (the one-launch kernel with and without clusters, and split-K)
outputs, per-head and per-layer scales,
the Hadamard-rotated keys, the mean key subtracted (``k_bias``), and the executor choosing the kernels
for a quantized network."""

from __future__ import annotations

import pytest
import torch

from test_kernels import make_step, rel_err  # the step builder of the kernel tests

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
CACHES = [torch.float8_e4m3fn, torch.int8]
QMAX = {torch.float8_e4m3fn: 448.0, torch.int8: 127.0}


def quant_step(seq_lens, past_lens, heads, kv_heads, head_dim, tpb, dtype, cache_dtype, per_head, seed=0):
    step = make_step(seq_lens, past_lens, heads, kv_heads, head_dim, tpb, dtype, rotary_dim=head_dim, seed=seed)
    float_cache = step["kv_cache"].float()
    amax = float_cache.abs().amax(dim=(0, 1, 4, 5))  # [2, kv_heads]: what calibration would see
    scales = (amax if per_head else amax.amax(dim=1)) * 1.25 / QMAX[cache_dtype]
    # The past tokens' codes: the cache a previous step left (written by the reference's rounding).
    from trtdsl.quantization.kv_cache import quantize_kv
    shape = (1, 1, 2, kv_heads if per_head else 1, 1, 1)
    step["kv_cache"] = quantize_kv(float_cache, scales.reshape(shape), cache_dtype).contiguous()
    return step, scales.contiguous()


def run_both(step, scales, *, rotation, max_q_len=None, k_bias=None):
    from trtdsl.plugins.cuda.kv_quant_ops import paged_attention_quant_kv
    from trtdsl.quantization.kv_cache import quant_kv_attention_reference
    heads_total = step["qkv"].shape[1] // step["kv_cache"].shape[-1]
    d = step["kv_cache"].shape[-1]
    kv_heads = step["kv_cache"].shape[3]
    fields = dict(num_heads=heads_total - 2 * kv_heads, num_kv_heads=kv_heads, head_dim=d, layer_idx=1,
                  tokens_per_block=step["kv_cache"].shape[4], softmax_scale=d ** -0.5, rotary_dim=d,
                  rope_style="neox")
    ref_step = {k: v.clone() for k, v in step.items()}
    ref_step["block_tables"] = ref_step["block_tables"].clamp_min(0)
    extra = [] if k_bias is None else [k_bias]  # the plugin's optional 10th input
    ref = quant_kv_attention_reference(list(ref_step.values()) + [scales, *extra],
                                       {**fields, "kv_cache_dtype": "fp8",
                                        "k_rotation": "hadamard" if rotation else "none"})
    seq = step["seq_lens"].tolist()
    totals = [p + n for p, n in zip(step["past_lens"].tolist(), seq)]
    out = paged_attention_quant_kv(*step.values(), scales, **fields, max_q_len=max_q_len or max(max(seq), 1),
                                   max_kv_len=max(totals), k_rotation=rotation, k_bias=k_bias)
    return out, ref, step["kv_cache"], ref_step["kv_cache"]


def check(step, scales, cache_dtype, rotation, max_q_len=None, k_bias=None):
    out, ref, cache, ref_cache = run_both(step, scales, rotation=rotation, max_q_len=max_q_len, k_bias=k_bias)
    rows = step["seq_lens"].sum().item()
    # fp8 / int8 K/V: the kernels see the same codes; what differs is fp16/bf16 rounding of q, P and
    # the one-ulp RoPE differences that can flip a code, so the bound is the cache format's rounding.
    assert rel_err(out[:rows], ref[:rows].to(out.dtype)) < (3e-2 if cache_dtype == torch.float8_e4m3fn else 2e-2)
    same = (cache.view(torch.uint8) == ref_cache.view(torch.uint8)).float().mean().item()
    assert same > (0.97 if rotation else 0.995), f"only {same:.4f} of the cached codes agree"
    per = scales.reshape(1, 1, 2, -1, 1, 1)
    torch.testing.assert_close(cache.float() * per, ref_cache.float() * per, rtol=0.13, atol=float(scales.max()))
    return cache, ref_cache


def _codes_differing(a: torch.Tensor, b: torch.Tensor) -> int:
    return int((a.view(torch.uint8) != b.view(torch.uint8)).sum())


@cuda
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("cache_dtype", CACHES)
@pytest.mark.parametrize("head_dim", [64, 128])
@pytest.mark.parametrize("rotation", [False, True])
@pytest.mark.parametrize("case", [([7, 1, 129, 33], [0, 5, 40, 100]), ([1, 1, 1], [0, 63, 300])])
def test_quantized_cache_attention_matches_reference(dtype, cache_dtype, head_dim, rotation, case):
    seq_lens, past_lens = case
    step, scales = quant_step(seq_lens, past_lens, 12, 4, head_dim, 16, dtype, cache_dtype, per_head=True)
    check(step, scales, cache_dtype, rotation)


@cuda
@pytest.mark.parametrize("cache_dtype", CACHES)
def test_per_layer_scales_and_decode_through_context_kernel(cache_dtype, monkeypatch):
    from trtdsl.plugins.cuda import kv_quant_ops
    step, scales = quant_step([1, 1], [17, 200], 8, 2, 128, 64, torch.bfloat16, cache_dtype, per_head=False)
    check(step, scales, cache_dtype, rotation=False, max_q_len=2)  # max_q_len 2: the context kernel
    step, scales = quant_step([1, 1], [17, 200], 8, 2, 128, 64, torch.bfloat16, cache_dtype, per_head=False)
    check(step, scales, cache_dtype, rotation=False)  # the one-launch decode kernel
    monkeypatch.setattr(kv_quant_ops, "ONE_LAUNCH_DECODE", False)
    step, scales = quant_step([1, 1], [17, 200], 8, 2, 128, 64, torch.bfloat16, cache_dtype, per_head=False)
    check(step, scales, cache_dtype, rotation=False)  # the split-K decode kernel


@cuda
@pytest.mark.parametrize("cache_dtype", CACHES)
@pytest.mark.parametrize("splits", [None, 1, 2, 8])
@pytest.mark.parametrize("case", [([1], [2000], True), ([1, 1, 1], [0, 700, 31], False), ([1] * 5, [90] * 5, True)])
@pytest.mark.parametrize("head_dim", [64, 128])
def test_one_launch_decode_matches_split_k_and_reference(cache_dtype, splits, case, head_dim, monkeypatch):
    """The fused decode kernel on a quantized cache (RoPE, quantizing write and attention in one launch;
    ``splits`` blocks per sequence and kv head, None = the rule) against the reference and against
    RoPE + split-K + combine: the same codes, outputs that differ only in summation order and P's
    rounding."""
    from trtdsl.plugins.cuda import kv_quant_ops, ops
    past_lens, rotation = case[1], case[2]
    monkeypatch.setattr(ops, "FUSED_DECODE_SPLITS", splits)
    step, scales = quant_step(case[0], past_lens, 16, 4, head_dim, 32, torch.bfloat16, cache_dtype, per_head=True,
                              seed=sum(past_lens) + head_dim)
    split_k_step = {k: v.clone() for k, v in step.items()}
    cache, _ = check(step, scales, cache_dtype, rotation)
    out, *_ = run_both({k: v.clone() for k, v in split_k_step.items()}, scales, rotation=rotation)
    monkeypatch.setattr(kv_quant_ops, "ONE_LAUNCH_DECODE", False)
    split_k, _, split_k_cache, _ = run_both(split_k_step, scales, rotation=rotation)
    assert torch.equal(cache.view(torch.uint8), split_k_cache.view(torch.uint8))  # rope_kv_kernel's expressions
    assert rel_err(out, split_k) < 1e-2


@cuda
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("cache_dtype", CACHES)
@pytest.mark.parametrize("rotation", [False, True])
@pytest.mark.parametrize("per_head", [True, False])
def test_mean_key_subtracted_before_quantizing_matches_reference(dtype, cache_dtype, rotation, per_head):
    """k_bias (kv_cache_center_k): the kernel subtracts it from K (fp32, after RoPE and the rotation)
    before taking the code, as the reference does; q and V untouched, nothing added back."""
    seq_lens, past_lens = [7, 1, 129, 33], [0, 5, 40, 100]
    step, scales = quant_step(seq_lens, past_lens, 12, 4, 128, 16, dtype, cache_dtype, per_head=per_head)
    g = torch.Generator().manual_seed(3)
    # A constant part of the keys' size: most new K codes change with it, so the bias must be applied.
    k_bias = (torch.rand(4, 128, generator=g) * 2 - 1).to("cuda").contiguous()
    plain = {k: v.clone() for k, v in step.items()}
    cache, ref_cache = check(step, scales, cache_dtype, rotation, k_bias=k_bias)
    # Without the bias (the reference, same step): codes that must differ from the centered ones,
    # while the kernel's differ from the centered reference's only by RoPE / rotation rounding flips.
    _, _, _, uncentered = run_both(plain, scales, rotation=rotation)
    changed, flipped = _codes_differing(uncentered, ref_cache), _codes_differing(cache, ref_cache)
    assert changed > 0.3 * 4 * 128 * sum(seq_lens), changed  # most of the new tokens' K codes
    assert flipped < 0.1 * changed, (flipped, changed)
    # V is never shifted: its codes are the uncentered run's (no RoPE on V, so no rounding flips are
    # expected; a shifted V would change most of the ~20 % of V codes this step writes).
    same_v = (cache[:, :, 1].view(torch.uint8) == uncentered[:, :, 1].view(torch.uint8)).float().mean().item()
    assert same_v > 0.999, same_v


@cuda
@pytest.mark.parametrize("cache_dtype", CACHES)
def test_mean_key_subtracted_in_decode_steps(cache_dtype):
    """The bias in single-token steps (split-K decode kernel, and the context kernel via max_q_len 2)."""
    for max_q_len in (None, 2):
        step, scales = quant_step([1, 1], [17, 200], 8, 2, 64, 64, torch.bfloat16, cache_dtype, per_head=True)
        k_bias = torch.linspace(-1.5, 1.5, 2 * 64, device="cuda").reshape(2, 64).contiguous()
        check(step, scales, cache_dtype, rotation=False, max_q_len=max_q_len, k_bias=k_bias)


@cuda
def test_bad_k_bias_is_a_plugin_error():
    from trtdsl.errors import PluginError
    from trtdsl.plugins.cuda.kv_quant_ops import paged_attention_quant_kv
    step, scales = quant_step([3], [0], 4, 2, 64, 16, torch.float16, torch.float8_e4m3fn, per_head=True)
    fields = dict(num_heads=4, num_kv_heads=2, head_dim=64, layer_idx=0, tokens_per_block=16,
                  softmax_scale=0.125, rotary_dim=64, rope_style="neox", max_q_len=3, max_kv_len=3)
    bias = torch.zeros(2, 64, device="cuda")
    with pytest.raises(PluginError, match="k_bias has shape"):  # [head_dim] only, no K/V head axis
        paged_attention_quant_kv(*step.values(), scales, **fields, k_bias=bias[0])
    with pytest.raises(PluginError, match="k_bias has dtype"):
        paged_attention_quant_kv(*step.values(), scales, **fields, k_bias=bias.half())
    with pytest.raises(PluginError, match="k_bias must be a CUDA tensor"):
        paged_attention_quant_kv(*step.values(), scales, **fields, k_bias=bias.cpu())


@cuda
def test_bad_scales_are_a_plugin_error():
    from trtdsl.errors import PluginError
    from trtdsl.plugins.cuda.kv_quant_ops import paged_attention_quant_kv
    step, scales = quant_step([3], [0], 4, 2, 64, 16, torch.float16, torch.int8, per_head=True)
    fields = dict(num_heads=4, num_kv_heads=2, head_dim=64, layer_idx=0, tokens_per_block=16,
                  softmax_scale=0.125, rotary_dim=64, rope_style="neox", max_q_len=3, max_kv_len=3)
    with pytest.raises(PluginError, match="kv_scales has shape"):  # 3 heads' scales for 2 K/V heads
        paged_attention_quant_kv(*step.values(), scales[:, :1].repeat(1, 3).contiguous(), **fields)
    with pytest.raises(PluginError, match="kv_scales has dtype"):
        paged_attention_quant_kv(*step.values(), scales.half(), **fields)


@cuda
@pytest.mark.parametrize("kv,rotation,center", [("fp8", "none", False), ("fp8", "hadamard", False),
                                                ("int8", "none", False), ("fp8", "none", True),
                                                ("fp8", "hadamard", True), ("int8", "none", True)])
def test_quantized_cache_network_on_cuda_matches_cpu_reference(tmp_path, kv, rotation, center):
    transformers = pytest.importorskip("transformers")
    from trtdsl.models import from_hugging_face
    from trtdsl.models.eval import token_logprobs
    from trtdsl.quantization import calibrate, prefill_feeds, quantize_network, token_chunks
    torch.manual_seed(0)
    config = transformers.LlamaConfig(vocab_size=128, hidden_size=256, intermediate_size=256,
                                      num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                                      max_position_embeddings=256, tie_word_embeddings=True)
    transformers.LlamaForCausalLM(config).eval().save_pretrained(tmp_path)
    net = from_hugging_face(tmp_path, "bfloat16").build_network(
        max_batch_size=2, max_num_tokens=128, max_seq_len=160, tokens_per_block=16, context_logits=True)
    ids = torch.randint(0, 128, (256,), generator=torch.Generator().manual_seed(1)).tolist()
    stats = calibrate(net, list(prefill_feeds(net, token_chunks(ids, 64, 4), batch_size=2)), progress=False)
    qnet = quantize_network(net, None, kv_cache_dtype=kv, calibration=stats, kv_cache_rotation=rotation,
                            kv_cache_center_k=center)
    quant_layers = [la for la in qnet.layers if la.attrs.get("name") == "trtdsl.attention_quant_kv"]
    assert quant_layers and all(len(la.inputs) == (10 if center else 9) for la in quant_layers)
    tokens = torch.randint(0, 128, (150,), generator=torch.Generator().manual_seed(2))
    # chunk 50: prefill steps through the context kernel, each reading the codes earlier steps wrote
    on_gpu = token_logprobs(qnet, tokens, device="cuda", chunk_size=50)
    on_cpu = token_logprobs(qnet, tokens, device="cpu", chunk_size=50)
    assert float((on_gpu - on_cpu).abs().max()) < 0.1  # bf16 activations: kernel vs torch rounding
    assert float((on_gpu - on_cpu).abs().mean()) < 0.01


@cuda
def test_one_launch_decode_rule():
    """Quantized caches take the one-launch kernel while each warp has <= 4 key tiles or the step has
    >= 1024 warps, else split-K; ONE_LAUNCH_DECODE = False always splits."""
    from trtdsl.plugins.cuda import kv_quant_ops
    from trtdsl.plugins.cuda.ops import decode_fused_splits
    dev = torch.device("cuda")
    rule = kv_quant_ops.one_launch_decode_splits
    assert rule(1, 32, 8, 128, dev) == 1  # 4 tiles, one block
    assert rule(8, 32, 8, 1024, dev) == 0  # 8 tiles per warp, 256 warps
    assert rule(32, 32, 8, 1024, dev) == 1  # 1024 warps
    long_splits = decode_fused_splits(1, 32, 8, 16384, dev)
    assert rule(1, 32, 8, 16384, dev) == (long_splits if 512 // (4 * long_splits) <= 4 else 0)
    kv_quant_ops.ONE_LAUNCH_DECODE = False
    try:
        assert rule(1, 32, 8, 128, dev) == 0
    finally:
        kv_quant_ops.ONE_LAUNCH_DECODE = True


@cuda
@pytest.mark.parametrize("cache_dtype", CACHES)
@pytest.mark.parametrize("one_launch", [True, False])
def test_fp8_output_codes_are_the_quantized_output(cache_dtype, one_launch, monkeypatch):
    """With out_scale (trtdsl.attention_quant_kv_fp8) the output is the e4m3 codes of the plain output,
    bitwise: written by the fused decode kernel, or quantized after split-K."""
    from trtdsl.plugins.cuda import kv_quant_ops
    from trtdsl.plugins.cuda.quant_ops import quantize_fp8
    monkeypatch.setattr(kv_quant_ops, "ONE_LAUNCH_DECODE", one_launch)
    step, scales = quant_step([1, 1, 1], [0, 700, 31], 16, 4, 128, 32, torch.bfloat16, cache_dtype, per_head=True)
    plain, *_ = run_both({k: v.clone() for k, v in step.items()}, scales, rotation=True)
    scale = (plain.float().abs().amax() / 448 / 2).reshape(1)  # some codes saturate
    fields = dict(num_heads=16, num_kv_heads=4, head_dim=128, layer_idx=1, tokens_per_block=32,
                  softmax_scale=128 ** -0.5, rotary_dim=128, rope_style="neox", max_q_len=1, max_kv_len=701)
    codes = kv_quant_ops.paged_attention_quant_kv(*step.values(), scales, **fields, k_rotation=True,
                                                  out_scale=scale)
    assert codes.dtype == torch.float8_e4m3fn
    assert torch.equal(codes.view(torch.uint8), quantize_fp8(plain, scale).view(torch.uint8))
    assert codes.float().abs().max().item() == 448.0
