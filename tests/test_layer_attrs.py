"""The layer-attr schema covers every layer kind, and validate_layer catches broken layers."""

from __future__ import annotations

import pytest
import torch

import trtdsl
import trtdsl.functional as F
from trtdsl.errors import NetworkError
from trtdsl.ir.layer_attrs import LAYER_ARITY, LAYER_ATTRS, OPTIONAL_ATTRS, validate_layer, validate_network
from trtdsl.ir.network import Layer, LayerKind


def test_schema_covers_every_kind_and_documents_every_attr() -> None:
    assert set(LAYER_ATTRS) == set(LayerKind) == set(LAYER_ARITY)
    for kind, attrs in LAYER_ATTRS.items():
        assert all(isinstance(d, str) and len(d) > 10 for d in attrs.values()), kind
        assert OPTIONAL_ATTRS.get(kind, frozenset()) <= set(attrs)


def _sample_network() -> trtdsl.Network:
    net = trtdsl.Network("sample")
    x = net.add_input("x", "float32", ["n", 8])
    ids = net.add_input("ids", "int32", ["n"])
    h = F.layer_norm(x, 8) + F.embedding(ids, torch.randn(10, 8))
    h = F.rms_norm(F.clamp(F.gelu(h), -2.0, 2.0), torch.ones(8)).view(-1, 2, 4).permute(1, 0, 2)
    vals, idx = F.topk(F.softmax(h, -1), 2)
    out = F.cumsum(idx, -1, exclusive=True)
    y = F.where(h > 0.0, h, F.expand(F.full((1, 1, 4), 1.0, network=net), 2, -1, 4))
    F.cat([y, F.cast(out, "float32")], -1).mark_output("y")
    x[ids[0]:].mark_output("dyn")
    return net


def test_layers_written_by_the_ops_validate() -> None:
    net = _sample_network()
    validate_network(net)
    kinds = {la.kind for la in net.layers}
    assert {LayerKind.NORMALIZATION, LayerKind.GATHER, LayerKind.TOPK, LayerKind.CUMSUM, LayerKind.FILL,
            LayerKind.SLICE, LayerKind.SELECT, LayerKind.SHUFFLE, LayerKind.ACTIVATION} <= kinds


def _layer(kind: LayerKind, attrs: dict, n_in: int = 1) -> Layer:
    net = trtdsl.Network("broken")
    x = net.add_input("x", "float32", [2, 3])
    layer = net.add_layer(kind, "broken", [x] * n_in, [(x.dtype, x.shape)], attrs)
    return layer


@pytest.mark.parametrize("kind, attrs, n_in, words", [
    (LayerKind.ELEMENTWISE, {"op": "hypot"}, 2, ["attr 'op' = 'hypot' is invalid"]),
    (LayerKind.REDUCE, {"op": "sum", "axes": (2,), "keep_dims": False}, 1, ["axis 2 out of range"]),
    (LayerKind.SOFTMAX, {}, 1, ["missing attr 'axis'"]),
    (LayerKind.CAST, {"to": "float16"}, 1, ["attr 'to'", "invalid"]),
    (LayerKind.SHUFFLE, {"first_transpose": (0, 0), "reshape_dims": None, "second_transpose": None}, 1,
     ["not a permutation"]),
    (LayerKind.SLICE, {"start": (0,), "size": (2, 3), "stride": (1, 1), "mode": "default", "dynamic": ()},
     1, ["start/size/stride must each have 2 entries"]),
    (LayerKind.MATRIX_MULTIPLY, {"transpose_a": False, "transpose_b": False, "alpha": 2.0}, 1,
     ["unknown attr 'alpha'", "1 inputs; expected 2"]),
])
def test_broken_layers_are_reported_with_every_problem(kind, attrs, n_in, words) -> None:
    layer = _layer(kind, attrs, n_in)
    with pytest.raises(NetworkError) as err:
        validate_layer(layer)
    msg = str(err.value)
    assert "layer 'broken'" in msg and kind.value in msg and "layer_attrs.py" in msg
    for w in words:
        assert w in msg
