"""Packing one step of a batch into the int32 tensors of docs/batch_interface.md.

Nothing is padded except ``block_tables``, whose rows are padded to the longest table with
block id 0: the attention kernels never read entries past a sequence's ``past_len + seq_len``
tokens, and a valid id (rather than -1) keeps any gather that does touch them in bounds.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, Sequence

import torch

from ..errors import ShapeError
from .kv_cache import blocks_for_tokens

__all__ = ["StepInputs", "StepSequence", "SequenceStep", "build_step_inputs",
           "build_static_step_inputs"]


class StepSequence(Protocol):
    """What one sequence contributes to a step (the scheduler's ``ScheduledSequence`` is one)."""

    @property
    def token_ids(self) -> Sequence[int]: ...

    @property
    def past_len(self) -> int: ...

    @property
    def block_table(self) -> Sequence[int]: ...


@dataclass(frozen=True)
class SequenceStep:
    """A plain :class:`StepSequence`: run ``token_ids`` after ``past_len`` cached tokens."""

    token_ids: Sequence[int]
    past_len: int
    block_table: Sequence[int]


@dataclass(frozen=True)
class StepInputs:
    """The step inputs of docs/batch_interface.md, all int32 on one device.

    Invariants: ``cu_seqlens[0] == 0``, ``cu_seqlens[1:] == cumsum(seq_lens)``, ``last_token_ids ==
    cu_seqlens[1:] - 1``, ``position_ids[cu[s] + i] == past_lens[s] + i``, and ``input_ids`` has
    ``cu_seqlens[-1]`` entries."""

    input_ids: torch.Tensor
    position_ids: torch.Tensor
    seq_lens: torch.Tensor
    past_lens: torch.Tensor
    cu_seqlens: torch.Tensor
    block_tables: torch.Tensor
    last_token_ids: torch.Tensor

    @property
    def num_tokens(self) -> int:
        return int(self.input_ids.shape[0])

    @property
    def batch_size(self) -> int:
        return int(self.seq_lens.shape[0])

    def as_dict(self) -> dict[str, torch.Tensor]:
        """The tensors by input name (without ``kv_cache``, which the runner owns)."""
        return {
            "input_ids": self.input_ids,
            "position_ids": self.position_ids,
            "seq_lens": self.seq_lens,
            "past_lens": self.past_lens,
            "cu_seqlens": self.cu_seqlens,
            "block_tables": self.block_tables,
            "last_token_ids": self.last_token_ids,
        }


def build_step_inputs(sequences: Sequence[StepSequence], device: torch.device | str = "cpu", *,
                      tokens_per_block: int | None = None) -> StepInputs:
    """Pack ``sequences`` (in order) into one step's tensors on ``device``.

    With ``tokens_per_block`` given, also checks that every block table covers the sequence's
    ``past_len + len(token_ids)`` tokens (a short table would make the kernel write K/V into
    whatever block id the padding holds)."""
    if len(sequences) == 0:
        raise ShapeError("build_step_inputs: the batch is empty; a step needs >= 1 sequence")
    input_ids: list[int] = []
    position_ids: list[int] = []
    seq_lens: list[int] = []
    past_lens: list[int] = []
    cu_seqlens = [0]
    for s, seq in enumerate(sequences):
        n, past = len(seq.token_ids), int(seq.past_len)
        if n == 0:
            raise ShapeError(f"build_step_inputs: sequence {s} has no tokens to run this step")
        if past < 0:
            raise ShapeError(f"build_step_inputs: sequence {s} has past_len {past} < 0")
        if tokens_per_block is not None:
            need = blocks_for_tokens(past + n, tokens_per_block)
            if len(seq.block_table) < need:
                raise ShapeError(
                    f"build_step_inputs: sequence {s} holds {past + n} tokens, which need {need} "
                    f"blocks of {tokens_per_block}, but its block table has {len(seq.block_table)}")
        input_ids.extend(int(t) for t in seq.token_ids)
        position_ids.extend(range(past, past + n))
        seq_lens.append(n)
        past_lens.append(past)
        cu_seqlens.append(cu_seqlens[-1] + n)
    # At least one column, so the tensor is never [batch, 0] (every sequence uses >= 1 block).
    width = max(1, max(len(seq.block_table) for seq in sequences))
    tables = [list(map(int, seq.block_table)) + [0] * (width - len(seq.block_table))
              for seq in sequences]

    def t(values: list[int] | list[list[int]]) -> torch.Tensor:
        return torch.tensor(values, dtype=torch.int32, device=device)

    return StepInputs(
        input_ids=t(input_ids), position_ids=t(position_ids), seq_lens=t(seq_lens),
        past_lens=t(past_lens), cu_seqlens=t(cu_seqlens), block_tables=t(tables),
        last_token_ids=t([c - 1 for c in cu_seqlens[1:]]))


def build_static_step_inputs(prompts: Sequence[Sequence[int]], tokens_per_block: int,
                             device: torch.device | str = "cpu", *,
                             first_block: int = 0) -> tuple[StepInputs, list[list[int]]]:
    """The simple static case: every prompt is a whole context (``past_len = 0``) on fresh blocks,
    handed out consecutively from ``first_block`` (prompt 0 gets the first ones).

    Returns the step inputs and the block tables, which the caller keeps for the following
    generation steps (``build_step_inputs`` with ``past_len = len(prompt)``, growing tables)."""
    if tokens_per_block <= 0:
        raise ShapeError(f"build_static_step_inputs: tokens_per_block must be > 0, "
                         f"got {tokens_per_block}")
    tables: list[list[int]] = []
    next_block = first_block
    for s, prompt in enumerate(prompts):
        if len(prompt) == 0:
            raise ShapeError(f"build_static_step_inputs: prompt {s} is empty")
        n_blocks = blocks_for_tokens(len(prompt), tokens_per_block)
        tables.append(list(range(next_block, next_block + n_blocks)))
        next_block += n_blocks
    steps = [SequenceStep(token_ids=p, past_len=0, block_table=tb)
             for p, tb in zip(prompts, tables)]
    return build_step_inputs(steps, device, tokens_per_block=tokens_per_block), tables
