"""Step-input packing: exact tensors, validation, and agreement with the attention reference."""

from __future__ import annotations

import pytest
import torch

from trtdsl.errors import ShapeError
from trtdsl.plugins.attention_reference import paged_attention_reference
from trtdsl.runtime.step_inputs import SequenceStep, build_static_step_inputs, build_step_inputs


def _i32(values):
    return torch.tensor(values, dtype=torch.int32)


def _assert_exact(actual: torch.Tensor, expected: list) -> None:
    assert actual.dtype == torch.int32
    assert torch.equal(actual, _i32(expected)), f"{actual.tolist()} != {expected}"


def test_mixed_batch_exact_tensors():
    steps = [
        SequenceStep(token_ids=[11], past_len=5, block_table=[3, 7]),          # generation
        SequenceStep(token_ids=[21, 22, 23], past_len=4, block_table=[1, 2]),  # context chunk
        SequenceStep(token_ids=[31, 32], past_len=0, block_table=[9]),         # first chunk
    ]
    x = build_step_inputs(steps, tokens_per_block=4)
    _assert_exact(x.input_ids, [11, 21, 22, 23, 31, 32])
    _assert_exact(x.position_ids, [5, 4, 5, 6, 0, 1])
    _assert_exact(x.seq_lens, [1, 3, 2])
    _assert_exact(x.past_lens, [5, 4, 0])
    _assert_exact(x.cu_seqlens, [0, 1, 4, 6])
    _assert_exact(x.block_tables, [[3, 7], [1, 2], [9, 0]])
    _assert_exact(x.last_token_ids, [0, 3, 5])
    assert (x.num_tokens, x.batch_size) == (6, 3)
    assert list(x.as_dict()) == ["input_ids", "position_ids", "seq_lens", "past_lens",
                                 "cu_seqlens", "block_tables", "last_token_ids"]
    assert all(t.device.type == "cpu" for t in x.as_dict().values())


def test_static_prompts_get_consecutive_fresh_blocks():
    x, tables = build_static_step_inputs([[1, 2, 3, 4, 5], [6], [7, 8, 9, 10]], tokens_per_block=4,
                                         first_block=2)
    assert tables == [[2, 3], [4], [5]]
    _assert_exact(x.input_ids, [1, 2, 3, 4, 5, 6, 7, 8, 9, 10])
    _assert_exact(x.position_ids, [0, 1, 2, 3, 4, 0, 0, 1, 2, 3])
    _assert_exact(x.seq_lens, [5, 1, 4])
    _assert_exact(x.past_lens, [0, 0, 0])
    _assert_exact(x.cu_seqlens, [0, 5, 6, 10])
    _assert_exact(x.block_tables, [[2, 3], [4, 0], [5, 0]])
    _assert_exact(x.last_token_ids, [4, 5, 9])


def test_validation_errors():
    with pytest.raises(ShapeError, match="empty"):
        build_step_inputs([])
    with pytest.raises(ShapeError, match="no tokens"):
        build_step_inputs([SequenceStep([], 0, [0])])
    with pytest.raises(ShapeError, match="block table has 1"):
        build_step_inputs([SequenceStep([1, 2], 3, [0])], tokens_per_block=4)
    with pytest.raises(ShapeError, match="prompt 1 is empty"):
        build_static_step_inputs([[1], []], tokens_per_block=4)


def _attend(steps, qkv, kv_cache, *, heads, kv_heads, head_dim, tpb):
    x = build_step_inputs(steps, tokens_per_block=tpb)
    return paged_attention_reference(
        qkv, x.position_ids, x.seq_lens, x.past_lens, x.cu_seqlens, x.block_tables, kv_cache,
        torch.zeros(1, 0), num_heads=heads, num_kv_heads=kv_heads, head_dim=head_dim, layer_idx=0,
        tokens_per_block=tpb, softmax_scale=head_dim ** -0.5)


def test_chunked_packing_matches_one_shot_context_in_attention_reference():
    """A prompt run in one step equals the same prompt run as two chunks plus a generation token
    batched with another sequence: the packed inputs address the same cache slots."""
    torch.manual_seed(0)
    heads, kv_heads, head_dim, tpb = 4, 2, 8, 4
    width = (heads + 2 * kv_heads) * head_dim
    qkv = torch.randn(9, width)
    other = torch.randn(3, width)

    def pool():
        return torch.zeros(1, 8, 2, kv_heads, tpb, head_dim)

    kw = dict(heads=heads, kv_heads=kv_heads, head_dim=head_dim, tpb=tpb)
    one_shot = _attend([SequenceStep(list(range(9)), 0, [5, 2, 6])], qkv, pool(), **kw)
    cache = pool()
    a = _attend([SequenceStep(list(range(5)), 0, [5, 2, 6])], qkv[:5], cache, **kw)
    b = _attend([SequenceStep([0, 0, 0], 0, [1]),
                 SequenceStep(list(range(5, 8)), 5, [5, 2, 6])],
                torch.cat([other, qkv[5:8]]), cache, **kw)
    c = _attend([SequenceStep([8], 8, [5, 2, 6])], qkv[8:], cache, **kw)
    torch.testing.assert_close(torch.cat([a, b[3:], c]), one_shot)
