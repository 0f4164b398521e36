"""The fp8 activation fusion (``trtdsl/passes/fp8_act_fuse.py``) on the torch backend: a fused
static-fp8 tiny Llama computes exactly (bit for bit) what the unfused quantized network computes, the
pass leaves dynamic fp8, mixed consumers, differing scales and network outputs alone, bad plugin inputs
raise typed errors, the engine format round-trips the fused graph, and the TensorRT lowering names
the plugins it cannot lower."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

import trtdsl.functional as F
from trtdsl.backends.torch_executor import TorchExecutor
from trtdsl.errors import BackendError, DTypeError, ShapeError
from trtdsl.ir.network import LayerKind, Network
from trtdsl.passes import fp8_act_fuse, optimize
from trtdsl.quantization import clone_network, prefill_feeds, quantize_network, token_chunks
from trtdsl.quantization.numerics import FP8_MAX, quantize_fp8
from trtdsl.quantization.plugins import FP8_GEMM

transformers = pytest.importorskip("transformers")

VOCAB = 128
FUSED = {fp8_act_fuse.RMS_NORM_FP8, fp8_act_fuse.ADD_RMS_NORM_FP8, fp8_act_fuse.SWIGLU_FP8,
         fp8_act_fuse.ATTENTION_FP8, fp8_act_fuse.ATTENTION_QUANT_KV_FP8}


def _plugins(net: Network) -> list[str]:
    return [layer.attrs["name"] for layer in net.layers if layer.kind is LayerKind.PLUGIN]


@pytest.fixture(scope="module")
def llama(tmp_path_factory: pytest.TempPathFactory) -> Path:
    torch.manual_seed(0)
    config = transformers.LlamaConfig(vocab_size=VOCAB, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
                                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128)
    path = Path(tmp_path_factory.mktemp("tiny_llama_fp8"))
    transformers.LlamaForCausalLM(config).save_pretrained(path)
    return path


def _quantized(path: Path, dtype: str, **options) -> tuple[Network, list[dict]]:
    from trtdsl.models import from_hugging_face
    net = from_hugging_face(path, dtype).build_network(max_batch_size=2, max_num_tokens=32, max_seq_len=64,
                                                       tokens_per_block=8)
    ids = torch.randint(0, VOCAB, (128,), generator=torch.Generator().manual_seed(1)).tolist()
    feeds = list(prefill_feeds(net, token_chunks(ids, 16, 8), batch_size=2))
    return quantize_network(net, "fp8", calibration_feeds=feeds, progress=False, **options), feeds


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_fused_llama_is_bitwise_the_unfused_network(llama: Path, dtype: str) -> None:
    qnet, feeds = _quantized(llama, dtype)
    unfused = clone_network(qnet)
    stats_u = optimize(unfused, fuse_add_rms_norm=True, fuse_swiglu=True, fuse_fp8_activations=False)
    stats = optimize(qnet, fuse_add_rms_norm=True, fuse_swiglu=True)  # default: on with the fusions
    # 2 layers: layer 0's input RMSNorm, 3 add + RMSNorm before qkv / gate_up, 2 attentions before
    # o_proj, 2 SwiGLUs before down.
    assert stats["fp8_activations"] == 8 and stats_u["fp8_activations"] == 0
    names = _plugins(qnet)
    assert names.count(fp8_act_fuse.RMS_NORM_FP8) == 1 and names.count(fp8_act_fuse.ADD_RMS_NORM_FP8) == 3
    assert names.count(fp8_act_fuse.SWIGLU_FP8) == 2 and names.count(fp8_act_fuse.ATTENTION_FP8) == 2
    assert "trtdsl.attention" not in names
    gemms = [g for g in qnet.layers if g.kind is LayerKind.PLUGIN and g.attrs["name"] == FP8_GEMM]
    assert len(gemms) == 8 and all(g.inputs[0].dtype.value == "fp8" for g in gemms)  # no quantizer left
    # producers replaced in place, no layer added; the default centering's 4 subtractions (qkv / gate_up
    # inputs) went into the norms and its 8 bias adds (W mean; bias correction) into the GEMMs
    assert stats["layers"] == stats_u["layers"] - 12
    for feed in (feeds[0], feeds[-1]):  # a prefill chunk and a later one reading the cache
        want = TorchExecutor(unfused).run(feed)
        got = TorchExecutor(qnet).run(feed)
        assert want.keys() == got.keys()
        for name in want:
            assert torch.equal(got[name], want[name]), name


def test_fused_attention_round_trips_and_checks_its_scale(llama: Path, tmp_path: Path) -> None:
    from trtdsl.engine import Engine
    qnet, feeds = _quantized(llama, "bfloat16")
    optimize(qnet, fuse_add_rms_norm=True, fuse_swiglu=True)
    Engine(qnet).save(tmp_path / "e")
    loaded = Engine.load(tmp_path / "e").network
    assert _plugins(loaded).count(fp8_act_fuse.ATTENTION_FP8) == 2
    want, got = TorchExecutor(qnet).run(feeds[0]), TorchExecutor(loaded).run(feeds[0])
    assert all(torch.equal(got[name], want[name]) for name in want)
    attn = next(g for g in qnet.layers if g.kind is LayerKind.PLUGIN and g.attrs["name"] == fp8_act_fuse.ATTENTION_FP8)
    assert attn.outputs[0].dtype.value == "fp8" and attn.attrs["fields"]["layer_idx"] == 0
    bad = F.constant(torch.tensor([0.5, 0.5]), "float32", network=qnet)
    with pytest.raises(ShapeError, match=r"trtdsl\.attention_fp8.*must be \[1\]"):
        F.plugin(fp8_act_fuse.ATTENTION_FP8, [*attn.inputs[:-1], bad], **attn.attrs["fields"])
    with pytest.raises(ShapeError, match="expects the attention's 8 inputs"):
        F.plugin(fp8_act_fuse.ATTENTION_FP8, attn.inputs[:-1], **attn.attrs["fields"])


@pytest.mark.parametrize("options", [{}, {"kv_cache_rotation": "hadamard", "kv_cache_center_k": True}])
def test_attention_over_a_quantized_kv_cache_writes_codes(llama: Path, options: dict, tmp_path: Path) -> None:
    """trtdsl.attention_quant_kv (with or without the rotation and the mean key) becomes
    trtdsl.attention_quant_kv_fp8: the same network outputs, bit for bit, and the same cache, also
    after an engine file round trip."""
    from trtdsl.engine import Engine
    qnet, _ = _quantized(llama, "float32", kv_cache_dtype="fp8", **options)
    ids = torch.randint(0, VOCAB, (64,), generator=torch.Generator().manual_seed(2)).tolist()
    feeds = list(prefill_feeds(qnet, token_chunks(ids, 16, 4), batch_size=2))  # an fp8 pool
    unfused = clone_network(qnet)
    optimize(unfused, fuse_add_rms_norm=True, fuse_swiglu=True, fuse_fp8_activations=False)
    stats = optimize(qnet, fuse_add_rms_norm=True, fuse_swiglu=True)
    names = _plugins(qnet)
    assert stats["fp8_activations"] == 8 and fp8_act_fuse.ATTENTION_FP8 not in names
    assert names.count(fp8_act_fuse.ATTENTION_QUANT_KV_FP8) == 2 and "trtdsl.attention_quant_kv" not in names
    attn = next(g for g in qnet.layers if g.kind is LayerKind.PLUGIN and g.attrs["name"] == fp8_act_fuse.ATTENTION_QUANT_KV_FP8)
    assert len(attn.inputs) == (11 if options else 10) and attn.outputs[0].dtype.value == "fp8"
    Engine(qnet).save(tmp_path / "e")
    loaded = Engine.load(tmp_path / "e").network
    assert _plugins(loaded).count(fp8_act_fuse.ATTENTION_QUANT_KV_FP8) == 2
    runs = []
    for net in (unfused, qnet, loaded):
        for feed in feeds:  # each network starts from empty pools
            feed["kv_cache"].zero_()
        executor = TorchExecutor(net)
        runs.append([(executor.run(feed), feed["kv_cache"].clone()) for feed in (feeds[0], feeds[-1])])
    for (want, want_cache), *others in zip(*runs):
        assert want_cache.dtype == torch.float8_e4m3fn
        for got, got_cache in others:
            assert torch.equal(got_cache.view(torch.uint8), want_cache.view(torch.uint8))
            assert all(torch.equal(got[name], want[name]) for name in want)
    with pytest.raises(ShapeError, match="expects trtdsl.attention_quant_kv's 9 or 10 inputs"):
        F.plugin(fp8_act_fuse.ATTENTION_QUANT_KV_FP8, attn.inputs[:-2], **attn.attrs["fields"])


def test_dynamic_fp8_is_left_alone(llama: Path) -> None:
    qnet, _ = _quantized(llama, "float32", fp8_dynamic=True)
    stats = optimize(qnet, fuse_add_rms_norm=True, fuse_swiglu=True, fuse_fp8_activations=True)
    assert stats["fp8_activations"] == 0 and not FUSED & set(_plugins(qnet))


# -- hand-built graphs ----------------------------------------------------------------------------------
K, N = 32, 16


def _gemm(net: Network, x, scale: float | None, seed: int):
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(N, K, generator=g)
    w_scale = w.abs().amax(1) / FP8_MAX
    consts = [F.constant(quantize_fp8(w, w_scale[:, None]), "fp8", network=net),
              F.constant(w_scale, "float32", network=net)]
    if scale is not None:
        consts.append(F.constant(torch.tensor([scale]), "float32", network=net))
    return F.plugin(FP8_GEMM, [x, *consts])[0]


def _norm_net(scales: tuple, other_reader: bool = False, mark_norm: bool = False) -> Network:
    """x -> RMSNorm -> one fp8 GEMM per entry of ``scales`` (None: dynamic); outputs summed."""
    net = Network("norm_gemms")
    x = net.add_input("x", "float32", [-1, K])
    y = F.rms_norm(x, torch.rand(K) + 0.5, eps=1e-5)
    outs = [_gemm(net, y, s, i) for i, s in enumerate(scales)]
    if other_reader:
        outs.append(F.relu(y)[..., :N])
    total = outs[0]
    for o in outs[1:]:
        total = total + o
    net.mark_output(total, "out")
    if mark_norm:
        net.mark_output(y, "normed")
    return net


CASES = [((0.01, 0.01), False, False, 1),  # two GEMMs, equal scale values in separate constants
         ((0.01, 0.02), False, False, 0),  # differing scales
         ((0.01, None), False, False, 0),  # one dynamic consumer
         ((0.01,), True, False, 0),  # a non-GEMM consumer
         ((0.01,), False, True, 0)]  # the normalized value is a network output


@pytest.mark.parametrize("scales,other,mark,expected", CASES)
def test_pass_applies_only_to_static_gemms_sharing_a_scale(scales, other, mark, expected) -> None:
    net = _norm_net(scales, other, mark)
    x = torch.randn(5, K) * 3
    want = TorchExecutor(net).run({"x": x})
    n_layers = len(net.layers)
    assert fp8_act_fuse.fuse_fp8_activations(net) == expected
    assert len(net.layers) == n_layers
    assert (fp8_act_fuse.RMS_NORM_FP8 in _plugins(net)) == bool(expected)
    got = TorchExecutor(net).run({"x": x})
    for name in want:
        assert torch.equal(got[name], want[name])


def test_swiglu_fusion_saturates_like_the_gemm() -> None:
    """A scale small enough that many codes saturate at 448: still the unfused result exactly."""
    net = Network("swiglu_gemm")
    x = net.add_input("x", "bfloat16", [-1, 2 * K])
    (h,) = F.plugin("trtdsl.swiglu", [x])
    net.mark_output(_gemm(net, h, 1e-3, 0), "out")
    feed = {"x": torch.randn(3, 2 * K).bfloat16() * 4}
    want = TorchExecutor(net).run(feed)["out"]
    assert fp8_act_fuse.fuse_fp8_activations(net) == 1 and fp8_act_fuse.SWIGLU_FP8 in _plugins(net)
    assert torch.equal(TorchExecutor(net).run(feed)["out"], want)
    codes = fp8_act_fuse.swiglu_fp8_reference([feed["x"], torch.tensor([1e-3])], {})
    assert codes.dtype == torch.float8_e4m3fn and float(codes.float().abs().max()) == FP8_MAX


def test_engine_round_trip_of_the_fused_graph(tmp_path: Path) -> None:
    from trtdsl.engine import Engine
    net = _norm_net((0.01, 0.01))
    assert fp8_act_fuse.fuse_fp8_activations(net) == 1
    x = torch.randn(4, K)
    Engine(net).save(tmp_path / "e")
    loaded = Engine.load(tmp_path / "e").network
    assert torch.equal(TorchExecutor(loaded).run({"x": x})["out"], TorchExecutor(net).run({"x": x})["out"])


# -- typed errors --------------------------------------------------------------------------------------
def _inputs(dtype: str = "float32"):
    net = Network("bad")
    return net, net.add_input("x", dtype, [-1, K])


@pytest.mark.parametrize("scale,err,words", [
    (torch.tensor([0.5]).half(), DTypeError, "input_scale"),
    (torch.tensor([0.5, 0.5]), ShapeError, "must be [1]"),
])
def test_bad_scale_is_a_typed_error(scale, err, words) -> None:
    net, x = _inputs()
    s = F.constant(scale, network=net)
    w = F.constant(torch.ones(K), "float32", network=net)
    with pytest.raises(err, match=r"trtdsl\.rms_norm_fp8") as info:
        F.plugin(fp8_act_fuse.RMS_NORM_FP8, [x, w, s], axes=(1,), epsilon=1e-6)
    assert words in str(info.value)
    with pytest.raises(err, match=r"trtdsl\.swiglu_fp8"):
        F.plugin(fp8_act_fuse.SWIGLU_FP8, [x, s])


def test_mismatched_norm_dtypes_and_odd_swiglu_are_typed_errors() -> None:
    net, x = _inputs()
    s = F.constant(torch.tensor([0.5]), "float32", network=net)
    w16 = F.constant(torch.ones(K), "float16", network=net)
    with pytest.raises(DTypeError, match="add_rms_norm_fp8"):
        F.plugin(fp8_act_fuse.ADD_RMS_NORM_FP8, [x, x, w16, s], axes=(1,), epsilon=1e-6)
    odd = net.add_input("odd", "float32", [-1, 7])
    with pytest.raises(ShapeError, match="even"):
        F.plugin(fp8_act_fuse.SWIGLU_FP8, [odd, s])


def test_fp8_gemm_with_codes_checks_its_inputs() -> None:
    net = Network("codes")
    xq = net.add_input("xq", "fp8", [-1, K])
    w = F.constant(torch.zeros(N, K).to(torch.float8_e4m3fn), "fp8", network=net)
    ws = F.constant(torch.ones(N), "float32", network=net)
    s = F.constant(torch.tensor([0.5]), "float32", network=net)
    with pytest.raises(ShapeError, match="static input list"):
        F.plugin(FP8_GEMM, [xq, w, ws], out_dtype=F.constant(torch.ones(1), network=net).dtype)
    with pytest.raises(DTypeError, match="out_dtype"):
        F.plugin(FP8_GEMM, [xq, w, ws, s])
    (y,) = F.plugin(FP8_GEMM, [xq, w, ws, s], out_dtype=s.dtype)
    assert y.dtype.value == "float32" and tuple(y.shape[1:]) == (N,)
    x16 = net.add_input("x16", "float16", [-1, K])
    with pytest.raises(DTypeError, match="out_dtype"):  # a float x keeps its own dtype
        F.plugin(FP8_GEMM, [x16, w, ws, s], out_dtype=s.dtype)


def test_fp8_gemm_reference_on_codes_matches_the_quantizing_one() -> None:
    from trtdsl.dtypes import DType
    from trtdsl.quantization.plugins import fp8_gemm_reference
    g = torch.Generator().manual_seed(3)
    x, w = torch.randn(6, K, generator=g).bfloat16(), torch.randn(N, K, generator=g)
    ws, s = w.abs().amax(1) / FP8_MAX, torch.tensor([0.004])
    wq = quantize_fp8(w, ws[:, None])
    want = fp8_gemm_reference([x, wq, ws, s], {})
    got = fp8_gemm_reference([quantize_fp8(x, s), wq, ws, s], {"out_dtype": DType.bfloat16})
    assert got.dtype == torch.bfloat16 and torch.equal(got, want)


# -- TensorRT lowering --------------------------------------------------------------------------------
def test_tensorrt_lowers_the_quantizers_natively_and_rejects_gemms_on_codes() -> None:
    from trtdsl.backends.tensorrt import NATIVE_PLUGIN_LOWERINGS
    from trtdsl.backends.tensorrt.plugins import plan_plugin
    assert FUSED <= set(NATIVE_PLUGIN_LOWERINGS)  # norm / SwiGLU layers + an FP8 quantize layer
    net = _norm_net((0.01, 0.01))
    fp8_act_fuse.fuse_fp8_activations(net)
    gemm = next(layer for layer in net.layers if layer.kind is LayerKind.PLUGIN and layer.attrs["name"] == FP8_GEMM)
    with pytest.raises(BackendError, match=r"trtdsl\.fp8_gemm.*out_dtype"):
        plan_plugin(gemm)
