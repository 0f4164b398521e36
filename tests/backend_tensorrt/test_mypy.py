"""Static check of the TensorRT backend against TensorRT 11.4's real Python API.

TensorRT cannot run here, so the lowering is checked with ``mypy --strict`` against stubs generated
from the ``tensorrt-cu12-bindings`` 11.4 wheel (tools/trt_stubs/make_stubs.py: PyPI download, a C
shim for libnvinfer, pybind11-stubgen; cached in ``.stubs/``). A second test proves the check can
fail: API misuse that TensorRT 11 would reject at run time must be rejected statically.

Needs network access (PyPI) and a C compiler on the first run; without them these tests FAIL (not
skip), so CI never silently stops checking.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
STUBS_CACHE = ROOT / ".stubs"
MAKE_STUBS = ROOT / "tools" / "trt_stubs" / "make_stubs.py"
MYPY_CONFIG = ROOT / "tools" / "trt_stubs" / "mypy.ini"
BACKEND = ROOT / "trtdsl" / "backends" / "tensorrt"


@pytest.fixture(scope="module")
def stubs_dir() -> Path:
    proc = subprocess.run([sys.executable, str(MAKE_STUBS), "--out", str(STUBS_CACHE)],
                          capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert proc.returncode == 0, f"generating the TensorRT stubs failed:\n{proc.stderr}\n{proc.stdout}"
    path = Path(proc.stdout.strip().splitlines()[-1])
    assert (path / "tensorrt" / "tensorrt.pyi").is_file()
    assert (path / "tensorrt" / "plugin" / "__init__.pyi").is_file()
    return path


def run_mypy(stubs: Path, targets: list[Path], cache_name: str) -> subprocess.CompletedProcess[str]:
    """The one mypy invocation every check here uses: --strict, MYPYPATH = the generated stubs."""
    env = dict(os.environ, MYPYPATH=str(stubs))
    cmd = [sys.executable, "-m", "mypy", "--strict", "--config-file", str(MYPY_CONFIG),
           "--cache-dir", str(STUBS_CACHE / "mypy-cache" / cache_name), "--no-error-summary",
           *map(str, targets)]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=600, cwd=ROOT, env=env)


def test_backend_passes_strict_mypy_against_tensorrt_11_stubs(stubs_dir: Path) -> None:
    proc = run_mypy(stubs_dir, [BACKEND], "backend")
    assert proc.returncode == 0, f"mypy --strict found problems:\n{proc.stdout}\n{proc.stderr}"


WRONG = '''\
import tensorrt as trt


def matmul(network: trt.INetworkDefinition, a: trt.ITensor, b: trt.ITensor) -> None:
    op = trt.MatrixOperation.NONE
    network.add_matrix_multiplyy(a, op, b, op)


def fp16_config(config: trt.IBuilderConfig) -> None:
    config.set_flag(trt.BuilderFlag.FP16)  # removed: TensorRT 11 networks are strongly typed
'''

RIGHT = '''\
import tensorrt as trt


def matmul(network: trt.INetworkDefinition, a: trt.ITensor, b: trt.ITensor) -> None:
    op = trt.MatrixOperation.NONE
    network.add_matrix_multiply(a, op, b, op)


def tf32_config(config: trt.IBuilderConfig) -> None:
    config.set_flag(trt.BuilderFlag.TF32)
'''


def test_the_check_rejects_wrong_tensorrt_api_use(stubs_dir: Path, tmp_path: Path) -> None:
    wrong, right = tmp_path / "wrong_use.py", tmp_path / "right_use.py"
    wrong.write_text(WRONG)
    right.write_text(RIGHT)  # the control: same code with the real names passes
    proc = run_mypy(stubs_dir, [wrong, right], "snippet")
    assert proc.returncode != 0, proc.stdout
    errors = [line for line in proc.stdout.splitlines() if ": error:" in line]
    assert any("wrong_use.py:6" in e and '"add_matrix_multiplyy"' in e for e in errors), errors
    assert any("wrong_use.py:10" in e and '"FP16"' in e and "BuilderFlag" in e for e in errors), errors
    assert not [e for e in errors if "right_use.py" in e], errors
    assert len(errors) == 2, errors
