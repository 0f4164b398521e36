"""FP8 GEMMs with one dynamic activation scale per token and block of channels (``fp8_act_group_size``,
the ``act_group_size`` field of ``trtdsl.fp8_gemm``): checked against the same arithmetic written
block by block in float64 with plain torch, and against float matmuls for what the blocks buy."""

from __future__ import annotations

import pytest
import torch

from trtdsl.backends.tensorrt.plugins import plan_plugin
from trtdsl.errors import BackendError, ConfigError, ShapeError
from trtdsl.models.eval import token_logprobs
from trtdsl.quantization import QuantConfig, quantize_network
from trtdsl.quantization.plugins import _fp8_shape, fp8_gemm_reference

from test_kv_rotation import tiny  # noqa: F401  (the tiny Llama fixture)


def _fp8_weight(n: int, k: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    w = torch.randn(n, k, generator=torch.Generator().manual_seed(seed))
    scale = w.abs().amax(1) / 448
    return (w / scale[:, None]).to(torch.float8_e4m3fn), scale


def _blockwise_float64(x: torch.Tensor, codes: torch.Tensor, w_scale: torch.Tensor, group: int) -> torch.Tensor:
    """Each (token, block): scale = max|x| / 448, e4m3 codes of x / scale, the block's dot products
    with the weight codes times that scale; summed over blocks, times the weight scale."""
    out = torch.zeros(x.shape[0], codes.shape[0], dtype=torch.float64)
    for b in range(0, x.shape[1], group):
        xb = x[:, b:b + group]
        s = xb.abs().amax(1, keepdim=True) / 448
        xq = (xb / s).to(torch.float8_e4m3fn).double()
        out += (xq @ codes[:, b:b + group].double().T) * s.double()
    return out * w_scale.double()


@pytest.mark.parametrize("group", [16, 48, 96])
def test_reference_equals_blockwise_arithmetic(group: int) -> None:
    x = torch.randn(5, 96, generator=torch.Generator().manual_seed(0))
    codes, w_scale = _fp8_weight(7, 96, 1)
    out = fp8_gemm_reference([x, codes, w_scale], {"act_group_size": group})
    torch.testing.assert_close(out.double(), _blockwise_float64(x, codes, w_scale, group), rtol=1e-6, atol=1e-6)


def test_one_block_per_row_is_the_per_token_gemm() -> None:
    x = torch.randn(3, 64, generator=torch.Generator().manual_seed(2))
    codes, w_scale = _fp8_weight(9, 64, 3)
    torch.testing.assert_close(fp8_gemm_reference([x, codes, w_scale], {"act_group_size": 64}),
                               fp8_gemm_reference([x, codes, w_scale], {}), rtol=1e-6, atol=1e-6)


def test_blocks_keep_small_channels_apart_from_an_outlier_channel() -> None:
    """Tokens whose channel 0 is 1e5x the rest: one scale per token puts the rest among e4m3's
    subnormals, blocks of 16 only the first block's. The weight's column 0 is zero, so the output is
    the small channels' alone, and its error against the float matmul drops with the blocks."""
    x = torch.randn(4, 128, generator=torch.Generator().manual_seed(4)) * 1e-4
    x[:, 0] = 10.0
    codes, w_scale = _fp8_weight(16, 128, 5)
    codes[:, 0] = 0
    exact = x.double() @ (codes.double() * w_scale.double()[:, None]).T
    err = {g: float((fp8_gemm_reference([x, codes, w_scale], {"act_group_size": g}).double() - exact).norm())
           for g in (0, 16)}
    assert err[16] < err[0] / 2


def test_shape_rule_checks_the_field() -> None:
    from trtdsl import functional as F
    from trtdsl.dtypes import DType
    from trtdsl.ir.network import Network
    net = Network("t")
    x = net.add_input("x", DType.float32, (2, 96))
    with net.scope():
        w = F.constant(torch.zeros(8, 96, dtype=torch.float8_e4m3fn), DType.fp8, name="w")
        ws, xs = F.constant(torch.ones(8), DType.float32, name="ws"), F.constant(torch.ones(1), DType.float32, name="xs")
    with pytest.raises(ShapeError, match="act_group_size 64 must divide in_features 96"):
        _fp8_shape([x, w, ws], {"act_group_size": 64})
    with pytest.raises(ShapeError, match="needs dynamic activation scales"):
        _fp8_shape([x, w, ws, xs], {"act_group_size": 32})
    assert _fp8_shape([x, w, ws], {"act_group_size": 32}) == [(DType.float32, (2, 8))]


def test_config_needs_dynamic_fp8() -> None:
    with pytest.raises(ConfigError, match="fp8_act_group_size 32 .* needs mode 'fp8' with fp8_dynamic"):
        QuantConfig(mode="fp8", fp8_act_group_size=32)
    with pytest.raises(ConfigError, match="fp8_act_group_size"):
        QuantConfig(mode="int8_sq", fp8_act_group_size=32)
    QuantConfig(mode="fp8", fp8_dynamic=True, fp8_act_group_size=32)


def test_quantized_network_records_the_blocks_and_runs(tiny: tuple) -> None:  # noqa: F811
    net, hf, _ = tiny
    qnet = quantize_network(net, "fp8", fp8_dynamic=True, fp8_act_group_size=16)
    gemms = [la for la in qnet.layers if la.attrs.get("name") == "trtdsl.fp8_gemm"]
    assert gemms and all(la.attrs["fields"] == {"act_group_size": 16} and len(la.inputs) == 3 for la in gemms)
    assert qnet.metadata["quantization"]["fp8_act_group_size"] == 16
    tokens = torch.randint(0, 128, (24,), generator=torch.Generator().manual_seed(6))
    with torch.no_grad():
        ref = hf(tokens[None].long()).logits[0].double().log_softmax(-1)[:-1]
    ref = ref.gather(1, tokens[1:, None].long()).squeeze(1)
    diff = float((token_logprobs(qnet, tokens, chunk_size=8) - ref).abs().max())
    assert 1e-6 < diff < 0.05  # e4m3 rounding of weights and activations, not garbage
    with pytest.raises(BackendError, match="act_group_size"):  # no TensorRT plugin takes it yet
        plan_plugin(gemms[0])
