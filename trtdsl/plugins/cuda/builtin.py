"""CUDA implementations of the built-in plugins and of the layers that have a fused kernel.

``register_cuda_implementations()`` attaches the kernels of this package to the plugin registry under
the plugins' names (``spec.implementations["cuda"]``), so a ``TorchExecutor`` on a CUDA device picks
them at construction. ``cuda_layer_function(layer)`` returns a kernel-backed replacement for a layer
kind's torch function where one exists for that layer's attributes and dtype (decided once, at
executor construction), else None.

Each implementation has the reference's signature ``(inputs, fields, hints) -> outputs``. Kernels
read per-sequence metadata from device buffers and size their grids from host ``hints``
(``max_q_len``, ``max_kv_len``), so steps can be captured in CUDA graphs; without hints the
attention falls back to reading the bounds from the device (a synchronization, fine eagerly).
"""

from __future__ import annotations

from typing import Any, Callable

import torch

from ...ir.network import Layer, LayerKind
from ..registry import get_plugin

__all__ = ["register_cuda_implementations", "cuda_layer_function", "attention_cuda"]

_HALF = (torch.float16, torch.bfloat16)


def _codes_if(out: torch.Tensor, out_scale: torch.Tensor | None) -> torch.Tensor:
    """A reference attention's output, or its e4m3 codes with ``out_scale`` (the ``*_fp8`` plugins)."""
    if out_scale is None:
        return out
    from ...quantization.numerics import quantize_fp8
    return quantize_fp8(out, out_scale)


def _step_bounds(hints: dict[str, Any], seq_lens: torch.Tensor, past_lens: torch.Tensor) -> tuple[int, int]:
    """(max_q_len, max_kv_len) from the host hints, else read from the device (a synchronization)."""
    max_q, max_kv = hints.get("max_q_len"), hints.get("max_kv_len")
    if max_q is None or max_kv is None:
        max_q, max_kv = int(seq_lens.max()), int((seq_lens + past_lens).max())
    return max(1, int(max_q)), max(1, int(max_kv))


def attention_cuda(ins: list[torch.Tensor], fields: dict[str, Any], hints: dict[str, Any],
                   out_scale: torch.Tensor | None = None) -> torch.Tensor:
    """``trtdsl.attention`` on CUDA; with ``out_scale`` its output's e4m3 codes (``trtdsl.attention_fp8``)."""
    from . import paged_attention
    from ..attention import reference
    qkv, _, seq_lens, past_lens = ins[0], ins[1], ins[2], ins[3]
    if qkv.dtype not in _HALF or fields["head_dim"] not in (64, 128):
        # fp32 / other head dims: the kernels don't cover them
        return _codes_if(reference(ins, fields, hints), out_scale)
    max_q, max_kv = _step_bounds(hints, seq_lens, past_lens)
    return paged_attention(*ins, **fields, max_q_len=max_q, max_kv_len=max_kv, out_scale=out_scale)


def attention_quant_kv_cuda(ins: list[torch.Tensor], fields: dict[str, Any], hints: dict[str, Any],
                            out_scale: torch.Tensor | None = None) -> torch.Tensor:
    """``trtdsl.attention_quant_kv`` on CUDA; with ``out_scale`` its output's e4m3 codes
    (``trtdsl.attention_quant_kv_fp8``)."""
    from ...quantization.kv_cache import K_BIAS_INPUT, quant_kv_attention_reference
    from .kv_quant_ops import KV_CODE_DTYPES, paged_attention_quant_kv
    qkv, seq_lens, past_lens, kv_cache = ins[0], ins[2], ins[3], ins[6]
    # What the kernels don't cover runs the reference (torch ops on the GPU: correct, slow).
    if qkv.dtype not in _HALF or fields["head_dim"] not in (64, 128) or kv_cache.dtype not in KV_CODE_DTYPES:
        return _codes_if(quant_kv_attention_reference(ins, fields, hints), out_scale)
    max_q, max_kv = _step_bounds(hints, seq_lens, past_lens)
    kw = {k: v for k, v in fields.items() if k not in ("kv_cache_dtype", "k_rotation")}
    k_bias = ins[K_BIAS_INPUT] if len(ins) > K_BIAS_INPUT else None  # kv_cache_center_k's mean key
    return paged_attention_quant_kv(*ins[:K_BIAS_INPUT], **kw, max_q_len=max_q, max_kv_len=max_kv,
                                    k_rotation=fields.get("k_rotation", "none") == "hadamard", k_bias=k_bias,
                                    out_scale=out_scale)


def _add_rms_norm_cuda(ins: list[torch.Tensor], fields: dict[str, Any], hints: dict[str, Any]) -> list:
    from . import rmsnorm
    a, b, weight = ins
    if a.dtype not in _HALF or tuple(fields["axes"]) != (a.ndim - 1,):
        from ...passes.fused_plugins import add_rms_norm_reference
        return add_rms_norm_reference(ins, fields, hints)
    out, total = rmsnorm(a.contiguous(), weight.reshape(-1), fields["epsilon"], residual=b.contiguous())
    return [out, total]


def _swiglu_cuda(ins: list[torch.Tensor], fields: dict[str, Any], hints: dict[str, Any]) -> torch.Tensor:
    from . import swiglu
    x = ins[0]
    if x.dtype not in _HALF:
        from ...passes.fused_plugins import swiglu_reference
        return swiglu_reference(ins, fields, hints)
    return swiglu(x.contiguous())


def register_cuda_implementations() -> None:
    """Attach the CUDA kernels to their plugins (idempotent)."""
    from ...quantization import kv_cache  # registers trtdsl.attention_quant_kv
    get_plugin("trtdsl.attention").implementations["cuda"] = attention_cuda
    get_plugin(kv_cache.ATTENTION_QUANT_KV).implementations["cuda"] = attention_quant_kv_cuda
    get_plugin("trtdsl.add_rms_norm").implementations["cuda"] = _add_rms_norm_cuda
    get_plugin("trtdsl.swiglu").implementations["cuda"] = _swiglu_cuda
    try:
        from .register import register_cuda_implementations as register_quant
        register_quant()
    except ImportError:
        pass


def _rms_norm_layer(layer: Layer, ins: list, env: dict, ctx: dict) -> list:
    from . import rmsnorm
    x, weight = ins
    return [rmsnorm(x.contiguous(), weight.reshape(-1), layer.attrs["epsilon"])]


def _linear_layer(layer: Layer, ins: list, env: dict, ctx: dict) -> list:
    """``x @ W^T`` with a constant weight: our GEMV for the few-row (decode) steps where it beats
    cuBLAS (the row count is a host-side shape, so this choice needs no synchronization)."""
    from .dense_ops import dense_gemv, gemv_preferred
    x, w = ins
    n, k = w.shape[-2], w.shape[-1]
    if x.dim() == 2 and w.dim() == 2 and gemv_preferred(x.shape[0], n, k, x.dtype) and x.is_contiguous():
        return [dense_gemv(x, w)]
    return [torch.matmul(x, w.transpose(-1, -2))]


def _is_linear(layer: Layer) -> bool:
    a, w = layer.inputs
    return bool(layer.attrs.get("transpose_b") and not layer.attrs.get("transpose_a") and
            w.producer is not None and w.producer.kind is LayerKind.CONSTANT and len(w.shape) == 2 and
            len(a.shape) == 2 and a.dtype.torch in _HALF)


def cuda_layer_function(layer: Layer) -> Callable | None:
    """A kernel-backed function for ``layer`` on CUDA, or None to keep the torch one."""
    if layer.kind is LayerKind.MATRIX_MULTIPLY and _is_linear(layer):
        return _linear_layer
    if layer.kind is LayerKind.NORMALIZATION and layer.attrs["kind"] == "rms" and \
            layer.outputs[0].dtype.torch in _HALF and tuple(layer.attrs["axes"]) == (layer.inputs[0].ndim - 1,):
        return _rms_norm_layer
    return None
