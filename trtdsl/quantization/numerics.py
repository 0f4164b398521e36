"""The quantization arithmetic, in plain torch: int4 packing, round-to-nearest int8/int4/fp8 weight
quantization, the AWQ scale and clip searches and SmoothQuant's smoothing factors.

Everything here works on float32 CPU/GPU tensors and is independent of the IR, so the graph pass and
the plugin references share one definition of every format:

* int8 / int4 weights are symmetric (no zero point): ``w ~= q * scale`` with ``q`` in ``[-127, 127]``
  (int8) or ``[-7, 7]`` (int4); the extreme code -8 is unused so ``+amax`` and ``-amax`` are both exact.
* Scales are float32 ``[out, num_groups]``; ``group_size == 0`` means one group spanning all input
  channels (per-channel). The last group may be shorter when ``in_features % group_size != 0``.
* int4 codes are packed two per byte along the input axis: byte ``j`` of a row holds column ``2j`` in
  its low nibble and ``2j + 1`` in its high nibble (two's complement), stored as ``torch.int8``.
"""

from __future__ import annotations

import math

import torch

from ..errors import ConfigError

__all__ = ["FP8_MAX", "INT8_MAX", "INT4_MAX", "pack_int4", "unpack_int4", "num_groups",
           "expand_group_scales", "quantize_weight", "dequantize_weight", "fake_quantize_weight",
           "quantize_fp8", "awq_search_scales", "awq_search_clip", "smoothquant_scales",
           "quantize_per_token_int8", "quantize_weight_asym", "quantize_per_token_fp8",
           "quantize_per_token_group_fp8", "tie_channels", "gqa_tie", "round_to_grid",
           "lowrank_block_chunks", "compact_block_basis", "expand_block_basis", "half_grid"]

FP8_MAX = 448.0  # largest finite e4m3 value
INT8_MAX = 127
INT4_MAX = 7
_TINY = 1e-8  # keeps all-zero rows/groups from producing a zero scale (and NaN codes)


def pack_int4(q: torch.Tensor) -> torch.Tensor:
    """Pack int4 codes ``[..., k]`` (values in [-8, 7], any int dtype, ``k`` even) into int8 bytes
    ``[..., k // 2]``.

    >>> pack_int4(torch.tensor([[1, -2]])).tolist()   # low nibble 1, high nibble 0xE
    [[-31]]
    """
    if q.shape[-1] % 2:
        raise ConfigError(f"pack_int4: the last dim ({q.shape[-1]}) must be even to pack two codes "
                          "per byte")
    q = q.to(torch.int16)
    if q.numel() and (int(q.min()) < -8 or int(q.max()) > 7):
        raise ConfigError(f"pack_int4: codes must lie in [-8, 7], got [{int(q.min())}, {int(q.max())}]")
    low, high = q[..., 0::2] & 0xF, q[..., 1::2] & 0xF
    byte = low | (high << 4)  # 0..255
    return torch.where(byte > 127, byte - 256, byte).to(torch.int8)


def unpack_int4(packed: torch.Tensor) -> torch.Tensor:
    """Inverse of :func:`pack_int4`: int8 bytes ``[..., k // 2]`` -> int8 codes ``[..., k]``."""
    b = packed.to(torch.int8)
    low = (b << 4) >> 4  # arithmetic shifts on int8 sign-extend the nibble
    high = b >> 4
    return torch.stack([low, high], dim=-1).flatten(-2)


def num_groups(in_features: int, group_size: int) -> int:
    return 1 if group_size == 0 else math.ceil(in_features / group_size)


def expand_group_scales(scales: torch.Tensor, in_features: int, group_size: int) -> torch.Tensor:
    """``[out, num_groups]`` scales -> ``[out, in_features]`` (one scale per weight element)."""
    if group_size == 0:
        return scales[:, :1].expand(scales.shape[0], in_features)
    return scales.repeat_interleave(group_size, dim=1)[:, :in_features]


def _group_amax(w: torch.Tensor, group_size: int) -> torch.Tensor:
    """Per-(row, group) max |w| of ``w [out, in]`` -> ``[out, num_groups]``."""
    if group_size == 0:
        return w.abs().amax(dim=1, keepdim=True)
    n, k = w.shape
    pad = num_groups(k, group_size) * group_size - k
    wp = torch.nn.functional.pad(w.abs(), (0, pad))  # zeros never raise a max of |w|
    return wp.view(n, -1, group_size).amax(dim=2)


def quantize_weight(w: torch.Tensor, bits: int, group_size: int,
                    clip: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Symmetric round-to-nearest quantization of ``w [out, in]``.

    Returns ``(codes, scales)``: int8 codes ``[out, in]`` (int4 codes are not packed yet) and float32
    scales ``[out, num_groups]``. ``clip`` (``[out, num_groups]`` factors in (0, 1]) shrinks each
    group's range before rounding (AWQ's clip search)."""
    qmax = {8: INT8_MAX, 4: INT4_MAX}[bits]
    w = w.float()
    amax = _group_amax(w, group_size)
    if clip is not None:
        amax = amax * clip
    scales = amax.clamp_min(_TINY) / qmax
    full = expand_group_scales(scales, w.shape[1], group_size)
    codes = torch.round(w / full).clamp(-qmax, qmax).to(torch.int8)
    return codes, scales


def _group_min_max(w: torch.Tensor, group_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-(row, group) min and max of ``w [out, in]`` -> two ``[out, num_groups]``."""
    if group_size == 0:
        return w.amin(dim=1, keepdim=True), w.amax(dim=1, keepdim=True)
    n, k = w.shape
    pad = num_groups(k, group_size) * group_size - k
    # Padding repeats the row's last value, which changes neither the min nor the max of its group.
    wp = torch.nn.functional.pad(w, (0, pad), mode="replicate") if pad else w
    wg = wp.view(n, -1, group_size)
    return wg.amin(dim=2), wg.amax(dim=2)


def quantize_weight_asym(w: torch.Tensor, bits: int, group_size: int, clip: torch.Tensor | None = None
                         ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Asymmetric (zero-point) round-to-nearest quantization of ``w [out, in]``: each group's
    ``[min, max]`` maps onto all ``2**bits`` codes, stored signed (``[-8, 7]`` / ``[-128, 127]``).

    Returns ``(codes, scales, zeros)`` with ``w ~= codes * scale + zero`` (scales and zeros float32
    ``[out, num_groups]``; the additive float zero is TensorRT-LLM's groupwise format). ``clip``
    shrinks each group's range about its centre before rounding (AWQ's clip search): ``[out,
    num_groups]`` factors for both ends, or ``[2, out, num_groups]`` for the lower and the upper end
    separately (``mid -/+ half * factor``). A weight already on such a grid (GGUF Q4_0/Q4_1 blocks
    of 32, with ``group_size=32``) is reproduced exactly."""
    levels = (1 << bits) - 1
    offset = 1 << (bits - 1)  # unsigned code u is stored as u - offset
    w = w.float()
    lo, hi = _group_min_max(w, group_size)
    if clip is not None:
        low, high = (clip[0], clip[1]) if clip.ndim == 3 else (clip, clip)
        mid, half = (hi + lo) / 2, (hi - lo) / 2
        lo, hi = mid - half * low, mid + half * high
    scales = ((hi - lo) / levels).clamp_min(_TINY)
    full_s = expand_group_scales(scales, w.shape[1], group_size)
    full_lo = expand_group_scales(lo, w.shape[1], group_size)
    unsigned = torch.round((w - full_lo) / full_s).clamp(0, levels)
    codes = (unsigned - offset).to(torch.int8)
    zeros = lo + offset * scales
    return codes, scales, zeros


def round_to_grid(w: torch.Tensor, bits: int, group_size: int, scales: torch.Tensor,
                  zeros: torch.Tensor | None = None) -> torch.Tensor:
    """Round-to-nearest int8 codes of ``w [out, in]`` on a given grid (``[out, num_groups]``
    scales and, for the asymmetric format, zeros), clamped to the format's code range."""
    full_s = expand_group_scales(scales.float(), w.shape[1], group_size)
    if zeros is None:
        qmax = {8: INT8_MAX, 4: INT4_MAX}[bits]
        return torch.round(w.float() / full_s).clamp(-qmax, qmax).to(torch.int8)
    full_z = expand_group_scales(zeros.float(), w.shape[1], group_size)
    lo, hi = -(1 << (bits - 1)), (1 << (bits - 1)) - 1
    return torch.round((w.float() - full_z) / full_s).clamp(lo, hi).to(torch.int8)


def dequantize_weight(codes: torch.Tensor, scales: torch.Tensor, group_size: int,
                      zeros: torch.Tensor | None = None) -> torch.Tensor:
    """float32 ``[out, in]`` from int8 codes ``[out, in]``, ``[out, num_groups]`` scales and, for the
    asymmetric format, ``[out, num_groups]`` additive zeros."""
    w = codes.float() * expand_group_scales(scales.float(), codes.shape[1], group_size)
    if zeros is not None:
        w = w + expand_group_scales(zeros.float(), codes.shape[1], group_size)
    return w


def fake_quantize_weight(w: torch.Tensor, bits: int, group_size: int,
                         clip: torch.Tensor | None = None, zero_point: bool = False) -> torch.Tensor:
    """``dequantize(quantize(w))``: the float weights the quantized GEMM effectively uses."""
    if zero_point:
        codes, scales, zeros = quantize_weight_asym(w, bits, group_size, clip)
        return dequantize_weight(codes, scales, group_size, zeros)
    codes, scales = quantize_weight(w, bits, group_size, clip)
    return dequantize_weight(codes, scales, group_size)


def quantize_fp8(x: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """e4m3 codes of ``x / scale`` (saturating at +-448, as TensorRT's FP8 quantize does)."""
    return (x.float() / scale.float()).clamp(-FP8_MAX, FP8_MAX).to(torch.float8_e4m3fn)


def quantize_per_token_fp8(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Dynamic per-row fp8 quantization of ``x [..., k]``: ``(e4m3 codes, scales [..., 1])``, each
    row's ``max|x|`` mapped to 448: one block of the whole row."""
    return quantize_per_token_group_fp8(x, x.shape[-1])


def quantize_per_token_group_fp8(x: torch.Tensor, group: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Dynamic fp8 quantization of ``x [..., k]`` per token and per ``group`` consecutive channels
    (DeepSeek-V3's 1 x 128 activation blocks; ``k % group == 0``): ``(e4m3 codes [..., k], scales
    [..., k / group])``, each block's ``max|x|`` mapped to 448. A block of small channels keeps its
    own range instead of the row's largest channel's, which pushes it toward e4m3's subnormals."""
    k = x.shape[-1]
    blocks = x.float().reshape(*x.shape[:-1], k // group, group)
    scales = blocks.abs().amax(dim=-1, keepdim=True).clamp_min(_TINY) / FP8_MAX
    return quantize_fp8(blocks, scales).reshape(x.shape), scales.squeeze(-1)


def quantize_per_token_int8(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Dynamic per-row int8 quantization of ``x [..., k]``: ``(codes, scales [..., 1])``."""
    xf = x.float()
    scales = xf.abs().amax(dim=-1, keepdim=True).clamp_min(_TINY) / INT8_MAX
    return torch.round(xf / scales).clamp(-INT8_MAX, INT8_MAX).to(torch.int8), scales


def tie_channels(s: torch.Tensor, tie: torch.Tensor | None) -> torch.Tensor:
    """``s [k]`` with every channel replaced by the geometric mean over the channels sharing its
    class in ``tie`` (``[k]`` class ids, ``None``: untouched). A geometric mean keeps ``s = 1``
    (plain rounding) at 1 and commutes with the powers the AWQ candidates take of a statistic."""
    if tie is None:
        return s
    logs = s.double().log()
    tie = tie.to(s.device)
    classes = int(tie.max()) + 1
    total = torch.zeros(classes, dtype=torch.float64, device=s.device).index_add_(0, tie, logs)
    count = torch.zeros(classes, dtype=torch.float64, device=s.device).index_add_(0, tie, torch.ones_like(logs))
    return (total / count)[tie].exp().to(s.dtype)


def gqa_tie(num_heads: int, num_kv_heads: int, head_dim: int) -> torch.Tensor:
    """Class ids ``[num_heads * head_dim]`` of attention-output channels tying channel ``d`` of every
    query head that shares a K/V head (query head ``h`` reads K/V head ``h // (heads / kv_heads)``).
    A factor tied so is one factor per V channel: :mod:`trtdsl.passes.scale_fold` folds it exactly
    into the V rows of the qkv GEMM."""
    group = num_heads // num_kv_heads
    kv = torch.arange(num_heads).div(group, rounding_mode="floor")
    return (kv[:, None] * head_dim + torch.arange(head_dim)[None, :]).reshape(-1)


def awq_search_scales(x: torch.Tensor, weights: list[torch.Tensor], group_size: int,
                      grid: int = 20, zero_point: bool = False, max_rows: int = 256,
                      x_abs_mean: torch.Tensor | None = None, tie: torch.Tensor | None = None
                      ) -> tuple[torch.Tensor, float, float]:
    """AWQ's activation-aware per-input-channel scale search.

    ``x [N, k]`` are calibration activations of the GEMMs ``weights`` (each ``[n_i, k]``, all reading
    ``x``). Candidates, for ``alpha`` in ``{0, 1/grid, ..., 1}``: ``s = mean|x_j| ** alpha`` (AWQ) and
    ``s = mean|x_j| ** alpha / mean|W_j| ** (1 - alpha)`` (AutoAWQ's "duo" scaling), each normalized so
    ``sqrt(max(s) * min(s)) == 1``. Each is scored by the output error of the int4 GEMMs,
    ``||(x / s) Q(W s)^T - x W^T||^2``. ``alpha = 0`` of the first family is plain round-to-nearest,
    so the result is never worse than RTN on ``x``; the first ``max_rows`` rows score (the search
    costs ``2 * (grid + 1)`` GEMMs of them). ``x_abs_mean`` gives ``mean|x_j|`` when ``x`` are not
    activation rows themselves (e.g. rows with the same ``X^T X``, which score the error exactly).
    ``tie`` (class ids ``[k]``, e.g. :func:`gqa_tie`) searches only factors equal within each class:
    every candidate is tied by :func:`tie_channels` before it is scored. Returns ``(s [k], best error, RTN error)``."""
    x = x.float()[:max_rows]
    w = torch.cat([wi.float() for wi in weights], dim=0)
    ref = x @ w.T
    x_mean = (x.abs().mean(dim=0) if x_abs_mean is None else x_abs_mean.float()).clamp_min(1e-5)
    w_mean = (w.abs() / w.abs().amax(dim=1, keepdim=True).clamp_min(1e-8)).mean(dim=0).clamp_min(1e-5)
    best_err, best_s, rtn_err = math.inf, torch.ones_like(x_mean), math.inf
    candidates = [x_mean.pow(i / grid) for i in range(grid + 1)]
    candidates += [x_mean.pow(i / grid) / w_mean.pow(1 - i / grid) for i in range(grid + 1)]
    for i, s in enumerate(candidates):
        s = tie_channels(s, tie)
        s = s / (s.max() * s.min()).sqrt()
        q = fake_quantize_weight(w * s, 4, group_size, zero_point=zero_point)
        err = float(((x / s) @ q.T - ref).pow(2).mean())
        if i == 0:
            rtn_err = err
        if err < best_err:
            best_err, best_s = err, s
    return best_s, best_err, rtn_err


def awq_search_clip(x: torch.Tensor, w: torch.Tensor, group_size: int, *, steps: int = 10,
                    min_ratio: float = 0.5, max_rows: int = 128, zero_point: bool = False,
                    two_sided: bool = False) -> torch.Tensor:
    """AWQ's clip search: per (row, group), the range shrink factor in ``[min_ratio, 1]`` minimizing
    that group's contribution to the output error on ``x [N, k]``. Returns ``[out, num_groups]``.
    ``two_sided`` (asymmetric format only) then searches the upper end's factor with the lower one
    fixed, then the lower one with the upper fixed (each on the same grid, each step keeping a
    group's factors unless the error drops), and returns ``[2, out, num_groups]`` (lower, upper)."""
    x = x.float()[:max_rows]
    w = w.float()
    n, k = w.shape
    g = group_size or k
    groups = num_groups(k, group_size)
    pad = groups * g - k
    xg = torch.nn.functional.pad(x, (0, pad)).view(x.shape[0], groups, g)

    def group_err(clip: torch.Tensor) -> torch.Tensor:  # [n, groups]
        delta = w - fake_quantize_weight(w, 4, group_size, clip, zero_point=zero_point)
        dg = torch.nn.functional.pad(delta, (0, pad)).view(n, groups, g)
        return torch.einsum("Ngc,ngc->Nng", xg, dg).pow(2).mean(dim=0)

    ratios = [1.0 - (1.0 - min_ratio) * i / steps for i in range(steps + 1)]
    best = torch.ones(n, groups, device=w.device)  # on the weights' device: GPU weights search there
    best_err = torch.full((n, groups), math.inf, device=w.device)
    for ratio in ratios:
        err = group_err(torch.full((n, groups), ratio, device=w.device))
        better = err < best_err
        best = torch.where(better, torch.full_like(best, ratio), best)
        best_err = torch.where(better, err, best_err)
    if not two_sided or not zero_point:
        return best
    pair = torch.stack([best, best.clone()])
    for side in (1, 0):  # upper end, then lower end, the other one at its best so far
        for ratio in ratios:
            trial = pair.clone()
            trial[side] = ratio
            err = group_err(trial)
            better = err < best_err
            pair[side] = torch.where(better, torch.full_like(best, ratio), pair[side])
            best_err = torch.where(better, err, best_err)
    return pair


def smoothquant_scales(x_amax: torch.Tensor, weights: list[torch.Tensor],
                       alpha: float = 0.5) -> torch.Tensor:
    """SmoothQuant's per-input-channel factors ``s_j = max|X_j|^a / max|W_j|^(1-a)`` for GEMMs that
    share the input (``W_j`` spans every weight's column ``j``). Use as ``x / s`` and ``W * s``."""
    w_amax = torch.stack([wi.float().abs().amax(dim=0) for wi in weights]).amax(dim=0)
    s = x_amax.float().clamp_min(1e-5).pow(alpha) / w_amax.clamp_min(1e-5).pow(1.0 - alpha)
    return s.clamp(1e-4, 1e4)


def lowrank_block_chunks(k: int, blocks: int) -> list[tuple[int, int]]:
    """``[start, end)`` channel ranges of a block-diagonal low-rank basis (``QuantConfig.fp8_lowrank_blocks``)
    over ``k`` channels: ``blocks`` contiguous chunks of ``ceil(k / 8 / blocks)`` 8-channel vectors, the
    last one shorter, as the CUDA SwiGLU split gives one thread block each (one vector per thread).
    Fewer than ``blocks`` ranges when the width leaves later chunks empty.

    >>> lowrank_block_chunks(1536, 8)[:2], len(lowrank_block_chunks(20, 8))
    ([(0, 192), (192, 384)], 3)
    """
    length = -(-k // (8 * blocks)) * 8
    return [(start, min(start + length, k)) for start in range(0, k, length)]


def compact_block_basis(basis: torch.Tensor, blocks: int) -> torch.Tensor | None:
    """``[k, r]``: each chunk's own ``r`` columns of a block-diagonal ``basis [k, blocks * r]`` in its
    rows (chunk b's columns are ``b * r .. b * r + r - 1``); None when ``basis`` is not block-diagonal in
    that layout (a value outside its chunk's columns is not zero)."""
    k, width = basis.shape
    chunks = lowrank_block_chunks(k, blocks)
    if width % blocks or len(chunks) != blocks:
        return None
    r = width // blocks
    compact = torch.empty(k, r, dtype=basis.dtype, device=basis.device)
    for b, (start, end) in enumerate(chunks):
        rows = basis[start:end]
        if rows[:, : b * r].any() or rows[:, (b + 1) * r:].any():
            return None
        compact[start:end] = rows[:, b * r: (b + 1) * r]
    return compact


def expand_block_basis(compact: torch.Tensor, blocks: int) -> torch.Tensor:
    """The block-diagonal ``[k, blocks * r]`` basis of :func:`compact_block_basis`'s ``compact [k, r]``."""
    k, r = compact.shape
    basis = torch.zeros(k, blocks * r, dtype=compact.dtype, device=compact.device)
    for b, (start, end) in enumerate(lowrank_block_chunks(k, blocks)):
        basis[start:end, b * r: (b + 1) * r] = compact[start:end]
    return basis


def half_grid(scales: torch.Tensor, zeros: torch.Tensor | None, what: str = "weight"
              ) -> tuple[torch.Tensor, torch.Tensor | None]:
    """``scales`` (and ``zeros``) rounded to float16 values, kept float32 (``QuantConfig.half_scales``).
    A positive scale below float16's smallest subnormal (6e-8: a group whose whole range is about 1e-6)
    becomes that subnormal; a value beyond 65504 is a :class:`ConfigError` naming ``what``.

    >>> half_grid(torch.tensor([0.1, 1e-9]), None)[0].tolist() == [torch.tensor(0.1).half().item(), 2 ** -24]
    True
    """
    for name, t in (("scales", scales), ("zeros", zeros)):
        if t is not None and not torch.isfinite(t.to(torch.float16)).all():
            raise ConfigError(f"half_scales: {what} has {name} outside float16's range "
                              f"([{float(t.min()):.3g}, {float(t.max()):.3g}]); turn half_scales off")
    tiny = torch.tensor(2.0 ** -24, dtype=torch.float32, device=scales.device)  # float16's smallest subnormal
    s = torch.where((scales > 0) & (scales < tiny), tiny, scales).to(torch.float16).float()
    return s, None if zeros is None else zeros.to(torch.float16).float()
