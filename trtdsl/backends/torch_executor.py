"""The ``torch`` backend: runs a ``Network`` with torch, on the CPU (tests) or CUDA (production).

Construction does the one-time work (constants to the device, plugin implementations chosen for the
device, last-use of every value); ``run`` validates the inputs against the network's inputs and
profiles, binds the symbolic dims, and evaluates the layers in order, freeing values after their last
use. Plugins run their device implementation when one is registered, else their torch reference.
"""

from __future__ import annotations

from typing import Any, Mapping

import torch

from ..dtypes import dtype_of
from ..errors import BackendError, DTypeError, ProfileError, ShapeError
from ..ir.network import LayerKind, Network
from ..ir.symbolic import SymDim, evaluate
from ..plugins.registry import get_plugin
from .torch_layers import LAYER_FUNCTIONS

__all__ = ["TorchExecutor"]


class TorchExecutor:
    """Run ``network`` with torch. ``outputs`` limits which outputs are computed (default: all)."""

    def __init__(self, network: Network, device: str | torch.device = "cpu",
                 use_plugin_kernels: bool = True):
        if not network.outputs:
            raise BackendError(f"network {network.name!r} has no outputs; call tensor.mark_output(name)")
        self.network = network
        self.device = torch.device(device)
        self.constants: dict[str, torch.Tensor] = {}
        self.plugin_impls: dict[str, Any] = {}
        for layer in network.layers:
            if layer.kind is LayerKind.CONSTANT:
                self.constants[layer.name] = layer.attrs["value"].to(self.device)
            elif layer.kind is LayerKind.PLUGIN:
                spec = get_plugin(layer.attrs["name"])
                impl = spec.implementations.get(self.device.type) if use_plugin_kernels else None
                self.plugin_impls[layer.name] = impl or spec.reference
        self._output_names = {id(t): n for n, t in network.outputs.items()}
        self._last_use = self._compute_last_use()
        # Symbols bound from a layer's output shape (data-dependent sizes such as dynamic slices).
        self._bind_after: dict[str, list[tuple[int, int, str]]] = {}
        input_syms = {s for s, src in network.symbol_sources.items() if src[0] == "input"}
        for layer in network.layers:
            for oi, t in enumerate(layer.outputs):
                for axis, d in enumerate(t.shape):
                    if isinstance(d, SymDim) and len(d.terms) == 1 and d.terms[0][1] == 1 and \
                            len(d.terms[0][0]) == 1 and isinstance(d.terms[0][0][0], str) and \
                            d.terms[0][0][0] not in input_syms:
                        self._bind_after.setdefault(layer.name, []).append((oi, axis, d.terms[0][0][0]))

    def _compute_last_use(self) -> dict[int, int]:
        last: dict[int, int] = {}
        for i, layer in enumerate(self.network.layers):
            for t in layer.inputs:
                last[id(t)] = i
        for t in self.network.outputs.values():
            last[id(t)] = len(self.network.layers)
        return last

    # -- validation -------------------------------------------------------------------------------------
    def bind_inputs(self, feed: Mapping[str, Any]) -> dict[str, int]:
        """Check every input's presence, dtype, rank and static dims; bind dynamic dims; check the
        shared dims agree and fit a profile. Returns the symbol environment."""
        net = self.network
        missing = [n for n in net.input_specs if n not in feed]
        unknown = [n for n in feed if n not in net.input_specs]
        if missing or unknown:
            raise ShapeError(f"network {net.name!r}: missing inputs {missing}, unknown inputs {unknown}; "
                             f"expected {list(net.input_specs)}")
        env: dict[str, int] = {}
        for name, spec in net.input_specs.items():
            value = feed[name]
            if not isinstance(value, torch.Tensor):
                raise DTypeError(f"input {name!r}: expected a torch.Tensor, got {type(value).__name__}")
            if dtype_of(value.dtype) is not spec.dtype:
                raise DTypeError(f"input {name!r}: dtype {value.dtype} but the network expects "
                                 f"{spec.dtype.value}")
            if value.ndim != len(spec.shape):
                raise ShapeError(f"input {name!r}: rank {value.ndim} {tuple(value.shape)} but the network "
                                 f"expects rank {len(spec.shape)} {spec.shape}")
            for axis, (want, got) in enumerate(zip(spec.shape, value.shape)):
                if isinstance(want, int) and want != got:
                    raise ShapeError(f"input {name!r}: dim {axis} is {got}, the network expects {want}")
                if isinstance(want, str):
                    if want in env and env[want] != got:
                        raise ShapeError(f"input {name!r}: dim {axis} ({want!r}) is {got} but another "
                                         f"input has {want!r} = {env[want]}")
                    env[want] = got
        self._check_profiles(env)
        return env

    def _check_profiles(self, env: dict[str, int]) -> None:
        profiles = self.network.profiles
        if not profiles or any(p.contains(env) for p in profiles):
            return
        details = []
        for dim, value in env.items():
            ranges = [p.ranges[dim] for p in profiles if dim in p.ranges]
            if ranges and not any(lo <= value <= hi for lo, _, hi in ranges):
                details.append(f"{dim!r} = {value} is outside " +
                               " and ".join(f"[{lo}, {hi}]" for lo, _, hi in ranges))
        where = ", ".join(f"{src[1]!r} dim {src[2]}" for d in env
                          for s, src in self.network.symbol_sources.items() if s == d and src[0] == "input")
        raise ProfileError(f"network {self.network.name!r}: inputs fit no optimization profile: "
                           + ("; ".join(details) or f"dims {env} do not fit one profile together")
                           + (f" (dims from {where})" if where else ""))

    # -- execution --------------------------------------------------------------------------------------
    def run(self, feed: Mapping[str, torch.Tensor], hints: Mapping[str, Any] | None = None,
            outputs: list[str] | None = None) -> dict[str, torch.Tensor]:
        """Run the network; returns ``{output name: tensor}`` (debug outputs included).

        ``hints`` are host-side facts about this step that kernels may use to size their grids
        (e.g. ``max_q_len``); references ignore them."""
        env = self.bind_inputs(feed)
        net = self.network
        values: dict[int, torch.Tensor] = {}
        for name, t in net.inputs.items():
            values[id(t)] = feed[name].to(self.device) if feed[name].device != self.device else feed[name]
        ctx = {"constants": self.constants, "plugin_impls": self.plugin_impls, "device": self.device,
               "hints": dict(hints or {})}
        wanted = set(outputs) if outputs is not None else None
        result: dict[str, torch.Tensor] = {}
        for i, layer in enumerate(net.layers):
            try:
                ins = [values[id(t)] for t in layer.inputs]
            except KeyError:  # an input that an earlier layer freed: a bug in last-use tracking
                raise BackendError(f"layer {layer.name!r}: an input value is missing") from None
            try:
                outs = LAYER_FUNCTIONS[layer.kind](layer, ins, env, ctx)
            except (RuntimeError, IndexError, ValueError) as exc:
                raise BackendError(f"layer {layer.name!r} ({layer.kind.value}, module "
                                   f"{layer.module_path or '<root>'!r}) failed at run time: {exc}\n"
                                   f"  input shapes: {[tuple(v.shape) for v in ins]}") from exc
            for oi, axis, sym in self._bind_after.get(layer.name, ()):
                env[sym] = int(outs[oi].shape[axis])
            for t, v in zip(layer.outputs, outs):
                values[id(t)] = v
            for t in layer.inputs:
                if self._last_use.get(id(t)) == i and id(t) not in self._output_names:
                    values.pop(id(t), None)
        for name, t in net.outputs.items():
            if wanted is None or name in wanted:
                result[name] = values[id(t)]
        return result

    def output_shape(self, name: str, env: Mapping[str, int]) -> tuple[int, ...]:
        """The concrete shape of output ``name`` for a symbol environment."""
        return tuple(evaluate(d, env) for d in self.network.outputs[name].shape)
