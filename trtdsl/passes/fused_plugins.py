"""Plugins that the fusion passes create: ``trtdsl.pointwise`` (a chain of elementwise layers run as
one layer) and ``trtdsl.add_rms_norm`` (residual add + RMSNorm). Each has a torch reference with
exactly the semantics of the layers it replaces (it calls the same layer functions), so fused and
unfused networks agree bit for bit on the torch backend; device kernels register against the names.

``trtdsl.pointwise`` fields: ``program``, a tuple of steps ``{"kind", "attrs", "args"}`` where
``kind`` is a layer kind value (elementwise/unary/activation/cast/select) and each arg is
``("in", i)`` (plugin input ``i``) or ``("tmp", j)`` (result of step ``j``); the last step's result is
the output. ``trtdsl.add_rms_norm`` inputs ``(a, b, weight)``, fields ``axes``, ``epsilon``; outputs
``(rms_norm(a + b) * weight, a + b)``.
"""

from __future__ import annotations

from typing import Any

import torch

from ..backends.torch_layers import LAYER_FUNCTIONS
from ..ir.network import Layer, LayerKind
from ..plugins.registry import PluginSpec, register_plugin

__all__ = ["POINTWISE", "ADD_RMS_NORM", "SWIGLU"]

POINTWISE = "trtdsl.pointwise"
ADD_RMS_NORM = "trtdsl.add_rms_norm"
SWIGLU = "trtdsl.swiglu"

_CTX: dict[str, Any] = {"constants": {}, "plugin_impls": {}, "device": torch.device("cpu"), "hints": {}}


def _step_layers(program: tuple) -> list[Layer]:
    return [Layer(LayerKind(step["kind"]), f"step{i}", [], [], dict(step["attrs"]))
            for i, step in enumerate(program)]


def pointwise_reference(ins: list, fields: dict, hints: dict) -> torch.Tensor:
    program = fields["program"]
    results: list[torch.Tensor] = []
    for step, layer in zip(program, _step_layers(program)):
        args = [ins[i] if src == "in" else results[i] for src, i in step["args"]]
        (out,) = LAYER_FUNCTIONS[layer.kind](layer, args, {}, _CTX)
        results.append(out)
    return results[-1]


def _pointwise_shape(inputs: list, fields: dict) -> list:
    return [(fields["out_dtype"], fields["out_shape"])]


def add_rms_norm_reference(ins: list, fields: dict, hints: dict) -> list:
    a, b, weight = ins
    total = a + b
    layer = Layer(LayerKind.NORMALIZATION, "add_rms_norm", [], [],
                  {"kind": "rms", "axes": fields["axes"], "epsilon": fields["epsilon"]})
    (normed,) = LAYER_FUNCTIONS[LayerKind.NORMALIZATION](layer, [total, weight], {}, _CTX)
    return [normed, total]


def _add_rms_norm_shape(inputs: list, fields: dict) -> list:
    a = inputs[0]
    return [(a.dtype, a.shape), (a.dtype, a.shape)]


def swiglu_reference(ins: list, fields: dict, hints: dict) -> torch.Tensor:
    """``gate * sigmoid(gate) * up`` of ``x = [gate | up]``, the exact layer order of ``F.swiglu``."""
    gate, up = ins[0].chunk(2, dim=-1)
    return gate * torch.sigmoid(gate) * up


def _swiglu_shape(inputs: list, fields: dict) -> list:
    x = inputs[0]
    return [(x.dtype, tuple(x.shape[:-1]) + (x.shape[-1] // 2,))]


register_plugin(PluginSpec(SWIGLU, _swiglu_shape, swiglu_reference,
                           doc="silu(gate) * up of one [..., 2 * inter] tensor laid out gate then up"))
register_plugin(PluginSpec(POINTWISE, _pointwise_shape, pointwise_reference,
                           doc="a fused chain of elementwise/unary/activation/cast/select layers"))
register_plugin(PluginSpec(ADD_RMS_NORM, _add_rms_norm_shape, add_rms_norm_reference,
                           doc="residual add then RMSNorm; outputs (normed, sum)"))
