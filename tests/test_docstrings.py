"""Every op's docstring carries a small example, and every example runs as written.

The examples use the names listed in ``trtdsl.functional``'s module docstring (``x``, ``ids``, ``q``,
...); this test builds exactly those tensors, runs each example's lines, and checks that what it
assigns are tensors of that network. The module docstrings with expected output run as doctests."""

from __future__ import annotations

import doctest

import pytest
import torch

import trtdsl
import trtdsl.functional as F
from trtdsl.plugins.registry import PluginSpec, register_plugin, unregister_plugin


def _namespace() -> dict:
    net = trtdsl.Network("docs")
    add = net.add_input
    ns = {name: getattr(F, name) for name in F.__all__}
    ns.update(torch=torch, trtdsl=trtdsl, F=F, net=net, Ellipsis=Ellipsis)
    ns.update(
        x=add("x", "float32", ["n", 8]), ids=add("ids", "int32", ["n"]),
        mask=add("mask", "bool", ["n", 8]), m1=add("m1", "bool", ["n", 8]), m2=add("m2", "bool", ["n", 8]),
        var=add("var", "float32", ["n", 1]), scores=add("scores", "float32", ["n", "n"]),
        logits=add("logits", "float32", ["n", 10]), logprobs=add("logprobs", "float32", ["n", 10]),
        token_ids=add("token_ids", "int64", ["n", 1]), lens=add("lens", "int32", ["b"]),
        pos_k=add("pos_k", "int32", [1, "n"]), pos_q=add("pos_q", "int32", ["n", 1]),
        q=add("q", "float32", [1, 2, "n", 8]), k=add("k", "float32", [1, 2, "n", 8]),
        v=add("v", "float32", [1, 2, "n", 8]), kv=add("kv", "float32", [2, "n", 8]),
        qkv=add("qkv", "float32", ["n", 24]), gate_up=add("gate_up", "float32", ["n", 16]),
        heads=add("heads", "float32", ["n", 2, 8]), cos_pos=add("cos_pos", "float32", ["n", 1, 8]),
        sin_pos=add("sin_pos", "float32", ["n", 1, 8]),
        w=torch.randn(16, 8), b=torch.randn(16), table=torch.randn(10, 8),
    )
    return ns


def _examples(doc: str) -> list[str]:
    """The example blocks of a docstring: a ``>>>`` line and its ``...`` continuation lines."""
    blocks: list[list[str]] = []
    for line in doc.splitlines():
        s = line.strip()
        if s.startswith(">>> "):
            blocks.append([s[4:]])
        elif s.startswith("... ") and blocks:
            blocks[-1].append(s[4:])
    return ["\n".join(b) for b in blocks]


@pytest.fixture
def example_plugin():
    register_plugin(PluginSpec("example.scale", lambda ins, f: [(ins[0].dtype, ins[0].shape)],
                               lambda ins, f, h: ins[0] * f["factor"]))
    yield
    unregister_plugin("example.scale")


@pytest.mark.parametrize("name", F.__all__)
def test_op_docstring_example_runs(name: str, example_plugin: None) -> None:
    fn = getattr(F, name)
    examples = _examples(fn.__doc__ or "")
    assert examples, f"trtdsl.functional.{name} has no `>>>` example in its docstring"
    ns = _namespace()
    before = set(ns)
    for source in examples:
        exec(compile(source, f"<{name} docstring>", "exec"), ns)  # noqa: S102 - our own docstrings
    made = [ns[k] for k in set(ns) - before if not k.startswith("__")]
    assert made, f"the example of {name} assigns nothing"
    for value in made:
        for t in value if isinstance(value, (list, tuple)) else [value]:
            assert isinstance(t, trtdsl.Tensor) and t.network is ns["net"], (name, t)
    assert fn.__name__ in " ".join(examples), f"the example of {name} does not call it"


@pytest.mark.parametrize("module", ["trtdsl", "trtdsl.functional", "trtdsl.dtypes", "trtdsl.ir.network"])
def test_module_doctests(module: str) -> None:
    import importlib
    mod = importlib.import_module(module)
    failures, tried = doctest.testmod(mod, optionflags=doctest.ELLIPSIS)[:2]
    assert tried > 0 and failures == 0
