"""OpenAI request parsing and validation, done by hand (not with pydantic models) so every error
names the offending field the way OpenAI's API does: ``{"error": {"message", "type":
"invalid_request_error", "param", "code"}}``.

Parsing produces a frozen :class:`SamplingRequest`; everything the handlers need is decided here.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Mapping

__all__ = ["InvalidRequest", "SamplingRequest", "parse_completion", "parse_chat", "error_body"]

MAX_N = 16
MAX_STOPS = 4
MAX_LOGPROBS_COMPLETION = 5
MAX_TOP_LOGPROBS_CHAT = 20


class InvalidRequest(Exception):
    """A client error; answered with ``status`` and an OpenAI-style error body."""

    def __init__(self, message: str, param: str | None = None, code: str | None = None,
                 status: int = 400, type_: str = "invalid_request_error"):
        super().__init__(message)
        self.message, self.param, self.code, self.status, self.type = message, param, code, status, type_


def error_body(message: str, type_: str = "invalid_request_error", param: str | None = None,
               code: str | None = None) -> dict[str, Any]:
    return {"error": {"message": message, "type": type_, "param": param, "code": code}}


@dataclass(frozen=True)
class SamplingRequest:
    """What a completion or chat request asks for, validated. ``prompt`` is text or token ids
    (completions) or the chat messages (chat)."""

    prompt: Any
    max_tokens: int | None
    n: int
    stream: bool
    include_usage: bool
    stop: tuple[str, ...]
    temperature: float
    top_p: float
    top_k: int
    seed: int | None
    logprobs: int | None  # None: no logprobs; k >= 0: the sampled token's and the top k
    presence_penalty: float
    frequency_penalty: float
    repetition_penalty: float
    model: str | None
    ignore_eos: bool = False  # vLLM's extension: run to max_tokens even past the end token


def _number(body: Mapping[str, Any], key: str, default: float, lo: float, hi: float) -> float:
    value = body.get(key, default)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise InvalidRequest(f"'{key}' must be a number, got {value!r}", key, "invalid_type")
    if not lo <= value <= hi:
        raise InvalidRequest(f"'{key}' must be in [{lo}, {hi}], got {value}", key, "invalid_value")
    return float(value)


def _int(body: Mapping[str, Any], key: str, default: int | None, lo: int, hi: int | None) -> int | None:
    value = body.get(key, default)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidRequest(f"'{key}' must be an integer, got {value!r}", key, "invalid_type")
    if value < lo or (hi is not None and value > hi):
        bound = f">= {lo}" if hi is None else f"in [{lo}, {hi}]"
        raise InvalidRequest(f"'{key}' must be {bound}, got {value}", key, "invalid_value")
    return value


def _bool(body: Mapping[str, Any], key: str, default: bool) -> bool:
    value = body.get(key, default)
    if value is None:
        return default
    if not isinstance(value, bool):
        raise InvalidRequest(f"'{key}' must be a boolean, got {value!r}", key, "invalid_type")
    return value


def _stop(body: Mapping[str, Any]) -> tuple[str, ...]:
    stop = body.get("stop")
    if stop is None:
        return ()
    if isinstance(stop, str):
        stop = [stop]
    if not isinstance(stop, list) or not all(isinstance(s, str) and s for s in stop):
        raise InvalidRequest("'stop' must be a non-empty string or a list of non-empty strings",
                             "stop", "invalid_type")
    if len(stop) > MAX_STOPS:
        raise InvalidRequest(f"'stop' may hold at most {MAX_STOPS} sequences, got {len(stop)}", "stop",
                             "invalid_value")
    return tuple(stop)


def _common(body: Any, prompt: Any, logprobs: int | None, max_tokens_keys: tuple[str, ...]) -> SamplingRequest:
    stream = _bool(body, "stream", False)
    options = body.get("stream_options")
    if options is not None and (not isinstance(options, dict) or not stream):
        raise InvalidRequest("'stream_options' must be an object and is only allowed with stream=true",
                             "stream_options", "invalid_value")
    include_usage = bool(options and _bool(options, "include_usage", False))
    max_tokens = None
    for key in max_tokens_keys:
        if body.get(key) is not None:
            max_tokens = _int(body, key, None, 1, None)
            break
    model = body.get("model")
    if model is not None and not isinstance(model, str):
        raise InvalidRequest(f"'model' must be a string, got {model!r}", "model", "invalid_type")
    return SamplingRequest(
        prompt=prompt, max_tokens=max_tokens, n=int(_int(body, "n", 1, 1, MAX_N) or 1), stream=stream,
        include_usage=include_usage, stop=_stop(body),
        temperature=_number(body, "temperature", 1.0, 0.0, 2.0),
        # top_p=0 (allowed by OpenAI) keeps only the most likely token, as a tiny top_p does.
        top_p=max(_number(body, "top_p", 1.0, 0.0, 1.0), 1e-9),
        top_k=int(_int(body, "top_k", 0, 0, None) or 0), seed=_int(body, "seed", None, 0, 2**63 - 1),
        logprobs=logprobs, presence_penalty=_number(body, "presence_penalty", 0.0, -2.0, 2.0),
        frequency_penalty=_number(body, "frequency_penalty", 0.0, -2.0, 2.0),
        repetition_penalty=_number(body, "repetition_penalty", 1.0, 0.01, 10.0), model=model,
        ignore_eos=_bool(body, "ignore_eos", False))


def _check_object(body: Any) -> None:
    if not isinstance(body, dict):
        raise InvalidRequest("the request body must be a JSON object", None, "invalid_json")
    if body.get("echo"):
        raise InvalidRequest("'echo' is not supported", "echo", "unsupported")
    if body.get("best_of") not in (None, 1):
        raise InvalidRequest("'best_of' is not supported", "best_of", "unsupported")


def parse_completion(body: Any) -> SamplingRequest:
    """``/v1/completions``: ``prompt`` is a string, a list of token ids, or a one-element list of
    either (batched prompts are not supported: send one request per prompt)."""
    _check_object(body)
    prompt = body.get("prompt")
    if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], (str, list)):
        prompt = prompt[0]
    if isinstance(prompt, str):
        if not prompt:
            raise InvalidRequest("'prompt' is empty", "prompt", "invalid_value")
    elif isinstance(prompt, list) and prompt and all(isinstance(t, int) and not isinstance(t, bool)
                                                     for t in prompt):
        prompt = [int(t) for t in prompt]
    else:
        raise InvalidRequest("'prompt' must be a non-empty string or a non-empty list of token ids",
                             "prompt", "invalid_type" if prompt is not None else "missing")
    logprobs = _int(body, "logprobs", None, 0, MAX_LOGPROBS_COMPLETION)
    return _common(body, prompt, logprobs, ("max_tokens",))


def parse_chat(body: Any) -> SamplingRequest:
    """``/v1/chat/completions``: ``messages`` are ``{"role", "content"}`` objects with string
    content (or a list of ``{"type": "text", "text"}`` parts)."""
    _check_object(body)
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise InvalidRequest("'messages' must be a non-empty list", "messages",
                             "missing" if messages is None else "invalid_type")
    clean = []
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or m.get("role") not in ("system", "user", "assistant", "developer"):
            raise InvalidRequest(f"messages[{i}] must be an object with a role of system, user, "
                                 "assistant or developer", f"messages[{i}].role", "invalid_value")
        content = m.get("content")
        if isinstance(content, list):
            if not all(isinstance(p, dict) and p.get("type") == "text" and isinstance(p.get("text"), str)
                       for p in content):
                raise InvalidRequest(f"messages[{i}].content: only text parts are supported",
                                     f"messages[{i}].content", "invalid_value")
            content = "".join(p["text"] for p in content)
        if not isinstance(content, str):
            raise InvalidRequest(f"messages[{i}].content must be a string", f"messages[{i}].content",
                                 "invalid_type")
        clean.append({"role": "system" if m["role"] == "developer" else m["role"], "content": content})
    want = _bool(body, "logprobs", False)
    top = _int(body, "top_logprobs", None, 0, MAX_TOP_LOGPROBS_CHAT)
    if top is not None and not want:
        raise InvalidRequest("'top_logprobs' needs 'logprobs': true", "top_logprobs", "invalid_value")
    return _common(body, clean, (top or 0) if want else None, ("max_completion_tokens", "max_tokens"))
