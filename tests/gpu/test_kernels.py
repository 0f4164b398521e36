"""GPU tests of the trtdsl CUDA kernels against the plain-torch references (fresh random inputs)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from trtdsl.errors import PluginError
from trtdsl.plugins.attention_reference import paged_attention_reference, rope_cos_sin_table

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
DTYPES = [torch.float16, torch.bfloat16]


def rel_err(out: torch.Tensor, ref: torch.Tensor) -> float:
    assert torch.isfinite(out).all(), "non-finite values in the kernel output"
    return ((out.double() - ref.double()).norm() / ref.double().norm().clamp_min(1e-30)).item()


def tol(dtype: torch.dtype) -> float:
    return {torch.float32: 1e-5, torch.float16: 4e-3, torch.bfloat16: 2e-2}[dtype]


# ---------------------------------------------------------------- argument checks (run on CPU too)

def test_cpu_tensor_is_rejected_with_plugin_error():
    from trtdsl.plugins.cuda import rmsnorm, swiglu
    x = torch.randn(4, 8)
    with pytest.raises(PluginError, match="CUDA tensor"):
        rmsnorm(x, torch.ones(8))
    with pytest.raises(PluginError, match="CUDA tensor"):
        swiglu(x)


def test_missing_nvcc_is_a_plugin_error(monkeypatch):
    from trtdsl.plugins.cuda import _build
    monkeypatch.setenv("NVCC", "/nonexistent/nvcc")
    monkeypatch.setenv("CUDA_HOME", "/nonexistent")
    monkeypatch.setattr(_build.shutil, "which", lambda name: None)
    with pytest.raises(PluginError, match="nvcc not found"):
        _build.find_nvcc()


# ---------------------------------------------------------------- RMSNorm / SwiGLU

def rmsnorm_ref(x, w, eps, residual=None):
    if residual is not None:
        x = x + residual
    xf = x.float()
    return (xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps) * w.float()).to(x.dtype), x


@cuda
@pytest.mark.parametrize("dtype", [torch.float32, *DTYPES])
@pytest.mark.parametrize("hidden", [7, 1000, 1001, 4096, 4104, 8192])
@pytest.mark.parametrize("fused", [False, True])
def test_rmsnorm(dtype, hidden, fused):
    from trtdsl.plugins.cuda import rmsnorm
    rows = 37
    x = torch.randn(rows, hidden, device="cuda", dtype=dtype)
    w = torch.randn(hidden, device="cuda", dtype=dtype)
    res = torch.randn(rows, hidden, device="cuda", dtype=dtype) if fused else None
    ref, ref_res = rmsnorm_ref(x, w, 1e-5, res)
    if fused:
        out, new_res = rmsnorm(x, w, 1e-5, residual=res)
        torch.testing.assert_close(new_res, ref_res, rtol=0, atol=0)
    else:
        out = rmsnorm(x, w, 1e-5)
    assert rel_err(out, ref) < tol(dtype)


@cuda
def test_rmsnorm_in_place_residual():
    from trtdsl.plugins.cuda import rmsnorm
    x = torch.randn(5, 4096, device="cuda", dtype=torch.bfloat16)
    w = torch.randn(4096, device="cuda", dtype=torch.bfloat16)
    res = torch.randn_like(x)
    ref, ref_res = rmsnorm_ref(x, w, 1e-6, res)
    out, new_res = rmsnorm(x, w, 1e-6, residual=res, residual_out=res)
    assert new_res.data_ptr() == res.data_ptr()
    torch.testing.assert_close(res, ref_res, rtol=0, atol=0)
    assert rel_err(out, ref) < tol(torch.bfloat16)


@cuda
@pytest.mark.parametrize("dtype", [torch.float32, *DTYPES])
@pytest.mark.parametrize("inter", [1, 1000, 1001, 11008])
@pytest.mark.parametrize("rows", [1, 64])
def test_swiglu(dtype, inter, rows):
    from trtdsl.plugins.cuda import swiglu
    x = torch.randn(rows, 2 * inter, device="cuda", dtype=dtype) * 3
    gate, up = x.float().chunk(2, dim=-1)
    ref = F.silu(gate) * up
    assert rel_err(swiglu(x), ref) < tol(dtype) + 1e-3


# ---------------------------------------------------------------- packed / paged steps

def make_step(seq_lens, past_lens, num_heads, num_kv_heads, head_dim, tpb, dtype, rotary_dim, layers=2,
              seed=0):
    """Random step inputs; each sequence's blocks are a shuffled, disjoint set of pool blocks."""
    g = torch.Generator().manual_seed(seed)
    batch = len(seq_lens)
    totals = [p + n for p, n in zip(past_lens, seq_lens)]
    nblk = [max(1, -(-t // tpb)) for t in totals]
    max_blocks = max(nblk) + 1
    num_blocks = sum(nblk) + 3
    perm = torch.randperm(num_blocks, generator=g)
    bt = torch.full((batch, max_blocks), -1, dtype=torch.int32)  # unused entries must be ignored
    used = 0
    for s, k in enumerate(nblk):
        bt[s, :k] = perm[used:used + k].to(torch.int32)
        used += k
    tokens = sum(seq_lens)
    qkv = torch.randn(tokens, (num_heads + 2 * num_kv_heads) * head_dim, generator=g).to(dtype)
    cache = torch.randn(layers, num_blocks, 2, num_kv_heads, tpb, head_dim, generator=g).to(dtype)
    pos = torch.cat([torch.arange(p, p + n) for p, n in zip(past_lens, seq_lens)]).to(torch.int32)
    cu = torch.zeros(batch + 1, dtype=torch.int32)
    cu[1:] = torch.cumsum(torch.tensor(seq_lens), 0)
    inv_freq = 1.0 / (10000 ** (torch.arange(0, max(rotary_dim, 2), 2, dtype=torch.float64) / max(rotary_dim, 2)))
    table = rope_cos_sin_table(inv_freq, max(totals) + 1) if rotary_dim else torch.zeros(1, 0)
    dev = "cuda"
    return dict(qkv=qkv.to(dev), position_ids=pos.to(dev), seq_lens=torch.tensor(seq_lens, dtype=torch.int32).to(dev),
                past_lens=torch.tensor(past_lens, dtype=torch.int32).to(dev), cu_seqlens=cu.to(dev),
                block_tables=bt.to(dev), kv_cache=cache.to(dev), rope_cos_sin=table.to(dev).contiguous())


def run_both(step, *, max_q_len=None, **attrs):
    from trtdsl.plugins.cuda import paged_attention
    ref_step = {k: v.clone() for k, v in step.items()}
    ref_step["block_tables"] = ref_step["block_tables"].clamp_min(0)  # the reference indexes whole rows
    ref = paged_attention_reference(**ref_step, **attrs)
    seq_lens = step["seq_lens"].tolist()
    totals = [p + n for p, n in zip(step["past_lens"].tolist(), seq_lens)]
    out = paged_attention(**step, **attrs, max_q_len=max_q_len or max(max(seq_lens), 1), max_kv_len=max(totals))
    return out, ref, step["kv_cache"], ref_step["kv_cache"]


def cache_tol(dtype: torch.dtype) -> dict:
    # One ulp of the cache dtype: RoPE'd keys may round differently from torch by one ulp.
    eps = {torch.float16: 2 ** -10, torch.bfloat16: 2 ** -7}[dtype]
    return dict(rtol=eps, atol=eps)


def check_step(step, dtype, max_q_len=None, **attrs):
    qkv_before = step["qkv"].clone()
    out, ref, cache, ref_cache = run_both(step, max_q_len=max_q_len, **attrs)
    torch.testing.assert_close(step["qkv"], qkv_before, rtol=0, atol=0)  # qkv is an input only
    torch.testing.assert_close(cache, ref_cache, **cache_tol(dtype))
    rows = step["seq_lens"].sum().item()
    assert rel_err(out[:rows], ref[:rows]) < tol(dtype)


ATTN_CASES = [  # (seq_lens, past_lens)
    ([1], [0]),
    ([7], [0]),
    ([129], [0]),
    ([1000], [0]),
    ([7, 1, 129, 33], [0, 5, 40, 100]),   # chunked prefill mixed with generation tokens
    ([5, 0, 3, 64], [0, 10, 2, 191]),     # an empty sequence in the batch
]


@cuda
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("head_dim", [64, 128])
@pytest.mark.parametrize("case", range(len(ATTN_CASES)))
@pytest.mark.parametrize("heads", [(8, 8), (8, 2), (12, 4)])
@pytest.mark.parametrize("tpb", [16, 128])  # 128: one block-table lookup per 64-key tile
def test_context_attention(dtype, head_dim, case, heads, tpb):
    seq_lens, past_lens = ATTN_CASES[case]
    h, kvh = heads
    step = make_step(seq_lens, past_lens, h, kvh, head_dim, tpb, dtype, head_dim, seed=case)
    check_step(step, dtype, num_heads=h, num_kv_heads=kvh, head_dim=head_dim, layer_idx=1, tokens_per_block=tpb,
               softmax_scale=head_dim ** -0.5, rotary_dim=head_dim, rope_style="neox")


@cuda
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("rope", [(0, "neox"), (32, "neox"), (64, "gptj"), (32, "gptj")])
@pytest.mark.parametrize("heads", [(32, 1), (4, 4)])
def test_rope_variants_and_mqa(dtype, rope, heads):
    rotary_dim, style = rope
    h, kvh = heads
    step = make_step([129, 17], [3, 60], h, kvh, 64, 32, dtype, rotary_dim, seed=7)
    check_step(step, dtype, num_heads=h, num_kv_heads=kvh, head_dim=64, layer_idx=0, tokens_per_block=32,
               softmax_scale=0.1, rotary_dim=rotary_dim, rope_style=style)


@cuda
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("head_dim", [64, 128])
@pytest.mark.parametrize("heads", [(8, 8), (32, 8), (32, 1), (12, 4)])
@pytest.mark.parametrize("tpb", [16, 64])
def test_decode_attention(dtype, head_dim, heads, tpb):
    h, kvh = heads
    past = [0, 1, 17, 1000, 5000, 200]
    seq = [1, 1, 1, 1, 1, 0]
    step = make_step(seq, past, h, kvh, head_dim, tpb, dtype, head_dim, seed=head_dim + tpb)
    check_step(step, dtype, num_heads=h, num_kv_heads=kvh, head_dim=head_dim, layer_idx=1, tokens_per_block=tpb,
               softmax_scale=head_dim ** -0.5, rotary_dim=head_dim, rope_style="gptj")


@cuda
def test_decode_step_through_context_kernel():
    # max_q_len > 1 forces the context kernel on a decode-shaped step: both paths must agree.
    step = make_step([1, 1, 1], [10, 300, 77], 16, 4, 128, 16, torch.bfloat16, 128, seed=3)
    check_step(step, torch.bfloat16, max_q_len=4, num_heads=16, num_kv_heads=4, head_dim=128, layer_idx=0,
               tokens_per_block=16, softmax_scale=128 ** -0.5, rotary_dim=128, rope_style="neox")


@cuda
@pytest.mark.parametrize("max_q_len", [1, 64])
def test_paged_attention_cuda_graph(max_q_len):
    """Capture one step, then replay it with new metadata: no host value may be baked in."""
    from trtdsl.plugins.cuda import paged_attention
    h, kvh, d, tpb = 16, 4, 128, 16
    attrs = dict(num_heads=h, num_kv_heads=kvh, head_dim=d, layer_idx=0, tokens_per_block=tpb,
                 softmax_scale=d ** -0.5, rotary_dim=d, rope_style="neox")
    seqs = [max_q_len, 1, max_q_len // 2 or 1]
    a = make_step(seqs, [0, 40, 9], h, kvh, d, tpb, torch.float16, d, layers=1, seed=1)
    b = make_step(seqs, [500, 3, 100], h, kvh, d, tpb, torch.float16, d, layers=1, seed=2)
    bound = dict(max_q_len=max_q_len, max_kv_len=600)
    # Static buffers sized for both steps (b has the bigger pool / tables).
    static = {k: torch.zeros_like(v) for k, v in b.items()}
    for k in ("qkv", "position_ids", "seq_lens", "past_lens", "cu_seqlens"):
        static[k] = a[k].clone()
    static["rope_cos_sin"] = b["rope_cos_sin"].clone()
    static["block_tables"][:, : a["block_tables"].shape[1]] = a["block_tables"]
    static["kv_cache"][:, : a["kv_cache"].shape[1]] = a["kv_cache"]
    paged_attention(**{k: v.clone() for k, v in static.items()}, **attrs, **bound)  # build + warm up
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = paged_attention(**static, **attrs, **bound)
    for step in (a, b):
        for k, v in step.items():
            if k == "rope_cos_sin":
                continue  # the static table (b's) covers a's positions with the same angles
            if k in ("block_tables", "kv_cache"):
                static[k].zero_()
                static[k][tuple(slice(0, n) for n in v.shape)] = v
            else:
                static[k].copy_(v)
        ref_step = {k: v.clone() for k, v in static.items()}
        ref_step["block_tables"] = ref_step["block_tables"].clamp_min(0)
        ref = paged_attention_reference(**ref_step, **attrs)
        graph.replay()
        torch.cuda.synchronize()
        assert rel_err(out, ref) < tol(torch.float16)
        torch.testing.assert_close(static["kv_cache"], ref_step["kv_cache"], **cache_tol(torch.float16))
