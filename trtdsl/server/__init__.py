"""The OpenAI-compatible server over the in-flight batching executor (``trtdsl serve``).

>>> from trtdsl.server import create_app, load_server              # doctest: +SKIP
>>> app = load_server("engines/smollm2").app                        # doctest: +SKIP
"""

from __future__ import annotations

from typing import Any

__all__ = ["create_app", "ServerState", "LoadedServer", "ServerThread", "load_server"]


def __getattr__(name: str) -> Any:
    # Imported on first use, so `trtdsl serve` can exist (and explain what to install) on an install
    # without the `serve` extra (FastAPI, uvicorn, prometheus-client).
    if name in ("create_app", "ServerState"):
        from . import app
        return getattr(app, name)
    if name in ("LoadedServer", "ServerThread", "load_server"):
        from . import runner
        return getattr(runner, name)
    raise AttributeError(f"module 'trtdsl.server' has no attribute {name!r}")
