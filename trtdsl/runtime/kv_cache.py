"""Paged K/V cache block manager with prefix reuse (plain Python; owns no tensors).

The K/V pool itself is one tensor ``[num_layers, num_blocks, 2, num_kv_heads, tokens_per_block,
head_dim]`` (see docs/batch_interface.md). This module only decides *which* block ids each sequence
uses: the block tables that go into the step inputs.

Prefix reuse: every *full* block of computed tokens gets a chained hash, ``hash(parent_hash,
block_token_ids)``, so a block's hash identifies the whole prefix up to and including it. A new
sequence whose prompt starts with the same full blocks shares those blocks (refcount > 1) instead of
recomputing them. When the last sequence using a hashed block frees it, the block is not erased but
kept *cached and evictable*; it is evicted (least recently freed first) only when no never-used /
unhashed free block is left.
"""

from __future__ import annotations

import collections
import hashlib
import math
from array import array
from dataclasses import dataclass
from typing import Hashable, Sequence

from ..errors import ConfigError, TrtdslError

__all__ = [
    "BlockHash",
    "KVCacheError",
    "KVCacheManager",
    "KVCacheStats",
    "OutOfBlocksError",
    "blocks_for_memory",
    "blocks_for_tokens",
    "bytes_per_block",
    "hash_block_tokens",
    "kv_cache_pool_shape",
]

BlockHash = bytes
SeqId = Hashable


class KVCacheError(TrtdslError):
    """The K/V cache manager was used inconsistently (unknown / duplicate sequence, overflow...)."""


class OutOfBlocksError(KVCacheError):
    """Not enough free or evictable blocks for the request. Nothing was changed."""


# ----------------------------------------------------------------------------------------------
# Sizing helpers
# ----------------------------------------------------------------------------------------------

def blocks_for_tokens(num_tokens: int, tokens_per_block: int) -> int:
    """Number of blocks needed to hold ``num_tokens`` tokens (ceil division)."""
    if num_tokens < 0 or tokens_per_block <= 0:
        raise ConfigError(f"blocks_for_tokens: need num_tokens >= 0 and tokens_per_block > 0, "
                          f"got {num_tokens} and {tokens_per_block}")
    return -(-num_tokens // tokens_per_block)


def bytes_per_block(*, num_layers: int, num_kv_heads: int, head_dim: int, tokens_per_block: int,
                    dtype_bytes: float) -> int:
    """Bytes one block takes in the pool, over all layers, K and V."""
    for name, value in (("num_layers", num_layers), ("num_kv_heads", num_kv_heads),
                        ("head_dim", head_dim), ("tokens_per_block", tokens_per_block)):
        if value <= 0:
            raise ConfigError(f"bytes_per_block: {name} must be > 0, got {value}")
    if dtype_bytes <= 0:
        raise ConfigError(f"bytes_per_block: dtype_bytes must be > 0, got {dtype_bytes}")
    # ceil: a sub-byte dtype (e.g. 0.5 for int4) must never under-count the footprint.
    return math.ceil(num_layers * 2 * num_kv_heads * tokens_per_block * head_dim * dtype_bytes)


def blocks_for_memory(free_bytes: int, fraction: float = 0.9, *, num_layers: int, num_kv_heads: int,
                      head_dim: int, tokens_per_block: int, dtype_bytes: float) -> int:
    """How many blocks fit in ``fraction`` of ``free_bytes`` of device memory (rounded down).

    ``free_bytes`` is typically ``torch.cuda.mem_get_info()[0]`` measured after the engine's weights
    and activation workspace are allocated; ``fraction`` leaves headroom for fragmentation."""
    if not 0.0 < fraction <= 1.0:
        raise ConfigError(f"blocks_for_memory: fraction must be in (0, 1], got {fraction}")
    if free_bytes < 0:
        raise ConfigError(f"blocks_for_memory: free_bytes must be >= 0, got {free_bytes}")
    per_block = bytes_per_block(num_layers=num_layers, num_kv_heads=num_kv_heads, head_dim=head_dim,
                                tokens_per_block=tokens_per_block, dtype_bytes=dtype_bytes)
    return int(free_bytes * fraction) // per_block


def kv_cache_pool_shape(*, num_layers: int, num_blocks: int, num_kv_heads: int,
                        tokens_per_block: int, head_dim: int) -> tuple[int, ...]:
    """Shape of the K/V pool tensor of docs/batch_interface.md."""
    return (num_layers, num_blocks, 2, num_kv_heads, tokens_per_block, head_dim)


def hash_block_tokens(parent_hash: BlockHash | None, token_ids: Sequence[int]) -> BlockHash:
    """Chained hash of one full block: ``blake2b(parent_hash || int64 token ids)``.

    A cryptographic digest (not Python's ``hash``) so collisions are negligible (a collision would
    silently serve another prompt's K/V) and values are stable across processes."""
    h = hashlib.blake2b(digest_size=16)
    h.update(parent_hash if parent_hash is not None else b"root")
    h.update(array("q", token_ids).tobytes())
    return h.digest()


# ----------------------------------------------------------------------------------------------
# Manager
# ----------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class KVCacheStats:
    """A snapshot of the pool.

    ``used_blocks + free_blocks + evictable_blocks == num_blocks``; ``cached_blocks`` counts every
    block registered in the prefix hash table (in use or evictable)."""

    num_blocks: int
    tokens_per_block: int
    used_blocks: int
    free_blocks: int
    evictable_blocks: int
    cached_blocks: int
    looked_up_tokens: int
    reused_tokens: int
    evictions: int

    @property
    def available_blocks(self) -> int:
        """Blocks an allocation may take: free plus evictable."""
        return self.free_blocks + self.evictable_blocks

    @property
    def hit_rate(self) -> float:
        """Prefix reuse hit rate: reused / looked-up prompt tokens (0.0 before any lookup)."""
        return self.reused_tokens / self.looked_up_tokens if self.looked_up_tokens else 0.0


class _Sequence:
    """Per-sequence bookkeeping. ``token_ids`` are the tokens whose K/V is in the cache (computed);
    ``block_hashes[i]`` is the chained hash of full block ``i`` (only with prefix reuse)."""

    __slots__ = ("blocks", "token_ids", "block_hashes")

    def __init__(self, blocks: list[int], token_ids: list[int], block_hashes: list[BlockHash]):
        self.blocks = blocks
        self.token_ids = token_ids
        self.block_hashes = block_hashes


class KVCacheManager:
    """Assigns pool blocks to sequences; reference-counted, with hashed prefix reuse.

    Invariants (checked by :meth:`check_invariants`):

    * every block id in ``range(num_blocks)`` is in exactly one state: *free* (refcount 0, no hash,
      in the free queue), *evictable* (refcount 0, hashed, in the LRU), or *in use* (refcount > 0);
    * a block's refcount equals the number of live sequences whose block table holds it;
    * the hash table maps ``h -> b`` iff block ``b`` carries hash ``h``; every hashed block is full
      of computed tokens, whose chained hash is ``h``, so any sequence can read it;
    * a sequence's table covers its computed tokens: ``len(token_ids) <= len(blocks) * tpb``.

    Determinism: fresh blocks come from the free queue in FIFO order (initially ``0, 1, 2, ...``;
    freed blocks join the back). Only when it is empty is an evictable block taken, least recently
    freed first. A sequence's blocks are freed last block first, so the tail of a prefix is evicted
    before its head (a child block is useless without its parent).

    Usage: ``allocate(seq, prompt)`` returns the number of prompt tokens already cached (the model
    computes ``prompt[n:]``); ``ensure_capacity`` grows the table before writing more tokens;
    ``commit_tokens`` must be called *after* the model step that wrote those tokens' K/V, because
    only then may other sequences share the blocks they fill; ``free`` releases the sequence.
    """

    def __init__(self, num_blocks: int, tokens_per_block: int, enable_prefix_reuse: bool = True):
        if num_blocks <= 0:
            raise ConfigError(f"KVCacheManager: num_blocks must be > 0, got {num_blocks}")
        if tokens_per_block <= 0:
            raise ConfigError(f"KVCacheManager: tokens_per_block must be > 0, "
                              f"got {tokens_per_block}")
        self.num_blocks = num_blocks
        self.tokens_per_block = tokens_per_block
        self.enable_prefix_reuse = enable_prefix_reuse
        self._refcount = [0] * num_blocks
        self._block_hash: list[BlockHash | None] = [None] * num_blocks
        self._free: collections.deque[int] = collections.deque(range(num_blocks))
        # Ordered by the time the refcount dropped to 0: first entry = least recently freed.
        self._evictable: collections.OrderedDict[int, None] = collections.OrderedDict()
        self._hash_to_block: dict[BlockHash, int] = {}
        self._seqs: dict[SeqId, _Sequence] = {}
        self._looked_up_tokens = 0
        self._reused_tokens = 0
        self._evictions = 0

    # -- queries -------------------------------------------------------------------------------

    @property
    def num_free_blocks(self) -> int:
        """Blocks available to allocations: free plus evictable."""
        return len(self._free) + len(self._evictable)

    def __contains__(self, seq_id: SeqId) -> bool:
        return seq_id in self._seqs

    def block_table(self, seq_id: SeqId) -> list[int]:
        """A copy of the sequence's block ids, in token order."""
        return list(self._seq(seq_id).blocks)

    def num_computed_tokens(self, seq_id: SeqId) -> int:
        """Tokens of the sequence whose K/V is in the cache (cached prefix + committed)."""
        return len(self._seq(seq_id).token_ids)

    def capacity(self, seq_id: SeqId) -> int:
        """Tokens the sequence's current blocks can hold."""
        return len(self._seq(seq_id).blocks) * self.tokens_per_block

    def can_allocate(self, num_tokens: int) -> bool:
        """Whether ``num_tokens`` fresh tokens fit, ignoring prefix reuse (conservative)."""
        return blocks_for_tokens(num_tokens, self.tokens_per_block) <= self.num_free_blocks

    def match_prefix_tokens(self, token_ids: Sequence[int]) -> int:
        """How many tokens ``allocate(token_ids)`` would reuse right now (a pure peek)."""
        return len(self._match_prefix(token_ids)) * self.tokens_per_block

    def num_blocks_needed(self, token_ids: Sequence[int], total_tokens: int | None = None) -> int:
        """By how much ``num_free_blocks`` would drop if ``allocate(token_ids)`` were followed by
        ``ensure_capacity(total_tokens)`` (default ``len(token_ids)``): new blocks plus reused
        blocks that are currently evictable (reusing them takes them out of the evictable pool)."""
        total = len(token_ids) if total_tokens is None else max(total_tokens, len(token_ids))
        hits = self._match_prefix(token_ids)
        evictable_hits = sum(1 for b, _ in hits if self._refcount[b] == 0)
        return blocks_for_tokens(total, self.tokens_per_block) - len(hits) + evictable_hits

    def stats(self) -> KVCacheStats:
        used = sum(1 for r in self._refcount if r > 0)
        return KVCacheStats(
            num_blocks=self.num_blocks, tokens_per_block=self.tokens_per_block, used_blocks=used,
            free_blocks=len(self._free), evictable_blocks=len(self._evictable),
            cached_blocks=len(self._hash_to_block), looked_up_tokens=self._looked_up_tokens,
            reused_tokens=self._reused_tokens, evictions=self._evictions)

    # -- mutations -----------------------------------------------------------------------------

    def allocate(self, seq_id: SeqId, prompt_token_ids: Sequence[int]) -> int:
        """Register a sequence and give it blocks for its whole prompt.

        Reuses the longest chain of cached full blocks that prefixes the prompt, but never the
        whole prompt: the last prompt token is always left to compute, because the model must run
        on at least one token to produce the logits of the next one. Returns the number of reused
        (already computed) tokens, a multiple of ``tokens_per_block``. Atomic: raises
        :class:`OutOfBlocksError` and changes nothing when the blocks do not fit."""
        if seq_id in self._seqs:
            raise KVCacheError(f"KVCacheManager.allocate: sequence {seq_id!r} is already allocated")
        if len(prompt_token_ids) == 0:
            raise KVCacheError(f"KVCacheManager.allocate: sequence {seq_id!r} has an empty prompt")
        hits = self._match_prefix(prompt_token_ids)
        needed = self.num_blocks_needed(prompt_token_ids)
        if needed > self.num_free_blocks:
            raise OutOfBlocksError(
                f"KVCacheManager.allocate: sequence {seq_id!r} needs {needed} blocks for "
                f"{len(prompt_token_ids)} prompt tokens, only {self.num_free_blocks} available")
        # Take references on the hits *before* popping new blocks, so eviction cannot steal them.
        for block, _ in hits:
            if self._refcount[block] == 0:
                del self._evictable[block]
            self._refcount[block] += 1
        num_cached = len(hits) * self.tokens_per_block
        seq = _Sequence(blocks=[b for b, _ in hits], token_ids=list(prompt_token_ids[:num_cached]),
                        block_hashes=[h for _, h in hits])
        self._seqs[seq_id] = seq
        self._grow(seq, len(prompt_token_ids))
        if self.enable_prefix_reuse:
            self._looked_up_tokens += len(prompt_token_ids)
            self._reused_tokens += num_cached
        return num_cached

    def ensure_capacity(self, seq_id: SeqId, total_tokens: int) -> list[int]:
        """Grow the sequence's table so it holds ``total_tokens`` tokens; returns the new block ids
        (empty when it already fits). Atomic: raises :class:`OutOfBlocksError` changing nothing."""
        seq = self._seq(seq_id)
        need = blocks_for_tokens(total_tokens, self.tokens_per_block) - len(seq.blocks)
        if need > self.num_free_blocks:
            raise OutOfBlocksError(
                f"KVCacheManager.ensure_capacity: sequence {seq_id!r} needs {need} more blocks for "
                f"{total_tokens} tokens, only {self.num_free_blocks} available")
        return self._grow(seq, total_tokens)

    def append_slot(self, seq_id: SeqId) -> list[int]:
        """Make room for one more token after the computed ones (a generation step)."""
        return self.ensure_capacity(seq_id, self.num_computed_tokens(seq_id) + 1)

    def commit_tokens(self, seq_id: SeqId, token_ids: Sequence[int]) -> None:
        """Record that the K/V of ``token_ids`` (following the computed tokens) is now written, and
        register the blocks they complete in the prefix hash table.

        If an identical block is already registered (two sequences computed the same prefix at the
        same time), the first one stays the cached copy and this block stays private."""
        seq = self._seq(seq_id)
        end = len(seq.token_ids) + len(token_ids)
        if end > len(seq.blocks) * self.tokens_per_block:
            raise KVCacheError(
                f"KVCacheManager.commit_tokens: sequence {seq_id!r} would hold {end} tokens but "
                f"its {len(seq.blocks)} blocks hold {len(seq.blocks) * self.tokens_per_block}; "
                f"call ensure_capacity first")
        seq.token_ids.extend(token_ids)
        if not self.enable_prefix_reuse:
            return
        tpb = self.tokens_per_block
        for i in range(len(seq.block_hashes), len(seq.token_ids) // tpb):
            parent = seq.block_hashes[-1] if seq.block_hashes else None
            h = hash_block_tokens(parent, seq.token_ids[i * tpb:(i + 1) * tpb])
            seq.block_hashes.append(h)
            block = seq.blocks[i]
            if h not in self._hash_to_block and self._block_hash[block] is None:
                self._hash_to_block[h] = block
                self._block_hash[block] = h

    def free(self, seq_id: SeqId) -> None:
        """Release the sequence's blocks. Hashed blocks whose refcount drops to 0 become evictable
        (kept for reuse), others go back to the free queue. Tail blocks are released first."""
        seq = self._seqs.pop(seq_id, None)
        if seq is None:
            raise KVCacheError(f"KVCacheManager.free: unknown sequence {seq_id!r}")
        for block in reversed(seq.blocks):
            self._refcount[block] -= 1
            if self._refcount[block] == 0:
                if self._block_hash[block] is not None:
                    self._evictable[block] = None
                else:
                    self._free.append(block)

    def reset_prefix_cache(self) -> int:
        """Evict every evictable block (e.g. after weights changed); returns how many."""
        n = len(self._evictable)
        while self._evictable:
            self._free.append(self._evict_one())
        return n

    # -- internals -----------------------------------------------------------------------------

    def _seq(self, seq_id: SeqId) -> _Sequence:
        try:
            return self._seqs[seq_id]
        except KeyError:
            raise KVCacheError(f"KVCacheManager: unknown sequence {seq_id!r}") from None

    def _match_prefix(self, token_ids: Sequence[int]) -> list[tuple[int, BlockHash]]:
        """Cached ``(block, hash)`` chain prefixing ``token_ids``, at most ``(len - 1) // tpb``
        blocks so that at least one token is left to compute."""
        if not self.enable_prefix_reuse:
            return []
        tpb = self.tokens_per_block
        hits: list[tuple[int, BlockHash]] = []
        parent: BlockHash | None = None
        for i in range((len(token_ids) - 1) // tpb):
            parent = hash_block_tokens(parent, token_ids[i * tpb:(i + 1) * tpb])
            block = self._hash_to_block.get(parent)
            if block is None:
                break
            hits.append((block, parent))
        return hits

    def _grow(self, seq: _Sequence, total_tokens: int) -> list[int]:
        """Append blocks until ``total_tokens`` fit; the caller has checked availability."""
        new = []
        for _ in range(blocks_for_tokens(total_tokens, self.tokens_per_block) - len(seq.blocks)):
            block = self._free.popleft() if self._free else self._evict_one()
            self._refcount[block] = 1
            seq.blocks.append(block)
            new.append(block)
        return new

    def _evict_one(self) -> int:
        """Drop the least recently freed evictable block from the hash table; return its id."""
        block, _ = self._evictable.popitem(last=False)
        h = self._block_hash[block]
        assert h is not None
        del self._hash_to_block[h]
        self._block_hash[block] = None
        self._evictions += 1
        return block

    def check_invariants(self) -> None:
        """Raise ``AssertionError`` if any invariant of the class docstring is broken."""
        free, evictable = list(self._free), list(self._evictable)
        assert len(set(free)) == len(free), f"duplicate free blocks {free}"
        free_set = set(free)
        assert not free_set & set(evictable), "a block is both free and evictable"
        holders = [0] * self.num_blocks
        for seq_id, seq in self._seqs.items():
            assert len(set(seq.blocks)) == len(seq.blocks), f"{seq_id!r} holds a block twice"
            for b in seq.blocks:
                holders[b] += 1
            assert len(seq.token_ids) <= len(seq.blocks) * self.tokens_per_block, seq_id
            if self.enable_prefix_reuse:
                assert len(seq.block_hashes) == len(seq.token_ids) // self.tokens_per_block, seq_id
            for b, h in zip(seq.blocks, seq.block_hashes):
                assert self._block_hash[b] in (None, h), f"{seq_id!r}: block {b} has another hash"
        for b in range(self.num_blocks):
            assert self._refcount[b] == holders[b], f"block {b}: refcount {self._refcount[b]} " \
                                                    f"but {holders[b]} holders"
            in_free, in_lru = b in free_set, b in self._evictable
            if self._refcount[b] > 0:
                assert not in_free and not in_lru, f"in-use block {b} is free or evictable"
            elif self._block_hash[b] is None:
                assert in_free, f"unhashed block {b} with refcount 0 is not in the free queue"
            else:
                assert in_lru, f"hashed block {b} with refcount 0 is not evictable"
            block_hash = self._block_hash[b]
            if block_hash is not None:
                assert self._hash_to_block.get(block_hash) == b, f"block {b}'s hash maps elsewhere"
        for table_hash, b in self._hash_to_block.items():
            assert self._block_hash[b] == table_hash, f"hash table entry for block {b} is stale"
