"""K/V cache with Hadamard-rotated keys (``kv_cache_rotation="hadamard"``, the ``k_rotation`` field of
``trtdsl.attention_quant_kv``): checked against attention written out densely in plain torch."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from trtdsl.errors import ConfigError, ShapeError
from trtdsl.ir.network import Network
from trtdsl.models import from_hugging_face
from trtdsl.models.eval import token_logprobs
from trtdsl.quantization import QuantConfig, calibrate, prefill_feeds, quantize_network, token_chunks
from trtdsl.quantization.kv_cache import hadamard, quant_kv_attention_reference

transformers = pytest.importorskip("transformers")


def test_hadamard_is_orthonormal_and_symmetric() -> None:
    for d in (1, 2, 8, 64, 128):
        h = hadamard(d)
        torch.testing.assert_close(h @ h, torch.eye(d), atol=1e-6, rtol=0)
        assert torch.equal(h, h.T) and bool((h.abs() == d ** -0.5).all())
    with pytest.raises(ShapeError, match="power of two"):
        hadamard(96)


def _dense_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, group: int) -> torch.Tensor:
    """Causal attention of [n, heads, d] queries over [n, kv_heads, d] keys / values."""
    k, v = k.repeat_interleave(group, dim=1), v.repeat_interleave(group, dim=1)
    scores = torch.einsum("qhd,khd->hqk", q, k) * q.shape[-1] ** -0.5
    causal = torch.ones(q.shape[0], q.shape[0], dtype=torch.bool).tril()
    return torch.einsum("hqk,khd->qhd", scores.masked_fill(~causal, float("-inf")).softmax(-1), v)


def test_rotated_int8_cache_equals_dense_attention_over_the_dequantized_rotated_keys() -> None:
    g = torch.Generator().manual_seed(5)
    heads, kv_heads, d, tpb, n = 4, 2, 16, 4, 7
    q = torch.randn(n, heads, d, generator=g)
    k = torch.randn(n, kv_heads, d, generator=g)
    k[..., 3] *= 20.0  # an outlier channel, the case the rotation is for
    v = torch.randn(n, kv_heads, d, generator=g)
    h = hadamard(d)
    scales = torch.tensor([float((k @ h).abs().amax()) / 127, float(v.abs().amax()) / 127])
    codes = torch.round((k @ h) / scales[0]).clamp(-127, 127)
    k_seen = (codes * scales[0]) @ h  # what the queries see: H is its own inverse
    v_seen = torch.round(v / scales[1]).clamp(-127, 127) * scales[1]
    expected = _dense_attention(q, k_seen, v_seen, heads // kv_heads).reshape(n, heads * d)

    i32 = torch.int32
    qkv = torch.cat([q.reshape(n, -1), k.reshape(n, -1), v.reshape(n, -1)], dim=1)
    step = [torch.arange(n, dtype=i32), torch.tensor([n], dtype=i32), torch.tensor([0], dtype=i32),
            torch.tensor([0, n], dtype=i32), torch.tensor([[1, 0]], dtype=i32)]
    fields = dict(num_heads=heads, num_kv_heads=kv_heads, head_dim=d, layer_idx=0, tokens_per_block=tpb,
                  softmax_scale=d ** -0.5, rotary_dim=0, rope_style="neox", kv_cache_dtype="int8",
                  k_rotation="hadamard")
    cache = torch.zeros(1, 2, 2, kv_heads, tpb, d, dtype=torch.int8)
    out = quant_kv_attention_reference([qkv, *step, cache, torch.zeros(1, 0), scales], fields)
    torch.testing.assert_close(out, expected, rtol=1e-4, atol=1e-4)
    stored = torch.cat([cache[0, 1, 0].transpose(0, 1), cache[0, 0, 0].transpose(0, 1)])[:n]
    assert torch.equal(stored.float(), codes)  # block table [1, 0]: tokens 0-3 in block 1


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> tuple[Network, torch.nn.Module, list]:
    torch.manual_seed(0)
    config = transformers.LlamaConfig(vocab_size=128, hidden_size=64, intermediate_size=96,
                                      num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                                      max_position_embeddings=64, tie_word_embeddings=True)
    hf = transformers.LlamaForCausalLM(config).eval()
    path = Path(tmp_path_factory.mktemp("tiny_llama_rot"))
    hf.save_pretrained(path)
    net = from_hugging_face(path, "float32").build_network(
        max_batch_size=2, max_num_tokens=64, max_seq_len=48, tokens_per_block=8, context_logits=True)
    ids = torch.randint(0, 128, (256,), generator=torch.Generator().manual_seed(1)).tolist()
    return net, hf, list(prefill_feeds(net, token_chunks(ids, 32, 4), batch_size=2))


def test_quantized_network_uses_calibrated_rotated_key_scales(tiny: tuple) -> None:
    net, hf, feeds = tiny
    stats = calibrate(net, feeds, progress=False)
    qnet = quantize_network(net, None, kv_cache_dtype="fp8", calibration=stats,
                            kv_cache_rotation="hadamard")
    layers = [la for la in qnet.layers if la.attrs.get("name") == "trtdsl.attention_quant_kv"]
    assert len(layers) == 2
    for la in layers:
        assert la.attrs["fields"]["k_rotation"] == "hadamard"
        idx, scales = la.attrs["fields"]["layer_idx"], la.inputs[8].producer.attrs["value"]
        pools = torch.cat([f["kv_cache"][idx] for f in feeds])  # [blocks, 2, kv_heads, tpb, d]
        k_rot = (pools[:, 0] @ hadamard(16)).abs().permute(1, 0, 2, 3).flatten(1).amax(1)
        torch.testing.assert_close(scales[0], k_rot / 448)
        torch.testing.assert_close(scales[1], pools[:, 1].abs().permute(1, 0, 2, 3).flatten(1).amax(1) / 448)
    tokens = torch.randint(0, 128, (30,), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        ref = hf(tokens[None].long()).logits[0].double().log_softmax(-1)[:-1]
    ref = ref.gather(1, tokens[1:, None].long()).squeeze(1)
    diff = float((token_logprobs(qnet, tokens, chunk_size=8) - ref).abs().max())
    assert 1e-5 < diff < 0.02  # fp8's rounding, through the rotated cache, over cached decode steps
    unrotated = quantize_network(net, None, kv_cache_dtype="fp8", calibration=stats)
    assert all("k_rotation" not in la.attrs["fields"] for la in unrotated.layers
               if la.attrs.get("name") == "trtdsl.attention_quant_kv")  # older engines' fields unchanged


def test_rotation_options_are_validated() -> None:
    with pytest.raises(ConfigError, match="kv_cache_rotation"):
        QuantConfig(mode="int8_wo", kv_cache_rotation="hadamard")  # no quantized cache to rotate
    with pytest.raises(ConfigError, match="kv_cache_rotation 'random'"):
        QuantConfig(kv_cache_dtype="fp8", kv_cache_rotation="random")
