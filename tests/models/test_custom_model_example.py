"""examples/custom_model.py: a new architecture outside trtdsl/models, checked against its own
plain-torch forward (paged plugin network, and the composite network with partial gptj RoPE)."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

import torch

from trtdsl.backends.torch_executor import TorchExecutor

from _model_helpers import assert_logits_close

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "custom_model.py"


def _example() -> Any:
    spec = importlib.util.spec_from_file_location("custom_model_example", EXAMPLE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)  # type: ignore[union-attr]
    return module


def test_example_main_matches_its_torch_reference() -> None:
    assert _example().main() < 1e-4


def test_example_composite_network_matches_its_torch_reference() -> None:
    ex = _example()
    model = ex.ParallelGPT.from_config(ex.CONFIG)
    weights = ex.random_weights(model, seed=3)
    model.load_state_dict(weights)
    net = model.build_network(max_batch_size=2, max_num_tokens=32, max_seq_len=32,
                              context_logits=True, attention_backend="composite")
    prompts = [[1, 2, 3, 4, 5, 6, 7], [200, 100, 50]]
    i32 = torch.int32
    out = TorchExecutor(net).run({
        "input_ids": torch.tensor(prompts[0] + prompts[1], dtype=i32),
        "position_ids": torch.tensor(list(range(7)) + list(range(3)), dtype=i32),
        "seq_ids": torch.tensor([0] * 7 + [1] * 3, dtype=i32)})["logits"]
    want = torch.cat([ex.torch_forward(weights, ex.CONFIG, p) for p in prompts])
    assert_logits_close(out, want)
