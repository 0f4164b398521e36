"""Engine directories: ``config.json`` (model config, build config, versions) + ``rank0.engine``
(the optimized graph and its weights, see :mod:`trtdsl.engine.format`) + the tokenizer files.

>>> engine = Engine(network, build_config={"dtype": "float32"})
>>> engine.save("engines/tiny")
>>> engine = Engine.load("engines/tiny")          # mmap, zero copy, checksum verified
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import EngineError
from ..ir.network import Network
from .format import FORMAT_VERSION, EngineFile, read_engine_file, write_engine_file
from .graph_json import network_from_dict, network_to_dict

__all__ = ["Engine", "FORMAT_VERSION", "CONFIG_NAME", "ENGINE_NAME", "read_config"]

CONFIG_NAME = "config.json"
ENGINE_NAME = "rank0.engine"


@dataclass
class Engine:
    """A built network plus what the runtime needs to run it.

    ``model_type``/``model_config`` describe the source model (``None`` for a hand-built network);
    ``build_config`` is :meth:`trtdsl.BuildConfig.to_dict`; ``tokenizer_dir`` (when set) holds
    tokenizer files to copy into the engine directory on save."""

    network: Network
    build_config: dict[str, Any] = field(default_factory=dict)
    model_type: str | None = None
    model_config: dict[str, Any] | None = None
    tokenizer_dir: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    _file: EngineFile | None = field(default=None, repr=False)

    # -- saving ------------------------------------------------------------------------------------
    def config_dict(self) -> dict[str, Any]:
        from .. import __version__
        return {"format_version": FORMAT_VERSION, "trtdsl_version": __version__,
                "engine_file": ENGINE_NAME, "model_type": self.model_type, "model_config": self.model_config,
                "build_config": self.build_config, "network": self.network.name,
                "inputs": {n: {"dtype": s.dtype.value, "shape": list(s.shape)}
                           for n, s in self.network.input_specs.items()},
                "outputs": list(self.network.outputs), **self.extra}

    def save(self, engine_dir: str | Path, progress: bool = False) -> Path:
        """Write ``config.json``, ``rank0.engine`` and the tokenizer files into ``engine_dir``."""
        engine_dir = Path(engine_dir)
        engine_dir.mkdir(parents=True, exist_ok=True)
        config = self.config_dict()
        write_engine_file(engine_dir / ENGINE_NAME,
                          lambda ref: network_to_dict(self.network, ref),
                          {"model_type": self.model_type, "build_config": self.build_config}, progress)
        if self.tokenizer_dir:
            _copy_tokenizer(Path(self.tokenizer_dir), engine_dir)
            config["tokenizer"] = True
        else:
            config["tokenizer"] = (engine_dir / "tokenizer_config.json").is_file()
        (engine_dir / CONFIG_NAME).write_text(json.dumps(config, indent=2) + "\n")
        return engine_dir

    # -- loading -----------------------------------------------------------------------------------
    @classmethod
    def load(cls, engine_dir: str | Path, verify: bool = True) -> "Engine":
        """Map ``rank0.engine`` (zero copy), verify its checksum and rebuild the network."""
        engine_dir = Path(engine_dir)
        config = read_config(engine_dir)
        t0 = time.perf_counter()
        file = read_engine_file(engine_dir / config.get("engine_file", ENGINE_NAME), verify=verify)
        network = network_from_dict(file.graph, file.weights)
        known = {"format_version", "trtdsl_version", "engine_file", "model_type", "model_config",
                 "build_config", "network", "inputs", "outputs", "tokenizer"}
        engine = cls(network, config.get("build_config") or {}, config.get("model_type"),
                     config.get("model_config"), None, {k: v for k, v in config.items() if k not in known},
                     file)
        engine.extra["load_seconds"] = time.perf_counter() - t0
        return engine

    @property
    def path(self) -> Path | None:
        return self._file.path.parent if self._file is not None else None


def read_config(engine_dir: str | Path) -> dict[str, Any]:
    """The engine directory's ``config.json``, with a clear error when missing or unreadable."""
    engine_dir = Path(engine_dir)
    path = engine_dir / CONFIG_NAME
    if not engine_dir.is_dir():
        raise EngineError(f"engine directory {engine_dir} does not exist; build one with `trtdsl build`")
    if not path.is_file():
        raise EngineError(f"{engine_dir} has no {CONFIG_NAME}; it is not an engine directory")
    try:
        config = json.loads(path.read_text())
    except (ValueError, UnicodeDecodeError) as exc:
        raise EngineError(f"{path} is not valid JSON ({exc})") from None
    version = config.get("format_version")
    if version != FORMAT_VERSION:
        raise EngineError(f"{path}: engine format version {version}, this trtdsl reads {FORMAT_VERSION}; "
                          "rebuild the engine")
    return config


_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.json",
                    "merges.txt", "tokenizer.model", "added_tokens.json", "chat_template.jinja",
                    "generation_config.json")


def _copy_tokenizer(src: Path, dst: Path) -> None:
    import shutil
    for name in _TOKENIZER_FILES:
        if (src / name).is_file() and src.resolve() != dst.resolve():
            shutil.copyfile(src / name, dst / name)
