"""QuantConfig.group_size_overrides: GEMMs matching a glob get their own group size (a mixed
recipe); each is exactly what the uniform recipe of that size would store."""

from __future__ import annotations

import pytest
import torch

from trtdsl.errors import ConfigError
from trtdsl.ir.network import LayerKind, Network
from trtdsl.quantization import QuantConfig, quantize_network

from test_pass import activations, build_mlp


def _gemms(net: Network) -> dict[str, tuple[int, list[torch.Tensor]]]:
    """weight name -> (group size field, constant inputs) of every weight-only GEMM plugin."""
    out = {}
    for layer in net.layers:
        if layer.kind is LayerKind.PLUGIN:
            consts = [t.producer for t in layer.inputs[1:]]
            name = consts[0].name.split(".")[0]  # "down.weight.qweight" -> "down"
            out[name] = (layer.attrs["fields"]["group_size"], [c.attrs["value"] for c in consts])
    return out


@pytest.mark.parametrize("mode", ["int4_wo", "int4_awq"])
def test_matching_gemms_get_their_own_group_size(mode: str) -> None:
    feeds = [{"x": activations(s, rows=64)} for s in range(4)]
    kw = dict(calibration_feeds=feeds, progress=False, awq_grid=5)
    mixed = _gemms(quantize_network(build_mlp(), mode, group_size=64,
                                    group_size_overrides=[["down*", 32]], **kw))
    g64 = _gemms(quantize_network(build_mlp(), mode, group_size=64, **kw))
    g32 = _gemms(quantize_network(build_mlp(), mode, group_size=32, **kw))
    assert sorted(mixed) == ["down", "gate", "up"]
    for name, (size, consts) in mixed.items():
        want_size, want = (32, g32["down"][1]) if name == "down" else (64, g64[name][1])
        assert size == want_size
        assert consts[1].shape[1] == (128 if name == "down" else 64) // want_size  # scales [n, groups]
        for a, b in zip(consts, want):
            assert torch.equal(a, b), name


def test_group_size_overrides_config() -> None:
    cfg = QuantConfig(mode="int4_awq", group_size_overrides=[["*down*", 64]])
    assert cfg.group_size_overrides == (("*down*", 64),) and hash(cfg)
    assert cfg.to_dict()["group_size_overrides"] == [["*down*", 64]]
    with pytest.raises(ConfigError, match="group_size_overrides"):
        QuantConfig(mode="int4_awq", group_size_overrides=[("*down*", 48)])
    with pytest.raises(ConfigError, match="group_size_overrides"):
        QuantConfig(mode="fp8", group_size_overrides=[("*down*", 64)])
    with pytest.raises(ConfigError, match="group_size_overrides"):
        QuantConfig(mode="int4_wo", group_size_overrides=["*down*"])
