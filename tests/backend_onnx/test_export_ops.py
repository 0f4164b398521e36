"""ONNX export, op by op: every layer kind on a small network with dynamic dims, run by
onnxruntime and compared with the torch executor (the reference semantics of each kind)."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

import trtdsl
import trtdsl.functional as F
from trtdsl.backends.onnx import export_onnx, to_onnx_model
from trtdsl.backends.torch_executor import TorchExecutor
from trtdsl.ir.network import LayerKind
from trtdsl.passes import fuse_add_rms_norm, fuse_elementwise

COVERED: set[LayerKind] = set()


def check(net, feed, tmp_path, atol=1e-5):
    ref = TorchExecutor(net).run(feed)
    COVERED.update(layer.kind for layer in net.layers)
    path = export_onnx(net, tmp_path / f"{net.name}.onnx")
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    names = [o.name for o in sess.get_outputs()]
    outs = dict(zip(names, sess.run(None, {k: v.numpy() for k, v in feed.items()})))
    assert set(outs) == set(ref)
    for k, v in ref.items():
        got = outs[k]
        assert got.shape == tuple(v.shape), (k, got.shape, v.shape)
        assert got.dtype == v.numpy().dtype, (k, got.dtype, v.dtype)
        np.testing.assert_allclose(got.astype(np.float64), v.numpy().astype(np.float64), atol=atol, rtol=1e-5,
                                   err_msg=k)
    return outs


def _net(name, *inputs):
    net = trtdsl.Network(name)
    return net, [net.add_input(n, dt, shape) for n, dt, shape in inputs]


def test_elementwise_unary_activation_cast_select(tmp_path):
    net, (x, y, i, j) = _net("ew", ("x", "float32", ["n", 6]), ("y", "float32", ["n", 6]),
                             ("i", "int32", ["n", 6]), ("j", "int32", [1, 6]))
    xp = F.abs(x) + 0.5
    outs = {
        "add": x + y, "sub": x - y, "mul": x * y, "div": x / xp, "pow": F.pow(xp, y), "max": F.maximum(x, y),
        "min": F.minimum(x, y), "eq": F.eq(i, j), "lt": F.lt(x, y), "gt": F.gt(x, y),
        "and": F.logical_and(F.gt(x, 0.0), F.lt(y, 0.0)), "or": F.logical_or(F.gt(x, 0.0), F.lt(y, 0.0)),
        "xor": F.logical_xor(F.gt(x, 0.0), F.lt(y, 0.0)), "fdiv_f": F.floor_divide(x, 0.7),
        "fdiv_i": F.floor_divide(i, j), "idiv": i / j,
        "exp": F.exp(x), "log": F.log(xp), "sqrt": F.sqrt(xp), "rsqrt": F.rsqrt(xp), "abs": F.abs(x),
        "neg": F.neg(x), "sin": F.sin(x), "cos": F.cos(x), "erf": F.erf(x), "floor": F.floor(x),
        "not": F.logical_not(F.gt(x, 0.0)), "relu": F.relu(x), "sigmoid": F.sigmoid(x), "tanh": F.tanh(x),
        "gelu": F.gelu(x), "gelu_tanh": F.gelu(x, approximate="tanh"), "silu": F.silu(x),
        "softplus": F.softplus(x), "leaky": F.leaky_relu(x, 0.2), "clamp": F.clamp(x, -0.5, 0.5),
        "clamp_lo": F.clamp(x, min=0.1), "clamp_int": F.clamp(i, -2, 2), "cast": F.cast(x, "float16"),
        "cast_i": F.cast(x * 3.0, "int32"), "where": F.where(F.gt(x, y), x, 0.0),
    }
    for k, v in outs.items():
        v.mark_output(k)
    net.add_profile(n=(1, 3, 8))
    feed = {"x": torch.randn(3, 6), "y": torch.randn(3, 6), "i": torch.randint(-9, 9, (3, 6), dtype=torch.int32),
            "j": torch.tensor([[1, -2, 3, -4, 5, 7]], dtype=torch.int32)}
    check(net, feed, tmp_path, atol=2e-3)


def test_matmul_reduce_softmax_norms(tmp_path):
    net, (x, z) = _net("mm", ("x", "float32", ["n", 8]), ("z", "float16", ["n", 8]))
    w = torch.randn(8, 5)
    outs = {
        "mm": F.matmul(x, w), "mm_tb": F.matmul(x, w.T.contiguous(), transpose_b=True),
        "mm_ta": F.matmul(F.transpose(x, 0, 1), w, transpose_a=True), "bmm": F.matmul(F.reshape(x, -1, 2, 4),
                                                                                      torch.randn(4, 3)),
        "sum": F.sum(x, -1), "mean": F.mean(x, [0, 1], keepdim=True), "max": F.max(x, 0), "min": F.min(x, -1),
        "prod": F.prod(x, -1, keepdim=True), "softmax": F.softmax(x, -1), "softmax16": F.softmax(z, 0),
        "logsm": F.log_softmax(x, -1), "rms": F.rms_norm(x, torch.rand(8) + 0.5, eps=1e-5),
        "rms16": F.rms_norm(z, (torch.rand(8) + 0.5).half()),
        "ln": F.layer_norm(x, 8, torch.rand(8), torch.randn(8)),
        "ln16": F.layer_norm(z, 8, torch.rand(8).half(), torch.randn(8).half()),
    }
    for k, v in outs.items():
        v.mark_output(k)
    net.add_profile(n=(2, 4, 8))
    check(net, {"x": torch.randn(4, 8), "z": torch.randn(4, 8).half()}, tmp_path, atol=2e-3)


def test_shapes_slices_gathers(tmp_path):
    net, (x, ids, start) = _net("shape", ("x", "float32", ["n", 4, 6]), ("ids", "int32", ["m"]),
                                ("start", "int32", [1]))
    n = x.shape[0]
    outs = {
        "reshape": F.reshape(x, -1, 6), "reshape_sym": F.reshape(x, n * 2, 12), "permute": F.permute(x, 2, 0, 1),
        "flatten": F.flatten(x, 1), "unsq": F.unsqueeze(x, 1), "expand": F.expand(F.slice(x, 1, 0, 1), -1, 4, -1),
        "slice": F.slice(x, 2, 1, 5, 2), "slice_neg": x[:, -2:, :-1], "slice_sym": F.slice(x, 0, 1, None),
        "dyn_slice": F.slice(x, 0, start, None), "cat": F.cat([x, x * 2.0], 1), "stack": F.stack([x, x], 0),
        "index_select": F.index_select(x, 1, F.cast(F.clamp(ids, 0, 3), "int64")),
        "embedding": F.embedding(ids, torch.randn(10, 3)),
        "gather": F.gather(x, 2, F.expand(F.reshape(F.arange(0, 4, network=net), 1, 4, 1), n, 4, 2)),
        "shape": F.shape_of(x), "arange_sym": F.arange(0, n, network=net), "full_sym": F.full((n, 2), 1.5, network=net),
        "arange_static": F.arange(2, 11, 3, network=net),
        "cumsum": F.cumsum(x, 1), "cumsum_ex_rev": F.cumsum(x, 2, exclusive=True, reverse=True),
    }
    values, indices = F.topk(x, 3, -1)
    outs.update(topk_v=values, topk_i=indices, argmax=F.argmax(x, 1), argmin_v=F.topk(x, 1, 0, largest=False)[0])
    for k, v in outs.items():
        v.mark_output(k)
    net.add_profile(n=(1, 3, 6), m=(1, 5, 9))
    feed = {"x": torch.randn(3, 4, 6), "ids": torch.tensor([0, 3, 9, 2, 2], dtype=torch.int32),
            "start": torch.tensor([1], dtype=torch.int32)}
    check(net, feed, tmp_path)


def test_identity_quantize_dequantize(tmp_path):
    from trtdsl.dtypes import DType
    net, (x,) = _net("qdq", ("x", "float32", ["n", 4]))
    ident = net.add_layer(LayerKind.IDENTITY, "identity", [x], [(DType.float32, x.shape)]).outputs[0]
    with net.scope():
        scale = F.constant(torch.tensor([0.05], dtype=torch.float32))
    q = net.add_layer(LayerKind.QUANTIZE, "q", [ident, scale], [(DType.int8, x.shape)], {"to": DType.int8}).outputs[0]
    dq = net.add_layer(LayerKind.DEQUANTIZE, "dq", [q, scale], [(DType.float32, x.shape)],
                       {"to": DType.float32}).outputs[0]
    q.mark_output("q")
    dq.mark_output("dq")
    net.add_profile(n=(1, 2, 4))
    check(net, {"x": torch.randn(2, 4) * 3}, tmp_path)


def test_fusion_plugins_are_inlined_and_other_plugins_are_custom_nodes(tmp_path):
    net, (x, r) = _net("fused", ("x", "float32", ["n", 8]), ("r", "float32", ["n", 8]))
    h = x + r
    y = F.rms_norm(h, torch.rand(8) + 0.5, eps=1e-5)
    (F.silu(y) * F.sigmoid(h) + 1.0).mark_output("out")
    h.mark_output("h")
    net.add_profile(n=(1, 2, 8))
    assert fuse_add_rms_norm(net) == 1 and fuse_elementwise(net) > 0
    assert any(layer.kind is LayerKind.PLUGIN for layer in net.layers)
    check(net, {"x": torch.randn(3, 8), "r": torch.randn(3, 8)}, tmp_path)
    # an unknown-to-ONNX plugin: a node in the trtdsl domain, with its fields as attributes
    import trtdsl.plugins.attention  # noqa: F401
    from trtdsl.plugins.registry import PluginSpec, register_plugin, unregister_plugin
    register_plugin(PluginSpec("trtdsl.test_scale", lambda ins, f: [(ins[0].dtype, ins[0].shape)],
                               lambda ins, f, h: ins[0] * f["factor"]))
    try:  # a test plugin must not outlive the test (the TensorRT coverage test lists every plugin)
        net2, (x2,) = _net("custom", ("x", "float32", ["n", 8]))
        (out,) = F.plugin("trtdsl.test_scale", [x2], factor=2.5, mode="fast", dims=(1, 2))
        out.mark_output("y")
        model = to_onnx_model(net2)
    finally:
        unregister_plugin("trtdsl.test_scale")
    onnx.checker.check_model(model)
    node = [n for n in model.graph.node if n.domain == "trtdsl"][0]
    assert node.op_type == "test_scale"
    attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
    assert attrs == {"factor": 2.5, "mode": b"fast", "dims": [1, 2]}


def test_every_layer_kind_is_covered():
    # runs last in this file (pytest keeps file order): the tests above exported every kind
    assert set(LayerKind) - COVERED == set(), f"not exported in these tests: {set(LayerKind) - COVERED}"
