"""fp8's low-rank float branch (``fp8_lowrank``): each centered GEMM input's leading principal
directions pass through the float weights, only the rest is quantized. Checked against Hugging Face:
the basis spans the leading eigenvectors of the covariance of the HF model's own GEMM inputs, the
branch's weight is ``(W U)^T`` of the HF weights, and on a model whose hidden states carry a strong
token-dependent direction (what massive activations are) the branch shrinks the fp8 error against
the HF logits."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch

from trtdsl.errors import ConfigError
from trtdsl.ir.network import LayerKind
from trtdsl.models.eval import token_logprobs
from trtdsl.quantization import QuantConfig, calibrate, prefill_feeds, quantize_network
from trtdsl.quantization.graph import constant_source
from trtdsl.quantization.plugins import FP8_GEMM

from test_fp8_center import _hf_inputs, shifted_llama


@pytest.fixture(scope="module")
def spiky_llama(tmp_path_factory: pytest.TempPathFactory) -> tuple:
    """A tiny Llama whose embeddings carry two fixed directions with large per-token weights."""
    def shift(emb: torch.Tensor) -> torch.Tensor:
        g = torch.Generator().manual_seed(3)
        directions = torch.linalg.qr(torch.randn(64, 2, generator=g)).Q.T  # [2, 64], orthonormal
        return 64.0 * emb.std() * torch.randn(128, 2, generator=g) @ directions
    return shifted_llama(Path(tmp_path_factory.mktemp("spiky_llama")), shift, 512, 16, hessians=True)[:4]


def _value(t) -> torch.Tensor:
    return constant_source(t).attrs["value"].double()


def test_branch_is_the_leading_principal_directions_of_the_hf_inputs(spiky_llama: tuple) -> None:
    net, hf, chunks, stats = spiky_llama
    qnet = quantize_network(net, "fp8", calibration=stats, fp8_lowrank=2)
    layer = hf.model.layers[1]
    gemm = next(la for la in qnet.layers if la.kind is LayerKind.PLUGIN and la.attrs["name"] == FP8_GEMM
                and la.name.startswith("layers.1.") and "gate_up" in la.module_path)
    rest = gemm.inputs[0].producer  # centered - c @ U^T
    assert rest.kind is LayerKind.ELEMENTWISE and rest.attrs["op"] == "sub"
    low = rest.inputs[1].producer
    c = low.inputs[0].producer
    assert low.kind is LayerKind.MATRIX_MULTIPLY and c.kind is LayerKind.MATRIX_MULTIPLY
    basis = _value(c.inputs[1])  # [k, 2]
    torch.testing.assert_close(_value(low.inputs[1]), basis.T)
    x = _hf_inputs(hf, chunks, layer.mlp.gate_proj)
    cov = torch.cov(x.T, correction=0)
    want = torch.linalg.eigh(cov).eigenvectors[:, -2:]
    # the same subspace: the projections agree
    torch.testing.assert_close(basis @ basis.T, want @ want.T, rtol=0, atol=2e-3)
    # the branch's output: c @ (W U)^T with the float HF weights, W mean as the bias
    (add,) = [la for la in qnet.layers if any(t is gemm.outputs[0] for t in la.inputs)]
    branch = add.inputs[1].producer
    assert branch.kind is LayerKind.MATRIX_MULTIPLY and branch.inputs[0] is c.outputs[0]
    w = torch.cat([layer.mlp.gate_proj.weight, layer.mlp.up_proj.weight]).double()
    torch.testing.assert_close(_value(branch.inputs[1]), (w @ basis).T, rtol=1e-5, atol=1e-6)


def _gate_up_split(qnet):
    """(c's matmul, the gate_up GEMM) of layer 1's branch."""
    gemm = next(la for la in qnet.layers if la.kind is LayerKind.PLUGIN and la.attrs["name"] == FP8_GEMM
                and la.name.startswith("layers.1.") and "gate_up" in la.module_path)
    return gemm.inputs[0].producer.inputs[1].producer.inputs[0].producer, gemm


def test_a_basis_in_the_statistics_replaces_the_eigenvectors(spiky_llama: tuple) -> None:
    """``CalibrationStats.lowrank_basis`` (a basis computed elsewhere): its first r columns become U, and
    the calibration needs no X^T X for it; a wrong shape or a non-orthonormal basis is a ConfigError."""
    net, _, chunks, stats = spiky_llama
    plain = calibrate(net, list(prefill_feeds(net, chunks[:2], batch_size=2)), progress=False)  # no X^T X
    g = torch.Generator().manual_seed(5)
    for key, xtx in stats.xtx.items():  # every GEMM input of the float network
        plain.lowrank_basis[key] = torch.linalg.qr(torch.randn(xtx.shape[0], 3, generator=g,
                                                               dtype=torch.float64)).Q
    c, _ = _gate_up_split(quantize_network(net, "fp8", calibration=plain, fp8_lowrank=2))
    basis = _value(c.inputs[1])  # [k, 2] in the network's dtype (float32 here)
    (key,) = [key for key, u in plain.lowrank_basis.items()
              if u.shape[0] == basis.shape[0] and torch.allclose(basis, u[:, :2], atol=1e-6)]
    c, _ = _gate_up_split(quantize_network(net, "fp8", calibration=stats, fp8_lowrank=2))
    assert not torch.allclose(basis, _value(c.inputs[1]), atol=1e-2)  # not the eigenvectors
    plain.lowrank_basis[key] = plain.lowrank_basis[key][:, :1]
    with pytest.raises(ConfigError, match=r"lowrank_basis .* fp8_lowrank 2 needs \[\d+, >= 2\]"):
        quantize_network(net, "fp8", calibration=plain, fp8_lowrank=2)
    plain.lowrank_basis[key] = 2.0 * torch.linalg.qr(torch.randn(plain.lowrank_basis[key].shape[0], 2,
                                                                 dtype=torch.float64)).Q
    with pytest.raises(ConfigError, match="is not orthonormal"):
        quantize_network(net, "fp8", calibration=plain, fp8_lowrank=2)


def test_branch_shrinks_the_fp8_error_against_hf(spiky_llama: tuple) -> None:
    net, hf, _, stats = spiky_llama
    tokens = torch.randint(0, 128, (40,), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        ref = hf(tokens[None].long()).logits[0].double().log_softmax(-1)[:-1]
    ref = ref.gather(1, tokens[1:, None].long())[:, 0]
    errors = {}
    for rank in (0, 2):
        qnet = quantize_network(net, "fp8", calibration=stats, fp8_lowrank=rank, fp8_center_inputs="all")
        errors[rank] = float((token_logprobs(qnet, tokens.tolist()).double() - ref).abs().mean())
    assert errors[2] < 0.5 * errors[0], errors  # measured 0.16x


def test_lowrank_errors(spiky_llama: tuple) -> None:
    net, _, chunks, stats = spiky_llama
    with pytest.raises(ConfigError, match="fp8_lowrank -1 must be >= 0"):
        QuantConfig(mode="fp8", fp8_lowrank=-1)
    with pytest.raises(ConfigError, match="applies to centered fp8 inputs"):
        QuantConfig(mode="fp8", fp8_center_inputs="none", fp8_lowrank=2)
    with pytest.raises(ConfigError, match="applies to centered fp8 inputs"):
        QuantConfig(mode="int8_sq", fp8_lowrank=2)
    with pytest.raises(ConfigError, match="must be below the input width 64"):
        quantize_network(net, "fp8", calibration=stats, fp8_lowrank=64)
    plain = calibrate(net, list(prefill_feeds(net, chunks[:2], batch_size=2)), progress=False)
    with pytest.raises(ConfigError, match="fp8_lowrank needs X\\^T X"):
        quantize_network(net, "fp8", calibration=plain, fp8_lowrank=2)


def test_fusion_folds_the_split_into_its_producers_bit_for_bit(spiky_llama: tuple, tmp_path: Path) -> None:
    """The fp8 activation pass folds the centering and the low-rank split into the quantizing norms and
    SwiGLUs (outputs: the codes of the rest, then c) and ``c @ (W U)^T`` and the bias into each GEMM
    (inputs 5-7): the network is bit for bit the one without that fusion, also after an engine round
    trip, and no constant is left unread."""
    from trtdsl.passes import fp8_act_fuse, optimize
    from trtdsl.quantization import clone_network
    net, _, chunks, stats = spiky_llama
    qnet = quantize_network(net, "fp8", calibration=stats, fp8_lowrank=2, fp8_center_inputs="norm+swiglu")
    plain = clone_network(qnet)
    optimize(plain, fuse_add_rms_norm=True, fuse_swiglu=True, fuse_fp8_activations=False)
    assert optimize(qnet, fuse_add_rms_norm=True, fuse_swiglu=True)["fp8_activations"] == 8
    producers = [la for la in qnet.layers if la.kind is LayerKind.PLUGIN and la.attrs["name"] in
                 (fp8_act_fuse.RMS_NORM_FP8, fp8_act_fuse.ADD_RMS_NORM_FP8, fp8_act_fuse.SWIGLU_FP8)]
    assert len(producers) == 6 and all(la.outputs[-1].shape[-1] == 2 for la in producers)  # each writes c
    gemms = [la for la in qnet.layers if la.kind is LayerKind.PLUGIN and la.attrs["name"] == FP8_GEMM]
    assert sorted(len(g.inputs) for g in gemms) == [5, 5] + [7] * 6  # o_proj: the bias correction alone
    assert not [la for la in qnet.layers if la.kind is LayerKind.ELEMENTWISE and la.attrs.get("op") == "sub"]
    _assert_fused_is_unfused(qnet, plain, net, chunks, tmp_path)


def _assert_fused_is_unfused(qnet, plain, net, chunks: list, tmp_path: Path) -> None:
    """No constant of the fused ``qnet`` is left unread, and it computes bit for bit what the unfused
    ``plain`` does, also after an engine round trip."""
    from trtdsl.backends.torch_executor import TorchExecutor
    from trtdsl.engine import Engine
    from trtdsl.passes.graph import consumers, output_ids
    users, outs = consumers(qnet), output_ids(qnet)
    assert not [la.name for la in qnet.layers if la.kind is LayerKind.CONSTANT
                and not any(users.get(id(t)) or id(t) in outs for t in la.outputs)]
    feeds = list(prefill_feeds(net, chunks[:2], batch_size=2))
    want = TorchExecutor(plain).run(feeds[0])
    Engine(qnet).save(tmp_path / "e")
    for candidate in (qnet, Engine.load(tmp_path / "e").network):
        got = TorchExecutor(candidate).run(feeds[0])
        assert all(torch.equal(got[name], want[name]) for name in want)


def test_fused_plugins_check_the_basis_and_the_branch(spiky_llama: tuple) -> None:
    from trtdsl import functional as F
    from trtdsl.errors import DTypeError, ShapeError
    from trtdsl.passes import fp8_act_fuse, optimize
    net, _, _, stats = spiky_llama
    qnet = quantize_network(net, "fp8", calibration=stats, fp8_lowrank=2, fp8_center_inputs="norm+swiglu")
    optimize(qnet, fuse_add_rms_norm=True, fuse_swiglu=True)
    norm = next(la for la in qnet.layers if la.kind is LayerKind.PLUGIN and la.attrs["name"] == fp8_act_fuse.ADD_RMS_NORM_FP8)
    swiglu = next(la for la in qnet.layers if la.kind is LayerKind.PLUGIN and la.attrs["name"] == fp8_act_fuse.SWIGLU_FP8)
    gemm = next(g for g in qnet.layers if g.kind is LayerKind.PLUGIN and g.attrs["name"] == FP8_GEMM and len(g.inputs) == 7)
    tall = F.constant(torch.zeros(8, 2), "float32", network=qnet)
    with pytest.raises(ShapeError, match=r"basis .* must be \[64, r\]"):
        F.plugin(fp8_act_fuse.ADD_RMS_NORM_FP8, [*norm.inputs[:5], tall], **norm.attrs["fields"])
    with pytest.raises(ShapeError, match="needs its low-rank basis too"):
        F.plugin(fp8_act_fuse.SWIGLU_FP8, swiglu.inputs[:3])
    with pytest.raises(ShapeError, match=r"lowrank_weight \[r, \d+\]"):
        F.plugin(FP8_GEMM, [*gemm.inputs[:6], tall], **gemm.attrs["fields"])
    wide = F.constant(torch.zeros(64, 2, dtype=torch.float16), "float16", network=qnet)
    with pytest.raises(DTypeError, match="must have the activation's dtype"):
        F.plugin(fp8_act_fuse.ADD_RMS_NORM_FP8, [*norm.inputs[:5], wide], **norm.attrs["fields"])


@pytest.mark.parametrize("block_rank", [1, 2])
def test_block_diagonal_swiglu_basis_is_each_chunks_own_directions_and_fuses_bit_for_bit(
        spiky_llama: tuple, tmp_path: Path, block_rank: int) -> None:
    """``fp8_lowrank_blocks``: down's input (the SwiGLU's output, 96 channels) gets 4 chunks of 24, each
    with the leading directions of its own block of the HF inputs' covariance and zeros elsewhere; the
    norms keep the global basis. The fusion gives the SwiGLU the compact basis and ``lowrank_blocks`` and
    stays bit for bit the unfused network, also after an engine round trip."""
    from trtdsl.passes import fp8_act_fuse, optimize
    from trtdsl.quantization import clone_network
    from trtdsl.quantization.numerics import compact_block_basis, lowrank_block_chunks
    net, hf, chunks, stats = spiky_llama
    qnet = quantize_network(net, "fp8", calibration=stats, fp8_lowrank=2, fp8_center_inputs="norm+swiglu",
                            fp8_lowrank_blocks=4, fp8_lowrank_block_rank=block_rank)
    down = next(la for la in qnet.layers if la.kind is LayerKind.PLUGIN and la.attrs["name"] == FP8_GEMM
                and la.name.startswith("layers.1.") and "down" in la.module_path)
    basis = _value(down.inputs[0].producer.inputs[1].producer.inputs[0].producer.inputs[1])
    assert basis.shape == (96, 4 * block_rank) and compact_block_basis(basis, 4) is not None
    assert _value(_gate_up_split(qnet)[0].inputs[1]).shape == (64, 2)  # the norm's input: global
    x = _hf_inputs(hf, chunks, hf.model.layers[1].mlp.down_proj)
    for b, (start, end) in enumerate(lowrank_block_chunks(96, 4)):
        assert (start, end) == (24 * b, 24 * b + 24)
        u = basis[start:end, b * block_rank:(b + 1) * block_rank]
        want = torch.linalg.eigh(torch.cov(x[:, start:end].T, correction=0)).eigenvectors[:, -block_rank:]
        torch.testing.assert_close(u @ u.T, want @ want.T, rtol=0, atol=5e-3)
    plain = clone_network(qnet)
    optimize(plain, fuse_add_rms_norm=True, fuse_swiglu=True, fuse_fp8_activations=False)
    assert optimize(qnet, fuse_add_rms_norm=True, fuse_swiglu=True)["fp8_activations"] == 8
    swiglus = [la for la in qnet.layers if la.kind is LayerKind.PLUGIN and la.attrs["name"] == fp8_act_fuse.SWIGLU_FP8]
    assert [la.attrs["fields"] for la in swiglus] == [{"lowrank_blocks": 4}] * 2
    assert all(tuple(la.inputs[-1].shape) == (96, block_rank) and la.outputs[-1].shape[-1] == 4 * block_rank
               for la in swiglus)
    _assert_fused_is_unfused(qnet, plain, net, chunks, tmp_path)  # the full basis went with the split's layers


def test_block_diagonal_basis_errors(spiky_llama: tuple) -> None:
    net, _, _, stats = spiky_llama
    with pytest.raises(ConfigError, match="blocks apply to the SwiGLU outputs' low-rank branch"):
        QuantConfig(mode="fp8", fp8_lowrank_blocks=4)
    with pytest.raises(ConfigError, match="blocks apply to the SwiGLU outputs' low-rank branch"):
        QuantConfig(mode="fp8", fp8_lowrank=2, fp8_lowrank_blocks=4)  # "norm": the SwiGLU output is not centered
    with pytest.raises(ConfigError, match="fp8_lowrank_block_rank 0 >= 1"):
        QuantConfig(mode="fp8", fp8_lowrank=2, fp8_center_inputs="all", fp8_lowrank_blocks=4, fp8_lowrank_block_rank=0)
    with pytest.raises(ConfigError, match="fp8_lowrank_blocks 8 x fp8_lowrank_block_rank 1 does not fit the input "
                                          "width 96"):  # 8 chunks of 16 channels would leave two empty
        quantize_network(net, "fp8", calibration=stats, fp8_lowrank=2, fp8_center_inputs="norm+swiglu",
                         fp8_lowrank_blocks=8)
    given = dataclasses.replace(stats, lowrank_basis={})
    g = torch.Generator().manual_seed(7)
    for key, xtx in stats.xtx.items():  # dense orthonormal bases: not block-diagonal
        given.lowrank_basis[key] = torch.linalg.qr(torch.randn(xtx.shape[0], 4, generator=g, dtype=torch.float64)).Q
    with pytest.raises(ConfigError, match="is not block-diagonal in 4 chunks of 1"):
        quantize_network(net, "fp8", calibration=given, fp8_lowrank=2, fp8_center_inputs="norm+swiglu",
                         fp8_lowrank_blocks=4)
