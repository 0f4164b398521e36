"""GPU tests of the fused decode kernel (RoPE + paged K/V write + attention in one launch) against
``paged_attention_reference`` on fresh random inputs: output and the K/V written to the cache."""

from __future__ import annotations

import zlib

import pytest
import torch

from trtdsl.errors import PluginError
from trtdsl.plugins.attention_reference import paged_attention_reference

from test_kernels import cache_tol, make_step, rel_err, tol  # the step builder of the kernel tests

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
DTYPES = [torch.float16, torch.bfloat16]
CONTEXTS = [1, 7, 128, 1000]  # kv length after the step (the new token included)
BATCHES = {  # batch -> each sequence's kv length; 17 cycles through all lengths
    1: None, 3: [1000, 7, 128], 17: [CONTEXTS[i % 4] for i in range(17)],
}


def fused_vs_reference(step, dtype, splits=None, **attrs):
    from trtdsl.plugins.cuda.ops import decode_fused
    qkv_before = step["qkv"].clone()
    ref_step = {k: v.clone() for k, v in step.items()}
    ref_step["block_tables"] = ref_step["block_tables"].clamp_min(0)  # the reference indexes whole rows
    ref = paged_attention_reference(**ref_step, **attrs)
    out = decode_fused(**step, **attrs, splits=splits)
    torch.testing.assert_close(step["qkv"], qkv_before, rtol=0, atol=0)
    # The cache holds this step's rotated k and v at position past (and is untouched elsewhere).
    torch.testing.assert_close(step["kv_cache"], ref_step["kv_cache"], **cache_tol(dtype))
    rows = int(step["seq_lens"].sum())
    assert rel_err(out[:rows], ref[:rows]) < tol(dtype)


def decode_step(contexts, h, kvh, d, tpb, dtype, rotary_dim, seed):
    return make_step([1] * len(contexts), [c - 1 for c in contexts], h, kvh, d, tpb, dtype, rotary_dim, seed=seed)


@cuda
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("heads", [(32, 8, 128), (8, 1, 64), (4, 4, 128), (32, 1, 64)])  # (H, KVH, D); 32/1: 2 blocks per kv head
@pytest.mark.parametrize("batch_ctx", [(1, c) for c in CONTEXTS] + [(3, None), (17, None)])
@pytest.mark.parametrize("tpb", [16, 32, 64])
def test_decode_fused_matches_reference(dtype, heads, batch_ctx, tpb):
    h, kvh, d = heads
    batch, ctx = batch_ctx
    contexts = [ctx] if batch == 1 else BATCHES[batch]
    seed = zlib.crc32(repr((dtype, heads, batch_ctx, tpb)).encode()) % 10_000
    style = "neox" if seed % 2 else "gptj"
    step = decode_step(contexts, h, kvh, d, tpb, dtype, d, seed)
    fused_vs_reference(step, dtype, num_heads=h, num_kv_heads=kvh, head_dim=d, layer_idx=1, tokens_per_block=tpb,
                       softmax_scale=d ** -0.5, rotary_dim=d, rope_style=style)


@cuda
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("rope", [(0, "neox"), (32, "neox"), (32, "gptj"), (None, "neox"), (None, "gptj")])
@pytest.mark.parametrize("head_dim", [64, 128])
def test_decode_fused_rope_variants(dtype, rope, head_dim):
    rotary_dim = head_dim if rope[0] is None else rope[0]
    step = decode_step([1000, 1, 129], 8, 2, head_dim, 32, dtype, rotary_dim, seed=head_dim + (rope[0] or 1))
    fused_vs_reference(step, dtype, num_heads=8, num_kv_heads=2, head_dim=head_dim, layer_idx=0,
                       tokens_per_block=32, softmax_scale=0.1, rotary_dim=rotary_dim, rope_style=rope[1])


@cuda
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("heads", [(32, 8, 128), (8, 1, 64), (32, 1, 64)])
@pytest.mark.parametrize("splits", [2, 3, 5, 8])
@pytest.mark.parametrize("contexts", [[1], [33], [129], [1000], [2049], [1000, 7, 128, 1]])
def test_decode_fused_cluster_splits_match_reference(dtype, heads, splits, contexts):
    """splits > 1: the key tiles of each (sequence, kv head) spread over a cluster of blocks (some
    holding no tile at short contexts) merged through DSMEM; same output and cache as the reference."""
    h, kvh, d = heads
    seed = zlib.crc32(repr((dtype, heads, splits, contexts)).encode()) % 10_000
    step = decode_step(contexts, h, kvh, d, 16, dtype, d, seed)
    fused_vs_reference(step, dtype, num_heads=h, num_kv_heads=kvh, head_dim=d, layer_idx=1, tokens_per_block=16,
                       softmax_scale=d ** -0.5, rotary_dim=d, rope_style="neox", splits=splits)


@cuda
@pytest.mark.parametrize("splits", [1, 4])
def test_decode_fused_cluster_fp8_codes(splits):
    """The cluster merge writes codes like the single block: bitwise quantize_fp8 of its plain output."""
    from trtdsl.plugins.cuda.ops import decode_fused
    from trtdsl.plugins.cuda.quant_ops import quantize_fp8
    h, kvh, d, tpb = 32, 8, 128, 16
    attrs = dict(num_heads=h, num_kv_heads=kvh, head_dim=d, layer_idx=0, tokens_per_block=tpb,
                 softmax_scale=d ** -0.5, rotary_dim=d, rope_style="neox", splits=splits)
    b = decode_step([900, 2, 128], h, kvh, d, tpb, torch.bfloat16, d, seed=4)
    plain = decode_fused(**{k: v.clone() for k, v in b.items()}, **attrs)
    scale = (plain.float().abs().amax() / 448).reshape(1)
    codes = decode_fused(**{k: v.clone() for k, v in b.items()}, **attrs, out_scale=scale)
    assert torch.equal(codes.view(torch.uint8), quantize_fp8(plain, scale).view(torch.uint8))


@cuda
def test_decode_fused_split_count_rule_and_bad_splits():
    from trtdsl.plugins.cuda.ops import decode_fused, decode_fused_splits
    sms = torch.cuda.get_device_properties(0).multi_processor_count
    hopper = torch.cuda.get_device_capability(0)[0] >= 9
    assert decode_fused_splits(1, 32, 8, 4096, "cuda") == (min(8, sms // 2 // 8) if hopper else 1)
    assert decode_fused_splits(1, 32, 8, 512, "cuda") == (min(4, sms // 2 // 8) if hopper else 1)  # 16 tiles
    assert decode_fused_splits(1, 32, 8, 256, "cuda") == 1  # 8 tiles: 2 per warp of one block
    assert decode_fused_splits(4, 32, 8, 4096, "cuda") == (min(8, sms // 2 // 32) if hopper else 1)
    assert decode_fused_splits(8, 32, 8, 4096, "cuda") == (min(8, sms // 2 // 64) if hopper else 1)
    step = decode_step([40], 8, 2, 128, 16, torch.float16, 128, seed=9)
    with pytest.raises(PluginError, match="splits must lie in 1..8"):
        decode_fused(**step, num_heads=8, num_kv_heads=2, head_dim=128, layer_idx=0, tokens_per_block=16,
                     softmax_scale=0.1, rotary_dim=128, splits=9)
    with pytest.raises(PluginError, match="k_rotation and k_bias need a quantized cache"):
        decode_fused(**step, num_heads=8, num_kv_heads=2, head_dim=128, layer_idx=0, tokens_per_block=16,
                     softmax_scale=0.1, rotary_dim=128, k_rotation=True)
    with pytest.raises(PluginError, match="kv_cache"):  # a float cache with scales
        decode_fused(**step, num_heads=8, num_kv_heads=2, head_dim=128, layer_idx=0, tokens_per_block=16,
                     softmax_scale=0.1, rotary_dim=128, kv_scales=torch.ones(2, device="cuda"))


@cuda
def test_decode_fused_skips_empty_sequences():
    step = make_step([1, 0, 1], [40, 10, 0], 16, 4, 128, 16, torch.bfloat16, 128, seed=5)
    before = step["kv_cache"].clone()
    fused_vs_reference(step, torch.bfloat16, num_heads=16, num_kv_heads=4, head_dim=128, layer_idx=1,
                       tokens_per_block=16, softmax_scale=0.08, rotary_dim=128, rope_style="neox")
    # Exactly two cache slots (k and v of 2 tokens x 4 kv heads) changed: nothing for the empty sequence.
    changed = (step["kv_cache"] != before).any(-1).sum().item()
    assert 0 < changed <= 2 * 2 * 4


@cuda
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("max_kv_len", [300, 4096])  # the fused kernel / RoPE + split-K + the quantizer
def test_fp8_codes_output_is_the_quantized_output(dtype, max_kv_len):
    """With out_scale the attention returns e4m3 codes, bitwise quantize_fp8 of its plain output (the
    static fp8 o_proj's quantizer fused in); a small scale makes codes saturate at 448 too."""
    from trtdsl.plugins.cuda import ops
    from trtdsl.plugins.cuda.quant_ops import quantize_fp8
    step = decode_step([300, 7, 128], 32, 8, 128, 16, dtype, 128, seed=21)
    attrs = dict(num_heads=32, num_kv_heads=8, head_dim=128, layer_idx=1, tokens_per_block=16,
                 softmax_scale=128 ** -0.5, rotary_dim=128, rope_style="neox", max_q_len=1, max_kv_len=max_kv_len)
    plain = ops.paged_attention(**step, **attrs)  # writes the step's K/V; the second call rewrites them
    scale = (plain.float().abs().amax() / 448 / 2).reshape(1)
    codes = ops.paged_attention(**step, **attrs, out_scale=scale)
    assert codes.dtype == torch.float8_e4m3fn and codes.shape == plain.shape
    assert torch.equal(codes.view(torch.uint8), quantize_fp8(plain, scale).view(torch.uint8))
    assert codes.float().abs().max().item() == 448.0
    with pytest.raises(PluginError, match="out_scale must hold one value"):
        ops.paged_attention(**step, **attrs, out_scale=scale.repeat(2))


@cuda
def test_paged_attention_dispatches_short_decode_to_fused(monkeypatch):
    """paged_attention with max_q_len == 1 runs the fused kernel for a short max_kv_len, and for a long
    one too while few sequences leave SMs for clusters (sm_90+); else RoPE + split-K."""
    from trtdsl.plugins.cuda import ops
    calls = []
    real = ops.decode_fused
    monkeypatch.setattr(ops, "decode_fused", lambda *a, **k: calls.append(k["max_kv_len"]) or real(*a, **k))
    step = decode_step([100, 5], 16, 4, 128, 16, torch.float16, 128, seed=11)
    ref_step = {k: v.clone() for k, v in step.items()}
    ref_step["block_tables"] = ref_step["block_tables"].clamp_min(0)
    attrs = dict(num_heads=16, num_kv_heads=4, head_dim=128, layer_idx=0, tokens_per_block=16,
                 softmax_scale=128 ** -0.5, rotary_dim=128, rope_style="neox")
    ref = paged_attention_reference(**ref_step, **attrs)
    out = ops.paged_attention(**step, **attrs, max_q_len=1, max_kv_len=100)
    assert calls == [100]
    assert rel_err(out, ref) < tol(torch.float16)
    long_bound = ops._FUSED_DECODE_MAX_KV + 1  # 2 sequences x 4 kv heads: room for clusters on sm_90+
    out = ops.paged_attention(**step, **attrs, max_q_len=1, max_kv_len=long_bound)
    hopper = torch.cuda.get_device_capability(0)[0] >= 9
    assert calls == ([100, long_bound] if hopper else [100])
    assert ops.decode_fused_splits(2, 16, 4, long_bound, "cuda") == (5 if hopper else 1)  # 17 tiles, 8 blocks
    assert rel_err(out, ref) < tol(torch.float16)  # the second call rewrote the same K/V
    # 40 blocks leave no room for clusters (half the SMs hold fewer than 2 clusters of each): split-K.
    many = decode_step([300] * 10, 16, 4, 128, 16, torch.float16, 128, seed=12)
    ops.paged_attention(**many, **attrs, max_q_len=1, max_kv_len=long_bound)
    assert len(calls) == (2 if hopper else 1)


@cuda
@pytest.mark.parametrize("splits", [None, 4])  # one block per (sequence, kv head) / clusters of 4
def test_decode_fused_cuda_graph_replay_with_new_metadata(splits):
    from trtdsl.plugins.cuda.ops import decode_fused
    h, kvh, d, tpb = 32, 8, 128, 16
    attrs = dict(num_heads=h, num_kv_heads=kvh, head_dim=d, layer_idx=0, tokens_per_block=tpb,
                 softmax_scale=d ** -0.5, rotary_dim=d, rope_style="neox")
    a = decode_step([1, 300, 20], h, kvh, d, tpb, torch.bfloat16, d, seed=1)
    b = decode_step([900, 2, 128], h, kvh, d, tpb, torch.bfloat16, d, seed=2)
    static = {k: torch.zeros_like(v) for k, v in b.items()}  # b has the bigger pool and tables
    static["rope_cos_sin"] = b["rope_cos_sin"].clone()
    decode_fused(**{k: v.clone() for k, v in static.items()}, **attrs, splits=splits)  # build + warm up
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = decode_fused(**static, **attrs, splits=splits)
    for step in (a, b):
        for k, v in step.items():
            if k != "rope_cos_sin":
                static[k].zero_()
                static[k][tuple(slice(0, n) for n in v.shape)] = v
        ref_step = {k: v.clone() for k, v in static.items()}
        ref_step["block_tables"] = ref_step["block_tables"].clamp_min(0)
        ref = paged_attention_reference(**ref_step, **attrs)
        graph.replay()
        torch.cuda.synchronize()
        assert rel_err(out, ref) < tol(torch.bfloat16)
        torch.testing.assert_close(static["kv_cache"], ref_step["kv_cache"], **cache_tol(torch.bfloat16))


def test_decode_fused_rejects_cpu_tensors():
    from trtdsl.plugins.cuda.ops import decode_fused
    with pytest.raises(PluginError, match="qkv must be a CUDA tensor"):
        decode_fused(torch.zeros(1, 384, dtype=torch.float16), *[torch.zeros(1, dtype=torch.int32)] * 5,
                     torch.zeros(1), torch.zeros(0), num_heads=1, num_kv_heads=1, head_dim=128, layer_idx=0,
                     tokens_per_block=16, softmax_scale=1.0, rotary_dim=0)


@cuda
def test_decode_fused_rejects_unsupported_head_dim():
    from trtdsl.plugins.cuda.ops import decode_fused
    step = decode_step([5], 2, 1, 96, 16, torch.float16, 0, seed=0)
    with pytest.raises(PluginError, match="head_dim 96"):
        decode_fused(**step, num_heads=2, num_kv_heads=1, head_dim=96, layer_idx=0, tokens_per_block=16,
                     softmax_scale=0.1, rotary_dim=0)
