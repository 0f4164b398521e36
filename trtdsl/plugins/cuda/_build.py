"""Build the trtdsl CUDA kernels (``plugins_cuda/``) into one shared library, once per source hash.

The library lands in ``<cache>/<hash>/libtrtdsl_plugins.so`` where ``<cache>`` is
``$TRTDSL_PLUGIN_CACHE`` or ``~/.cache/trtdsl/plugins`` and the hash covers every source file, the
nvcc flags and the nvcc version, so an edited kernel never loads a stale binary. Concurrent builders
(pytest-xdist workers, several ranks) serialize on a file lock and the library appears by atomic
rename, so a half-written file is never loaded.

Each translation unit's object is also kept, in ``<cache>/objs/``, under a hash of the ``.cu``, every
header it includes (followed recursively), the flags and the nvcc version: editing one kernel
recompiles only the units that include what changed. The tensor-core units take minutes, so carrying
``objs/`` to a fresh GPU machine (``benchmarks/gpu_session.sh`` packs and unpacks it) saves most of a
rebuild there."""

from __future__ import annotations

import concurrent.futures
import fcntl
import hashlib
import os
import re
import shutil
import subprocess
import tempfile
from pathlib import Path

from trtdsl.errors import PluginError

__all__ = ["build_plugins", "library_path", "object_paths", "adopt_objects", "source_dir", "find_nvcc",
           "NVCC_FLAGS"]

LIB_NAME = "libtrtdsl_plugins.so"
# sm_90a machine code for Hopper, plus compute_80 PTX so other GPUs (sm_80+) JIT-compile it.
NVCC_FLAGS = (
    "-O3", "-std=c++17", "-Xcompiler", "-fPIC", "--use_fast_math",
    "-gencode=arch=compute_90a,code=sm_90a",
    "-gencode=arch=compute_80,code=compute_80",
)


def source_dir() -> Path:
    """``plugins_cuda/`` of the checkout (``$TRTDSL_PLUGIN_SRC`` overrides)."""
    env = os.environ.get("TRTDSL_PLUGIN_SRC")
    path = Path(env) if env else Path(__file__).resolve().parents[3] / "plugins_cuda"
    if not (path / "src").is_dir():
        raise PluginError(f"CUDA plugin sources not found at {path} (set TRTDSL_PLUGIN_SRC to plugins_cuda/)")
    return path


def find_nvcc() -> str:
    for cand in (os.environ.get("NVCC"), shutil.which("nvcc"),
                 os.path.join(os.environ.get("CUDA_HOME", "/usr/local/cuda"), "bin", "nvcc")):
        if cand and os.path.isfile(cand) and os.access(cand, os.X_OK):
            return cand
    raise PluginError("nvcc not found: install the CUDA toolkit, or set NVCC / CUDA_HOME, to build the "
                      "trtdsl CUDA plugins")


def _sources(src: Path) -> list[Path]:
    files = sorted(src.glob("src/*.cu")) + sorted(src.glob("src/*.h")) + sorted(src.glob("include/**/*.cuh"))
    return files + sorted(src.glob("include/**/*.h"))


def _digest(src: Path, nvcc: str) -> str:
    h = hashlib.sha256()
    for f in _sources(src):
        h.update(str(f.relative_to(src)).encode())
        h.update(f.read_bytes())
    h.update(" ".join(NVCC_FLAGS).encode())
    h.update(_nvcc_version(nvcc).encode())
    return h.hexdigest()[:16]


def _nvcc_version(nvcc: str) -> str:
    """``nvcc --version``'s text: part of every cache key (another compiler build, another binary)."""
    return subprocess.run([nvcc, "--version"], capture_output=True, text=True).stdout


def _cache_root() -> Path:
    env = os.environ.get("TRTDSL_PLUGIN_CACHE")
    return Path(env) if env else Path.home() / ".cache" / "trtdsl" / "plugins"


def library_path() -> Path:
    """Where the library for the current sources lives (built or not)."""
    src = source_dir()
    return _cache_root() / _digest(src, find_nvcc()) / LIB_NAME


def _run(cmd: list[str]) -> None:
    res = subprocess.run(cmd, capture_output=True, text=True)
    if res.returncode != 0:
        raise PluginError(f"building the CUDA plugins failed:\n$ {' '.join(cmd)}\n{res.stderr[-4000:]}")


_INCLUDE = re.compile(r'^\s*#\s*include\s*"([^"]+)"', re.MULTILINE)


def _included_files(path: Path, src: Path, seen: set[Path]) -> None:
    """Add ``path`` and every quoted include it reaches (looked up beside the file, then in
    ``include/``) to ``seen``; system headers (``<...>``) belong to the nvcc version in the key."""
    if path in seen:
        return
    seen.add(path)
    for name in _INCLUDE.findall(path.read_text(errors="replace")):
        for base in (path.parent, src / "include"):
            if (base / name).is_file():
                _included_files((base / name).resolve(), src, seen)
                break


def _object_key(cu: Path, src: Path, version: str) -> str:
    """Hash of everything that decides ``cu``'s object file."""
    files: set[Path] = set()
    _included_files(cu.resolve(), src, files)
    h = hashlib.sha256(" ".join(NVCC_FLAGS).encode() + version.encode())
    for f in sorted(files):
        h.update(f.name.encode())
        h.update(f.read_bytes())
    return h.hexdigest()[:16]


def _compile_one(cmd: list[str], obj: Path) -> None:
    """Compile into a temporary name and rename: a concurrent builder never links half an object."""
    part = obj.with_suffix(f".{os.getpid()}.part")
    _run([*cmd, "-o", str(part)])
    os.replace(part, obj)


def object_paths() -> list[Path]:
    """The cached object files the current sources need (built or not), e.g. to carry them."""
    src = source_dir()
    version = _nvcc_version(find_nvcc())
    return [_object_path(cu, src, version) for cu in sorted(src.glob("src/*.cu"))]


def _object_path(cu: Path, src: Path, version: str) -> Path:
    return _cache_root() / "objs" / f"{cu.stem}-{_object_key(cu, src, version)}.o"


def adopt_objects(built_with: str, version: str | None = None) -> int:
    """Re-key object files carried in from another machine so this one reuses them: objects that an
    nvcc whose ``--version`` text is ``built_with`` compiled from the current sources are renamed to
    the keys of this machine's nvcc (``version``: its ``--version`` text, default: run it), e.g.
    the same release built another day; the caller decides they are compatible. Returns how many
    were renamed; nothing to do when the texts are equal."""
    src = source_dir()
    version = _nvcc_version(find_nvcc()) if version is None else version
    if version == built_with:
        return 0
    renamed = 0
    for cu in sorted(src.glob("src/*.cu")):
        old = _object_path(cu, src, built_with)
        if old.exists():
            old.rename(_object_path(cu, src, version))
            renamed += 1
    return renamed


def _compile_all(src: Path, nvcc: str, tmp: Path, force: bool = False) -> Path:
    """Compile the .cu files whose object is not cached (all of them with ``force``), in parallel
    (they are independent), then link one shared library."""
    cus = sorted(src.glob("src/*.cu"))
    objs = object_paths()
    objs[0].parent.mkdir(parents=True, exist_ok=True)
    base = [nvcc, *NVCC_FLAGS, "-I", str(src / "include")]
    todo = [(cu, o) for cu, o in zip(cus, objs) if force or not o.exists()]
    with concurrent.futures.ThreadPoolExecutor(max_workers=max(1, min(len(cus), os.cpu_count() or 1))) as ex:
        list(ex.map(lambda job: _compile_one([*base, "-c", str(job[0])], job[1]), todo))
    out = tmp / LIB_NAME
    _run([nvcc, "-shared", *[str(o) for o in objs], "-o", str(out)])  # cudart linked statically
    return out


def build_plugins(force: bool = False, verbose: bool = False) -> Path:
    """Build the kernel library if this source hash has none yet; return its path."""
    src, nvcc = source_dir(), find_nvcc()
    target_dir = _cache_root() / _digest(src, nvcc)
    target = target_dir / LIB_NAME
    if target.exists() and not force:
        return target
    target_dir.mkdir(parents=True, exist_ok=True)
    with open(target_dir / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # another process may be building the same hash
        try:
            if target.exists() and not force:
                return target
            if verbose:
                print(f"trtdsl: building CUDA plugins into {target_dir}")
            with tempfile.TemporaryDirectory(dir=target_dir) as tmp:
                built = _compile_all(src, nvcc, Path(tmp), force)
                os.replace(built, target)  # atomic: loaders see no file or a whole file
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)
    return target
