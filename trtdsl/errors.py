"""Typed errors. Every error a user can trigger is one of these, with a message that names the
op / input / tensor at fault and says what was expected, so no one has to read a traceback from
deep inside the library."""

from __future__ import annotations


class TrtdslError(Exception):
    """Base class of every error trtdsl raises on purpose."""


class ShapeError(TrtdslError, ValueError):
    """An op got inputs whose shapes do not fit (rank, broadcasting, matmul K dims, ...)."""


class DTypeError(TrtdslError, TypeError):
    """An op got inputs whose dtypes do not fit. trtdsl is strongly typed: cast explicitly."""


class NetworkError(TrtdslError):
    """Tensors from different networks were mixed, or a network-level rule was broken."""


class ScopeError(NetworkError):
    """An operation needed an active ``with network.scope():`` block and none was active."""


class ProfileError(TrtdslError, ValueError):
    """An optimization profile is inconsistent, or a run-time input lies outside every profile."""


class CheckpointError(TrtdslError):
    """A checkpoint or state dict does not match the model (lists every problem at once)."""


class ConfigError(TrtdslError, ValueError):
    """A model or build configuration is unsupported or inconsistent."""


class EngineError(TrtdslError):
    """An engine file is corrupt, truncated or was written by an incompatible version."""


class BackendError(TrtdslError):
    """A backend cannot lower or run something (missing library, unsupported dtype, ...)."""


class PluginError(TrtdslError):
    """A plugin is unknown, mis-configured, or its kernels could not be built or loaded."""
