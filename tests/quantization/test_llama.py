"""Quantizing a whole (tiny, random) Llama step network: every mode and both K/V cache dtypes stay
close to Hugging Face transformers' log-probabilities, over prefill and decode steps."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from trtdsl.errors import ConfigError
from trtdsl.ir.network import LayerKind, Network
from trtdsl.models import from_hugging_face
from trtdsl.models.eval import token_logprobs
from trtdsl.plugins.attention_reference import paged_attention_reference
from trtdsl.quantization import (CalibrationStats, calibrate, prefill_feeds, quantize_network,
                                 token_chunks)
from trtdsl.quantization.kv_cache import quant_kv_attention_reference

transformers = pytest.importorskip("transformers")

VOCAB = 256


@pytest.fixture(scope="module")
def llama(tmp_path_factory: pytest.TempPathFactory) -> tuple[Network, torch.nn.Module]:
    torch.manual_seed(0)
    config = transformers.LlamaConfig(vocab_size=VOCAB, hidden_size=64, intermediate_size=128,
                                      num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                                      max_position_embeddings=128, tie_word_embeddings=True)
    hf = transformers.LlamaForCausalLM(config).eval()
    path = Path(tmp_path_factory.mktemp("tiny_llama"))
    hf.save_pretrained(path)
    net = from_hugging_face(path, "float32").build_network(
        max_batch_size=4, max_num_tokens=64, max_seq_len=64, tokens_per_block=8, context_logits=True)
    return net, hf


@pytest.fixture(scope="module")
def feeds(llama: tuple[Network, torch.nn.Module]) -> list[dict[str, torch.Tensor]]:
    ids = torch.randint(0, VOCAB, (512,), generator=torch.Generator().manual_seed(1)).tolist()
    return list(prefill_feeds(llama[0], token_chunks(ids, 32, 8), batch_size=2))


@pytest.fixture(scope="module")
def stats(llama: tuple[Network, torch.nn.Module], feeds: list) -> CalibrationStats:
    return calibrate(llama[0], feeds, progress=False)  # once for every case below


@pytest.fixture(scope="module")
def reference(llama: tuple[Network, torch.nn.Module]) -> tuple[torch.Tensor, torch.Tensor]:
    """A held-out sequence and its log-probabilities under Hugging Face's model."""
    tokens = torch.randint(0, VOCAB, (40,), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        logits = llama[1](tokens[None].long()).logits[0].double()
    lp = logits.log_softmax(-1)[:-1].gather(1, tokens[1:, None].long()).squeeze(1)
    return tokens, lp


# Max |log-prob difference| to Hugging Face allowed per configuration (the float network: < 1e-5,
# checked below).
# About 3x what each format's rounding gives on this model.
CASES = [("int8_wo", None, 0.006), ("int4_wo", None, 0.09), ("int4_awq", None, 0.1),
         ("fp8", None, 0.035), ("int8_sq", None, 0.015), (None, "fp8", 0.02), (None, "int8", 0.008),
         ("int8_sq", "int8", 0.02)]


@pytest.mark.parametrize("mode,kv,tol", CASES)
def test_quantized_llama_tracks_hugging_face(llama: tuple, stats: CalibrationStats, reference: tuple,
                                             mode: str | None, kv: str | None, tol: float) -> None:
    net, _ = llama
    tokens, ref = reference
    qnet = quantize_network(net, mode, kv_cache_dtype=kv, calibration=stats, group_size=32,
                            awq_grid=10)
    # chunk_size=16: a prefill of 16 tokens, then steps that read what earlier steps cached.
    lp = token_logprobs(qnet, tokens, chunk_size=16)
    diff = float((lp - ref).abs().max())
    assert diff < tol, f"{mode}/{kv}: max |dlogp| {diff:.4f}"
    assert diff > 1e-4, f"{mode}/{kv}: as exact as the float network -- is anything quantized?"
    plugins = {layer.attrs["name"] for layer in qnet.layers if layer.kind is LayerKind.PLUGIN}
    if kv:
        assert qnet.input_specs["kv_cache"].dtype.value == kv
        assert "trtdsl.attention_quant_kv" in plugins and "trtdsl.attention" not in plugins
        assert qnet.metadata["build"]["kv_cache_dtype"] == kv
    if mode:  # every GEMM but the (tied, excluded) LM head is quantized
        assert qnet.layer_counts()["matrix_multiply"] == 1
    assert net.input_specs["kv_cache"].dtype.value == "float32"  # the input network is unchanged


def test_the_float_network_matches_hugging_face(llama: tuple, reference: tuple) -> None:
    tokens, ref = reference  # the baseline the tolerances above are measured from
    assert float((token_logprobs(llama[0], tokens, chunk_size=16) - ref).abs().max()) < 1e-4


@pytest.mark.parametrize("granularity,headroom", [("head", 1.0), ("tensor", 1.0), ("head", 0.5)])
def test_kv_cache_scales_come_from_calibration(llama: tuple, feeds: list, granularity: str,
                                               headroom: float) -> None:
    qnet = quantize_network(llama[0], None, kv_cache_dtype="int8", calibration_feeds=feeds[:2],
                            progress=False, kv_cache_scales=granularity, kv_cache_headroom=headroom)
    scales = {la.attrs["fields"]["layer_idx"]: la.inputs[8].producer.attrs["value"]
              for la in qnet.layers if la.attrs.get("name") == "trtdsl.attention_quant_kv"}
    assert sorted(scales) == [0, 1]
    for idx, value in scales.items():  # max |K| and max |V| the calibration steps wrote, / 127
        pools = torch.cat([f["kv_cache"][idx] for f in feeds[:2]])  # [blocks, 2, kv_heads, tpb, d]
        per_head = pools.abs().permute(1, 2, 0, 3, 4).flatten(2).amax(2)  # [2, kv_heads]
        expected = per_head if granularity == "head" else per_head.amax(1)
        torch.testing.assert_close(value, expected * headroom / 127)


def test_quantized_cache_reference_is_exact_for_representable_values() -> None:
    """With K/V already on the int8 grid of their scales, quantize-on-write/dequantize-on-read loses
    nothing: the result must equal the float-cache reference (rotary_dim=0, so K is written as is)."""
    g = torch.Generator().manual_seed(3)
    heads, kv_heads, d, tpb, n = 4, 2, 8, 4, 6
    scales = torch.tensor([0.05, 0.02])
    q = torch.randn(n, heads * d, generator=g)
    k = torch.randint(-127, 128, (n, kv_heads * d), generator=g) * scales[0]
    v = torch.randint(-127, 128, (n, kv_heads * d), generator=g) * scales[1]
    qkv = torch.cat([q, k, v], dim=1)
    i32 = torch.int32
    step = [torch.arange(n, dtype=i32), torch.tensor([n], dtype=i32), torch.tensor([0], dtype=i32),
            torch.tensor([0, n], dtype=i32), torch.tensor([[1, 0]], dtype=i32)]
    fields = dict(num_heads=heads, num_kv_heads=kv_heads, head_dim=d, layer_idx=0, tokens_per_block=tpb,
                  softmax_scale=d ** -0.5, rotary_dim=0, rope_style="neox")
    float_cache = torch.zeros(1, 2, 2, kv_heads, tpb, d)
    expected = paged_attention_reference(qkv, *step, float_cache, torch.zeros(1, 0), **fields)
    int8_cache = torch.zeros(1, 2, 2, kv_heads, tpb, d, dtype=torch.int8)
    out = quant_kv_attention_reference([qkv, *step, int8_cache, torch.zeros(1, 0), scales], fields)
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(int8_cache.float()[0, :, 0] * scales[0], float_cache[0, :, 0])


def test_prefill_feeds_need_the_batch_interface() -> None:
    net = Network("no_cache")
    net.add_input("x", "float32", [4])
    with pytest.raises(ConfigError, match="kv_cache"):
        next(prefill_feeds(net, [[1, 2]]))
