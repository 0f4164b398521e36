"""Quantization of built networks: FP8, INT8/INT4 weight-only (round-to-nearest and AWQ), SmoothQuant
INT8 W8A8, and FP8/INT8 K/V caches -- an IR pass, so it works for every architecture.

>>> from trtdsl.quantization import quantize_network, prefill_feeds, token_chunks, builtin_text
>>> feeds = list(prefill_feeds(net, token_chunks(tokenizer.encode(builtin_text()), 256, 16)))
>>> qnet = quantize_network(net, "int4_awq", calibration_feeds=feeds, group_size=128)

See docs/quantization.md for the formats, the plugins and the measured accuracy.
"""

from . import kv_cache, numerics, plugins  # noqa: F401  (importing registers the plugins)
from .calibration import (CALIBRATION_TOPICS, EVALUATION_TOPICS, CalibrationStats, builtin_text,
                          calibrate, collect_statistics, prefill_feeds, token_chunks)
from .config import MODES, QuantConfig
from .graph import clone_network, find_gemm_sites
from .kv_cache import ATTENTION_QUANT_KV
from .plugins import FP8_GEMM, INT8_GEMM, WEIGHT_ONLY_GEMM
from .quantize import quantize_network

__all__ = ["quantize_network", "QuantConfig", "MODES", "calibrate", "builtin_text", "token_chunks",
           "prefill_feeds", "collect_statistics", "CalibrationStats", "CALIBRATION_TOPICS",
           "EVALUATION_TOPICS", "clone_network", "find_gemm_sites", "WEIGHT_ONLY_GEMM", "FP8_GEMM",
           "INT8_GEMM", "ATTENTION_QUANT_KV"]
