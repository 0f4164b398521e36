"""The dtypes of the IR. Like TensorRT 11's strongly typed networks, every tensor has exactly one
dtype and precision changes only through an explicit ``cast``."""

from __future__ import annotations

import builtins
import enum
from typing import Any

import numpy as np
import torch

from .errors import DTypeError

__all__ = ["DType", "float32", "float16", "bfloat16", "fp8", "int8", "int4", "int32", "int64",
           "bool_", "dtype_of", "to_torch", "from_torch"]


class DType(enum.Enum):
    """A tensor element type. ``int4`` is packed two per byte and only appears as stored weights."""

    float32 = "float32"
    float16 = "float16"
    bfloat16 = "bfloat16"
    fp8 = "fp8"  # e4m3
    int8 = "int8"
    int4 = "int4"
    int32 = "int32"
    int64 = "int64"
    bool = "bool"

    @property
    def is_float(self) -> builtins.bool:  # `bool` is a member name here
        return self in (DType.float32, DType.float16, DType.bfloat16, DType.fp8)

    @property
    def is_int(self) -> builtins.bool:
        return self in (DType.int8, DType.int4, DType.int32, DType.int64)

    @property
    def itemsize_bits(self) -> int:
        return _BITS[self]

    @property
    def torch(self) -> torch.dtype:
        """The torch dtype that stores this one (int4 is stored packed in uint8/int8 bytes)."""
        return _TO_TORCH[self]

    def __repr__(self) -> str:
        return f"trtdsl.{self.value}"

    __str__ = __repr__


float32 = DType.float32
float16 = DType.float16
bfloat16 = DType.bfloat16
fp8 = DType.fp8
int8 = DType.int8
int4 = DType.int4
int32 = DType.int32
int64 = DType.int64
bool_ = DType.bool

_BITS = {DType.float32: 32, DType.float16: 16, DType.bfloat16: 16, DType.fp8: 8, DType.int8: 8,
         DType.int4: 4, DType.int32: 32, DType.int64: 64, DType.bool: 8}

_TO_TORCH: dict[DType, torch.dtype] = {
    DType.float32: torch.float32, DType.float16: torch.float16, DType.bfloat16: torch.bfloat16,
    DType.fp8: torch.float8_e4m3fn, DType.int8: torch.int8, DType.int4: torch.int8,
    DType.int32: torch.int32, DType.int64: torch.int64, DType.bool: torch.bool,
}
_FROM_TORCH = {v: k for k, v in _TO_TORCH.items() if k is not DType.int4}
_ALIASES = {"fp32": DType.float32, "float": DType.float32, "fp16": DType.float16, "half": DType.float16,
            "bf16": DType.bfloat16, "float8": DType.fp8, "float8_e4m3fn": DType.fp8, "e4m3": DType.fp8,
            "int": DType.int32, "long": DType.int64, "bool_": DType.bool}


def dtype_of(value: Any) -> DType:
    """Convert a trtdsl dtype, a torch dtype, a numpy dtype or a name (``"bf16"``) to a ``DType``.

    >>> dtype_of("bf16"), dtype_of(torch.float16)
    (trtdsl.bfloat16, trtdsl.float16)
    """
    if isinstance(value, DType):
        return value
    if isinstance(value, torch.dtype):
        if value in _FROM_TORCH:
            return _FROM_TORCH[value]
        raise DTypeError(f"torch dtype {value} has no trtdsl equivalent")
    if isinstance(value, str):
        key = value.lower().removeprefix("torch.")
        if key in DType.__members__:
            return DType[key]
        if key in _ALIASES:
            return _ALIASES[key]
        raise DTypeError(f"unknown dtype name {value!r}; expected one of "
                         f"{sorted(DType.__members__) + sorted(_ALIASES)}")
    if isinstance(value, (np.dtype, type)):
        try:
            return from_torch(torch.from_numpy(np.zeros(1, dtype=value)).dtype)
        except (TypeError, DTypeError):
            pass
    raise DTypeError(f"cannot interpret {value!r} as a dtype")


def to_torch(dtype: Any) -> torch.dtype:
    return dtype_of(dtype).torch


def from_torch(dtype: torch.dtype) -> DType:
    return dtype_of(dtype)
