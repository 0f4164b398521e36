"""ONNX export of trtdsl networks (standard opset-18 ops; plugins as ``trtdsl``-domain nodes)."""

from .exporter import CUSTOM_DOMAIN, ONNX_DTYPES, export_onnx, to_onnx_model

__all__ = ["export_onnx", "to_onnx_model", "CUSTOM_DOMAIN", "ONNX_DTYPES"]
