"""Test-local stand-ins for the runtime: a tiny block allocator and step packer over one built
network, and Hugging Face references. (The real runtime lives in trtdsl/runtime and is tested there.)"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import torch

from trtdsl.backends.torch_executor import TorchExecutor

TOKENS_PER_BLOCK = 4  # small, so short prompts span several blocks


class TinyPagedRunner:
    """Steps a plugin network: allocates cache blocks (scattered, not in order, so block tables
    matter), packs the sequences of a step, runs it, and returns each sequence's last logits."""

    def __init__(self, model: Any, network: Any, num_blocks: int = 64):
        self.executor = TorchExecutor(network)
        dtype = network.input_specs["kv_cache"].dtype.torch
        self.kv_cache = torch.zeros(model.kv_cache_shape(num_blocks, TOKENS_PER_BLOCK), dtype=dtype)
        self.free = list(range(num_blocks))[::-1][::2] + list(range(num_blocks))[::-1][1::2]
        self.tables: dict[int, list[int]] = {}
        self.lens: dict[int, int] = {}

    def step(self, new_tokens: dict[int, list[int]]) -> dict[int, torch.Tensor]:
        """Run one step: ``{seq_id: tokens to append}`` -> ``{seq_id: logits of its last token}``."""
        return dict(zip(new_tokens, self.run(new_tokens)))

    def run(self, new_tokens: dict[int, list[int]]) -> torch.Tensor:
        """Run one step and return the network's ``logits`` output as is."""
        ids, pos, seq_lens, past_lens, cu, tables = [], [], [], [], [0], []
        for sid, toks in new_tokens.items():
            past = self.lens.get(sid, 0)
            table = self.tables.setdefault(sid, [])
            while len(table) * TOKENS_PER_BLOCK < past + len(toks):
                table.append(self.free.pop())
            ids += toks
            pos += range(past, past + len(toks))
            seq_lens.append(len(toks))
            past_lens.append(past)
            cu.append(cu[-1] + len(toks))
            tables.append(table)
            self.lens[sid] = past + len(toks)
        width = max(len(t) for t in tables)
        i32 = torch.int32
        feed = {
            "input_ids": torch.tensor(ids, dtype=i32), "position_ids": torch.tensor(pos, dtype=i32),
            "seq_lens": torch.tensor(seq_lens, dtype=i32), "past_lens": torch.tensor(past_lens, dtype=i32),
            "cu_seqlens": torch.tensor(cu, dtype=i32),
            "block_tables": torch.tensor([t + [0] * (width - len(t)) for t in tables], dtype=i32),
            "last_token_ids": torch.tensor([c - 1 for c in cu[1:]], dtype=i32),
            "kv_cache": self.kv_cache,
        }
        return self.executor.run(feed)["logits"]


def greedy_paged(model: Any, network: Any, prompts: list[list[int]], steps: int,
                 late_start: int = 1) -> list[list[int]]:
    """Greedy continuations of ``prompts``; the last prompt's context step joins ``late_start``
    steps late, so those steps mix generation tokens and a context chunk."""
    runner = TinyPagedRunner(model, network)
    out: dict[int, list[int]] = {i: [] for i in range(len(prompts))}
    pending = {i: list(p) for i, p in enumerate(prompts[:-1])}
    step = 0
    while any(len(o) < steps for o in out.values()):
        if step == late_start:
            pending[len(prompts) - 1] = list(prompts[-1])
        todo = {i: t for i, t in pending.items() if len(out[i]) < steps}
        logits = runner.step(todo)
        pending = {}
        for i, row in logits.items():
            tok = int(row.argmax())
            out[i].append(tok)
            pending[i] = [tok]
        step += 1
    return [out[i] for i in range(len(prompts))]


def hf_last_logits(hf_model: Any, prompts: list[list[int]]) -> torch.Tensor:
    with torch.no_grad():
        return torch.stack([hf_model(torch.tensor([p])).logits[0, -1].float() for p in prompts])


def hf_greedy(hf_model: Any, prompt: list[int], steps: int) -> list[int]:
    # No EOS: generation must run `steps` tokens without biasing any logit (min_new_tokens would).
    hf_model.generation_config.eos_token_id = None
    with torch.no_grad():
        out = hf_model.generate(torch.tensor([prompt]), attention_mask=torch.ones(1, len(prompt), dtype=torch.long),
                                max_new_tokens=steps, do_sample=False, pad_token_id=0)
    return out[0, len(prompt):].tolist()


def assert_logits_close(got: torch.Tensor, want: torch.Tensor, rel: float = 1e-4) -> None:
    """max |got - want| <= rel * max(1, max |want|) (the tolerance scales with the logits)."""
    assert got.shape == want.shape, (got.shape, want.shape)
    scale = max(1.0, float(want.abs().max()))
    diff = float((got.float() - want.float()).abs().max())
    assert diff <= rel * scale, f"max abs diff {diff:.3g} > {rel} * {scale:.3g}"


def save_tiny(hf_model: Any, path: Path, **kw: Any) -> Path:
    hf_model.save_pretrained(path, **kw)
    return path


def blocks_needed(n: int) -> int:
    return math.ceil(n / TOKENS_PER_BLOCK)
