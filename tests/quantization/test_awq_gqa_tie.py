"""AWQ's and SmoothQuant's o_proj factors tied across the query heads of each K/V group (``awq_tie_gqa``): then
``optimize`` folds the multiply before o_proj into the V rows of the qkv GEMM, leaving the function
unchanged; untied, the multiply stays."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from trtdsl.backends.torch_executor import TorchExecutor
from trtdsl.ir.network import LayerKind, Network, Tensor
from trtdsl.passes import optimize
from trtdsl.quantization import CalibrationStats, calibrate, prefill_feeds, quantize_network
from trtdsl.quantization.numerics import awq_search_scales, gqa_tie, tie_channels

transformers = pytest.importorskip("transformers")

HEADS, KV_HEADS, HEAD_DIM = 6, 2, 16  # groups of 3 query heads per K/V head, as SmolLM2's 9 / 3


def test_gqa_tie_classes_and_geometric_mean() -> None:
    tie = gqa_tie(4, 2, 2)  # heads 0, 1 read K/V head 0; heads 2, 3 read K/V head 1
    assert tie.tolist() == [0, 1, 0, 1, 2, 3, 2, 3]
    s = torch.tensor([1.0, 2.0, 4.0, 8.0, 3.0, 1.0, 3.0, 4.0])
    want = torch.tensor([2.0, 4.0, 2.0, 4.0, 3.0, 2.0, 3.0, 2.0])  # sqrt(1*4), sqrt(2*8), ...
    torch.testing.assert_close(tie_channels(s, tie), want)
    assert torch.equal(tie_channels(torch.ones(8), tie), torch.ones(8))  # alpha = 0 stays plain rounding


def test_tied_search_returns_tied_factors() -> None:
    g = torch.Generator().manual_seed(0)
    k = HEADS * HEAD_DIM
    x = torch.randn(64, k, generator=g) * torch.logspace(-1, 1, k)[torch.randperm(k, generator=g)]
    w = torch.randn(32, k, generator=g)
    tie = gqa_tie(HEADS, KV_HEADS, HEAD_DIM)
    s, err, rtn = awq_search_scales(x, [w], 32, grid=10, zero_point=True, tie=tie)
    per_head = s.view(KV_HEADS, HEADS // KV_HEADS, HEAD_DIM)
    assert torch.allclose(per_head, per_head[:, :1].expand_as(per_head), rtol=1e-6)
    assert not torch.allclose(s, torch.ones(k)) and err < rtn
    untied, _, _ = awq_search_scales(x, [w], 32, grid=10, zero_point=True)
    per_head = untied.view(KV_HEADS, HEADS // KV_HEADS, HEAD_DIM)
    assert not torch.allclose(per_head, per_head[:, :1].expand_as(per_head))  # the tie is what ties


@pytest.fixture(scope="module")
def gqa_llama(tmp_path_factory: pytest.TempPathFactory) -> tuple[Network, list, CalibrationStats]:
    torch.manual_seed(0)
    config = transformers.LlamaConfig(vocab_size=128, hidden_size=HEADS * HEAD_DIM, intermediate_size=128,
                                      num_hidden_layers=2, num_attention_heads=HEADS,
                                      num_key_value_heads=KV_HEADS, max_position_embeddings=128)
    path = Path(tmp_path_factory.mktemp("gqa_llama"))
    transformers.LlamaForCausalLM(config).save_pretrained(path)
    from trtdsl.models import from_hugging_face
    net = from_hugging_face(path, "float32").build_network(
        max_batch_size=2, max_num_tokens=64, max_seq_len=64, tokens_per_block=16, context_logits=True)
    gen = torch.Generator().manual_seed(3)
    chunks = [torch.randint(0, 128, (32,), generator=gen).tolist() for _ in range(6)]
    feeds = list(prefill_feeds(net, chunks, batch_size=2))
    return net, feeds, calibrate(net, feeds, progress=False)


def _o_proj_factors(net: Network) -> list[torch.Tensor]:
    """The constant factor of every multiply that reads an attention output."""
    out = []
    for layer in net.layers:
        if layer.kind is LayerKind.ELEMENTWISE and layer.attrs.get("op") == "prod":
            for a, b in (layer.inputs, layer.inputs[::-1]):
                if a.producer is not None and a.producer.attrs.get("name") == "trtdsl.attention":
                    out.append(_constant_value(b))
    return out


def _constant_value(t: Tensor) -> torch.Tensor:
    src = t.producer
    while src.kind is not LayerKind.CONSTANT:
        src = src.inputs[0].producer
    return src.attrs["value"].reshape(-1).float()


def _logits(net: Network, feed: dict[str, torch.Tensor]) -> torch.Tensor:
    return TorchExecutor(net).run({k: v.clone() for k, v in feed.items()})["logits"]


@pytest.mark.parametrize("mode,options,tol", [
    ("int4_awq", {"group_size": 32, "awq_grid": 10}, 1e-4),
    # int8_sq re-quantizes o_proj's input per token: a scale folded into V instead may flip a rounding
    ("int8_sq", {}, 2e-2)])
@pytest.mark.parametrize("tied", [True, False])
def test_optimize_folds_the_tied_o_proj_factor(gqa_llama: tuple, tied: bool, mode: str, options: dict,
                                               tol: float) -> None:
    net, feeds, stats = gqa_llama
    qnet = quantize_network(net, mode, calibration=stats, awq_tie_gqa=tied, **options)
    factors = _o_proj_factors(qnet)
    assert len(factors) == 2, "precondition: AWQ / SmoothQuant scaled the o_proj input of both layers"
    for c in factors:
        per_head = c.view(KV_HEADS, HEADS // KV_HEADS, HEAD_DIM)
        assert torch.allclose(per_head, per_head[:, :1].expand_as(per_head), rtol=1e-6) == tied
    want = _logits(qnet, feeds[0])
    optimize(qnet)
    assert len(_o_proj_factors(qnet)) == (0 if tied else 2)
    got = _logits(qnet, feeds[0])
    assert torch.allclose(got, want, rtol=tol, atol=tol * float(want.abs().max()))
