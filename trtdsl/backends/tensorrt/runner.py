"""``TensorRTRunner``: run a TensorRT plan behind the torch executor's ``run(feed) -> dict`` API.

Inputs and outputs are torch CUDA tensors bound by address (``set_tensor_address``) and the plan is
enqueued with ``execute_async_v3`` on a torch stream, so results stay on the device and ordering with
the caller's torch work is kept with stream waits, not host syncs. Inputs are validated the same way
as the torch executor's (names, dtypes, ranks, static dims, profile ranges) with typed errors.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping

import torch

from ...dtypes import DType, dtype_of
from ...errors import BackendError, DTypeError, EngineError, ProfileError, ShapeError
from ._trt import dtype_of_trt, require_tensorrt
from .build import ENGINE_NAME
from .context import dims_tuple

if TYPE_CHECKING:
    import tensorrt as trt
else:
    from ._trt import trt

__all__ = ["TensorRTRunner", "IOSpec"]


@dataclass(frozen=True)
class IOSpec:
    """An engine input or output: dtype and shape (``-1`` for dynamic dims)."""

    name: str
    dtype: DType
    shape: tuple[int, ...]


class TensorRTRunner:
    """Run a TensorRT plan: ``engine`` is an engine directory, a ``rank0.engine`` path or plan bytes.

    >>> runner = TensorRTRunner("engines/tiny")                   # doctest: +SKIP
    >>> out = runner.run({"input_ids": ids.cuda(), ...})["logits"]  # doctest: +SKIP
    """

    def __init__(self, engine: str | Path | bytes, device: str | torch.device = "cuda"):
        require_tensorrt()
        self.device = torch.device(device)
        if self.device.type != "cuda" or not torch.cuda.is_available():
            raise BackendError(f"TensorRTRunner needs a CUDA device, got {self.device} (CUDA available: "
                               f"{torch.cuda.is_available()}); use TorchExecutor on the CPU")
        from .plugins import register_tensorrt_plugins
        register_tensorrt_plugins()  # engines with trtdsl plugins need their creators to deserialize
        plan = _read_plan(engine)
        self._logger = trt.Logger(trt.Logger.WARNING)
        self._runtime = trt.Runtime(self._logger)
        with torch.cuda.device(self.device):
            self.engine: trt.ICudaEngine = self._runtime.deserialize_cuda_engine(plan)
            if self.engine is None:
                raise EngineError("TensorRT could not deserialize the plan (built by another TensorRT "
                                  "version or for another GPU?); rebuild the engine on this machine")
            self.context: trt.IExecutionContext = self.engine.create_execution_context()
            self.stream = torch.cuda.Stream(self.device)  # type: ignore[no-untyped-call]  # torch stub gap
        self.inputs: dict[str, IOSpec] = {}
        self.outputs: dict[str, IOSpec] = {}
        self._aliases: dict[str, str] = {}  # output -> the input it writes in place
        for i in range(self.engine.num_io_tensors):
            name = self.engine.get_tensor_name(i)
            spec = IOSpec(name, dtype_of_trt(self.engine.get_tensor_dtype(name)),
                          dims_tuple(self.engine.get_tensor_shape(name)))
            if self.engine.get_tensor_mode(name) == trt.TensorIOMode.INPUT:
                self.inputs[name] = spec
            else:
                self.outputs[name] = spec
                alias = self.engine.get_aliased_input_tensor(name)
                if alias:
                    self._aliases[name] = alias

    # -- validation ----------------------------------------------------------------------------------------
    def _check_feed(self, feed: Mapping[str, Any]) -> None:
        missing = [n for n in self.inputs if n not in feed]
        unknown = [n for n in feed if n not in self.inputs]
        if missing or unknown:
            raise ShapeError(f"TensorRT engine: missing inputs {missing}, unknown inputs {unknown}; "
                             f"expected {list(self.inputs)}")
        for name, spec in self.inputs.items():
            value = feed[name]
            if not isinstance(value, torch.Tensor):
                raise DTypeError(f"input {name!r}: expected a torch.Tensor, got {type(value).__name__}")
            if dtype_of(value.dtype) is not spec.dtype:
                raise DTypeError(f"input {name!r}: dtype {value.dtype} but the engine expects "
                                 f"{spec.dtype.value}")
            if value.ndim != len(spec.shape) or any(w not in (-1, g) for w, g in zip(spec.shape, value.shape)):
                raise ShapeError(f"input {name!r}: shape {tuple(value.shape)} but the engine expects "
                                 f"{spec.shape} (-1 = dynamic)")

    def _select_profile(self, feed: Mapping[str, torch.Tensor]) -> int:
        """The first optimization profile every input fits; ProfileError naming the misfits if none."""
        problems: list[str] = []
        for index in range(self.engine.num_optimization_profiles):
            misfits = []
            for name in self.inputs:
                lo, _, hi = (dims_tuple(d) for d in self.engine.get_tensor_profile_shape(name, index))
                shape = tuple(feed[name].shape)
                if any(not a <= s <= b for a, s, b in zip(lo, shape, hi)):
                    misfits.append(f"{name!r} {shape} outside [{lo}, {hi}]")
            if not misfits:
                return index
            problems.append(f"profile {index}: " + "; ".join(misfits))
        raise ProfileError("TensorRT engine: inputs fit no optimization profile: " + " | ".join(problems))

    # -- execution -----------------------------------------------------------------------------------------
    def run(self, feed: Mapping[str, torch.Tensor], hints: Mapping[str, Any] | None = None,
            outputs: list[str] | None = None) -> dict[str, torch.Tensor]:
        """Run the engine; returns ``{output name: CUDA tensor}``. ``hints`` are accepted for API
        parity with ``TorchExecutor`` (TensorRT plugins size their grids from shapes instead)."""
        self._check_feed(feed)
        ctx, caller = self.context, torch.cuda.current_stream(self.device)
        bound = {name: t if t.device == self.device and t.is_contiguous() else t.to(self.device).contiguous()
                 for name, t in feed.items()}
        for name, given in feed.items():
            if name in self._aliases.values() and bound[name] is not given:
                raise ShapeError(f"input {name!r} is updated in place by the engine: pass a contiguous "
                                 f"tensor on {self.device}, not a copy")
        profile = self._select_profile(bound)
        self.stream.wait_stream(caller)  # inputs written by the caller's stream must be ready
        if self.engine.num_optimization_profiles > 1:
            ctx.set_optimization_profile_async(profile, self.stream.cuda_stream)
        for name, t in bound.items():
            ctx.set_input_shape(name, tuple(t.shape))
            ctx.set_tensor_address(name, t.data_ptr())
        results: dict[str, torch.Tensor] = {}
        for name, spec in self.outputs.items():
            if name in self._aliases:
                ctx.set_tensor_address(name, bound[self._aliases[name]].data_ptr())
                continue
            shape = dims_tuple(ctx.get_tensor_shape(name))
            if any(d < 0 for d in shape):
                raise BackendError(f"output {name!r} has a data-dependent shape {shape}; TensorRTRunner "
                                   "does not support data-dependent outputs yet")
            results[name] = torch.empty(shape, dtype=spec.dtype.torch, device=self.device)
            ctx.set_tensor_address(name, results[name].data_ptr())
        if not ctx.execute_async_v3(self.stream.cuda_stream):
            raise BackendError("TensorRT execute_async_v3 failed; TensorRT's log above says why")
        caller.wait_stream(self.stream)
        for t in list(bound.values()) + list(results.values()):
            t.record_stream(self.stream)  # keep the memory alive until the engine's work is done
        wanted = set(outputs) if outputs is not None else None
        return {n: t for n, t in results.items() if wanted is None or n in wanted}


def _read_plan(engine: str | Path | bytes) -> bytes:
    if isinstance(engine, bytes):
        return engine
    path = Path(engine)
    if path.is_dir():
        path = path / ENGINE_NAME
    if not path.is_file():
        raise EngineError(f"no TensorRT plan at {path}; build one with `trtdsl build ... --backend tensorrt`")
    return path.read_bytes()
