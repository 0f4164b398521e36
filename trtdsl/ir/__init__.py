"""The graph IR: networks of TensorRT-shaped layers with symbolic shapes."""

from .layer_attrs import LAYER_ATTRS, validate_layer, validate_network
from .network import InputSpec, Layer, LayerKind, Network, Profile, Tensor, active_network
from .symbolic import Dim, SymDim, dim_equal, evaluate, is_static

__all__ = ["Network", "Tensor", "Layer", "LayerKind", "Profile", "InputSpec", "active_network",
           "Dim", "SymDim", "dim_equal", "evaluate", "is_static", "LAYER_ATTRS", "validate_layer",
           "validate_network"]
