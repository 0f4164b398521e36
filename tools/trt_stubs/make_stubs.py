#!/usr/bin/env python3
"""Generate type stubs for TensorRT's Python API on a machine without TensorRT (or a GPU).

Steps: download the ``tensorrt-cu12-bindings`` wheel (the Python bindings only, ~1.3 MB) from PyPI;
compile ``shim.c`` into stand-in ``libnvinfer``/``libnvinfer_plugin``/``libnvonnxparser`` libraries
so ``tensorrt.so`` can be imported; run ``pybind11-stubgen`` on it; clean up the few annotations that
pybind11 renders as raw C++ names; add the hand-written ``tensorrt/plugin`` stub (that package
creates its names at import time, so it cannot be introspected usefully).

The result goes under ``<out>/tensorrt-<version>-<key>/`` (``key`` hashes this tooling, so edits
regenerate) and its path is printed as the last line of stdout. A finished directory is reused, so
reruns take milliseconds. Nothing here is committed: the stubs and the wheel carry NVIDIA's text.

Usage: ``python tools/trt_stubs/make_stubs.py [--out .stubs] [--version 11.4.0.106]``. Set
``TRTDSL_TRT_BINDINGS_WHEEL=/path/to/wheel`` to use an already downloaded wheel (offline).
Any failure (no network, no ``cc``) exits non-zero with the reason: CI must not silently skip.
"""

from __future__ import annotations

import argparse
import ast
import hashlib
import keyword
import os
import re
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
DEFAULT_VERSION = "11.4.0.106"
PACKAGE = "tensorrt-cu12-bindings"
# Enums whose default values pybind11 prints as ``<DataType.FLOAT: 0>``: where they live.
ENUM_LOCATIONS = ["DataType:tensorrt.tensorrt", "Severity:tensorrt.tensorrt.ILogger",
                  "ExecutionContextAllocationStrategy:tensorrt.tensorrt",
                  "PluginFieldType:tensorrt.tensorrt", "EngineStat:tensorrt.tensorrt"]
# C++ interface names whose Python class has another name.
CPP_RENAMES = {"IBuilder": "Builder", "IRuntime": "Runtime", "IRefitter": "Refitter"}
SHIM_LIBS = ("libnvinfer.so.11", "libnvinfer_plugin.so.11", "libnvonnxparser.so.11")


class StubError(RuntimeError):
    pass


def tooling_key(version: str) -> str:
    digest = hashlib.sha256(version.encode())
    for path in sorted([HERE / "shim.c", Path(__file__).resolve(), *HERE.glob("plugin/*.pyi")]):
        digest.update(path.name.encode() + path.read_bytes())
    return digest.hexdigest()[:10]


def run(cmd: list[str], what: str, **kw: object) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(cmd, capture_output=True, text=True, **kw)  # type: ignore[call-overload]
    if proc.returncode != 0:
        raise StubError(f"{what} failed (exit {proc.returncode}): {' '.join(cmd)}\n"
                        f"{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return proc  # type: ignore[no-any-return]


def fetch_wheel(version: str, work: Path) -> Path:
    given = os.environ.get("TRTDSL_TRT_BINDINGS_WHEEL")
    if given:
        return Path(given)
    run([sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "--quiet",
         f"{PACKAGE}=={version}", "-d", str(work)],
        f"downloading {PACKAGE}=={version} from PyPI (needs network access)")
    wheels = sorted(work.glob("*.whl"))
    if not wheels:
        raise StubError(f"pip reported success but left no wheel of {PACKAGE} in {work}")
    return wheels[0]


def build_shim(work: Path) -> Path:
    cc = os.environ.get("CC", "cc")
    if shutil.which(cc) is None:
        raise StubError(f"no C compiler {cc!r} on PATH: install one (e.g. apt-get install gcc)")
    libdir = work / "lib"
    libdir.mkdir()
    empty = work / "empty.c"
    empty.write_text("/* intentionally empty: the shim's symbols live in libnvinfer */\n")
    for lib in SHIM_LIBS:
        src = HERE / "shim.c" if lib.startswith("libnvinfer.") else empty
        run([cc, "-shared", "-fPIC", "-O0", "-o", str(libdir / lib), f"-Wl,-soname,{lib}", str(src)],
            f"compiling the {lib} shim")
    return libdir


def unpack_bindings(wheel: Path, work: Path) -> Path:
    """Unpack the wheel's ``tensorrt_bindings`` package as ``tensorrt`` (the name users import)."""
    pkgroot = work / "pkg"
    with zipfile.ZipFile(wheel) as zf:
        for member in zf.namelist():
            if not member.startswith("tensorrt_bindings/") or member.startswith("tensorrt_bindings/plugin/"):
                continue
            target = pkgroot / ("tensorrt/" + member.split("/", 1)[1])
            if member.endswith("/"):
                continue
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(zf.read(member))
    if not (pkgroot / "tensorrt" / "tensorrt.so").exists():
        raise StubError(f"{wheel.name} has no tensorrt_bindings/tensorrt.so; unexpected wheel layout")
    return pkgroot


def generate(pkgroot: Path, libdir: Path, out: Path) -> None:
    env = dict(os.environ, PYTHONPATH=str(pkgroot),
               LD_LIBRARY_PATH=os.pathsep.join(filter(None, [str(libdir), os.environ.get("LD_LIBRARY_PATH")])))
    cmd = [sys.executable, "-m", "pybind11_stubgen", "tensorrt", "-o", str(out),
           "--print-invalid-expressions-as-is"]
    for loc in ENUM_LOCATIONS:
        cmd += ["--enum-class-locations", loc]
    run(cmd, "pybind11-stubgen on the TensorRT bindings", env=env)


def _split_params(params: str) -> list[str]:
    parts, depth, cur = [], 0, ""
    for ch in params:
        depth += ch in "([{"
        depth -= ch in ")]}"
        if ch == "," and depth == 0:
            parts.append(cur)
            cur = ""
        else:
            cur += ch
    if cur.strip():
        parts.append(cur)
    return parts


def _fix_params(line: str) -> str:
    """Make a ``def`` line valid Python. pybind11 can emit a required parameter after defaulted ones
    (``add_scale_nd``): give the later ones a default too (lenient; trtdsl never calls them). It can
    also name a parameter after a keyword (``in``): append ``_`` (only positional use is checked)."""
    m = re.match(r"^(\s*def \w+\()(.*)(\) -> .*:\s*)$", line)
    if not m:
        return line
    seen_default, parts = False, []
    for p in _split_params(m.group(2)):
        name = re.split(r"[:=]", p, maxsplit=1)[0].strip()
        if keyword.iskeyword(name):
            p = p.replace(name, name + "_", 1)
        if "=" in p:
            seen_default = True
        elif seen_default and name not in ("*", "/") and not name.startswith("*"):
            p = p + " = ..."
        parts.append(p)
    return m.group(1) + ",".join(parts) + m.group(3)


def clean_stub(text: str, known: set[str]) -> str:
    """Replace raw C++ type names with their Python classes (or ``typing.Any``)."""
    def cpp(match: re.Match[str]) -> str:
        name = CPP_RENAMES.get(match.group(1), match.group(1))
        return name if name in known else "typing.Any"
    text = re.sub(r"nvinfer1::(?:v_\d+_\d+::)?(\w+)", cpp, text)
    text = re.sub(r"nvonnxparser::(\w+)", cpp, text)
    text = re.sub(r"detail::accessor<[^>]*>", "typing.Any", text)
    out = []
    for line in text.splitlines():
        if line.lstrip().startswith("def "):
            line = re.sub(r"(?<=: )\.\.\.(?=[,)])", "typing.Any", line)
            line = re.sub(r"-> \.\.\.:", "-> typing.Any:", line)
            line = line.replace("[...]", "[typing.Any]")
            line = _fix_params(line)
        out.append(line)
    return "\n".join(out) + "\n"


def postprocess(stubs: Path) -> None:
    core = stubs / "tensorrt" / "tensorrt.pyi"
    known = set(re.findall(r"^class (\w+)", core.read_text(), flags=re.M))
    for pyi in sorted((stubs / "tensorrt").rglob("*.pyi")):
        text = clean_stub(pyi.read_text(), known)
        if "import typing" not in text:
            text = "import typing\n" + text
        pyi.write_text(text)
        try:
            ast.parse(text, filename=str(pyi))
        except SyntaxError as exc:
            raise StubError(f"generated stub {pyi} is not valid Python: {exc}") from exc
    plugin_dir = stubs / "tensorrt" / "plugin"
    plugin_dir.mkdir()
    shutil.copy(HERE / "plugin" / "__init__.pyi", plugin_dir / "__init__.pyi")


def make_stubs(out: Path, version: str) -> Path:
    target = out / f"tensorrt-{version}-{tooling_key(version)}"
    if (target / "tensorrt" / "tensorrt.pyi").exists():
        return target
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="trt_stubs_", dir=out) as tmp:
        work = Path(tmp)
        pkgroot = unpack_bindings(fetch_wheel(version, work), work)
        libdir = build_shim(work)
        stubs = work / "stubs"
        generate(pkgroot, libdir, stubs)
        postprocess(stubs)
        try:  # atomic: concurrent runs (pytest-xdist workers) may race; the first one wins
            os.rename(stubs, target)
        except OSError:
            if not (target / "tensorrt" / "tensorrt.pyi").exists():
                raise
    return target


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path(".stubs"), help="cache directory (git-ignored)")
    parser.add_argument("--version", default=DEFAULT_VERSION, help="tensorrt-cu12-bindings version")
    args = parser.parse_args()
    try:
        path = make_stubs(args.out.resolve(), args.version)
    except StubError as exc:
        print(f"make_stubs: {exc}", file=sys.stderr)
        return 1
    print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
