"""The SwiGLU fusion pass: what ``F.swiglu`` writes becomes one ``trtdsl.swiglu`` layer that computes
the same values (torch executor and onnxruntime), and nothing else is touched."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import trtdsl
import trtdsl.functional as F
from trtdsl.backends.torch_executor import TorchExecutor
from trtdsl.passes import fuse_swiglu, optimize


def _mlp_net(dtype: str = "float32", extra_use: bool = False) -> tuple[trtdsl.Network, torch.Tensor, torch.Tensor]:
    net = trtdsl.Network("mlp")
    x = net.add_input("x", dtype, ["tokens", 16])
    net.add_profile(tokens=(1, 4, 32))
    w_up = torch.randn(2 * 24, 16).to(getattr(torch, dtype))
    w_down = torch.randn(16, 24).to(getattr(torch, dtype))
    gate_up = F.linear(x, w_up)
    y = F.linear(F.swiglu(gate_up), w_down)
    y.mark_output("y")
    if extra_use:  # the gate half inside the pattern is also an output: it must not be fused away
        sigmoid = next(layer for layer in net.layers if layer.kind is trtdsl.LayerKind.ACTIVATION)
        sigmoid.inputs[0].mark_output("gate")
    return net, w_up, w_down


def test_fused_network_matches_unfused_and_torch() -> None:
    net, w_up, w_down = _mlp_net()
    x = torch.randn(5, 16)
    before = TorchExecutor(net).run({"x": x})["y"]
    assert fuse_swiglu(net) == 1
    kinds = [layer.kind for layer in net.layers]
    assert trtdsl.LayerKind.ACTIVATION not in kinds and trtdsl.LayerKind.SLICE not in kinds
    assert [layer.attrs["name"] for layer in net.layers if layer.kind is trtdsl.LayerKind.PLUGIN] == ["trtdsl.swiglu"]
    after = TorchExecutor(net).run({"x": x})["y"]
    gate, up = (x @ w_up.T).chunk(2, -1)
    ref = (torch.nn.functional.silu(gate) * up) @ w_down.T
    torch.testing.assert_close(after, before, rtol=0, atol=0)
    torch.testing.assert_close(after, ref, rtol=1e-5, atol=1e-5)


def test_pattern_with_an_escaping_intermediate_is_left_alone() -> None:
    net, _, _ = _mlp_net(extra_use=True)
    n = len(net.layers)
    assert fuse_swiglu(net) == 0 and len(net.layers) == n


def test_optimize_reports_swiglu_and_runs_it_before_pointwise() -> None:
    net, _, _ = _mlp_net()
    stats = optimize(net, fuse_swiglu=True, fuse_elementwise=True)
    assert stats["swiglu"] == 1 and stats["pointwise"] == 0


def test_onnx_export_inlines_the_fused_layer() -> None:
    ort = pytest.importorskip("onnxruntime")
    from trtdsl.backends.onnx import to_onnx_model
    net, _, _ = _mlp_net()
    fuse_swiglu(net)
    x = torch.randn(3, 16)
    ref = TorchExecutor(net).run({"x": x})["y"].numpy()
    model = to_onnx_model(net)
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    (out,) = sess.run(None, {"x": x.numpy()})
    np.testing.assert_allclose(out, ref, rtol=1e-5, atol=1e-5)
