"""Loading an engine directory into a server, and running uvicorn in a background thread (tests,
``tools/soak.py``, notebooks) on 127.0.0.1."""

from __future__ import annotations

import socket
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import ConfigError
from ..runtime.executor import Executor

__all__ = ["LoadedServer", "ServerThread", "load_server", "load_tokenizer", "free_port"]


def load_tokenizer(engine_dir: str | Path) -> Any:
    """The engine directory's tokenizer (``transformers.AutoTokenizer``), or None if it has none."""
    engine_dir = Path(engine_dir)
    if not ((engine_dir / "tokenizer_config.json").is_file() or (engine_dir / "tokenizer.json").is_file()):
        return None
    from transformers import AutoTokenizer
    return AutoTokenizer.from_pretrained(str(engine_dir))


@dataclass
class LoadedServer:
    """An app with the executor and tokenizer behind it."""

    app: Any
    executor: Executor
    tokenizer: Any

    def shutdown(self) -> None:
        self.app.state.trtdsl.shutting_down = True
        self.executor.shutdown()


def load_server(engine_dir: str | Path, *, model_name: str | None = None, **executor_kwargs: Any) -> LoadedServer:
    """Load ``engine_dir`` into an :class:`Executor` (``executor_kwargs`` go to it) and an app."""
    from .app import create_app
    executor = Executor(engine_dir, **executor_kwargs)
    tokenizer = load_tokenizer(engine_dir)
    name = model_name or Path(engine_dir).resolve().name
    return LoadedServer(create_app(executor, tokenizer, name), executor, tokenizer)


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


class ServerThread:
    """uvicorn serving ``app`` on ``host:port`` in a daemon thread; ``stop()`` shuts it down."""

    def __init__(self, app: Any, host: str = "127.0.0.1", port: int | None = None,
                 log_level: str = "warning"):
        import uvicorn
        if host not in ("127.0.0.1", "localhost", "::1"):
            raise ConfigError(f"ServerThread serves loopback only, got host {host!r}")
        self.host, self.port = host, port or free_port(host)
        config = uvicorn.Config(app, host=self.host, port=self.port, log_level=log_level,
                                access_log=False, lifespan="off")
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, name="trtdsl-uvicorn", daemon=True)

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def start(self, timeout: float = 30.0) -> "ServerThread":
        self.thread.start()
        deadline = time.monotonic() + timeout
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError(f"uvicorn did not start on {self.url}")
            time.sleep(0.01)
        return self

    def stop(self, timeout: float = 10.0) -> None:
        self.server.should_exit = True
        self.thread.join(timeout)

    def __enter__(self) -> "ServerThread":
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()
