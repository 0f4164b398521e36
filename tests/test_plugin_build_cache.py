"""The kernel build's per-object cache key (trtdsl/plugins/cuda/_build.py): an object is reused only
while its .cu and every header it reaches are unchanged. Pure Python: no nvcc needed."""

from pathlib import Path

from trtdsl.plugins.cuda._build import _object_key


def _tree(root: Path) -> Path:
    (root / "src").mkdir()
    (root / "include" / "trtdsl").mkdir(parents=True)
    (root / "src" / "a.cu").write_text('#include "local.h"\n#include "trtdsl/a.cuh"\n#include <cstdio>\n')
    (root / "src" / "local.h").write_text("// local\n")
    (root / "include" / "trtdsl" / "a.cuh").write_text('#pragma once\n#include "trtdsl/common.cuh"\n')
    (root / "include" / "trtdsl" / "common.cuh").write_text("// common v1\n")
    (root / "include" / "trtdsl" / "other.cuh").write_text("// not included by a.cu\n")
    return root / "src" / "a.cu"


def test_key_follows_included_headers_only(tmp_path: Path) -> None:
    cu = _tree(tmp_path)
    key = _object_key(cu, tmp_path, "nvcc 13.0")
    assert _object_key(cu, tmp_path, "nvcc 13.0") == key
    (tmp_path / "include" / "trtdsl" / "other.cuh").write_text("// edited, still not included\n")
    assert _object_key(cu, tmp_path, "nvcc 13.0") == key
    (tmp_path / "include" / "trtdsl" / "common.cuh").write_text("// common v2\n")  # reached through a.cuh
    key2 = _object_key(cu, tmp_path, "nvcc 13.0")
    assert key2 != key
    (tmp_path / "src" / "local.h").write_text("// local v2\n")
    key3 = _object_key(cu, tmp_path, "nvcc 13.0")
    assert key3 != key2
    assert _object_key(cu, tmp_path, "nvcc 13.1") != key3


def test_include_cycles_terminate(tmp_path: Path) -> None:
    cu = _tree(tmp_path)
    (tmp_path / "include" / "trtdsl" / "common.cuh").write_text('#include "trtdsl/a.cuh"\n')
    assert len(_object_key(cu, tmp_path, "v")) == 16
