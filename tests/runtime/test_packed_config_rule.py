"""The host-side rule that picks the tile-16 int4 GEMV's launch shape (quant_ops.packed_config), on the
CPU: every key of PACKED_CONFIG maps to a launch shape, the 8B's GEMMs at one row and group 64 take the
shapes the 8B step measured fastest (docs/quant_kernels.md, "Weights loaded before the PDL wait"), and the
rule reads the table by (one row, n class, long k, group 64) for any rows, k and group."""

from __future__ import annotations

import itertools

import pytest

from trtdsl.plugins.cuda import quant_ops

# the 8B's GEMMs: (weight rows, k)
O, QKV, GATE_UP, DOWN, LM_HEAD = (4096, 4096), (6144, 4096), (28672, 4096), (4096, 14336), (128256, 4096)


def test_table_covers_every_key_with_a_launch_shape() -> None:
    keys = set(itertools.product((True, False), (0, 1, 2), (True, False), (True, False)))
    assert set(quant_ops.PACKED_CONFIG) == keys
    assert set(quant_ops.PACKED_CONFIG.values()) <= set(quant_ops.WO_PACKED_CONFIGS)


@pytest.mark.parametrize("shape,pick", [(O, 11), (QKV, 0), (GATE_UP, 4), (DOWN, 11), (LM_HEAD, 4)])
def test_8b_one_row_group_64_picks(shape: tuple[int, int], pick: int) -> None:
    rows, k = shape
    assert quant_ops.packed_config(1, rows, k, 64) == pick


@pytest.mark.parametrize("m,group", [(1, 64), (1, 128), (4, 64), (8, 128), (2, 4096)])
@pytest.mark.parametrize("shape", [O, QKV, GATE_UP, DOWN, LM_HEAD, (17, 640)])
def test_rule_reads_the_table_by_its_key(m: int, group: int, shape: tuple[int, int]) -> None:
    rows, k = shape
    key = (m == 1, quant_ops.tc1_n_class(rows), k >= quant_ops.LONG_K, group == 64)
    assert quant_ops.packed_config(m, rows, k, group) == quant_ops.PACKED_CONFIG[key]
