"""Lower a trtdsl ``Network`` to a strongly typed TensorRT 11 network and build the plan.

``lower_to_tensorrt(network, build_config, engine_dir)`` is what the builder calls for
``--backend tensorrt``: it writes ``<engine_dir>/rank0.engine`` (a TensorRT plan) and returns its path;
the builder writes ``config.json`` beside it. Needs TensorRT and a GPU (see docs/tensorrt.md).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping, cast

from ...errors import BackendError, ConfigError, ProfileError
from ...ir.network import LayerKind, Network
from ._trt import require_tensorrt, trt_dtype
from .context import LoweringContext
from .emitters import EMITTERS

if TYPE_CHECKING:
    import tensorrt as trt
    from typing_extensions import Buffer
else:
    from ._trt import trt

__all__ = ["TensorRTOptions", "lower_to_tensorrt", "define_network", "ENGINE_NAME"]

ENGINE_NAME = "rank0.engine"


@dataclass(frozen=True)
class TensorRTOptions:
    """TensorRT builder settings, read once from the build config dict (keys prefixed ``tensorrt_``).

    Attributes:
        workspace_mb: cap of the builder's workspace memory pool (``None``: TensorRT's default,
            the device's memory).
        optimization_level: builder optimization level 0..5 (TensorRT's default is 3).
        timing_cache: file to load / save the tactic timing cache (speeds up rebuilds).
        verbose: log TensorRT's verbose messages.
    """

    workspace_mb: int | None = None
    optimization_level: int = 3
    timing_cache: str | None = None
    verbose: bool = False

    @classmethod
    def from_build_config(cls, build_config: Mapping[str, Any]) -> "TensorRTOptions":
        options = cls(workspace_mb=build_config.get("tensorrt_workspace_mb"),
                      optimization_level=int(build_config.get("tensorrt_optimization_level", 3)),
                      timing_cache=build_config.get("tensorrt_timing_cache"),
                      verbose=bool(build_config.get("tensorrt_verbose", False)))
        if not 0 <= options.optimization_level <= 5:
            raise ConfigError(f"tensorrt_optimization_level={options.optimization_level}: expected 0..5")
        return options


def define_network(builder: trt.Builder, network: Network) -> tuple[trt.INetworkDefinition, LoweringContext]:
    """Write ``network`` into a new strongly typed ``INetworkDefinition``, one emitter per layer."""
    flags = 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED)
    definition = builder.create_network(flags)
    ctx = LoweringContext(definition, network)
    for name, spec in network.input_specs.items():
        dims = trt.Dims([-1 if isinstance(d, str) else d for d in spec.shape])
        tensor = definition.add_input(name, trt_dtype(spec.dtype), dims)
        for axis, dim_name in spec.dynamic_dims.items():
            tensor.set_dimension_name(axis, dim_name)  # equal names = equal sizes, for the optimizer
        ctx.values[id(network.inputs[name])] = tensor
    for layer in network.layers:
        ins = [ctx.value(t) for t in layer.inputs]
        try:
            outs = EMITTERS[layer.kind](ctx, layer, ins)
        except (TypeError, ValueError, RuntimeError) as exc:  # TensorRT's own complaints
            raise BackendError(f"TensorRT lowering of layer {layer.name!r} ({layer.kind.value}, module "
                               f"{layer.module_path or '<root>'!r}) failed: {exc}") from exc
        for ir_out, out in zip(layer.outputs, outs):
            if out.dtype != trt_dtype(ir_out.dtype):
                raise BackendError(f"TensorRT lowering of layer {layer.name!r}: output {ir_out.name!r} "
                                   f"is {out.dtype.name} in TensorRT but {ir_out.dtype.value} in the IR")
            ctx.values[id(ir_out)] = out
    _mark_outputs(ctx, network)
    return definition, ctx


def _mark_outputs(ctx: LoweringContext, network: Network) -> None:
    if not network.outputs:
        raise BackendError(f"network {network.name!r} has no outputs; call tensor.mark_output(name)")
    marked: set[int] = set()
    for name, t in network.outputs.items():
        out = ctx.value(t)
        # An input, or a tensor already marked under another name, needs its own tensor to be named.
        if out.is_network_input or id(out) in marked:
            identity = ctx.network.add_identity(out)
            identity.name = ctx.helper_name(f"output.{name}")
            out = identity.get_output(0)
        out.name = name
        ctx.network.mark_output(out)
        marked.add(id(out))


def add_profiles(builder: trt.Builder, config: trt.IBuilderConfig, network: Network) -> None:
    """One TensorRT optimization profile per ``network.profiles`` entry (per-input min/opt/max)."""
    dynamic = any(spec.dynamic_dims for spec in network.input_specs.values())
    if dynamic and not network.profiles:
        raise ProfileError(f"network {network.name!r} has dynamic dims but no optimization profile; "
                           "call network.add_profile(dim=(min, opt, max), ...) before building")
    for profile in network.profiles:
        trt_profile = builder.create_optimization_profile()
        for name, spec in network.input_specs.items():
            lo, opt, hi = profile.shapes_for(spec)
            trt_profile.set_shape(name, trt.Dims(list(lo)), trt.Dims(list(opt)), trt.Dims(list(hi)))
        config.add_optimization_profile(trt_profile)


def _configure(builder: trt.Builder, options: TensorRTOptions) -> trt.IBuilderConfig:
    config = builder.create_builder_config()
    config.builder_optimization_level = options.optimization_level
    if options.workspace_mb is not None:
        config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(options.workspace_mb) << 20)
    if options.timing_cache and Path(options.timing_cache).exists():
        cache = config.create_timing_cache(Path(options.timing_cache).read_bytes())
        config.set_timing_cache(cache, False)
    # No precision flags: TensorRT 11 networks are strongly typed, every tensor's type is the IR's.
    return config


def lower_to_tensorrt(network: Network, build_config: Mapping[str, Any], engine_dir: str | Path) -> Path:
    """Build ``network`` into a TensorRT plan at ``<engine_dir>/rank0.engine``; returns that path.

    ``build_config`` is the builder's ``BuildConfig.to_dict()``; the ``tensorrt_*`` keys of
    :class:`TensorRTOptions` tune the TensorRT builder. Raises :class:`BackendError` when TensorRT is
    not installed (with the install command) or the build fails (with TensorRT's log)."""
    require_tensorrt()
    options = TensorRTOptions.from_build_config(build_config)
    if any(layer.kind is LayerKind.PLUGIN for layer in network.layers):
        from .plugins import register_tensorrt_plugins
        register_tensorrt_plugins()
    logger = trt.Logger(trt.Logger.VERBOSE if options.verbose else trt.Logger.WARNING)
    builder = trt.Builder(logger)
    definition, ctx = define_network(builder, network)
    config = _configure(builder, options)
    add_profiles(builder, config, network)
    plan = builder.build_serialized_network(definition, config)
    if plan is None:
        raise BackendError(f"TensorRT could not build network {network.name!r}; its log above says why "
                           "(rerun with build config tensorrt_verbose=True for details)")
    ctx.keepalive.clear()  # the plan owns copies of every weight now
    if options.timing_cache:
        Path(options.timing_cache).write_bytes(_host_bytes(config.get_timing_cache().serialize()))
    out_dir = Path(engine_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / ENGINE_NAME
    path.write_bytes(_host_bytes(plan))
    return path


def _host_bytes(memory: trt.IHostMemory) -> memoryview:
    # IHostMemory implements the buffer protocol (pybind11 py::buffer_protocol), which the
    # generated stub cannot express; this cast states exactly that.
    return memoryview(cast("Buffer", memory))
