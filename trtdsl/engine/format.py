"""The ``rank0.engine`` file: a checksummed header, the graph as JSON, and the weights laid out
safetensors-style (aligned raw buffers at recorded offsets), loaded with ``mmap`` + ``torch.frombuffer``
so nothing is copied.

Layout (little endian)::

    0   8 bytes   magic b"TRTDSLE\\0"
    8   u32       format version
    12  u32       flags (0)
    16  32 bytes  checksum (see below)
    48  u64       header length H
    56  H bytes   header: JSON {"graph", "weights": [{"offset", "nbytes", "dtype", "shape"}], "meta",
                  "data_offset", "file_size", "chunk_size"}
    ... zero padding to ``data_offset`` (a multiple of 4096), then the weight buffers, each at a
        64-byte aligned offset relative to ``data_offset``.

The checksum covers every byte except the magic and the checksum itself: bytes ``8:16`` and ``48:``.
It is ``sha256(bytes[8:16] + crc32(chunk_0) + crc32(chunk_1) + ...)`` over 32 MB chunks of
``bytes[48:]``: CRC32 catches any flipped byte with certainty and is about three times faster than
SHA-256, and the chunks are checked on several cores (zlib releases the GIL), which keeps loading a
540 MB fp32 SmolLM2 engine under a second. Nothing is used before the check passes.
"""

from __future__ import annotations

import concurrent.futures
import hashlib
import json
import mmap
import os
import struct
import zlib
from pathlib import Path
from typing import Any

import torch

from ..errors import EngineError

__all__ = ["MAGIC", "FORMAT_VERSION", "write_engine_file", "read_engine_file", "EngineFile"]

MAGIC = b"TRTDSLE\0"
FORMAT_VERSION = 1
_PREFIX = struct.Struct("<8sII32sQ")  # magic, version, flags, checksum, header length
_DATA_ALIGN = 4096
_TENSOR_ALIGN = 64
_CHUNK = 32 << 20  # bytes per hashed chunk


def _align(n: int, a: int) -> int:
    return (n + a - 1) // a * a


def _tensor_bytes(t: torch.Tensor) -> memoryview:
    flat = t.detach().cpu().contiguous().reshape(-1)
    return memoryview(flat.view(torch.uint8).numpy().data) if flat.numel() else memoryview(b"")


def _storage_key(t: torch.Tensor) -> tuple:
    """Identifies a tensor's bytes, so tied weights (one storage, two names) are stored once."""
    return (t.untyped_storage().data_ptr(), t.storage_offset(), tuple(t.shape), tuple(t.stride()), t.dtype)


class _WeightTable:
    """Collects the distinct tensors referenced by the graph and assigns their offsets."""

    def __init__(self) -> None:
        self.tensors: list[torch.Tensor] = []
        self.entries: list[dict] = []
        self._index: dict[tuple, int] = {}
        self._size = 0

    def ref(self, t: torch.Tensor) -> int:
        key = _storage_key(t)
        if key in self._index:
            return self._index[key]
        nbytes = t.numel() * t.element_size()
        offset = _align(self._size, _TENSOR_ALIGN)
        self.entries.append({"offset": offset, "nbytes": nbytes, "dtype": str(t.dtype).removeprefix("torch."),
                             "shape": list(t.shape)})
        self.tensors.append(t)
        self._index[key] = len(self.tensors) - 1
        self._size = offset + nbytes
        return self._index[key]

    @property
    def size(self) -> int:
        return self._size


def _checksum(buf: Any, start: int, end: int, version_bytes: bytes, workers: int) -> bytes:
    """``sha256(version || crc32(chunk_0) || crc32(chunk_1) || ...)`` over ``buf[start:end]``.

    CRC32 detects every error burst of up to 32 bits, so any single flipped byte is caught with
    certainty, at about three times SHA-256's speed; zlib releases the GIL, so chunks are checked
    on several cores. (Integrity against accidents, not against tampering.)"""
    view = memoryview(buf)
    spans = [(a, min(a + _CHUNK, end)) for a in range(start, end, _CHUNK)] or [(start, start)]

    def crc(span: tuple[int, int]) -> bytes:
        return struct.pack("<I", zlib.crc32(view[span[0]:span[1]]))

    if workers > 1 and len(spans) > 1:
        with concurrent.futures.ThreadPoolExecutor(workers) as pool:
            parts = list(pool.map(crc, spans))
    else:
        parts = [crc(s) for s in spans]
    view.release()
    return hashlib.sha256(version_bytes + b"".join(parts)).digest()


def write_engine_file(path: str | Path, graph_builder: Any, meta: dict, progress: bool = False) -> int:
    """Write an engine file. ``graph_builder(weight_ref) -> dict`` serializes the graph, calling
    ``weight_ref(tensor) -> index`` for every tensor value. Returns the file size in bytes.
    ``progress`` shows a tqdm bar over the weight bytes written."""
    from tqdm.auto import tqdm
    path = Path(path)
    table = _WeightTable()
    graph = graph_builder(table.ref)
    header: dict[str, Any] = {"graph": graph, "weights": table.entries, "meta": meta, "chunk_size": _CHUNK}
    # The header records data_offset/file_size, which depend on the header's own length: iterate.
    data_offset = 0
    for _ in range(4):
        header["data_offset"] = data_offset
        header["file_size"] = data_offset + table.size
        blob = json.dumps(header, separators=(",", ":")).encode()
        needed = _align(_PREFIX.size + len(blob), _DATA_ALIGN)
        if needed == data_offset:
            break
        data_offset = needed
    tmp = path.with_suffix(path.suffix + ".tmp")
    with open(tmp, "wb") as f:
        f.write(_PREFIX.pack(MAGIC, FORMAT_VERSION, 0, b"\0" * 32, len(blob)))
        f.write(blob)
        f.write(b"\0" * (data_offset - f.tell()))
        with tqdm(total=table.size, unit="B", unit_scale=True, desc="write weights", disable=not progress,
                  leave=False) as bar:
            for entry, t in zip(table.entries, table.tensors):
                f.write(b"\0" * (data_offset + entry["offset"] - f.tell()))
                f.write(_tensor_bytes(t))
                bar.update(entry["nbytes"])
        f.flush()
    with open(tmp, "r+b") as f:
        mm = mmap.mmap(f.fileno(), 0)
        try:
            digest = _checksum(mm, _PREFIX.size - 8, len(mm), mm[8:16], os.cpu_count() or 1)
            mm[16:48] = digest
            mm.flush()
        finally:
            mm.close()
    os.replace(tmp, path)
    return header["file_size"]


class EngineFile:
    """A verified, memory-mapped engine file: the header dict and the zero-copy weight tensors."""

    def __init__(self, path: Path, header: dict, weights: list[torch.Tensor], mm: mmap.mmap):
        self.path = path
        self.header = header
        self.weights = weights
        self._mmap = mm  # the weights view this mapping; it lives as long as this object

    @property
    def graph(self) -> dict:
        return self.header["graph"]

    @property
    def meta(self) -> dict:
        return self.header["meta"]


def read_engine_file(path: str | Path, verify: bool = True) -> EngineFile:
    """Map and verify an engine file. Raises :class:`EngineError` naming the file when it is not an
    engine, is truncated, corrupt (checksum) or of an incompatible format version."""
    path = Path(path)
    if not path.is_file():
        raise EngineError(f"engine file {path} does not exist")
    size = path.stat().st_size
    if size < _PREFIX.size:
        raise EngineError(f"engine file {path} is truncated: {size} bytes, shorter than the "
                          f"{_PREFIX.size}-byte header")
    with open(path, "rb") as f:
        mm = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_COPY)  # private: writes never reach the file
    magic, version, _, checksum, header_len = _PREFIX.unpack_from(mm, 0)
    if magic != MAGIC:
        mm.close()
        raise EngineError(f"{path} is not a trtdsl engine file or is corrupt (bad magic {magic!r}); "
                          "rebuild it with `trtdsl build`")
    if verify:
        actual = _checksum(mm, _PREFIX.size - 8, size, mm[8:16], min(os.cpu_count() or 1, 8))
        if actual != checksum:
            problem = _explain_mismatch(mm, header_len, size, version)
            mm.close()
            raise EngineError(f"engine file {path} is corrupt: checksum mismatch ({problem}); the file "
                              "was modified or damaged after it was written, rebuild it")
    if version != FORMAT_VERSION:
        mm.close()
        raise EngineError(f"engine file {path} has format version {version}, but this trtdsl reads "
                          f"version {FORMAT_VERSION}; rebuild the engine with this version")
    try:
        header = json.loads(bytes(mm[_PREFIX.size:_PREFIX.size + header_len]))
    except (ValueError, UnicodeDecodeError) as exc:
        mm.close()
        raise EngineError(f"engine file {path} has an unreadable header ({exc})") from None
    if header.get("file_size") != size:
        mm.close()
        raise EngineError(f"engine file {path} is truncated or padded: {size} bytes, the header says "
                          f"{header.get('file_size')}")
    weights = [_weight_view(mm, header["data_offset"], e) for e in header["weights"]]
    return EngineFile(path, header, weights, mm)


def _explain_mismatch(mm: mmap.mmap, header_len: int, size: int, version: int) -> str:
    """Best-effort diagnosis for the checksum error: truncation or another format version."""
    try:
        header = json.loads(bytes(mm[_PREFIX.size:_PREFIX.size + header_len]))
        expected = int(header["file_size"])
        if expected > size:
            return f"truncated: {size} of {expected} bytes"
    except (ValueError, KeyError, TypeError, UnicodeDecodeError):
        pass
    if version != FORMAT_VERSION:
        return f"format version field reads {version}, this trtdsl writes {FORMAT_VERSION}"
    return "content differs from what was written"


def _weight_view(mm: mmap.mmap, data_offset: int, entry: dict) -> torch.Tensor:
    dtype = getattr(torch, entry["dtype"])
    shape = tuple(entry["shape"])
    if entry["nbytes"] == 0:
        return torch.empty(shape, dtype=dtype)
    count = entry["nbytes"] // torch.empty((), dtype=dtype).element_size()
    return torch.frombuffer(mm, dtype=dtype, count=count, offset=data_offset + entry["offset"]).view(shape)

