"""The int4 tile-16 packing pass (``trtdsl.passes.int4_tile_gemm``): int4 weight-only GEMMs become
``trtdsl.int4_tile_gemm`` layers on repacked constants (the SwiGLU after gate_up fused in) that compute the
same values bit for bit on the torch executor, survive an engine round trip, and leave alone what the
layout does not take; a Builder-made int4_awq Llama engine gets them and its logits do not change."""

from __future__ import annotations

import pytest
import torch

import trtdsl
import trtdsl.functional as F
from trtdsl.backends.torch_executor import TorchExecutor
from trtdsl.builder import BuildConfig, Builder, load_model
from trtdsl.engine import Engine
from trtdsl.errors import ShapeError
from trtdsl.ir.network import LayerKind
from trtdsl.passes import optimize
from trtdsl.passes.int4_tile_gemm import INT4_TILE_GEMM, pack_int4_gemms
from trtdsl.quantization import clone_network, quantize_network


def _plugins(net: trtdsl.Network) -> list[str]:
    return [la.attrs["name"] for la in net.layers if la.kind is LayerKind.PLUGIN]


def _mlp(k: int = 256, inter: int = 256, out: int = 128) -> trtdsl.Network:
    g = torch.Generator().manual_seed(3)
    net = trtdsl.Network("mlp")
    x = net.add_input("x", "float32", ["tokens", k])
    net.add_profile(tokens=(1, 4, 32))
    gate_up = F.linear(x, torch.randn(2 * inter, k, generator=g) / k ** 0.5)
    F.linear(F.swiglu(gate_up), torch.randn(out, inter, generator=g) / inter ** 0.5).mark_output("y")
    return net


@pytest.mark.parametrize("mode,group", [("int4_wo", 64), ("int4_wo", 128), ("int4_wo", 0)])
def test_packed_network_is_the_canonical_one_bit_for_bit(mode, group):
    quantized = quantize_network(_mlp(), mode, group_size=group, progress=False)
    canonical, packed = clone_network(quantized), clone_network(quantized)
    optimize(canonical, fuse_swiglu=True, pack_int4=False)
    stats = optimize(packed, fuse_swiglu=True)
    assert stats["int4_tiles"] == 2
    assert _plugins(canonical) == ["trtdsl.weight_only_gemm", "trtdsl.swiglu", "trtdsl.weight_only_gemm"]
    assert _plugins(packed) == [INT4_TILE_GEMM, INT4_TILE_GEMM]
    gate_up, down = [la for la in packed.layers if la.kind is LayerKind.PLUGIN]
    assert gate_up.attrs["fields"] == {"out_features": 256, "in_features": 256, "group_size": group, "swiglu": True}
    assert down.attrs["fields"] == {"out_features": 128, "in_features": 256, "group_size": group, "swiglu": False}
    # the canonical constants are gone (dead), the packed ones named after them
    names = [la.outputs[0].name for la in packed.layers if la.kind is LayerKind.CONSTANT]
    assert names and all(n.endswith(".tiles") for n in names)
    x = torch.randn(7, 256)
    want = TorchExecutor(canonical).run({"x": x})["y"]
    got = TorchExecutor(packed).run({"x": x})["y"]
    torch.testing.assert_close(got, want, rtol=0, atol=0)


def test_shapes_the_layout_does_not_take_stay_canonical():
    # k = 192 is not a multiple of 128 (down's input), and group 32 is not a tile-16 group for gate_up
    net = quantize_network(_mlp(k=256, inter=96), "int4_wo", group_size=32, progress=False)
    assert pack_int4_gemms(net) == 0
    net = quantize_network(_mlp(k=256, inter=96), "int4_wo", group_size=64, progress=False)
    assert pack_int4_gemms(net) == 1  # gate_up only: down's k = 96
    assert "trtdsl.weight_only_gemm" in _plugins(net) and INT4_TILE_GEMM in _plugins(net)
    net = quantize_network(_mlp(), "int8_wo", group_size=64, progress=False)
    assert pack_int4_gemms(net) == 0  # int8 has no tile layout


def test_swiglu_with_another_reader_is_not_fused():
    net = quantize_network(_mlp(), "int4_wo", group_size=64, progress=False)
    optimize(net, fuse_swiglu=True, pack_int4=False)
    gate_up = next(la for la in net.layers if la.attrs.get("name") == "trtdsl.weight_only_gemm")
    gate_up.outputs[0].mark_output("gate_up")
    x = torch.randn(3, 256)
    want = TorchExecutor(net).run({"x": x})
    assert pack_int4_gemms(net) == 2
    assert _plugins(net) == [INT4_TILE_GEMM, "trtdsl.swiglu", INT4_TILE_GEMM]
    got = TorchExecutor(net).run({"x": x})
    for name in ("y", "gate_up"):
        torch.testing.assert_close(got[name], want[name], rtol=0, atol=0)


def test_engine_round_trip_keeps_the_packed_layers(tmp_path):
    net = quantize_network(_mlp(), "int4_wo", group_size=128, progress=False)
    optimize(net, fuse_swiglu=True)
    x = torch.randn(2, 256)
    want = TorchExecutor(net).run({"x": x})["y"]
    Engine(net, {}, None, None).save(tmp_path / "e")
    loaded = Engine.load(tmp_path / "e").network
    assert _plugins(loaded) == [INT4_TILE_GEMM, INT4_TILE_GEMM]
    torch.testing.assert_close(TorchExecutor(loaded).run({"x": x})["y"], want, rtol=0, atol=0)


def test_bad_pack_shapes_are_named():
    net = quantize_network(_mlp(), "int4_wo", group_size=64, progress=False)
    optimize(net, fuse_swiglu=True)
    gemm = next(la for la in net.layers if la.attrs.get("name") == INT4_TILE_GEMM)
    from trtdsl.plugins.registry import get_plugin
    spec = get_plugin(INT4_TILE_GEMM)
    fields = dict(gemm.attrs["fields"], in_features=128)
    with pytest.raises(ShapeError, match=r"x must be \[\.\.\., 128\]"):
        spec.shape_rule(gemm.inputs, fields)
    with pytest.raises(ShapeError, match="qpacked must be"):
        spec.shape_rule(gemm.inputs, dict(gemm.attrs["fields"], out_features=200))


def test_builder_int4_awq_llama_packs_and_keeps_its_logits(int4_llama_dir, generate_from_saved):
    model = load_model(int4_llama_dir, "float32")
    common = dict(max_batch_size=1, max_seq_len=64, quantization="int4_awq", quant_group_size=64,
                  calibration_tokens=128)
    # the deferred norms (tests/builder/test_deferred_norm.py) change roundings: off for a bit-exact check
    engines = {"packed": Builder(BuildConfig(**common, defer_norms="off")).build(model),
               "plain": Builder(BuildConfig(**common, fuse_swiglu="off")).build(model)}
    packed, plain = _plugins(engines["packed"].network), _plugins(engines["plain"].network)
    assert packed.count(INT4_TILE_GEMM) == 2 * 4  # qkv, o, gate_up (+ SwiGLU), down per layer
    assert "trtdsl.weight_only_gemm" not in packed and "trtdsl.swiglu" not in packed
    assert plain.count("trtdsl.weight_only_gemm") == 2 * 4 and INT4_TILE_GEMM not in plain
    outs = {name: generate_from_saved(engine, name, [[1, 7, 42, 3]], 4) for name, engine in engines.items()}
    assert torch.equal(outs["packed"]["output_ids"], outs["plain"]["output_ids"])
    torch.testing.assert_close(outs["packed"]["generation_logits"], outs["plain"]["generation_logits"],
                               rtol=0, atol=0)


def test_tensorrt_plan_of_a_packed_gemm():
    """The TensorRT lowering's plan (no TensorRT needed): one plugin, swiglu as an int attribute."""
    from trtdsl.backends.tensorrt.plugins import plan_plugin
    net = quantize_network(_mlp(), "int4_wo", group_size=64, progress=False)
    optimize(net, fuse_swiglu=True)
    gate_up, down = [la for la in net.layers if la.attrs.get("name") == INT4_TILE_GEMM]
    plan = plan_plugin(gate_up)
    assert plan.signature.qdp_name == "int4_tile_gemm" and plan.signature.inputs == ("x", "qpacked", "sz")
    assert plan.attrs == {"out_features": 256, "in_features": 256, "group_size": 64, "swiglu": 1}
    assert plan_plugin(down).attrs["swiglu"] == 0


def test_half_scales_pack_float16_and_stay_bit_for_bit():
    from trtdsl.quantization.int4_tiles import is_half_exact
    quantized = quantize_network(_mlp(), "int4_wo", group_size=64, half_scales=True, progress=False)
    scales = [la.attrs["value"] for la in quantized.layers
              if la.kind is LayerKind.CONSTANT and la.outputs[0].name.endswith((".scales", ".zeros"))]
    assert len(scales) == 4 and is_half_exact(*scales)
    canonical, packed = clone_network(quantized), clone_network(quantized)
    optimize(canonical, fuse_swiglu=True, pack_int4=False)
    optimize(packed, fuse_swiglu=True)
    sz = [la.outputs[0] for la in packed.layers
          if la.kind is LayerKind.CONSTANT and "scales.tiles" in la.outputs[0].name]
    assert len(sz) == 2 and all(t.dtype.value == "float16" for t in sz)
    x = torch.randn(5, 256)
    torch.testing.assert_close(TorchExecutor(packed).run({"x": x})["y"], TorchExecutor(canonical).run({"x": x})["y"],
                               rtol=0, atol=0)
    plain = quantize_network(_mlp(), "int4_wo", group_size=64, progress=False)
    optimize(plain, fuse_swiglu=True)
    assert all(la.outputs[0].dtype.value == "float32" for la in plain.layers
               if la.kind is LayerKind.CONSTANT and "scales.tiles" in la.outputs[0].name)
