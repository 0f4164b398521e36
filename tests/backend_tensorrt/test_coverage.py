"""Every IR layer kind and every registered plugin has a TensorRT lowering, the plugin lowerings
declare the plugins' real attributes, and the backend behaves on a machine without TensorRT (it
imports, and its entry points raise BackendError saying how to install TensorRT).

No TensorRT here and no mocks: what runs on TensorRT is listed in docs/tensorrt.md.
"""

from __future__ import annotations

import importlib.util
import subprocess
import sys

import pytest

import trtdsl
from trtdsl.backends.tensorrt import (EMITTERS, NATIVE_PLUGIN_LOWERINGS, PLUGIN_LOWERINGS, TensorRTRunner,
                                      lower_to_tensorrt)
from trtdsl.errors import BackendError
from trtdsl.ir import LayerKind
from trtdsl.plugins import registered_plugins

# A real module, not a namespace package some directory called "tensorrt" on sys.path could form.
_SPEC = importlib.util.find_spec("tensorrt")
HAS_TENSORRT = _SPEC is not None and _SPEC.origin is not None


def test_every_layer_kind_has_an_emitter() -> None:
    missing = sorted(k.value for k in set(LayerKind) - set(EMITTERS))
    extra = sorted(str(k) for k in set(EMITTERS) - set(LayerKind))
    assert not missing, f"layer kinds without a TensorRT emitter (add one in emitters.py): {missing}"
    assert not extra, extra


def test_every_registered_plugin_has_a_tensorrt_lowering() -> None:
    plugins = registered_plugins()  # imports the registry's PLUGIN_MODULES, the passes' included
    assert "trtdsl.attention" in plugins
    assert not set(PLUGIN_LOWERINGS) & set(NATIVE_PLUGIN_LOWERINGS)
    missing = sorted(set(plugins) - set(PLUGIN_LOWERINGS) - set(NATIVE_PLUGIN_LOWERINGS))
    assert not missing, f"plugins without a TensorRT lowering (add one in plugins.py): {missing}"


def test_attention_lowering_declares_the_plugin_attributes() -> None:
    from trtdsl.plugins.attention import FIELD_NAMES, SPEC
    lowering = PLUGIN_LOWERINGS["trtdsl.attention"]
    assert tuple(name for name, _, _ in lowering.fields) == FIELD_NAMES
    # One extra TensorRT output: the K/V cache, aliased to the input the plugin mutates.
    assert lowering.num_outputs == 2 and SPEC.mutates


def test_weight_only_gemm_lowering_covers_the_fields_the_reference_reads() -> None:
    pytest.importorskip("trtdsl.quantization.plugins")
    import torch
    from trtdsl.quantization.plugins import weight_only_gemm_reference
    fields = {name: default for name, _, default in PLUGIN_LOWERINGS["trtdsl.weight_only_gemm"].fields}
    fields.update(bits=8, group_size=4, in_features=8)
    x, w = torch.randn(2, 8), torch.randint(-8, 8, (3, 8), dtype=torch.int8)
    scales = torch.rand(3, 2) + 0.5
    out = weight_only_gemm_reference([x, w, scales], fields)  # raises KeyError if a field is missing
    ref = x @ (w.float() * scales.repeat_interleave(4, dim=1)).T
    assert torch.allclose(out, ref, atol=1e-5)


def test_importing_the_backend_does_not_import_tensorrt() -> None:
    code = ("import sys, trtdsl.backends.tensorrt as t; t.EMITTERS; "
            "sys.exit(1 if 'tensorrt' in sys.modules else 0)")
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0


@pytest.mark.skipif(HAS_TENSORRT, reason="TensorRT is installed: the missing-TensorRT path cannot run")
def test_lowering_without_tensorrt_says_how_to_install_it(tmp_path) -> None:
    net = trtdsl.Network("tiny")
    trtdsl.functional.relu(net.add_input("x", "float32", [2, 3])).mark_output("y")
    with pytest.raises(BackendError, match=r"pip install .*tensorrt-cu12"):
        lower_to_tensorrt(net, {"backend": "tensorrt"}, tmp_path)
    assert not (tmp_path / "rank0.engine").exists()
    with pytest.raises(BackendError, match="tensorrt-cu12"):
        TensorRTRunner(tmp_path)
