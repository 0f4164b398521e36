"""Shared fixtures of the serving tests: one tiny engine (random Llama + byte tokenizer) per
session, and one torch thread while these tests run.

Why one thread: the executor's steps are tiny (a 2-layer model), and under ``pytest -n 2`` on two
cores, two OpenMP threads per worker spin against each other: a softmax of 80 floats then takes
~20 ms instead of microseconds. The previous setting is restored afterwards."""

from __future__ import annotations

from pathlib import Path
from typing import Iterator

import pytest
import torch

from trtdsl.server.testing import build_tiny_engine


@pytest.fixture(scope="module", autouse=True)
def _one_torch_thread() -> Iterator[None]:
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def tiny_engine(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Engine dir; its Hugging Face checkpoint (the reference) is ``<dir>_checkpoint``."""
    return build_tiny_engine(tmp_path_factory.mktemp("serving") / "tiny_engine")


@pytest.fixture(scope="session")
def hf_model(tiny_engine: Path):  # type: ignore[no-untyped-def]
    """The Hugging Face model the tiny engine was built from: the independent reference."""
    from transformers import LlamaForCausalLM
    return LlamaForCausalLM.from_pretrained(tiny_engine.parent / (tiny_engine.name + "_checkpoint")).eval()


@pytest.fixture(scope="session")
def hf_greedy(hf_model):  # type: ignore[no-untyped-def]
    """``hf_greedy(prompt, n)``: n greedy tokens from Hugging Face (no EOS stop)."""
    def run(prompt: list[int], n: int) -> list[int]:
        with torch.no_grad():
            out = hf_model.generate(torch.tensor([prompt]), max_new_tokens=n, min_new_tokens=n,
                                    do_sample=False, eos_token_id=None, pad_token_id=0)
        return out[0, len(prompt):].tolist()
    return run
