"""GEMM sensitivity ranking and ``float_fraction``: the KL of quantizing one group alone (checked
against torch's ``kl_div`` on the executor's logits), the greedy float budget with exact choices,
and a quantized tiny Llama keeping exactly the chosen GEMMs in float."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from trtdsl.backends.torch_executor import TorchExecutor
from trtdsl.errors import ConfigError
from trtdsl.ir.network import LayerKind, Network
from trtdsl.quantization import (calibrate, clone_network, find_gemm_sites, prefill_feeds, quantize_network,
                                 token_chunks)
from trtdsl.quantization.sensitivity import GroupSensitivity, choose_float_groups, gemm_sensitivity

transformers = pytest.importorskip("transformers")


@pytest.fixture(scope="module")
def llama(tmp_path_factory: pytest.TempPathFactory) -> Network:
    from trtdsl.models import from_hugging_face

    torch.manual_seed(0)
    config = transformers.LlamaConfig(vocab_size=128, hidden_size=64, intermediate_size=128,
                                      num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                                      max_position_embeddings=64, tie_word_embeddings=True)
    path = Path(tmp_path_factory.mktemp("tiny_llama"))
    transformers.LlamaForCausalLM(config).eval().save_pretrained(path)
    return from_hugging_face(path, "float32").build_network(
        max_batch_size=2, max_num_tokens=64, max_seq_len=64, tokens_per_block=8, context_logits=True)


@pytest.fixture(scope="module")
def feeds(llama: Network) -> list[dict[str, torch.Tensor]]:
    ids = torch.randint(0, 128, (256,), generator=torch.Generator().manual_seed(1)).tolist()
    return list(prefill_feeds(llama, token_chunks(ids, 32, 8), batch_size=2))


def _float_gemms(net: Network) -> set[str]:
    return {layer.name for layer in net.layers if layer.kind is LayerKind.MATRIX_MULTIPLY}


def _logits(net: Network, feeds: list) -> list[torch.Tensor]:
    executor = TorchExecutor(net, "cpu")
    return [executor.run(f)["logits"].double() for f in feeds]


def _kl(net: Network, reference: list[torch.Tensor], feeds: list) -> float:
    """Mean KL(reference || net) per logit row, by torch's kl_div."""
    total = sum(float(torch.nn.functional.kl_div(q.log_softmax(-1), r.log_softmax(-1), log_target=True,
                                                 reduction="sum")) for q, r in zip(_logits(net, feeds), reference))
    return total / sum(r.shape[0] for r in reference)


def _round_weights(net: Network, group: list) -> None:
    """A stand-in quantizer: each weight of the group rounded to 3 bits per row, in place."""
    for site in group:
        w = site.weight_layer.attrs["value"]
        step = w.abs().amax(dim=-1, keepdim=True) / 3
        site.weight_layer.attrs["value"] = (w / step).round() * step


def test_each_group_scores_the_kl_of_quantizing_it_alone(llama: Network, feeds: list) -> None:
    assert all(g.kl == 0.0 for g in gemm_sensitivity(llama, feeds, lambda n, g: None, ["*lm_head*"]))
    ranking = gemm_sensitivity(llama, feeds, _round_weights, exclude=["*lm_head*"])
    assert len(ranking) == 8 and sum(len(g.layers) for g in ranking) == 8  # qkv, o, gate_up, down x 2
    assert [g.kl for g in ranking] == sorted((g.kl for g in ranking), reverse=True) and ranking[-1].kl > 0
    unranked = _float_gemms(llama) - {n for g in ranking for n in g.layers}
    assert len(unranked) == 1 and "lm_head" in next(iter(unranked))
    reference = _logits(llama, feeds)
    for group in ranking:
        net = clone_network(llama)
        _round_weights(net, [s for s in find_gemm_sites(net) if s.layer.name in group.layers])
        assert group.kl == pytest.approx(_kl(net, reference, feeds), rel=1e-6)
    assert gemm_sensitivity(llama, feeds, _round_weights, exclude=["*lm_head*"]) == ranking  # llama unchanged


def _g(name: str, weights: int, kl: float) -> GroupSensitivity:
    return GroupSensitivity((name,), weights, kl)


def test_the_float_budget_is_filled_by_kl_per_weight() -> None:
    ranking = [_g("big", 60, 6.0), _g("a", 10, 2.0), _g("b", 20, 3.0), _g("c", 10, 0.5), _g("zero", 1, 0.0)]
    # per weight: a 0.2, b 0.15, big 0.1, c 0.05; budget 0.3 * 101 = 30.3: a, b fit, big does not, c does not
    assert [g.layers[0] for g in choose_float_groups(ranking, 0.3)] == ["a", "b"]
    # budget 40.4: a, b, then big is skipped for the smaller c
    assert [g.layers[0] for g in choose_float_groups(ranking, 0.4)] == ["a", "b", "c"]
    assert choose_float_groups(ranking, 0.0) == []
    assert [g.layers[0] for g in choose_float_groups(ranking, 0.995)] == ["a", "b", "big", "c"]  # never KL 0


def test_float_fraction_keeps_the_chosen_gemms_in_float(llama: Network, feeds: list) -> None:
    qnet = quantize_network(llama, "int4_wo", calibration_feeds=iter(feeds), group_size=32, progress=False,
                            float_fraction=0.3, sensitivity_steps=2)
    chosen = qnet.metadata["quantization"]["float_gemms"]
    kept = {name for g in chosen for name in g["layers"]}
    lm_head = {n for n in _float_gemms(llama) if "lm_head" in n}
    assert kept and _float_gemms(qnet) == kept | lm_head
    total = sum(g.weights for g in gemm_sensitivity(llama, feeds[:2], lambda n, g: None, ["*lm_head*"]))
    assert sum(g["weights"] for g in chosen) <= 0.3 * total
    # Each recorded KL is that of quantizing the group alone (everything else excluded).
    reference = _logits(llama, feeds[:2])
    for g in chosen:
        alone = quantize_network(llama, "int4_wo", group_size=32, progress=False,
                                 exclude=sorted(_float_gemms(llama) - set(g["layers"])))
        assert g["kl"] == pytest.approx(_kl(alone, reference, feeds[:2]), rel=1e-6)
    # Less error than quantizing everything.
    full = quantize_network(llama, "int4_wo", group_size=32, progress=False)
    ref = _logits(llama, feeds[2:])
    def err(net: Network) -> float:
        return sum(float((a - b).square().sum()) for a, b in zip(_logits(net, feeds[2:]), ref))
    assert err(qnet) < err(full)


def test_float_fraction_errors(llama: Network, feeds: list) -> None:
    stats = calibrate(llama, feeds, progress=False)
    with pytest.raises(ConfigError, match="calibration_feeds"):
        quantize_network(llama, "fp8", calibration=stats, float_fraction=0.1, progress=False)
    with pytest.raises(ConfigError, match="float_fraction"):
        quantize_network(llama, "fp8", calibration=stats, float_fraction=1.0, progress=False)
    with pytest.raises(ConfigError, match="float_fraction"):
        quantize_network(llama, None, kv_cache_dtype="fp8", calibration=stats, float_fraction=0.1)
    with pytest.raises(ConfigError, match="sensitivity_steps"):
        quantize_network(llama, "fp8", calibration=stats, sensitivity_steps=0)
