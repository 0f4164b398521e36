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
from ..errors import BackendError, DTypeError, PluginError, ProfileError, ShapeError
from ..ir.layer_attrs import validate_layer
from ..ir.network import Layer, LayerKind, Network
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
        self._layer_override: Any = None
        if self.device.type == "cuda" and use_plugin_kernels:
            # Our CUDA kernels replace plugin references and some layers (RMSNorm), chosen here once.
            from ..plugins.cuda.builtin import cuda_layer_function, register_cuda_implementations
            register_cuda_implementations()
            self._layer_override = cuda_layer_function
        live = self._live_layers()
        for layer in live:
            validate_layer(layer)
            if layer.kind is LayerKind.CONSTANT:
                self.constants[layer.name] = layer.attrs["value"].to(self.device)
            elif layer.kind is LayerKind.PLUGIN:
                spec = get_plugin(layer.attrs["name"])
                impl = spec.implementations.get(self.device.type) if use_plugin_kernels else None
                self.plugin_impls[layer.name] = impl or spec.reference
        self._dim_users: dict[str, list[tuple[str, int]]] = {}  # dim name -> [(input, axis)]
        for name, ispec in network.input_specs.items():
            for axis, dim in ispec.dynamic_dims.items():
                self._dim_users.setdefault(dim, []).append((name, axis))
        self._compile(live)

    def _live_layers(self) -> list[Layer]:
        """Layers an output depends on, plus plugins that write their inputs in place (the K/V
        cache update must happen even though no output reads it), with their dependencies."""
        needed = {id(t) for t in self.network.outputs.values()}
        live: list[Layer] = []
        for layer in reversed(self.network.layers):
            mutates = layer.kind is LayerKind.PLUGIN and get_plugin(layer.attrs["name"]).mutates
            if mutates or any(id(t) in needed for t in layer.outputs):
                live.append(layer)
                needed.update(id(t) for t in layer.inputs)
        return live[::-1]

    def _compile(self, live: list[Layer]) -> None:
        """Turn the layers into a flat plan of value slots, so ``run`` does no per-layer lookups:
        ``(function, layer, input slots, output slots, slots to free after, symbols to bind)``."""
        slots: dict[int, int] = {}
        self._input_slots = [(name, slots.setdefault(id(t), len(slots)))
                             for name, t in self.network.inputs.items()]
        input_syms = {s for s, src in self.network.symbol_sources.items() if src[0] == "input"}
        plan: list[list] = []
        last_use: dict[int, int] = {}
        for step, layer in enumerate(live):
            ins = tuple(slots[id(t)] for t in layer.inputs)
            for s_ in ins:
                last_use[s_] = step
            outs = tuple(slots.setdefault(id(t), len(slots)) for t in layer.outputs)
            binds = tuple((oi, axis, _lone_symbol(d)) for oi, t in enumerate(layer.outputs)
                          for axis, d in enumerate(t.shape)
                          if _lone_symbol(d) and _lone_symbol(d) not in input_syms)
            fn = (self._layer_override(layer) if self._layer_override else None) or LAYER_FUNCTIONS[layer.kind]
            plan.append([fn, layer, ins, outs, [], binds])
        self._output_slots = [(name, slots[id(t)]) for name, t in self.network.outputs.items()]
        kept = {s_ for _, s_ in self._output_slots}
        for s_, step in last_use.items():
            if s_ not in kept:
                plan[step][4].append(s_)
        self._plan = [tuple(p[:4]) + (tuple(p[4]), p[5]) for p in plan]
        self._num_slots = len(slots)

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
        # Name only the dims at fault: those outside every profile's range; if each dim fits some
        # profile but no profile fits them all together, name every dynamic dim.
        bad = [d for d in env if (rs := [p.ranges[d] for p in profiles if d in p.ranges])
               and not any(lo <= env[d] <= hi for lo, _, hi in rs)]
        together = not bad
        details = []
        for dim in bad or list(env):
            spans = [f"[{p.ranges[dim][0]}, {p.ranges[dim][2]}]" for p in profiles if dim in p.ranges]
            ranges = (f"the optimization profile range {spans[0]}" if len(spans) == 1 else
                      "every optimization profile's range: " + ", ".join(spans))
            where = " and ".join(f"input {n!r} dim {a}" for n, a in self._dim_users.get(dim, ()))
            details.append(f"{where} ({dim!r}) is {env[dim]}, "
                           + (f"ranges {', '.join(spans)}" if together else f"outside {ranges}"))
        head = ("the dims fit no single optimization profile together: " if together else "")
        raise ProfileError(f"network {self.network.name!r}: {head}" + "; ".join(details))

    # -- execution --------------------------------------------------------------------------------------
    def run(self, feed: Mapping[str, torch.Tensor], hints: Mapping[str, Any] | None = None,
            outputs: list[str] | None = None) -> dict[str, torch.Tensor]:
        """Run the network; returns ``{output name: tensor}`` (debug outputs included).

        ``hints`` are host-side facts about this step that kernels may use to size their grids
        (e.g. ``max_q_len``); references ignore them."""
        env = self.bind_inputs(feed)
        values: list[Any] = [None] * self._num_slots
        for name, slot in self._input_slots:
            value = feed[name]
            values[slot] = value if value.device == self.device else value.to(self.device)
        ctx = {"constants": self.constants, "plugin_impls": self.plugin_impls, "device": self.device,
               "hints": dict(hints or {})}
        for fn, layer, in_slots, out_slots, free_slots, binds in self._plan:
            ins = [values[i] for i in in_slots]
            try:
                outs = fn(layer, ins, env, ctx)
            except (RuntimeError, IndexError, ValueError, TypeError) as exc:
                raise BackendError(f"layer {layer.name!r} ({layer.kind.value}, module "
                                   f"{layer.module_path or '<root>'!r}) failed at run time: {exc}\n"
                                   f"  input shapes: {[tuple(v.shape) for v in ins]}") from exc
            if layer.kind is LayerKind.PLUGIN:
                _check_plugin_outputs(layer, outs)
            for oi, axis, sym in binds:
                env[sym] = int(outs[oi].shape[axis])
            for slot, v in zip(out_slots, outs):
                values[slot] = v
            for slot in free_slots:
                values[slot] = None
        wanted = set(outputs) if outputs is not None else None
        return {name: values[slot] for name, slot in self._output_slots
                if wanted is None or name in wanted}

    def output_shape(self, name: str, env: Mapping[str, int]) -> tuple[int, ...]:
        """The concrete shape of output ``name`` for a symbol environment."""
        return tuple(evaluate(d, env) for d in self.network.outputs[name].shape)


def _lone_symbol(d: Any) -> str | None:
    """The symbol name if ``d`` is exactly one bare symbol (``n``, not ``2*n`` or ``n + 1``)."""
    if isinstance(d, SymDim) and len(d.terms) == 1:
        (mono, coeff), = d.terms
        if coeff == 1 and len(mono) == 1 and isinstance(mono[0], str):
            return mono[0]
    return None


def _check_plugin_outputs(layer: Layer, outs: list) -> None:
    """Plugin implementations are outside code: check they return what the shape rule promised."""
    if len(outs) != len(layer.outputs):
        raise PluginError(f"plugin {layer.attrs['name']!r} (layer {layer.name!r}) returned {len(outs)} "
                          f"outputs; its shape rule declares {len(layer.outputs)}")
    for i, (t, v) in enumerate(zip(layer.outputs, outs)):
        if not isinstance(v, torch.Tensor) or v.dtype != t.dtype.torch or v.ndim != t.ndim:
            got = f"{v.dtype}{tuple(v.shape)}" if isinstance(v, torch.Tensor) else type(v).__name__
            raise PluginError(f"plugin {layer.attrs['name']!r} (layer {layer.name!r}) output {i} is "
                              f"{got}; its shape rule declares {t.dtype.value} of rank {t.ndim}")
