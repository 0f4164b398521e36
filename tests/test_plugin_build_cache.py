"""The kernel build's per-object cache key (trtdsl/plugins/cuda/_build.py): an object is reused only
while its .cu and every header it reaches are unchanged. Pure Python: no nvcc needed."""

from pathlib import Path

import pytest

from trtdsl.plugins.cuda._build import _object_key, adopt_objects


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


def test_adopt_objects_rekeys_only_current_objects(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Objects another nvcc build compiled from these sources get this nvcc's keys; stale ones stay."""
    src = tmp_path / "plugins_cuda"
    src.mkdir()
    cu = _tree(src)
    cache = tmp_path / "cache"
    (cache / "objs").mkdir(parents=True)
    monkeypatch.setenv("TRTDSL_PLUGIN_SRC", str(src))
    monkeypatch.setenv("TRTDSL_PLUGIN_CACHE", str(cache))
    carried = cache / "objs" / f"a-{_object_key(cu, src, 'nvcc there')}.o"
    carried.write_bytes(b"object")
    stale = cache / "objs" / "a-0000000000000000.o"
    stale.write_bytes(b"old")
    assert adopt_objects("nvcc here", version="nvcc here") == 0  # same compiler: nothing to do
    assert adopt_objects("nvcc there", version="nvcc here") == 1
    assert (cache / "objs" / f"a-{_object_key(cu, src, 'nvcc here')}.o").read_bytes() == b"object"
    assert not carried.exists() and stale.exists()
