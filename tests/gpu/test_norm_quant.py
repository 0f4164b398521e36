"""GPU tests of the quantizing RMSNorm / add+RMSNorm / SwiGLU kernels (``plugins_cuda/src/norm_quant.cu``,
``trtdsl.plugins.cuda.fused_quant_ops``) and of ``trtdsl.fp8_gemm`` on codes: codes bitwise equal to the
torch quantizer (``numerics.quantize_fp8``) of the unfused kernels' outputs, and to the quantizer
kernel's; odd sizes (scalar paths), saturating scales, fp32 / fp16 / bf16; the GEMM on codes bitwise
the quantizing GEMM (GEMV and cuBLASLt row counts); a fused fp8 tiny Llama bitwise the unfused one on
the GPU; centered inputs (``fp8_center_inputs``): the norm's codes of ``normed - mean`` and the GEMV's
bias bitwise the unfused subtraction / add, and a centered fused tiny Llama bitwise the unfused one."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from trtdsl.dtypes import DType
from trtdsl.errors import PluginError
from trtdsl.quantization.numerics import FP8_MAX, quantize_fp8

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
fp8 = pytest.mark.skipif(not torch.cuda.is_available() or torch.cuda.get_device_capability() < (8, 9),
                         reason="needs an sm_89+ GPU for FP8")
DTYPES = [torch.float32, torch.float16, torch.bfloat16]
HIDDEN = [64, 33, 4100, 4096, 5000]  # 33 / 4100: no 16-byte vectors (scalar kernels)
INTER = [48, 37, 1372, 14336]


def _u8(t: torch.Tensor) -> torch.Tensor:
    return t.view(torch.uint8)


def _scale_for(y: torch.Tensor, headroom: float) -> torch.Tensor:
    """A static scale mapping ``headroom * max|y|`` to 448: < 1 saturates the largest values."""
    return (y.float().abs().amax() * headroom / FP8_MAX).reshape(1).float()


def _same_codes(got: torch.Tensor, y: torch.Tensor, scale: torch.Tensor) -> None:
    from trtdsl.plugins.cuda.quant_ops import quantize_fp8 as quantize_kernel
    assert got.dtype == torch.float8_e4m3fn and got.shape == y.shape
    assert torch.equal(_u8(got), _u8(quantize_fp8(y, scale)))  # torch's quantizer on the GPU
    assert torch.equal(_u8(got).reshape(-1, y.shape[-1]),
                       _u8(quantize_kernel(y.reshape(-1, y.shape[-1]), scale)))  # the quantizer kernel


@cuda
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("hidden", HIDDEN)
@pytest.mark.parametrize("rows", [1, 5])
@pytest.mark.parametrize("residual", [False, True])
@pytest.mark.parametrize("centered", [False, True])
def test_rmsnorm_fp8_codes(dtype: torch.dtype, hidden: int, rows: int, residual: bool, centered: bool) -> None:
    """Centered (a mean given): the codes of (the plain kernel's output - mean), rounded to dtype first."""
    from trtdsl.plugins.cuda import rmsnorm
    from trtdsl.plugins.cuda.fused_quant_ops import rmsnorm_fp8
    g = torch.Generator(device="cuda").manual_seed(hidden * 7 + rows)
    x = torch.randn(rows, hidden, device="cuda", generator=g).to(dtype) * 2
    res = torch.randn(rows, hidden, device="cuda", generator=g).to(dtype) if residual else None
    w = (torch.rand(hidden, device="cuda", generator=g) + 0.5).to(dtype)
    mean = (torch.randn(hidden, device="cuda", generator=g) * 2).to(dtype) if centered else None
    want = rmsnorm(x, w, 1e-5, residual=res)
    y = want[0] if residual else want
    y = y - mean if centered else y
    for headroom in (1.2, 0.5):
        scale = _scale_for(y, headroom)
        got = rmsnorm_fp8(x, w, scale, 1e-5, residual=res, mean=mean)
        codes = got[0] if residual else got
        _same_codes(codes, y, scale)
        if residual:
            assert torch.equal(got[1], want[1])
    assert float(codes.float().abs().max()) == FP8_MAX  # headroom 0.5 saturated


@fp8
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("m", [1, 3, 8, 17])
def test_fp8_gemm_on_codes_adds_its_bias_as_an_add_would(dtype: torch.dtype, m: int) -> None:
    """bias: the GEMV's epilogue (CUDA-core and tensor-core configs) and cuBLASLt + torch add (m = 17)
    equal the GEMM without bias followed by a torch add, bit for bit."""
    from trtdsl.plugins.cuda.builtin import register_cuda_implementations
    from trtdsl.plugins.cuda.quant_ops import FP8_TC_CONFIGS, fp8_gemv
    from trtdsl.plugins.registry import get_plugin
    from trtdsl.quantization.plugins import FP8_GEMM
    register_cuda_implementations()
    n, k = 200, 1024
    g = torch.Generator(device="cuda").manual_seed(m)
    w = torch.randn(n, k, device="cuda", generator=g)
    ws = w.abs().amax(1) / FP8_MAX
    wq = quantize_fp8(w, ws[:, None])
    x = torch.randn(m, k, device="cuda", generator=g).to(dtype)
    s = _scale_for(x, 0.8)
    bias = (torch.randn(n, device="cuda", generator=g) * 3).to(dtype)
    xq = quantize_fp8(x, s)
    impl = get_plugin(FP8_GEMM).implementations["cuda"]
    fields = {"out_dtype": DType(str(dtype).split(".")[1])}
    assert torch.equal(impl([xq, wq, ws, s, bias], fields, {}), impl([xq, wq, ws, s], fields, {}) + bias)
    if m <= 8:
        for config in (1, *FP8_TC_CONFIGS):
            plain = fp8_gemv(xq, wq, s, ws, dtype, config)
            assert torch.equal(fp8_gemv(xq, wq, s, ws, dtype, config, bias=bias), plain + bias), config
    with pytest.raises(PluginError, match="bias"):
        fp8_gemv(xq[:1].contiguous(), wq, s, ws, dtype, 1, bias=bias.float())


@cuda
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("inter", INTER)
@pytest.mark.parametrize("rows", [1, 3])
def test_swiglu_fp8_codes(dtype: torch.dtype, inter: int, rows: int) -> None:
    from trtdsl.plugins.cuda import swiglu
    from trtdsl.plugins.cuda.fused_quant_ops import swiglu_fp8
    g = torch.Generator(device="cuda").manual_seed(inter + rows)
    x = (torch.randn(rows, 2 * inter, device="cuda", generator=g) * 3).to(dtype)
    y = swiglu(x)
    for headroom in (1.1, 0.3):
        scale = _scale_for(y, headroom)
        _same_codes(swiglu_fp8(x, scale), y, scale)


@cuda
def test_fused_kernels_match_the_torch_references() -> None:
    """The plugin references on the float inputs (torch math, not our kernels): codes within one e4m3
    step where the two norms round differently."""
    from trtdsl.passes import fp8_act_fuse
    from trtdsl.plugins.cuda.builtin import register_cuda_implementations
    from trtdsl.plugins.registry import get_plugin
    register_cuda_implementations()
    x = torch.randn(4, 1000, device="cuda").bfloat16()
    w = (torch.rand(1, 1000, device="cuda") + 0.5).bfloat16()
    s = torch.tensor([0.01], device="cuda")
    fields = {"axes": (1,), "epsilon": 1e-6}
    for name, ins in ((fp8_act_fuse.RMS_NORM_FP8, [x, w, s]), (fp8_act_fuse.ADD_RMS_NORM_FP8, [x, x.flip(0), w, s]),
                      (fp8_act_fuse.SWIGLU_FP8, [x, s])):
        spec = get_plugin(name)
        f = {} if name == fp8_act_fuse.SWIGLU_FP8 else fields
        got, ref = spec.implementations["cuda"](ins, f, {}), spec.reference(ins, f, {})
        got, ref = (got[0], ref[0]) if isinstance(got, list) else (got, ref)
        assert got.shape == ref.shape and got.dtype == ref.dtype == torch.float8_e4m3fn
        a, b = got.float(), ref.float()
        assert float((a - b).abs().max()) <= float(b.abs().max()) / 8, name
        assert float((a == b).float().mean()) > 0.9, name


@cuda
def test_bad_inputs_are_plugin_errors() -> None:
    from trtdsl.plugins.cuda.fused_quant_ops import rmsnorm_fp8, swiglu_fp8
    x = torch.randn(2, 64, device="cuda").half()
    with pytest.raises(PluginError, match="input_scale"):
        rmsnorm_fp8(x, torch.ones(64, device="cuda").half(), torch.ones(2, device="cuda"))
    with pytest.raises(PluginError, match="weight"):
        rmsnorm_fp8(x, torch.ones(64, device="cuda").float(), torch.ones(1, device="cuda"))
    with pytest.raises(PluginError, match="even"):
        swiglu_fp8(x[:, :63].contiguous(), torch.ones(1, device="cuda"))
    with pytest.raises(PluginError, match="mean has 3 elements"):
        rmsnorm_fp8(x, torch.ones(64, device="cuda").half(), torch.ones(1, device="cuda"),
                    mean=torch.zeros(3, device="cuda").half())


@fp8
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("m", [1, 3, 4, 5, 17])
@pytest.mark.parametrize("n,per_channel", [(512, True), (512, False), (200, True)])
def test_fp8_gemm_on_codes_is_the_quantizing_gemm(dtype: torch.dtype, m: int, n: int, per_channel: bool) -> None:
    from trtdsl.plugins.cuda.builtin import register_cuda_implementations
    from trtdsl.plugins.cuda.register import _fp8_cuda
    from trtdsl.plugins.registry import get_plugin
    from trtdsl.quantization.plugins import FP8_GEMM
    register_cuda_implementations()
    k = 1024
    g = torch.Generator(device="cuda").manual_seed(m * 1000 + n)
    x = torch.randn(m, k, device="cuda", generator=g).to(dtype)
    w = torch.randn(n, k, device="cuda", generator=g)
    ws = (w.abs().amax(1) if per_channel else w.abs().amax().reshape(1)) / FP8_MAX
    wq = quantize_fp8(w, ws[:, None] if per_channel else ws)
    s = _scale_for(x, 0.8)
    want = _fp8_cuda([x, wq, ws, s], {}, {})
    got = get_plugin(FP8_GEMM).implementations["cuda"]([quantize_fp8(x, s), wq, ws, s],
                                                       {"out_dtype": DType(str(dtype).split(".")[1])}, {})
    assert got.dtype == dtype and torch.equal(got, want)


@fp8
@pytest.mark.parametrize("chunk,batch", [(2, 1), (16, 2)])  # FP8 GEMV rows / cuBLASLt rows
@pytest.mark.parametrize("kv,center", [(None, "none"), ("fp8", "none"), (None, "norm")])  # quantized cache:
def test_fused_llama_is_bitwise_the_unfused_one_on_the_gpu(tmp_path: Path, chunk: int, batch: int,  # attention_quant_kv_fp8
                                                           kv: str | None, center: str) -> None:
    transformers = pytest.importorskip("transformers")
    from trtdsl.backends.torch_executor import TorchExecutor
    from trtdsl.passes import optimize
    from trtdsl.quantization import clone_network, prefill_feeds, quantize_network, token_chunks
    net, ids = _tiny_bf16_llama(tmp_path, transformers)
    qnet = quantize_network(net, "fp8", calibration_feeds=list(prefill_feeds(net, token_chunks(ids, 16, 4), 2)),
                            progress=False, kv_cache_dtype=kv, fp8_center_inputs=center)
    unfused = clone_network(qnet)
    optimize(unfused, fuse_add_rms_norm=True, fuse_swiglu=True, fuse_fp8_activations=False)
    assert optimize(qnet, fuse_add_rms_norm=True, fuse_swiglu=True)["fp8_activations"] == 8
    feed = next(iter(prefill_feeds(qnet, token_chunks(ids, chunk, batch), batch, device="cuda")))
    want = TorchExecutor(unfused, "cuda").run({k: v.clone() for k, v in feed.items()})
    got = TorchExecutor(qnet, "cuda").run({k: v.clone() for k, v in feed.items()})
    for name in want:
        assert torch.equal(got[name], want[name]), name
    if chunk == 2:  # decode steps too: there the fused decode attention kernel writes o_proj's codes
        assert _greedy_decode(unfused, ids[:5]) == _greedy_decode(qnet, ids[:5])



def _tiny_bf16_llama(tmp_path: Path, transformers) -> tuple:
    """A random 2-layer Llama (head_dim 64: the CUDA attention kernels run, as in production) as a
    bf16 network, and 64 token ids."""
    from trtdsl.models import from_hugging_face
    torch.manual_seed(0)
    config = transformers.LlamaConfig(vocab_size=256, hidden_size=256, intermediate_size=688, num_hidden_layers=2,
                                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128)
    transformers.LlamaForCausalLM(config).save_pretrained(tmp_path)
    net = from_hugging_face(tmp_path, "bfloat16").build_network(max_batch_size=2, max_num_tokens=64,
                                                                max_seq_len=64, tokens_per_block=16)
    return net, torch.randint(0, 256, (64,), generator=torch.Generator().manual_seed(1)).tolist()


def _greedy_decode(net, prompt: list[int]) -> tuple[list[int], list[list[float]]]:
    from trtdsl.engine import Engine
    from trtdsl.runtime.sampling import SamplingParams
    from trtdsl.runtime.session import GenerationSession, SessionRequest
    session = GenerationSession(Engine(net), "cuda")
    request = SessionRequest(tuple(prompt), max_new_tokens=6, sampling=SamplingParams(temperature=0))
    *_, (state,) = session.generate([request], want_generation_logits=True)
    return state.output, [t.float().cpu().tolist() for t in state.generation_logits]
