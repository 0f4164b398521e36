"""The OpenAI-compatible server over the in-flight batching executor (``trtdsl serve``).

>>> from trtdsl.server import create_app, load_server              # doctest: +SKIP
>>> app = load_server("engines/smollm2").app                        # doctest: +SKIP
"""

from __future__ import annotations

from .app import ServerState, create_app
from .runner import LoadedServer, ServerThread, load_server

__all__ = ["create_app", "ServerState", "LoadedServer", "ServerThread", "load_server"]
