"""trtdsl: write LLMs as PyTorch-like modules, build them into self-contained engines, run them fast.

>>> import trtdsl, trtdsl.functional as F
>>> net = trtdsl.Network("mlp")
>>> x = net.add_input("x", "float32", ["batch", 4])
>>> F.relu(x).mark_output("y").shape
(batch, 4)
"""

from . import dtypes, errors
from .dtypes import DType, bfloat16, bool_, float16, float32, fp8, int4, int8, int32, int64
from .ir import Layer, LayerKind, Network, Profile, SymDim, Tensor
from .ir.tensor_methods import install as _install_tensor_methods
from .module import Module, ModuleDict, ModuleList, Parameter
from . import functional  # noqa: E402  (after the IR, which it builds on)

_install_tensor_methods()

from .builder import BuildConfig, Builder  # noqa: E402  (the builder uses the IR and functional)

__version__ = "0.1.0"

__all__ = ["Builder", "BuildConfig", "Network", "Tensor", "Layer", "LayerKind", "Profile", "SymDim", "Module", "ModuleList",
           "ModuleDict", "Parameter", "DType", "float32", "float16", "bfloat16", "fp8", "int8", "int4",
           "int32", "int64", "bool_", "functional", "dtypes", "errors", "__version__"]
