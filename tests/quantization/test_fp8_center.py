"""Centered fp8 GEMM inputs (``fp8_center_inputs``): the GEMM quantizes ``x - mean`` and adds
``W mean`` back as a float bias. Checked against Hugging Face: the mean, the centered range and the
bias come from the HF model's own activations and weights, and on a model whose hidden states carry a
constant offset (what RMSNorm weights turn into channels far from zero) centering shrinks the fp8
error against the HF logits. The fp8 activation fusion folds the subtraction into the quantizing norm
and the bias into the GEMM on codes, bit for bit the unfused network (also after an engine round trip)."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Callable

import pytest
import torch
import transformers

from trtdsl.backends.torch_executor import TorchExecutor
from trtdsl.errors import ConfigError, DTypeError, ShapeError
from trtdsl.ir.network import LayerKind, Network
from trtdsl.models import from_hugging_face
from trtdsl.models.eval import token_logprobs
from trtdsl.passes import fp8_act_fuse, optimize
from trtdsl.quantization import (QuantConfig, calibrate, clone_network, prefill_feeds, quantize_network,
                                 token_chunks)
from trtdsl.quantization.graph import constant_source
from trtdsl.quantization.plugins import FP8_GEMM


def shifted_llama(tmp_path: Path, shift: Callable[[torch.Tensor], torch.Tensor], tokens: int, chunks_per_len: int,
                  hessians: bool = False) -> tuple:
    """A tiny Llama (untied head) whose embeddings get ``shift(embeddings)`` added, saved, built into a
    float32 network and calibrated on ``tokens`` random tokens in chunks of 32:
    ``(net, hf, chunks, stats, path)``."""
    torch.manual_seed(0)
    config = transformers.LlamaConfig(vocab_size=128, hidden_size=64, intermediate_size=96,
                                      num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                                      max_position_embeddings=64, tie_word_embeddings=False)
    hf = transformers.LlamaForCausalLM(config).eval()
    with torch.no_grad():
        emb = hf.model.embed_tokens.weight
        emb += shift(emb)
    hf.save_pretrained(tmp_path)
    net = from_hugging_face(tmp_path, "float32").build_network(
        max_batch_size=2, max_num_tokens=64, max_seq_len=48, tokens_per_block=8, context_logits=True)
    chunks = token_chunks(torch.randint(0, 128, (tokens,), generator=torch.Generator().manual_seed(1)).tolist(), 32,
                          chunks_per_len)
    feeds = list(prefill_feeds(net, chunks, batch_size=2))
    return net, hf, chunks, calibrate(net, feeds, progress=False, hessians=hessians), tmp_path


@pytest.fixture(scope="module")
def offset_llama(tmp_path_factory: pytest.TempPathFactory) -> tuple:
    """A tiny Llama whose embeddings share a constant vector, so every norm output has per-channel
    means far from zero (as the big RMSNorm weights of real checkpoints give)."""
    def shift(emb: torch.Tensor) -> torch.Tensor:
        return 4.0 * emb.std() * torch.randn(1, 64, generator=torch.Generator().manual_seed(3))
    return shifted_llama(Path(tmp_path_factory.mktemp("offset_llama")), shift, 256, 8)


def _hf_inputs(hf: torch.nn.Module, chunks: list, module: torch.nn.Module) -> torch.Tensor:
    """Every row the HF model feeds ``module`` over the calibration chunks."""
    rows: list[torch.Tensor] = []
    handle = module.register_forward_pre_hook(lambda mod, inp: rows.append(inp[0].reshape(-1, inp[0].shape[-1])))
    with torch.no_grad():
        for c in chunks:
            hf(torch.tensor([c]))
    handle.remove()
    return torch.cat(rows).double()


def _value(t) -> torch.Tensor:
    return constant_source(t).attrs["value"].double().reshape(-1)


def _fp8_gemms(qnet) -> list:
    return [la for la in qnet.layers if la.kind is LayerKind.PLUGIN and la.attrs["name"] == FP8_GEMM]


def test_norm_outputs_are_centered_on_the_hf_means(offset_llama: tuple) -> None:
    net, hf, chunks, stats, _ = offset_llama
    qnet = quantize_network(net, "fp8", calibration=stats, fp8_center_inputs="norm")
    gemms = {la.name: la for la in _fp8_gemms(qnet)}
    layer = hf.model.layers[0]
    for name, module, weights in (("qkv", layer.self_attn.q_proj,
                                   [layer.self_attn.q_proj, layer.self_attn.k_proj, layer.self_attn.v_proj]),
                                  ("gate_up", layer.mlp.gate_proj, [layer.mlp.gate_proj, layer.mlp.up_proj])):
        (gemm,) = [la for n, la in gemms.items() if n.startswith("layers.0.") and name in la.module_path]
        x = _hf_inputs(hf, chunks, module)
        mean = x.mean(0)
        sub = gemm.inputs[0].producer
        assert sub.kind is LayerKind.ELEMENTWISE and sub.attrs["op"] == "sub"
        torch.testing.assert_close(_value(sub.inputs[1]).reshape(-1), mean, rtol=1e-4, atol=1e-5)
        centered_amax = (x - mean).abs().max()
        torch.testing.assert_close(_value(gemm.inputs[3]),
                                   (centered_amax / 448).reshape(1), rtol=1e-4, atol=0)
        assert centered_amax < 0.8 * x.abs().max()  # the offset is what centering removes
        (add,) = [la for la in qnet.layers if any(t is gemm.outputs[0] for t in la.inputs)]
        assert add.kind is LayerKind.ELEMENTWISE and add.attrs["op"] == "sum"
        w = torch.cat([m.weight for m in weights]).double()
        torch.testing.assert_close(_value(add.inputs[1]).reshape(-1), w @ mean,
                                   rtol=1e-4, atol=1e-4)
    # o_proj / down_proj read no norm: "norm" leaves their inputs as they were and corrects the weights'
    # rounding error along the input's mean, (W - dequantized codes) mean
    others = [la for la in gemms.values() if "dense" in la.module_path or "down" in la.module_path]
    assert len(others) == 4 and all(la.inputs[0].producer.attrs.get("op") != "sub" for la in others)
    layer = hf.model.layers[0]
    (dense,) = [la for la in others if la.name.startswith("layers.0.") and "dense" in la.module_path]
    mean = _hf_inputs(hf, chunks, layer.self_attn.o_proj).mean(0)
    deq = constant_source(dense.inputs[1]).attrs["value"].double() * _value(dense.inputs[2])[:, None]
    (add,) = [la for la in qnet.layers if any(t is dense.outputs[0] for t in la.inputs)]
    torch.testing.assert_close(_value(add.inputs[1]), (layer.self_attn.o_proj.weight.double() - deq) @ mean,
                               rtol=1e-3, atol=1e-6)


def test_centering_shrinks_the_fp8_error_against_hf(offset_llama: tuple) -> None:
    net, hf, _, stats, _ = offset_llama
    tokens = torch.randint(0, 128, (40,), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        ref = hf(tokens[None].long()).logits[0].double().log_softmax(-1)[:-1]
    ref = ref.gather(1, tokens[1:, None].long())[:, 0]
    errors = {}
    for center in ("none", "norm", "all"):
        qnet = quantize_network(net, "fp8", calibration=stats, fp8_center_inputs=center)
        errors[center] = float((token_logprobs(qnet, tokens.tolist()).double() - ref).abs().mean())
    assert errors["norm"] < 0.8 * errors["none"], errors  # measured 0.64x
    assert errors["all"] < 0.3 * errors["none"], errors  # measured 0.09x: the residual stream's offset


def test_center_errors(offset_llama: tuple) -> None:
    net, _, _, stats, _ = offset_llama
    with pytest.raises(ConfigError, match="fp8_center_inputs 'mean' must be"):
        QuantConfig(mode="fp8", fp8_center_inputs="mean")
    with pytest.raises(ConfigError, match="static activation scales"):
        QuantConfig(mode="fp8", fp8_dynamic=True, fp8_center_inputs="norm")
    with pytest.raises(ConfigError, match="needs mode 'fp8'"):
        QuantConfig(mode="int8_sq", fp8_center_inputs="all")
    old = copy.copy(stats)
    old.channels = {}
    with pytest.raises(ConfigError, match="calibrate again"):
        quantize_network(net, "fp8", calibration=old, fp8_center_inputs="norm")


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_fusion_folds_the_mean_and_the_bias_bit_for_bit(offset_llama: tuple, dtype: str, tmp_path: Path) -> None:
    from trtdsl.engine import Engine
    *_, chunks, _, path = offset_llama
    net = from_hugging_face(path, dtype).build_network(max_batch_size=2, max_num_tokens=64, max_seq_len=48,
                                                       tokens_per_block=8)
    feeds = list(prefill_feeds(net, chunks, batch_size=2))
    qnet = quantize_network(net, "fp8", calibration_feeds=feeds, progress=False, fp8_center_inputs="norm")
    unfused = clone_network(qnet)
    optimize(unfused, fuse_add_rms_norm=True, fuse_swiglu=True, fuse_fp8_activations=False)
    stats = optimize(qnet, fuse_add_rms_norm=True, fuse_swiglu=True)
    assert stats["fp8_activations"] == 8
    def ops(n: Network, op: str) -> int:
        return sum(la.kind is LayerKind.ELEMENTWISE and la.attrs.get("op") == op for la in n.layers)
    assert ops(unfused, "sub") == 4 and ops(qnet, "sub") == 0  # the subtractions went into the norms
    assert ops(qnet, "sum") == ops(unfused, "sum") - 8  # and every GEMM's bias add into the GEMM
    norms = [la for la in qnet.layers if la.kind is LayerKind.PLUGIN and la.attrs["name"] in
             (fp8_act_fuse.RMS_NORM_FP8, fp8_act_fuse.ADD_RMS_NORM_FP8)]
    assert sorted(len(la.inputs) for la in norms) == [4, 5, 5, 5]  # each with its mean
    gemms = _fp8_gemms(qnet)
    assert [len(g.inputs) for g in gemms] == [5] * 8  # W mean, or the bias correction (o_proj, down)
    want = [TorchExecutor(unfused).run(feed) for feed in (feeds[0], feeds[-1])]
    Engine(qnet).save(tmp_path / "e")
    for candidate in (qnet, Engine.load(tmp_path / "e").network):
        for feed, expected in zip((feeds[0], feeds[-1]), want):
            got = TorchExecutor(candidate).run(feed)
            assert all(torch.equal(got[name], expected[name]) for name in expected)


def test_fused_plugins_check_the_mean_and_the_bias(offset_llama: tuple) -> None:
    *_, path = offset_llama
    net = from_hugging_face(path, "bfloat16").build_network(max_batch_size=2, max_num_tokens=64, max_seq_len=48,
                                                            tokens_per_block=8)
    chunks = offset_llama[2]
    qnet = quantize_network(net, "fp8", calibration_feeds=list(prefill_feeds(net, chunks[:2], batch_size=2)),
                            progress=False, fp8_center_inputs="norm")
    optimize(qnet, fuse_add_rms_norm=True, fuse_swiglu=True)
    norm = next(la for la in qnet.layers if la.kind is LayerKind.PLUGIN and la.attrs["name"] == fp8_act_fuse.ADD_RMS_NORM_FP8)
    gemm = next(g for g in _fp8_gemms(qnet) if len(g.inputs) == 5)
    from trtdsl import functional as F
    short = F.constant(torch.zeros(8, dtype=torch.bfloat16), "bfloat16", network=qnet)
    wide = F.constant(torch.zeros(64), "float32", network=qnet)
    with pytest.raises(ShapeError, match=r"mean .* must be \[64\]"):
        F.plugin(fp8_act_fuse.ADD_RMS_NORM_FP8, [*norm.inputs[:4], short], **norm.attrs["fields"])
    with pytest.raises(DTypeError, match="must have the activation's dtype bfloat16"):
        F.plugin(fp8_act_fuse.ADD_RMS_NORM_FP8, [*norm.inputs[:4], wide], **norm.attrs["fields"])
    with pytest.raises(DTypeError, match=r"bias .* must be \[\d+\] in the output dtype bfloat16"):
        F.plugin(FP8_GEMM, [*gemm.inputs[:4], wide], **gemm.attrs["fields"])
