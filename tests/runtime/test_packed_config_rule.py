"""The host-side rule that picks the tile-16 int4 GEMV's launch shape (quant_ops.packed_config), on the
CPU: float16 scale tables take PACKED_CONFIG_HALF's picks where the sweep found another shape
(benchmarks/results/int4_packed_half_h100.json) and PACKED_CONFIG's elsewhere; float32 tables never
see the float16 picks."""

from __future__ import annotations

import pytest

from trtdsl.plugins.cuda import quant_ops

# the 8B's GEMMs: (weight rows, k)
O, QKV, GATE_UP, DOWN, LM_HEAD = (4096, 4096), (6144, 4096), (28672, 4096), (4096, 14336), (128256, 4096)


@pytest.mark.parametrize("shape,half_pick", [(O, 2), (QKV, 0), (GATE_UP, 4), (DOWN, 2), (LM_HEAD, 4)])
def test_float16_tables_at_one_row_group_64(shape: tuple[int, int], half_pick: int) -> None:
    rows, k = shape
    assert quant_ops.packed_config(1, rows, k, 64, half_tables=True) == half_pick


@pytest.mark.parametrize("m,group", [(1, 64), (1, 128), (4, 64), (8, 128)])
@pytest.mark.parametrize("shape", [O, QKV, GATE_UP, DOWN, LM_HEAD])
def test_float32_tables_keep_their_table(m: int, group: int, shape: tuple[int, int]) -> None:
    rows, k = shape
    key = (m == 1, quant_ops.tc1_n_class(rows), k >= quant_ops.LONG_K, group == 64)
    assert quant_ops.packed_config(m, rows, k, group) == quant_ops.PACKED_CONFIG[key]
    if key not in quant_ops.PACKED_CONFIG_HALF:  # not measured with float16 tables: the same shape
        assert quant_ops.packed_config(m, rows, k, group, half_tables=True) == quant_ops.PACKED_CONFIG[key]


def test_half_table_entries_are_launch_shapes_of_known_keys() -> None:
    for key, config in quant_ops.PACKED_CONFIG_HALF.items():
        assert key in quant_ops.PACKED_CONFIG and config in quant_ops.WO_PACKED_CONFIGS
        assert config != quant_ops.PACKED_CONFIG[key]  # an entry that repeats the float32 pick says nothing
