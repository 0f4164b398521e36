"""K/V cache with the calibrated mean key subtracted before K is quantized (``kv_cache_center_k``,
the ``k_bias`` input of ``trtdsl.attention_quant_kv``): the reference against attention written out
densely in plain torch, the calibrated statistics against the cache pools, and the errors."""

from __future__ import annotations


import pytest
import torch

from trtdsl.backends.tensorrt.plugins import plan_plugin
from trtdsl.errors import ConfigError, ShapeError
from trtdsl.models.eval import token_logprobs
from trtdsl.quantization import QuantConfig, calibrate, quantize_network
from trtdsl.quantization.kv_cache import hadamard, quant_kv_attention_reference, shape_rule

from test_kv_rotation import _dense_attention, tiny  # noqa: F401  (the tiny Llama fixture)

transformers = pytest.importorskip("transformers")

HEADS, KV_HEADS, D, TPB, N = 4, 2, 16, 4, 7


def _attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scales: torch.Tensor,
               k_bias: torch.Tensor | None, kv_dtype: str = "fp8") -> torch.Tensor:
    """The reference plugin over one sequence of N tokens (block table [1, 0])."""
    i32 = torch.int32
    qkv = torch.cat([q.reshape(N, -1), k.reshape(N, -1), v.reshape(N, -1)], dim=1)
    step = [torch.arange(N, dtype=i32), torch.tensor([N], dtype=i32), torch.tensor([0], dtype=i32),
            torch.tensor([0, N], dtype=i32), torch.tensor([[1, 0]], dtype=i32)]
    fields = dict(num_heads=HEADS, num_kv_heads=KV_HEADS, head_dim=D, layer_idx=0, tokens_per_block=TPB,
                  softmax_scale=D ** -0.5, rotary_dim=0, rope_style="neox", kv_cache_dtype=kv_dtype)
    cache = torch.zeros(1, 2, 2, KV_HEADS, TPB, D, dtype=torch.float8_e4m3fn if kv_dtype == "fp8" else torch.int8)
    extra = [] if k_bias is None else [k_bias]
    return quant_kv_attention_reference([qkv, *step, cache, torch.zeros(1, 0), scales, *extra], fields)


def _keys_with_a_constant_part() -> tuple[torch.Tensor, ...]:
    g = torch.Generator().manual_seed(7)
    q = torch.randn(N, HEADS, D, generator=g)
    mean = torch.randn(KV_HEADS, D, generator=g) * 8.0  # large constant channels, as RoPE's slow pairs
    k = mean + torch.randn(N, KV_HEADS, D, generator=g) * 0.5
    v = torch.randn(N, KV_HEADS, D, generator=g)
    return q, k, v, mean


def test_centered_int8_cache_equals_dense_attention_over_the_dequantized_deviations() -> None:
    q, k, v, mean = _keys_with_a_constant_part()
    bias = mean + 0.25  # any bias keeps the attention exact up to the codes' rounding
    scales = torch.tensor([float((k - bias).abs().amax()) / 127, float(v.abs().amax()) / 127])
    k_seen = torch.round((k - bias) / scales[0]).clamp(-127, 127) * scales[0]  # no bias added back
    v_seen = torch.round(v / scales[1]).clamp(-127, 127) * scales[1]
    expected = _dense_attention(q, k_seen, v_seen, HEADS // KV_HEADS).reshape(N, HEADS * D)
    out = _attention(q, k, v, scales, bias, "int8")
    torch.testing.assert_close(out, expected, rtol=1e-4, atol=1e-4)
    # ... which is the attention over the uncentered keys: softmax cancels the shift q . bias.
    exact = _dense_attention(q, k, v_seen, HEADS // KV_HEADS).reshape(N, HEADS * D)
    assert float((out - exact).abs().max()) < 0.05


def test_centering_shrinks_the_fp8_error_of_keys_with_a_constant_part() -> None:
    q, k, v, mean = _keys_with_a_constant_part()
    exact = _dense_attention(q, k, v, HEADS // KV_HEADS).reshape(N, HEADS * D)
    plain = _attention(q, k, v, torch.tensor([float(k.abs().amax()) / 448, float(v.abs().amax()) / 448]), None)
    centered = _attention(q, k, v, torch.tensor([float((k - mean).abs().amax()) / 448,
                                                 float(v.abs().amax()) / 448]), mean)
    err_plain, err_centered = float((plain - exact).norm()), float((centered - exact).norm())
    assert err_centered < 0.3 * err_plain, (err_plain, err_centered)


@pytest.mark.parametrize("rotation", ["none", "hadamard"])
def test_the_bias_is_the_calibrated_mean_key(tiny: tuple, rotation: str) -> None:
    net, hf, feeds = tiny
    stats = calibrate(net, feeds, progress=False)
    qnet = quantize_network(net, None, kv_cache_dtype="fp8", calibration=stats, kv_cache_center_k=True,
                            kv_cache_rotation=rotation)
    layers = [la for la in qnet.layers if la.attrs.get("name") == "trtdsl.attention_quant_kv"]
    assert len(layers) == 2
    for la in layers:
        idx = la.attrs["fields"]["layer_idx"]
        scales, bias = (t.producer.attrs["value"] for t in la.inputs[8:10])
        pools = torch.cat([f["kv_cache"][idx] for f in feeds])  # [blocks, 2, kv_heads, tpb, d]
        keys = pools[:, 0].double() @ (hadamard(16).double() if rotation == "hadamard" else torch.eye(16).double())
        keys = keys.permute(1, 0, 2, 3).reshape(2, -1, 16)  # [kv_heads, tokens, d]
        torch.testing.assert_close(bias, keys.mean(1).float(), rtol=1e-5, atol=1e-6)
        deviation = (keys - keys.mean(1, keepdim=True)).abs().flatten(1).amax(1).float()
        torch.testing.assert_close(scales[0], deviation / 448, rtol=1e-5, atol=1e-8)
    tokens = torch.randint(0, 128, (30,), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        ref = hf(tokens[None].long()).logits[0].double().log_softmax(-1)[:-1]
    ref = ref.gather(1, tokens[1:, None].long()).squeeze(1)
    diff = float((token_logprobs(qnet, tokens, chunk_size=8) - ref).abs().max())
    assert 1e-5 < diff < 0.02  # fp8's rounding of the deviations, over cached decode steps
    plan = plan_plugin(layers[0])  # the TensorRT plugin takes k_bias as its 10th input, not dropped
    assert plan.signature.qdp_name == "attention_quant_kv_centered"
    assert plan.signature.inputs[9] == "k_bias" and layers[0].inputs[9].name.endswith(".k_bias")


def test_center_k_errors(tiny: tuple) -> None:
    net, _, feeds = tiny
    with pytest.raises(ConfigError, match="kv_cache_center_k"):
        QuantConfig(mode="int8_wo", kv_cache_center_k=True)
    stats = calibrate(net, feeds, progress=False)
    stats.k_channels = {}  # statistics saved before the option
    with pytest.raises(ConfigError, match="collected again"):
        quantize_network(net, None, kv_cache_dtype="fp8", calibration=stats, kv_cache_center_k=True)
    stats = calibrate(net, feeds, progress=False)
    qnet = quantize_network(net, None, kv_cache_dtype="fp8", calibration=stats, kv_cache_center_k=True)
    layer = next(la for la in qnet.layers if la.attrs.get("name") == "trtdsl.attention_quant_kv")
    bias = layer.inputs[9]
    wrong = type(bias)(bias.name, bias.dtype, (2, 8), bias.network, None)  # head_dim is 16
    with pytest.raises(ShapeError, match="k_bias must be float32"):
        shape_rule([*layer.inputs[:9], wrong], layer.attrs["fields"])
