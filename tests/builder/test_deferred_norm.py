"""The deferred-norm pass (``trtdsl.passes.deferred_norm``): an add + RMSNorm between int4 tile GEMMs moves
into a ``trtdsl.int4_tile_gemm_add_norm`` producer and ``trtdsl.int4_tile_gemm_normed`` consumers. On the
torch executor (CPU) the rewritten network agrees with the unfused one: within float rounding up to
``max_deferred_rows`` tokens, bit for bit beyond (where the pair is the unfused computation); it survives
an engine round trip; patterns it cannot take stay; the shape rules name bad inputs; a Builder-made
int4_awq Llama keeps its greedy tokens and logits."""

from __future__ import annotations

import pytest
import torch

import trtdsl
import trtdsl.functional as F
from trtdsl.backends.torch_executor import TorchExecutor
from trtdsl.engine import Engine
from trtdsl.errors import DTypeError, ShapeError
from trtdsl.ir.network import LayerKind
from trtdsl.passes import optimize
from trtdsl.passes.deferred_norm import ADD_NORM, MAX_DEFERRED_ROWS, NORMED
from trtdsl.passes.int4_tile_gemm import INT4_TILE_GEMM
from trtdsl.plugins.registry import get_plugin
from trtdsl.quantization import clone_network, quantize_network

HIDDEN, INTER = 256, 128


def _plugins(net: trtdsl.Network) -> list[str]:
    return [la.attrs["name"] for la in net.layers if la.kind is LayerKind.PLUGIN]


def _block(dtype: str = "float32", extra_reader: bool = False, mark_total: bool = True) -> trtdsl.Network:
    """``h = r + o(a)``; ``y = down(swiglu(gate_up(rms_norm(h))))``; and a qkv-like second reader of the
    norm. ``extra_reader``: the normed value also feeds a pointwise layer (not a tile GEMM)."""
    g = torch.Generator().manual_seed(11)
    net = trtdsl.Network("block")
    a = net.add_input("a", dtype, ["tokens", HIDDEN])
    r = net.add_input("r", dtype, ["tokens", HIDDEN])
    net.add_profile(tokens=(1, 4, 64))
    w = {name: (torch.randn(shape, generator=g) / shape[1] ** 0.5).to(getattr(torch, dtype))
         for name, shape in (("o", (HIDDEN, HIDDEN)), ("gate_up", (2 * INTER, HIDDEN)), ("qkv", (384, HIDDEN)),
                             ("down", (HIDDEN, INTER)))}
    gamma = (torch.rand(HIDDEN, generator=g) + 0.5).to(getattr(torch, dtype))
    h = r + F.linear(a, w["o"])
    normed = F.rms_norm(h, gamma, eps=1e-5)
    F.linear(F.swiglu(F.linear(normed, w["gate_up"])), w["down"]).mark_output("y")
    F.linear(normed, w["qkv"]).mark_output("qkv")
    if mark_total:
        h.mark_output("h")
    if extra_reader:
        (normed * 2.0).mark_output("side")
    return net


def _pair(net: trtdsl.Network, group: int = 64) -> tuple[trtdsl.Network, trtdsl.Network, dict]:
    quantized = quantize_network(net, "int4_wo", group_size=group, progress=False)
    unfused, deferred = clone_network(quantized), clone_network(quantized)
    optimize(unfused, fuse_add_rms_norm=True, fuse_swiglu=True, defer_norms=False)
    stats = optimize(deferred, fuse_add_rms_norm=True, fuse_swiglu=True)
    return unfused, deferred, stats


def _feeds(tokens: int, dtype: torch.dtype = torch.float32) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(tokens)
    return {"a": torch.randn(tokens, HIDDEN, generator=g).to(dtype),
            "r": (4 * torch.randn(tokens, HIDDEN, generator=g)).to(dtype)}


@pytest.mark.parametrize("group", [64, 128])
def test_block_is_rewritten_and_agrees_with_the_unfused_layers(group):
    unfused, deferred, stats = _pair(_block(), group)
    assert stats["deferred_norms"] == 1
    assert _plugins(unfused) == [INT4_TILE_GEMM, "trtdsl.add_rms_norm", INT4_TILE_GEMM, INT4_TILE_GEMM,
                                 INT4_TILE_GEMM]
    assert sorted(_plugins(deferred)) == sorted([ADD_NORM, NORMED, NORMED, INT4_TILE_GEMM])
    producer = next(la for la in deferred.layers if la.attrs.get("name") == ADD_NORM)
    assert producer.attrs["fields"] == {"out_features": HIDDEN, "in_features": HIDDEN, "group_size": group,
                                        "swiglu": False, "epsilon": 1e-5, "max_deferred_rows": MAX_DEFERRED_ROWS}
    assert producer.outputs[1] is deferred.outputs["h"]  # the residual stream keeps its tensor
    for tokens in (1, 5, MAX_DEFERRED_ROWS):
        want = TorchExecutor(unfused).run(_feeds(tokens))
        got = TorchExecutor(deferred).run(_feeds(tokens))
        torch.testing.assert_close(got["h"], want["h"], rtol=0, atol=0)  # the residual stream: exact
        for name in ("y", "qkv"):
            torch.testing.assert_close(got[name], want[name], rtol=1e-5, atol=1e-5)


def test_more_rows_than_the_gemv_takes_are_the_unfused_computation_bit_for_bit():
    unfused, deferred, _ = _pair(_block())
    for tokens in (MAX_DEFERRED_ROWS + 1, 40):
        want, got = TorchExecutor(unfused).run(_feeds(tokens)), TorchExecutor(deferred).run(_feeds(tokens))
        for name in ("y", "qkv", "h"):
            torch.testing.assert_close(got[name], want[name], rtol=0, atol=0)


def test_bfloat16_block_is_as_close_to_float64_as_the_unfused_one():
    unfused, deferred, stats = _pair(_block("bfloat16"))
    assert stats["deferred_norms"] == 1
    exact = clone_network(unfused)  # the same quantized weights, run in float64 on the CPU
    feeds = _feeds(3, torch.bfloat16)
    want = TorchExecutor(unfused).run(feeds)
    got = TorchExecutor(deferred).run(feeds)
    ref = _float64_block(exact, feeds)
    for name in ("y", "qkv"):
        err_got = ((got[name].double() - ref[name]).norm() / ref[name].norm()).item()
        err_want = ((want[name].double() - ref[name]).norm() / ref[name].norm()).item()
        assert err_got < 1.5 * err_want + 1e-3, (name, err_got, err_want)


def _float64_block(net: trtdsl.Network, feeds: dict) -> dict[str, torch.Tensor]:
    """The unfused network's arithmetic in float64: its plugin references on float64 inputs."""
    from trtdsl.passes.fused_plugins import ADD_RMS_NORM
    from trtdsl.passes.int4_tile_gemm import int4_tile_gemm_reference
    env = {id(net.inputs[k]): v.double() for k, v in feeds.items()}
    for layer in net.layers:
        if layer.kind is LayerKind.CONSTANT:
            env[id(layer.outputs[0])] = layer.attrs["value"]
            continue
        ins = [env[id(t)] for t in layer.inputs]
        name = layer.attrs["name"]
        if name == ADD_RMS_NORM:
            total = ins[0] + ins[1]
            normed = total * torch.rsqrt(total.square().mean(-1, keepdim=True) + 1e-5) * ins[2].double()
            outs = [normed, total]
        elif name == INT4_TILE_GEMM:
            outs = [int4_tile_gemm_reference(ins, {**layer.attrs["fields"], "swiglu": False}) if not
                    layer.attrs["fields"]["swiglu"] else _swiglu64(ins, layer.attrs["fields"])]
        else:
            raise AssertionError(f"unexpected layer {layer}")
        env.update({id(t): v for t, v in zip(layer.outputs, outs)})
    return {k: env[id(t)] for k, t in net.outputs.items()}


def _swiglu64(ins: list, fields: dict) -> torch.Tensor:
    from trtdsl.passes.deferred_norm import _float_sums
    y = _float_sums(ins[0], ins[1], ins[2], fields).double()  # float32 sums of float64 inputs: close enough
    gate, up = y.chunk(2, -1)
    return gate * torch.sigmoid(gate) * up


def test_patterns_it_cannot_take_stay():
    _, deferred, stats = _pair(_block(extra_reader=True))  # the norm also feeds a multiply
    assert stats["deferred_norms"] == 0 and "trtdsl.add_rms_norm" in _plugins(deferred)
    net = _block()
    net.mark_output(next(t for la in net.layers for t in la.outputs if la.kind is LayerKind.NORMALIZATION), "n")
    _, deferred, stats = _pair(net)  # the normed value is a network output
    assert stats["deferred_norms"] == 0
    canonical = quantize_network(_block(), "int4_wo", group_size=64, progress=False)
    optimize(canonical, fuse_add_rms_norm=True, fuse_swiglu=True, pack_int4=False)
    assert ADD_NORM not in _plugins(canonical)  # no tile GEMMs, nothing to defer into
    _, half, stats = _pair(_block("float16"))  # h * gamma could overflow float16
    assert stats["deferred_norms"] == 0 and stats["int4_tiles"] == 4


def test_engine_round_trip_keeps_the_pair(tmp_path):
    _, deferred, _ = _pair(_block())
    want = TorchExecutor(deferred).run(_feeds(2))
    Engine(deferred, {}, None, None).save(tmp_path / "e")
    loaded = Engine.load(tmp_path / "e").network
    assert sorted(_plugins(loaded)) == sorted(_plugins(deferred))
    got = TorchExecutor(loaded).run(_feeds(2))
    for name in want:
        torch.testing.assert_close(got[name], want[name], rtol=0, atol=0)


def test_shape_rules_name_bad_inputs():
    _, deferred, _ = _pair(_block())
    producer = next(la for la in deferred.layers if la.attrs.get("name") == ADD_NORM)
    consumer = next(la for la in deferred.layers if la.attrs.get("name") == NORMED)
    add_norm, normed = get_plugin(ADD_NORM), get_plugin(NORMED)
    assert len(add_norm.shape_rule(producer.inputs, producer.attrs["fields"])) == 3
    with pytest.raises(ShapeError, match="expects 5 inputs"):
        add_norm.shape_rule(producer.inputs[:4], producer.attrs["fields"])
    with pytest.raises(ShapeError, match=r"gamma must be \[256\]"):
        add_norm.shape_rule(producer.inputs[:4] + [consumer.inputs[3]], producer.attrs["fields"])
    with pytest.raises(DTypeError, match="ssq must be float32"):
        normed.shape_rule(consumer.inputs[:3] + [consumer.inputs[1]], consumer.attrs["fields"])
    with pytest.raises(ShapeError, match=r"ssq must be \(tokens, 16\)"):
        normed.shape_rule(consumer.inputs[:3] + [deferred.inputs["a"]], consumer.attrs["fields"])


def test_builder_int4_awq_llama_keeps_its_tokens(int4_llama_dir, generate_from_saved):
    from trtdsl.builder import BuildConfig, Builder, load_model
    model = load_model(int4_llama_dir, "float32")
    common = dict(max_batch_size=1, max_seq_len=64, quantization="int4_awq", quant_group_size=64,
                  calibration_tokens=128)
    outs = {}
    for name in ("auto", "off"):
        engine = Builder(BuildConfig(**common, defer_norms=name)).build(model)
        # per layer: the norm before qkv (not the first layer's) and the one before gate_up
        assert _plugins(engine.network).count(ADD_NORM) == (3 if name == "auto" else 0)
        outs[name] = generate_from_saved(engine, name, [[1, 7, 42, 3]], 6)
    assert torch.equal(outs["auto"]["output_ids"], outs["off"]["output_ids"])
    torch.testing.assert_close(outs["auto"]["generation_logits"], outs["off"]["generation_logits"],
                               rtol=1e-4, atol=1e-5)
