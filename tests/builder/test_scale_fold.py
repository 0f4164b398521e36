"""fold_channel_scales: the multiply AWQ / SmoothQuant leave before down_proj disappears into the
gate_up GEMM's dequantization scales, and the network computes the same function."""

from __future__ import annotations

import pytest
import torch

import trtdsl
import trtdsl.functional as F
from trtdsl.backends.torch_executor import TorchExecutor
from trtdsl.ir.network import LayerKind, Network
from trtdsl.passes import fold_channel_scales, optimize
from trtdsl.quantization import quantize_network

K, INTER = 64, 96


def _param(name: str, value: torch.Tensor) -> trtdsl.Parameter:
    p = trtdsl.Parameter(tuple(value.shape), value=value)
    p.qualname = name
    return p


def build_swiglu_mlp(extra_reader: bool = False) -> Network:
    """``down(swiglu(gate_up(rms_norm(x))))``, the GatedMLP of the Llama models."""
    g = torch.Generator().manual_seed(0)
    net = Network("swiglu_mlp")
    x = net.add_input("x", "float32", ["tokens", K])
    norm = _param("norm.weight", torch.rand(K, generator=g) + 0.5)
    gate_up = _param("gate_up.weight", torch.randn(2 * INTER, K, generator=g) / K ** 0.5)
    down = _param("down.weight", torch.randn(K, INTER, generator=g) / INTER ** 0.5)
    h = F.linear(F.rms_norm(x, norm, eps=1e-6), gate_up)
    F.linear(F.swiglu(h), down).mark_output("y")
    if extra_reader:  # the gate_up output is also an output: its rows must not change
        h.mark_output("gate_up")
    return net


def feeds() -> list[dict[str, torch.Tensor]]:
    out = []
    for seed in range(4):
        g = torch.Generator().manual_seed(seed)
        out.append({"x": torch.randn(24, K, generator=g) * torch.logspace(-1, 1, K)})
    return out


def _constant_multiplies(net: Network) -> int:
    """Elementwise products with a constant operand (what AWQ / SmoothQuant insert)."""
    producers = {id(t): layer for layer in net.layers for t in layer.outputs}

    def from_constant(t: trtdsl.Tensor) -> bool:
        layer = producers.get(id(t))
        while layer is not None and layer.kind is LayerKind.SHUFFLE:
            layer = producers.get(id(layer.inputs[0]))
        return layer is not None and layer.kind is LayerKind.CONSTANT
    return sum(1 for layer in net.layers if layer.kind is LayerKind.ELEMENTWISE and
               layer.attrs.get("op") == "prod" and any(from_constant(t) for t in layer.inputs))


@pytest.mark.parametrize("mode,options", [("int4_awq", {"group_size": 32}), ("int8_sq", {}),
                                          ("int4_awq", {"group_size": 32, "zero_point": False})])
def test_down_proj_scale_folds_into_gate_up(mode: str, options: dict) -> None:
    qnet = quantize_network(build_swiglu_mlp(), mode, calibration_feeds=feeds(), progress=False, **options)
    before = _constant_multiplies(qnet)
    assert before == 1, "precondition: the pass left one multiply before down_proj"
    x = feeds()[0]["x"] * 1.3
    want = TorchExecutor(qnet).run({"x": x})["y"]
    folded_net = quantize_network(build_swiglu_mlp(), mode, calibration_feeds=feeds(), progress=False, **options)
    assert fold_channel_scales(folded_net) == 1
    assert _constant_multiplies(folded_net) == 0
    got = TorchExecutor(folded_net).run({"x": x})["y"]
    # int8_sq re-quantizes the down input per token: a last-bit change may flip one rounding.
    tol = 1e-5 if mode != "int8_sq" else 2e-2
    assert (got - want).abs().max() <= tol * want.abs().max()


def test_the_unquantized_copy_is_untouched() -> None:
    float_net = build_swiglu_mlp()
    qnet = quantize_network(float_net, "int4_awq", calibration_feeds=feeds(), progress=False, group_size=32)
    x = feeds()[1]["x"]
    want = TorchExecutor(qnet).run({"x": x})["y"]
    fold_channel_scales(qnet)
    # Constants are shared between network clones: the fold must write new tensors.
    again = quantize_network(float_net, "int4_awq", calibration_feeds=feeds(), progress=False, group_size=32)
    assert torch.equal(TorchExecutor(again).run({"x": x})["y"], want)


def test_no_fold_when_the_gemm_output_has_another_reader() -> None:
    qnet = quantize_network(build_swiglu_mlp(extra_reader=True), "int4_awq", calibration_feeds=feeds(),
                            progress=False, group_size=32)
    assert fold_channel_scales(qnet) == 0
    assert _constant_multiplies(qnet) == 1


def test_optimize_folds_before_fusing_swiglu() -> None:
    qnet = quantize_network(build_swiglu_mlp(), "int4_awq", calibration_feeds=feeds(), progress=False,
                            group_size=32)
    x = feeds()[2]["x"]
    want = TorchExecutor(qnet).run({"x": x})["y"]
    stats = optimize(qnet, fuse_swiglu=True)
    assert stats["scale_fold"] == 1 and stats["swiglu"] == 1
    got = TorchExecutor(qnet).run({"x": x})["y"]
    assert torch.allclose(got, want, rtol=1e-5, atol=1e-5 * float(want.abs().max()))


@pytest.fixture(scope="module")
def tiny_llama_net(tmp_path_factory: pytest.TempPathFactory) -> Network:
    transformers = pytest.importorskip("transformers")
    from trtdsl.models import from_hugging_face
    torch.manual_seed(0)
    config = transformers.LlamaConfig(vocab_size=128, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
                                      num_attention_heads=4, num_key_value_heads=2)
    path = tmp_path_factory.mktemp("tiny_llama")
    transformers.LlamaForCausalLM(config).save_pretrained(path)
    return from_hugging_face(path, "float32").build_network(max_batch_size=2, max_num_tokens=64, max_seq_len=64,
                                                            tokens_per_block=16, context_logits=True)


def _llama_feeds(net: Network) -> list[dict[str, torch.Tensor]]:
    from trtdsl.quantization import prefill_feeds
    g = torch.Generator().manual_seed(3)
    chunks = [torch.randint(0, 128, (32,), generator=g).tolist() for _ in range(4)]
    return list(prefill_feeds(net, chunks, batch_size=2))


def _o_proj_multiplies(net: Network) -> list[trtdsl.Tensor]:
    """The constant operand of each multiply reading an attention output."""
    out = []
    for layer in net.layers:
        if layer.kind is LayerKind.ELEMENTWISE and layer.attrs.get("op") == "prod":
            a, b = layer.inputs
            if a.producer is not None and a.producer.attrs.get("name") == "trtdsl.attention":
                out.append(b)
    return out


@pytest.mark.parametrize("tied", [True, False])
def test_o_proj_scale_folds_into_v_rows_only_when_tied_per_kv_group(tiny_llama_net: Network, tied: bool) -> None:
    feeds = _llama_feeds(tiny_llama_net)
    qnet = quantize_network(tiny_llama_net, "int4_awq", calibration_feeds=feeds, progress=False, group_size=32)
    consts = _o_proj_multiplies(qnet)
    assert len(consts) == 2, "precondition: AWQ scaled both o_proj inputs"
    g = torch.Generator().manual_seed(5)
    for t in consts:  # give each multiply a tied (or untied) factor: 4 heads in 2 K/V groups of 2
        src = t.producer
        while src.kind is not LayerKind.CONSTANT:
            src = src.inputs[0].producer
        per_group = torch.rand(2, 1, 16, generator=g) + 0.5
        c = per_group.expand(2, 2, 16) if tied else torch.rand(2, 2, 16, generator=g) + 0.5
        src.attrs["value"] = c.reshape(src.attrs["value"].shape).to(src.attrs["value"].dtype)
    feed = {k: v.clone() for k, v in feeds[0].items()}
    want = TorchExecutor(qnet).run(feed)["logits"]
    folded = fold_channel_scales(qnet)
    assert folded == (4 if tied else 2)  # (the down_proj multiplies always fold)
    assert len(_o_proj_multiplies(qnet)) == (0 if tied else 2)
    got = TorchExecutor(qnet).run({k: v.clone() for k, v in feeds[0].items()})["logits"]
    assert torch.allclose(got, want, rtol=1e-4, atol=1e-4 * float(want.abs().max()))


def _weight_only_tables(net: Network) -> list[torch.Tensor]:
    """Scales and zeros of every weight-only GEMM (the constants behind its inputs 2 and 3)."""
    from trtdsl.quantization.graph import constant_source
    tables = []
    for layer in net.layers:
        if layer.kind is LayerKind.PLUGIN and layer.attrs.get("name") == "trtdsl.weight_only_gemm":
            tables += [constant_source(t).attrs["value"] for t in layer.inputs[2:4]]
    return tables


@pytest.mark.parametrize("half", [True, False])
def test_half_scale_tables_stay_half_after_the_fold(tiny_llama_net: Network, half: bool) -> None:
    from trtdsl.quantization.int4_tiles import is_half_exact
    feeds = _llama_feeds(tiny_llama_net)
    qnet = quantize_network(tiny_llama_net, "int4_awq", calibration_feeds=feeds, progress=False, group_size=32,
                            half_scales=half)
    assert is_half_exact(*_weight_only_tables(qnet)) == half, "precondition: the quantizer's tables"
    want = TorchExecutor(qnet).run({k: v.clone() for k, v in feeds[1].items()})["logits"]
    assert fold_channel_scales(qnet) == 4  # down_proj and o_proj of both layers
    # A float16 table stays one (the tile-16 packing stores it in float16); a float32 table is
    # scaled exactly, so its products are not float16 values.
    assert is_half_exact(*_weight_only_tables(qnet)) == half
    got = TorchExecutor(qnet).run({k: v.clone() for k, v in feeds[1].items()})["logits"]
    # Rounding a folded scale to float16 moves it by <= 2^-11 of itself.
    rtol = 2e-3 if half else 1e-4
    assert torch.allclose(got, want, rtol=rtol, atol=rtol * float(want.abs().max()))
    if half:
        assert not torch.allclose(got, want, rtol=1e-6, atol=0.0), "the folded scales were rounded"
