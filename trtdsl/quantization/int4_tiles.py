"""The "tile-16" layout of int4 weight-only GEMM weights: the canonical packed codes, scales and zeros
of :mod:`trtdsl.quantization.numerics` shuffled once so that the decode GEMV
(``plugins_cuda/include/trtdsl/wo_gemv_packed.cuh``) reads each warp's weights, scales and zeros as
contiguous lines. A pure permutation: :func:`unpack_int4_tiles` gives back the canonical tensors bit for
bit, so the reference numerics are the canonical ones.

Format, for ``n`` output rows (padded with zero codes and scales to ``tiles = ceil(n / 16)`` tiles of 16
rows), ``k`` inputs (``k % 128 == 0``) and ``G`` groups:

* ``qpacked`` int8 ``[tiles, k / 128, 1024]``: per tile and 128-wide k block, two halves of 512 bytes
  (rows 0..7 and 8..15 of the tile), each 32 lanes of 16 bytes; lane ``4 g + t`` of half ``h`` holds row
  ``16 tile + 8 h + g``, its 32-bit word ``w`` being that row's canonical word at byte
  ``64 kb + 16 w + 4 t`` (codes of ``k = 128 kb + 32 w + 8 t + 0..7``, nibble order unchanged).
* ``sz`` float32 ``[tiles, G, 8, 4]`` = ``(s[r], s[r + 8], z[r], z[r + 8])`` with ``r = 16 tile + g``
  (zeros present) or ``[tiles, G, 8, 2]`` = ``(s[r], s[r + 8])`` (symmetric); float16 with ``half=True``,
  for scales and zeros that are float16 values already (``QuantConfig.half_scales``: the conversion is
  exact, so the round trip still is).
* ``swiglu=True`` interleaves a ``[2 I, k]`` gate/up weight (gate rows first) before tiling: tile ``j``
  holds gate rows ``8 j .. 8 j + 7`` then up rows ``8 j .. 8 j + 7``, so a block of the GEMV owns both
  factors of 8 SwiGLU outputs (``I % 8 == 0``).

>>> from trtdsl.quantization.numerics import pack_int4, quantize_weight_asym
>>> codes, s, z = quantize_weight_asym(torch.randn(24, 256), bits=4, group_size=64)
>>> q = pack_int4(codes)
>>> qp, sz = pack_int4_tiles(q, s, z, group_size=64)
>>> tuple(qp.shape), tuple(sz.shape)
((2, 2, 1024), (2, 4, 8, 4))
>>> q2, s2, z2 = unpack_int4_tiles(qp, sz, n=24)
>>> bool(torch.equal(q2, q) and torch.equal(s2, s) and torch.equal(z2, z))
True
"""

from __future__ import annotations

import torch

from ..errors import ConfigError

__all__ = ["TILE_ROWS", "K_BLOCK", "pack_int4_tiles", "unpack_int4_tiles", "int4_tiles_supported", "num_tiles",
           "packed_shapes", "is_half_exact"]

TILE_ROWS = 16  # weight rows per tile: the mma's M
K_BLOCK = 128  # inputs per k block: 32 lanes x 32 codes / 8 rows


def int4_tiles_supported(in_features: int, group_size: int) -> bool:
    """Whether the tile-16 layout (and its GEMV) takes this shape: ``k % 128 == 0`` and group 64, a
    multiple of 128 dividing ``k``, or per channel (0)."""
    if in_features <= 0 or in_features % K_BLOCK:
        return False
    return group_size in (0, 64) or (group_size % K_BLOCK == 0 and in_features % group_size == 0)


def num_tiles(rows: int) -> int:
    """Tiles of a pack of ``rows`` weight rows (the last one padded)."""
    return -(-rows // TILE_ROWS)


def packed_shapes(rows: int, k: int, groups: int) -> tuple[tuple[int, int, int], tuple[int, int, int]]:
    """Shapes of a pack of ``rows`` weight rows, ``k`` inputs and ``groups`` groups: ``qpacked``'s, and
    ``sz``'s without its last dim (4 with zeros, 2 without)."""
    tiles = num_tiles(rows)
    return (tiles, k // K_BLOCK, 1024), (tiles, groups, 8)


def is_half_exact(*tensors: torch.Tensor | None) -> bool:
    """Whether every given float32 tensor holds float16 values only (a lossless float16 copy)."""
    return all(t is None or torch.equal(t.to(torch.float16).float(), t) for t in tensors)


def _swiglu_rows(n: int) -> torch.Tensor:
    """Row order interleaving gate (rows ``< n / 2``) and up rows in blocks of 8."""
    inter = n // 2
    j = torch.arange(inter // 8).view(-1, 1, 1)
    return (j * 8 + torch.arange(8).view(1, 1, 8) + torch.tensor([0, inter]).view(1, 2, 1)).flatten()


def pack_int4_tiles(qweight: torch.Tensor, scales: torch.Tensor, zeros: torch.Tensor | None, group_size: int,
                    swiglu: bool = False, half: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """Canonical int4 ``qweight`` (int8 ``[n, k / 2]``), ``scales`` / ``zeros`` (float32 ``[n, G]``) ->
    ``(qpacked, sz)`` of the tile-16 layout (module docstring); ``half``: ``sz`` in float16, for scales and
    zeros that are float16 values (else a :class:`ConfigError`). Runs on the tensors' device."""
    if qweight.dim() != 2 or qweight.dtype != torch.int8:
        raise ConfigError(f"pack_int4_tiles: qweight must be int8 [n, k / 2], got {qweight.dtype} "
                          f"{tuple(qweight.shape)}")
    n, k = qweight.shape[0], 2 * qweight.shape[1]
    if not int4_tiles_supported(k, group_size):
        raise ConfigError(f"pack_int4_tiles: needs in_features % {K_BLOCK} == 0 and group 64, a multiple of "
                          f"{K_BLOCK} dividing in_features, or 0; got in_features={k}, group_size={group_size}")
    groups = scales.shape[1] if scales.dim() == 2 else -1
    for name, t in (("scales", scales), ("zeros", zeros)):
        if t is not None and (t.dtype != torch.float32 or tuple(t.shape) != (n, groups)
                              or groups != (1 if group_size == 0 else k // group_size)):
            raise ConfigError(f"pack_int4_tiles: {name} must be float32 [{n}, {k // group_size if group_size else 1}]"
                              f", got {t.dtype} {tuple(t.shape)}")
    if half and not is_half_exact(scales, zeros):
        raise ConfigError("pack_int4_tiles: half=True needs scales and zeros that are float16 values "
                          "(QuantConfig.half_scales); these would be rounded")
    if swiglu:
        if n % 16:
            raise ConfigError(f"pack_int4_tiles: swiglu needs a [2 I, k] gate/up weight with I % 8 == 0, got n={n}")
        order = _swiglu_rows(n).to(qweight.device)
        qweight, scales = qweight[order], scales[order]
        zeros = None if zeros is None else zeros[order]
    tiles = num_tiles(n)
    pad = tiles * TILE_ROWS - n

    def padded(t: torch.Tensor) -> torch.Tensor:
        return torch.cat([t, t.new_zeros(pad, t.shape[1])]) if pad else t

    kb = k // K_BLOCK
    words = padded(qweight).contiguous().view(torch.int32).view(tiles, 2, 8, kb, 4, 4)  # (T, h, g, kb, c, j)
    qpacked = words.permute(0, 3, 1, 2, 5, 4).contiguous().view(torch.int8).view(tiles, kb, 1024)
    parts = [padded(scales)] + ([] if zeros is None else [padded(zeros)])
    sz = torch.cat([p.view(tiles, 2, 8, groups).permute(0, 3, 2, 1) for p in parts], dim=-1).contiguous()
    return qpacked, sz.to(torch.float16) if half else sz


def unpack_int4_tiles(qpacked: torch.Tensor, sz: torch.Tensor, n: int,
                      swiglu: bool = False) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """Inverse of :func:`pack_int4_tiles`: ``(qweight [n, k / 2], scales [n, G], zeros [n, G] or None)``,
    scales and zeros float32 (exact from a float16 ``sz`` too)."""
    if qpacked.dim() != 3 or qpacked.shape[2] != 1024 or sz.dim() != 4 or sz.shape[3] not in (2, 4):
        raise ConfigError(f"unpack_int4_tiles: expected qpacked [tiles, k / 128, 1024] and sz [tiles, G, 8, 2|4], "
                          f"got {tuple(qpacked.shape)} and {tuple(sz.shape)}")
    tiles, kb = qpacked.shape[0], qpacked.shape[1]
    if not 0 < n <= tiles * TILE_ROWS or n <= (tiles - 1) * TILE_ROWS:
        raise ConfigError(f"unpack_int4_tiles: n={n} does not match {tiles} tiles of {TILE_ROWS} rows")
    words = qpacked.contiguous().view(torch.int32).view(tiles, kb, 2, 8, 4, 4)  # (T, kb, h, g, j, c)
    qweight = words.permute(0, 2, 3, 1, 5, 4).contiguous().view(tiles * TILE_ROWS, kb * 16).view(torch.int8)[:n]
    groups = sz.shape[1]

    def rows(part: torch.Tensor) -> torch.Tensor:  # [T, G, 8, 2] -> [n, G]
        return part.permute(0, 3, 2, 1).reshape(tiles * TILE_ROWS, groups)[:n]

    scales = rows(sz[..., 0:2].float())
    zeros = rows(sz[..., 2:4].float()) if sz.shape[3] == 4 else None
    if swiglu:
        inverse = torch.argsort(_swiglu_rows(n).to(qweight.device))
        qweight, scales = qweight[inverse], scales[inverse]
        zeros = None if zeros is None else zeros[inverse]
    return qweight.contiguous(), scales.contiguous(), None if zeros is None else zeros.contiguous()
