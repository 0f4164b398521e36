"""A program that never shuts its Executor down still exits cleanly: the executor's loop thread is
stopped at interpreter exit instead of being killed inside torch (which aborted the process)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

SCRIPT = """
import sys, time
from trtdsl.runtime.executor import Executor, GenerationRequest
ex = Executor(sys.argv[1])
ex.result(ex.submit(GenerationRequest([5, 6, 7], 2)))       # warm
for _ in range(4):                                           # leave the loop busy inside torch
    ex.submit(GenerationRequest(list(range(10, 150)), 100))
time.sleep(0.05)
"""


def test_process_exits_cleanly_without_shutdown(tiny_engine: Path) -> None:
    for _ in range(3):  # exiting mid-step aborted the process most of the time: repeat
        proc = subprocess.run([sys.executable, "-c", SCRIPT, str(tiny_engine)], capture_output=True,
                              text=True, timeout=120)
        assert proc.returncode == 0, proc.stderr[-2000:]
        assert "terminate called" not in proc.stderr
