"""KV cache manager: exact block ids, prefix reuse, eviction order, stats and invariants."""

from __future__ import annotations

import random

import pytest

from trtdsl.errors import ConfigError, TrtdslError
from trtdsl.runtime.kv_cache import (
    KVCacheError,
    KVCacheManager,
    OutOfBlocksError,
    blocks_for_memory,
    blocks_for_tokens,
    bytes_per_block,
    hash_block_tokens,
    kv_cache_pool_shape,
)


def _alloc_commit(kv: KVCacheManager, seq_id: str, tokens: list[int]) -> int:
    """Allocate, then commit the whole prompt as if one context step computed it."""
    cached = kv.allocate(seq_id, tokens)
    kv.commit_tokens(seq_id, tokens[cached:])
    kv.check_invariants()
    return cached


def test_sizing_helpers():
    assert blocks_for_tokens(0, 4) == 0
    assert blocks_for_tokens(1, 4) == 1
    assert blocks_for_tokens(8, 4) == 2
    assert blocks_for_tokens(9, 4) == 3
    # 2 layers * (K,V) * 4 heads * 16 tokens * 64 dims * 2 bytes
    assert bytes_per_block(num_layers=2, num_kv_heads=4, head_dim=64, tokens_per_block=16,
                           dtype_bytes=2) == 32768
    assert blocks_for_memory(1 << 20, 0.5, num_layers=2, num_kv_heads=4, head_dim=64,
                             tokens_per_block=16, dtype_bytes=2) == 16
    assert blocks_for_memory(32767, 1.0, num_layers=2, num_kv_heads=4, head_dim=64,
                             tokens_per_block=16, dtype_bytes=2) == 0
    assert blocks_for_memory(10 * 32768 + 5, num_layers=2, num_kv_heads=4, head_dim=64,
                             tokens_per_block=16, dtype_bytes=2) == 9  # 0.9 default
    assert kv_cache_pool_shape(num_layers=2, num_blocks=9, num_kv_heads=4, tokens_per_block=16,
                               head_dim=64) == (2, 9, 2, 4, 16, 64)
    with pytest.raises(ConfigError):
        blocks_for_memory(1 << 20, 1.5, num_layers=2, num_kv_heads=4, head_dim=64,
                          tokens_per_block=16, dtype_bytes=2)
    with pytest.raises(ConfigError):
        KVCacheManager(0, 16)


def test_chained_hash_depends_on_parent_and_tokens():
    a = hash_block_tokens(None, [1, 2])
    assert a == hash_block_tokens(None, [1, 2])
    assert a != hash_block_tokens(None, [2, 1])
    assert hash_block_tokens(a, [3, 4]) != hash_block_tokens(None, [3, 4])


def test_fresh_allocation_block_ids_and_free_order():
    kv = KVCacheManager(num_blocks=10, tokens_per_block=4)
    assert kv.allocate("a", list(range(10))) == 0
    assert kv.block_table("a") == [0, 1, 2]
    assert kv.allocate("b", list(range(100, 105))) == 0
    assert kv.block_table("b") == [3, 4]
    kv.check_invariants()
    assert kv.num_free_blocks == 5
    kv.free("a")  # nothing committed: no hashes, blocks go back to the free queue, tail first
    kv.check_invariants()
    assert list(kv._free) == [5, 6, 7, 8, 9, 2, 1, 0]
    assert kv.allocate("c", list(range(24))) == 0
    assert kv.block_table("c") == [5, 6, 7, 8, 9, 2]
    s = kv.stats()
    assert (s.used_blocks, s.free_blocks, s.evictable_blocks, s.cached_blocks) == (8, 2, 0, 0)


def test_prefix_reuse_shares_full_blocks_and_counts_hits():
    kv = KVCacheManager(num_blocks=10, tokens_per_block=4)
    prompt = list(range(10))
    assert _alloc_commit(kv, "a", prompt) == 0
    assert kv.stats().cached_blocks == 2  # blocks 0 and 1 are full; block 2 holds 2 tokens
    assert kv.allocate("b", prompt + [77]) == 8
    kv.check_invariants()
    assert kv.block_table("b") == [0, 1, 3]
    assert kv._refcount[:4] == [2, 2, 1, 1]
    assert kv.num_computed_tokens("b") == 8
    s = kv.stats()
    assert (s.looked_up_tokens, s.reused_tokens) == (21, 8)
    assert s.hit_rate == pytest.approx(8 / 21)


def test_fully_cached_prompt_still_computes_last_token():
    kv = KVCacheManager(num_blocks=10, tokens_per_block=4)
    prompt = list(range(8))
    _alloc_commit(kv, "a", prompt)
    assert kv.stats().cached_blocks == 2
    # Both blocks are cached, but the last token must run through the model: only 1 block reused.
    assert kv.allocate("b", prompt) == 4
    assert kv.block_table("b") == [0, 2]
    kv.commit_tokens("b", prompt[4:])
    kv.check_invariants()
    # b recomputed block 1's content in block 2; block 1 stays the registered copy.
    assert kv._block_hash[2] is None and kv._block_hash[1] is not None
    kv.free("b")
    kv.free("a")
    kv.check_invariants()
    assert list(kv._free)[-1] == 2          # the private duplicate is plain free
    assert list(kv._evictable) == [1, 0]    # a freed tail first


def test_single_token_and_short_prompts_are_never_reused():
    kv = KVCacheManager(num_blocks=4, tokens_per_block=4)
    _alloc_commit(kv, "a", [1, 2, 3, 4])
    assert kv.allocate("b", [1, 2, 3, 4]) == 0
    assert kv.allocate("c", [1, 2, 3, 4, 5]) == 4
    kv.check_invariants()
    assert kv.block_table("c") == [0, 2]


def test_lru_eviction_order_is_least_recently_freed_tail_first():
    kv = KVCacheManager(num_blocks=4, tokens_per_block=2)
    _alloc_commit(kv, "a", [1, 2, 3, 4])   # blocks 0, 1
    _alloc_commit(kv, "b", [5, 6, 7, 8])   # blocks 2, 3
    kv.free("a")
    kv.free("b")
    kv.check_invariants()
    assert list(kv._evictable) == [1, 0, 3, 2]
    assert kv.num_free_blocks == 4
    assert kv.allocate("c", [9, 9]) == 0
    assert kv.block_table("c") == [1]       # evicted a's tail block first
    assert kv.allocate("d", [9, 8]) == 0
    assert kv.block_table("d") == [0]
    kv.check_invariants()
    s = kv.stats()
    assert (s.evictions, s.evictable_blocks, s.cached_blocks) == (2, 2, 2)
    # a's prefix is gone, b's is intact.
    assert kv._match_prefix([1, 2, 3, 4, 0]) == []
    assert [b for b, _ in kv._match_prefix([5, 6, 7, 8, 0])] == [2, 3]
    kv.free("c")
    kv.free("d")
    assert kv.allocate("f", [5, 6, 7, 8, 0]) == 4
    assert kv.block_table("f") == [2, 3, 1]
    kv.check_invariants()


def test_reusing_an_evictable_block_refreshes_its_lru_position():
    kv = KVCacheManager(num_blocks=3, tokens_per_block=2)
    _alloc_commit(kv, "a", [1, 2])   # block 0
    _alloc_commit(kv, "b", [3, 4])   # block 1
    kv.free("a")
    kv.free("b")
    assert list(kv._evictable) == [0, 1]
    assert kv.allocate("c", [1, 2, 5]) == 2   # takes block 0 out of the LRU, block 2 is fresh
    assert kv.block_table("c") == [0, 2]
    kv.check_invariants()
    assert list(kv._evictable) == [1]
    kv.free("c")                              # c: tail block 2 is unhashed (only 1 token)
    assert list(kv._evictable) == [1, 0]      # block 0 is now the most recently freed
    assert list(kv._free) == [2]
    assert kv.allocate("d", [7, 7, 7, 7, 7]) == 0
    assert kv.block_table("d") == [2, 1, 0]
    assert kv.stats().evictions == 2
    kv.check_invariants()


def test_broken_chain_stops_matching():
    kv = KVCacheManager(num_blocks=4, tokens_per_block=2)
    _alloc_commit(kv, "a", [1, 2, 3, 4])   # blocks 0 (hash [1,2]), 1 (hash [1,2]->[3,4])
    _alloc_commit(kv, "b", [1, 2, 9, 9])   # shares block 0, new block 2
    assert kv.block_table("b") == [0, 2]
    kv.free("a")                           # block 1 evictable, block 0 still used by b
    kv.free("b")                           # block 2 evictable, then block 0
    assert list(kv._evictable) == [1, 2, 0]
    kv.allocate("c", [5, 5, 5, 5, 5, 5])   # free block 3, then evicts 1 and 2
    assert kv.block_table("c") == [3, 1, 2]
    # Only the root block [1,2] survives: prefix [1,2,3,4,...] reuses exactly one block.
    assert kv.num_blocks_needed([1, 2, 3, 4, 0]) == 3  # 3 blocks, 1 hit which is evictable
    kv.free("c")
    kv.check_invariants()
    assert kv.allocate("d", [1, 2, 3, 4, 0]) == 2
    kv.check_invariants()


def test_num_blocks_needed_accounts_for_hits():
    kv = KVCacheManager(num_blocks=8, tokens_per_block=4)
    prompt = list(range(12))
    _alloc_commit(kv, "a", prompt)
    # a still holds blocks 0..2: a hit on an in-use block costs nothing.
    assert kv.num_blocks_needed(prompt + [1]) == 4 - 3
    assert kv.num_blocks_needed(prompt + [1], total_tokens=20) == 5 - 3
    kv.free("a")
    # Now the hits are evictable: reusing them removes them from the available pool.
    assert kv.num_blocks_needed(prompt + [1]) == 4
    before = kv.num_free_blocks
    kv.allocate("b", prompt + [1])
    assert before - kv.num_free_blocks == 4


def test_out_of_blocks_is_atomic():
    kv = KVCacheManager(num_blocks=3, tokens_per_block=2)
    _alloc_commit(kv, "a", [1, 2, 3, 4])
    kv.free("a")
    kv.allocate("b", [5])
    snapshot = (list(kv._free), list(kv._evictable), list(kv._refcount), kv.stats())
    with pytest.raises(OutOfBlocksError):
        kv.allocate("c", [1, 2, 3, 4, 5, 6, 7])   # 4 blocks needed (2 hits evictable) > 2
    assert "c" not in kv
    assert (list(kv._free), list(kv._evictable), list(kv._refcount), kv.stats()) == snapshot
    with pytest.raises(OutOfBlocksError):
        kv.ensure_capacity("b", 7)
    assert kv.block_table("b") == [2]
    assert kv.ensure_capacity("b", 2) == []
    assert kv.ensure_capacity("b", 3) == [1]     # evicts the LRU evictable block (a's tail)
    kv.check_invariants()
    assert isinstance(OutOfBlocksError("x"), TrtdslError)


def test_append_slot_and_commit_generation_tokens_register_blocks():
    kv = KVCacheManager(num_blocks=6, tokens_per_block=2)
    assert kv.allocate("a", [1, 2, 3]) == 0
    kv.commit_tokens("a", [1, 2, 3])
    assert kv.stats().cached_blocks == 1
    assert kv.append_slot("a") == []          # position 3 fits in block 1
    kv.commit_tokens("a", [4])                # generated token's K/V written
    assert kv.stats().cached_blocks == 2
    assert kv.append_slot("a") == [2]
    kv.commit_tokens("a", [5])
    kv.check_invariants()
    with pytest.raises(KVCacheError):
        kv.commit_tokens("a", [6, 7])        # would overflow block 2
    kv.free("a")
    assert kv.allocate("b", [1, 2, 3, 4, 5, 6]) == 4
    assert kv.block_table("b") == [0, 1, 3]


def test_concurrent_identical_prompts_keep_first_registration():
    kv = KVCacheManager(num_blocks=8, tokens_per_block=2)
    prompt = [1, 2, 3, 4, 5]
    assert kv.allocate("a", prompt) == 0
    assert kv.allocate("b", prompt) == 0     # a's blocks are not computed yet: no sharing
    assert kv.block_table("b") == [3, 4, 5]
    kv.commit_tokens("a", prompt)
    kv.commit_tokens("b", prompt)
    kv.check_invariants()
    assert kv.stats().cached_blocks == 2
    assert kv._block_hash[3] is None and kv._block_hash[4] is None
    kv.free("b")
    kv.free("a")
    kv.check_invariants()
    assert list(kv._evictable) == [1, 0]
    assert list(kv._free) == [6, 7, 5, 4, 3, 2]


def test_prefix_reuse_disabled():
    kv = KVCacheManager(num_blocks=8, tokens_per_block=2, enable_prefix_reuse=False)
    _alloc_commit(kv, "a", [1, 2, 3, 4, 5])
    assert kv.allocate("b", [1, 2, 3, 4, 5]) == 0
    assert kv.block_table("b") == [3, 4, 5]
    kv.free("a")
    kv.check_invariants()
    s = kv.stats()
    assert (s.cached_blocks, s.evictable_blocks, s.looked_up_tokens, s.hit_rate) == (0, 0, 0, 0.0)


def test_reset_prefix_cache():
    kv = KVCacheManager(num_blocks=4, tokens_per_block=2)
    _alloc_commit(kv, "a", [1, 2, 3, 4])
    kv.free("a")
    assert kv.reset_prefix_cache() == 2
    kv.check_invariants()
    assert list(kv._free) == [2, 3, 1, 0]
    assert kv.allocate("b", [1, 2, 3, 4, 5]) == 0


def test_misuse_raises_typed_errors():
    kv = KVCacheManager(num_blocks=4, tokens_per_block=2)
    kv.allocate("a", [1])
    with pytest.raises(KVCacheError, match="already allocated"):
        kv.allocate("a", [1])
    with pytest.raises(KVCacheError, match="empty prompt"):
        kv.allocate("b", [])
    with pytest.raises(KVCacheError, match="unknown sequence"):
        kv.free("zzz")
    with pytest.raises(KVCacheError, match="unknown sequence"):
        kv.block_table("zzz")


def test_random_operations_keep_invariants():
    rng = random.Random(0)
    kv = KVCacheManager(num_blocks=24, tokens_per_block=4)
    live: dict[int, list[int]] = {}      # seq -> all tokens (computed ones are committed)
    prefixes = [[rng.randrange(5) for _ in range(rng.randrange(1, 14))] for _ in range(4)]
    reused = 0
    for step in range(600):
        op = rng.random()
        if op < 0.35:
            prompt = rng.choice(prefixes) + [rng.randrange(5) for _ in range(rng.randrange(1, 6))]
            if kv.num_blocks_needed(prompt) <= kv.num_free_blocks:
                cached = kv.allocate(step, prompt)
                assert cached % 4 == 0 and cached < len(prompt)
                reused += cached
                kv.commit_tokens(step, prompt[cached:])
                live[step] = prompt
            else:
                with pytest.raises(OutOfBlocksError):
                    kv.allocate(step, prompt)
        elif op < 0.7 and live:
            seq = rng.choice(sorted(live))
            tok = rng.randrange(5)
            try:
                kv.append_slot(seq)
            except OutOfBlocksError:
                pass
            else:
                kv.commit_tokens(seq, [tok])
                live[seq].append(tok)
        elif live:
            seq = rng.choice(sorted(live))
            kv.free(seq)
            del live[seq]
        kv.check_invariants()
        s = kv.stats()
        assert s.used_blocks + s.free_blocks + s.evictable_blocks == 24
    assert kv.stats().reused_tokens == reused > 0
    for seq in list(live):
        kv.free(seq)
    kv.check_invariants()
    assert kv.stats().used_blocks == 0
