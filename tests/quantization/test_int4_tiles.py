"""The tile-16 int4 layout (``trtdsl.quantization.int4_tiles``): where each code, scale and zero lands (the
format the CUDA GEMV reads, checked element by element against the canonical tensors), the SwiGLU row
interleave, an exact round trip, and clear errors for shapes the layout does not take."""

from __future__ import annotations

import pytest
import torch

from trtdsl.errors import ConfigError
from trtdsl.quantization.int4_tiles import pack_int4_tiles, unpack_int4_tiles
from trtdsl.quantization.numerics import pack_int4, quantize_weight_asym, unpack_int4


def _canonical(n: int, k: int, group: int, zeros: bool = True, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    codes, s, z = quantize_weight_asym(torch.randn(n, k, generator=g), bits=4, group_size=group)
    return codes, pack_int4(codes), s, (z if zeros else None)


def _lane_codes(qp: torch.Tensor, tile: int, kb: int, h: int, lane: int, w: int) -> list[int]:
    """The 8 codes of word w of lane `lane`'s 16-byte vector, half h, of (tile, k block kb)."""
    vec = qp[tile, kb].view(2, 32, 16)[h, lane]
    return unpack_int4(vec[4 * w:4 * w + 4]).tolist()


@pytest.mark.parametrize("n,k,group", [(40, 256, 64), (16, 384, 128), (33, 512, 0), (64, 1024, 256)])
def test_every_word_and_scale_lands_where_the_kernel_reads_it(n, k, group):
    codes, q, s, z = _canonical(n, k, group)
    qp, sz = pack_int4_tiles(q, s, z, group)
    tiles = -(-n // 16)
    assert qp.shape == (tiles, k // 128, 1024) and sz.shape == (tiles, s.shape[1], 8, 4)
    for tile in range(tiles):
        for kb in range(k // 128):
            for h in range(2):
                for lane in range(32):
                    g, t = divmod(lane, 4)
                    row = 16 * tile + 8 * h + g
                    for w in range(4):
                        got = _lane_codes(qp, tile, kb, h, lane, w)
                        start = 128 * kb + 32 * w + 8 * t
                        want = codes[row, start:start + 8].tolist() if row < n else [0] * 8
                        assert got == want, (tile, kb, h, lane, w)
        for grp in range(s.shape[1]):
            for g in range(8):
                r0, r1 = 16 * tile + g, 16 * tile + g + 8
                want = [s[r, grp].item() if r < n else 0.0 for r in (r0, r1)]
                want += [z[r, grp].item() if r < n else 0.0 for r in (r0, r1)]
                assert sz[tile, grp, g].tolist() == want


def test_symmetric_pack_has_scale_pairs_only():
    _, q, s, _ = _canonical(24, 256, 128, zeros=False)
    qp, sz = pack_int4_tiles(q, s, None, 128)
    assert sz.shape == (2, 2, 8, 2)
    assert sz[1, 1, 3].tolist() == [s[19, 1].item(), 0.0]  # row 27 is padding
    q2, s2, z2 = unpack_int4_tiles(qp, sz, 24)
    assert torch.equal(q2, q) and torch.equal(s2, s) and z2 is None


def test_swiglu_tiles_hold_gate_then_up_rows_of_the_same_outputs():
    inter = 24
    codes, q, s, z = _canonical(2 * inter, 256, 64)
    qp, sz = pack_int4_tiles(q, s, z, 64, swiglu=True)
    assert qp.shape[0] == 3
    for tile in range(3):
        for g in range(8):
            gate_row, up_row = 8 * tile + g, inter + 8 * tile + g
            assert _lane_codes(qp, tile, 1, 0, 4 * g + 2, 3) == codes[gate_row, 128 + 96 + 16:128 + 96 + 24].tolist()
            assert _lane_codes(qp, tile, 1, 1, 4 * g + 2, 3) == codes[up_row, 128 + 96 + 16:128 + 96 + 24].tolist()
            assert sz[tile, 3, g].tolist() == [s[gate_row, 3].item(), s[up_row, 3].item(),
                                               z[gate_row, 3].item(), z[up_row, 3].item()]
    q2, s2, z2 = unpack_int4_tiles(qp, sz, 2 * inter, swiglu=True)
    assert torch.equal(q2, q) and torch.equal(s2, s) and torch.equal(z2, z)


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("n,k,group", [(17, 128, 0), (100, 640, 64), (48, 512, 128)])
def test_round_trip_is_exact(n, k, group, seed):
    _, q, s, z = _canonical(n, k, group, seed=seed)
    q2, s2, z2 = unpack_int4_tiles(*pack_int4_tiles(q, s, z, group), n=n)
    assert torch.equal(q2, q) and torch.equal(s2, s) and torch.equal(z2, z)


def test_errors_name_the_problem():
    _, q, s, z = _canonical(32, 256, 64)
    with pytest.raises(ConfigError, match="in_features % 128"):
        pack_int4_tiles(q[:, :96], s[:, :3], z[:, :3], 64)  # k = 192
    with pytest.raises(ConfigError, match="group_size=96"):
        pack_int4_tiles(q, s, z, 96)
    with pytest.raises(ConfigError, match="scales must be float32"):
        pack_int4_tiles(q, s[:, :2], z, 64)
    with pytest.raises(ConfigError, match="I % 8"):
        pack_int4_tiles(q[:24], s[:24], z[:24], 64, swiglu=True)
    with pytest.raises(ConfigError, match="int8"):
        pack_int4_tiles(q.to(torch.int16), s, z, 64)
    qp, sz = pack_int4_tiles(q, s, z, 64)
    with pytest.raises(ConfigError, match="n=40"):
        unpack_int4_tiles(qp, sz, 40)


def test_half_pack_is_exact_for_half_valued_scales_and_refuses_others():
    from trtdsl.quantization.numerics import half_grid
    _, q, s, z = _canonical(32, 256, 64)
    with pytest.raises(ConfigError, match="float16 values"):
        pack_int4_tiles(q, s, z, 64, half=True)
    hs, hz = half_grid(s, z)
    qp, sz = pack_int4_tiles(q, hs, hz, 64, swiglu=True, half=True)
    assert sz.dtype == torch.float16 and sz.shape == (2, 4, 8, 4)
    assert sz[1, 2, 5].float().tolist() == [hs[8 + 5, 2].item(), hs[16 + 8 + 5, 2].item(),
                                            hz[8 + 5, 2].item(), hz[16 + 8 + 5, 2].item()]
    q2, s2, z2 = unpack_int4_tiles(qp, sz, 32, swiglu=True)
    assert s2.dtype == torch.float32 and torch.equal(q2, q) and torch.equal(s2, hs) and torch.equal(z2, hz)


def test_half_scales_is_a_weight_only_option():
    from trtdsl.quantization import QuantConfig
    with pytest.raises(ConfigError, match="half_scales applies to the weight-only modes"):
        QuantConfig(mode="fp8", half_scales=True)
    assert QuantConfig(mode="int4_awq", half_scales=True).half_scales


def test_half_grid_rounds_to_float16_values_and_names_overflow():
    from trtdsl.quantization.numerics import half_grid
    s = torch.tensor([[0.1, 1e-9, 0.0], [3.0, 1e-3, 7.0]])
    z = torch.tensor([[-0.3, 0.0, 1.0], [2.5, -1e-4, 0.2]])
    hs, hz = half_grid(s, z)
    assert hs.dtype == torch.float32 and torch.equal(hs.half().float(), hs) and torch.equal(hz.half().float(), hz)
    assert hs[0, 1].item() == 2.0 ** -24 and hs[0, 2].item() == 0.0  # tiny scales: the smallest subnormal
    assert torch.equal(hz, z.half().float())
    with pytest.raises(ConfigError, match="qkv has scales outside float16"):
        half_grid(torch.tensor([[7e4]]), None, "qkv")
