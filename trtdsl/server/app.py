"""The OpenAI-compatible HTTP server: FastAPI over an :class:`~trtdsl.runtime.executor.Executor`.

Endpoints: ``POST /v1/completions``, ``POST /v1/chat/completions`` (JSON or SSE streaming with
``stream_options.include_usage``), ``GET /v1/models``, ``GET /health``, ``GET /metrics``.

Errors are OpenAI-shaped (``{"error": {"message", "type", "param", "code"}}``): 400 for invalid
requests (naming the field), 429 when the executor's bounded queue is full, 503 while shutting down.
A client that disconnects, streaming or not, cancels its requests, which frees their K/V blocks.
Each choice also carries ``token_ids`` (an extension, ignored by OpenAI clients).
"""

from __future__ import annotations

import asyncio
import time
import uuid
from typing import Any, AsyncIterator, Callable

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse

from ..errors import ConfigError
from ..runtime.executor import Executor, ExecutorError, QueueFullError
from .metrics import ServerMetrics
from .protocol import InvalidRequest, SamplingRequest, error_body, parse_chat, parse_completion
from .streaming import ChoiceDelta, ChoiceStream, merge_choices, submit_choices

__all__ = ["create_app", "ServerState"]

_DISCONNECT_POLL_S = 0.1


class ServerState:
    """What the handlers share: the executor, the tokenizer (or None), names and metrics."""

    def __init__(self, executor: Executor, tokenizer: Any, model_name: str, end_id: int | None):
        self.executor = executor
        self.tokenizer = tokenizer
        self.model_name = model_name
        self.end_id = end_id
        self.metrics = ServerMetrics()
        self.created = int(time.time())
        self.shutting_down = False


def create_app(executor: Executor, tokenizer: Any = None, model_name: str = "trtdsl",
               end_id: int | None = None) -> FastAPI:
    """The FastAPI app serving ``executor``. ``end_id`` defaults to the tokenizer's EOS, else the
    engine's ``eos_token_id``."""
    if end_id is None:
        end_id = getattr(tokenizer, "eos_token_id", None)
    if end_id is None:
        eos: Any = (executor.engine.model_config or {}).get("eos_token_id")
        first: Any = eos[0] if isinstance(eos, list) and eos else eos
        end_id = int(first) if first is not None else None
    state = ServerState(executor, tokenizer, model_name, end_id)
    app = FastAPI(title="trtdsl", docs_url=None, redoc_url=None)
    app.state.trtdsl = state

    @app.exception_handler(InvalidRequest)
    async def _invalid(_: Request, exc: InvalidRequest) -> JSONResponse:
        state.metrics.requests.labels("rejected" if exc.status >= 429 else "invalid").inc()
        return JSONResponse(error_body(exc.message, exc.type, exc.param, exc.code), exc.status)

    @app.exception_handler(Exception)
    async def _internal(_: Request, exc: Exception) -> JSONResponse:
        state.metrics.requests.labels("error").inc()
        return JSONResponse(error_body(f"internal error: {type(exc).__name__}: {exc}", "server_error"),
                            500)

    @app.get("/health")
    async def health() -> Response:
        ok = executor.is_alive and not state.shutting_down
        return JSONResponse({"status": "ok" if ok else "unavailable"}, 200 if ok else 503)

    @app.get("/metrics")
    async def metrics() -> Response:
        return Response(state.metrics.render(executor.stats()),
                        media_type="text/plain; version=0.0.4; charset=utf-8")

    @app.get("/v1/models")
    async def models() -> dict[str, Any]:
        return {"object": "list", "data": [{"id": model_name, "object": "model", "created": state.created,
                                            "owned_by": "trtdsl", "max_model_len": executor.limits.max_seq_len}]}

    @app.post("/v1/completions")
    async def completions(request: Request) -> Response:
        arrival = time.perf_counter()
        req = parse_completion(await _json(request))
        ids = _completion_ids(state, req)
        return await _serve(state, request, req, ids, arrival, chat=False)

    @app.post("/v1/chat/completions")
    async def chat(request: Request) -> Response:
        arrival = time.perf_counter()
        req = parse_chat(await _json(request))
        ids = _chat_ids(state, req)
        return await _serve(state, request, req, ids, arrival, chat=True)

    return app


async def _json(request: Request) -> Any:
    try:
        return await request.json()
    except ValueError as exc:
        raise InvalidRequest(f"the request body is not valid JSON: {exc}", None, "invalid_json") from None


def _check_model(state: ServerState, req: SamplingRequest) -> None:
    if req.model is not None and req.model != state.model_name:
        raise InvalidRequest(f"the model {req.model!r} does not exist; this server serves "
                             f"{state.model_name!r}", "model", "model_not_found", status=404)


def _completion_ids(state: ServerState, req: SamplingRequest) -> list[int]:
    _check_model(state, req)
    if isinstance(req.prompt, list):
        vocab = state.executor.limits.vocab_size
        bad = [t for t in req.prompt if not 0 <= t < vocab]
        if bad:
            raise InvalidRequest(f"'prompt' holds token ids outside the vocabulary [0, {vocab}): "
                                 f"{bad[:5]}", "prompt", "invalid_value")
        return list(req.prompt)
    if state.tokenizer is None:
        raise InvalidRequest("this engine has no tokenizer: send 'prompt' as a list of token ids",
                             "prompt", "invalid_type")
    return list(state.tokenizer(req.prompt)["input_ids"])


def _chat_ids(state: ServerState, req: SamplingRequest) -> list[int]:
    _check_model(state, req)
    tok = state.tokenizer
    if tok is None or not getattr(tok, "chat_template", None):
        raise InvalidRequest("this engine's tokenizer has no chat template; use /v1/completions",
                             "messages", "unsupported")
    try:
        ids = tok.apply_chat_template(req.prompt, add_generation_prompt=True, tokenize=True,
                                      return_dict=False)
    except Exception as exc:  # noqa: BLE001 - templates raise anything (jinja TemplateError, ...)
        raise InvalidRequest(f"the chat template rejected 'messages': {exc}", "messages",
                             "invalid_value") from None
    return [int(t) for t in ids]


def _limits(state: ServerState, req: SamplingRequest, ids: list[int], chat: bool) -> int:
    """Check the prompt against the engine; returns max_tokens (default: 16 for completions as
    in OpenAI's API, the rest of the context for chat)."""
    lim = state.executor.limits
    field = "messages" if chat else "prompt"
    if len(ids) > lim.max_input_len:
        raise InvalidRequest(f"'{field}' has {len(ids)} tokens; this engine accepts at most "
                             f"{lim.max_input_len}", field, "context_length_exceeded")
    room = lim.max_seq_len - len(ids)
    if req.max_tokens is None:
        return max(1, min(16, room) if not chat else room)
    if req.max_tokens > room:
        raise InvalidRequest(f"'max_tokens' is {req.max_tokens} but the prompt has {len(ids)} tokens "
                             f"and the context is {lim.max_seq_len}: at most {room}", "max_tokens",
                             "context_length_exceeded")
    return req.max_tokens


async def _serve(state: ServerState, request: Request, req: SamplingRequest, ids: list[int],
                 arrival: float, chat: bool) -> Response:
    if state.shutting_down:
        raise InvalidRequest("the server is shutting down", None, "unavailable", status=503,
                             type_="server_error")
    max_tokens = _limits(state, req, ids, chat)
    try:
        streams = submit_choices(state.executor, state.tokenizer, req, ids, max_tokens, state.end_id)
    except QueueFullError as exc:
        raise InvalidRequest(str(exc), None, "rate_limit_exceeded", status=429,
                             type_="rate_limit_error") from None
    except ConfigError as exc:
        raise InvalidRequest(str(exc), None, "invalid_value") from None
    state.metrics.prompt_tokens.inc(len(ids) * len(streams))
    rid = ("chatcmpl-" if chat else "cmpl-") + uuid.uuid4().hex
    observe = _observer(state, arrival)
    if req.stream:
        body = _sse(state, request, req, streams, rid, chat, observe, len(ids))
        return StreamingResponse(body, media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
    collect = asyncio.ensure_future(_collect(state, req, streams, rid, chat, observe, len(ids)))
    while not collect.done():
        await asyncio.wait({collect}, timeout=_DISCONNECT_POLL_S)
        if not collect.done() and await request.is_disconnected():
            collect.cancel()
            _cancel_all(state, streams)
            state.metrics.requests.labels("disconnected").inc()
            return Response(status_code=499)
    return JSONResponse(collect.result())


def _cancel_all(state: ServerState, streams: list[ChoiceStream]) -> None:
    for s in streams:
        state.executor.cancel(s.request_id)


def _observer(state: ServerState, arrival: float) -> Callable[[int, int], None]:
    """Records TTFT / ITL per choice as tokens reach the handler."""
    last: dict[int, float] = {}

    def observe(index: int, n_tokens: int) -> None:
        if n_tokens == 0:
            return
        now = time.perf_counter()
        if index in last:
            state.metrics.itl.observe(now - last[index])
        else:
            state.metrics.ttft.observe(now - arrival)
        last[index] = now
        state.metrics.observe_tokens(n_tokens)

    return observe


async def _collect(state: ServerState, req: SamplingRequest, streams: list[ChoiceStream], rid: str,
                   chat: bool, observe: Callable[[int, int], None], n_prompt: int) -> dict[str, Any]:
    t0 = time.perf_counter()
    deltas: list[list[ChoiceDelta]] = [[] for _ in streams]
    try:
        async for index, delta in merge_choices(streams):
            observe(index, len(delta.token_ids))
            deltas[index].append(delta)
    except ExecutorError as exc:
        raise RuntimeError(f"generation failed: {exc}") from exc
    finally:
        _cancel_all(state, streams)  # no-op for finished ones; frees blocks on any early exit
    state.metrics.e2e.observe(time.perf_counter() - t0)
    state.metrics.requests.labels("ok").inc()
    choices = [s.final_choice(deltas[i], chat) for i, s in enumerate(streams)]
    completion = sum(len(c["token_ids"]) for c in choices)
    return {"id": rid, "object": "chat.completion" if chat else "text_completion",
            "created": int(time.time()), "model": state.model_name, "choices": choices,
            "usage": _usage(n_prompt, completion)}


def _usage(prompt: int, completion: int) -> dict[str, int]:
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}


async def _sse(state: ServerState, request: Request, req: SamplingRequest, streams: list[ChoiceStream],
               rid: str, chat: bool, observe: Callable[[int, int], None],
               n_prompt: int) -> AsyncIterator[bytes]:
    created, obj = int(time.time()), "chat.completion.chunk" if chat else "text_completion"
    head = {"id": rid, "object": obj, "created": created, "model": state.model_name}
    watcher = asyncio.ensure_future(_watch_disconnect(state, request, streams))
    completion, ok = 0, False
    try:
        if chat:
            yield _event({**head, "choices": [{"index": i, "delta": {"role": "assistant", "content": ""},
                                               "logprobs": None, "finish_reason": None}
                                              for i in range(len(streams))]})
        async for index, delta in merge_choices(streams):
            observe(index, len(delta.token_ids))
            completion += len(delta.token_ids)
            chunk = streams[index].chunk_choice(delta, chat)
            if chunk is not None:
                yield _event({**head, "choices": [chunk]})
        if req.include_usage:
            yield _event({**head, "choices": [], "usage": _usage(n_prompt, completion)})
        yield b"data: [DONE]\n\n"
        ok = True
    except ExecutorError as exc:
        yield _event(error_body(f"generation failed: {exc}", "server_error"))
    finally:
        watcher.cancel()
        _cancel_all(state, streams)
        state.metrics.requests.labels("ok" if ok else "disconnected").inc()


async def _watch_disconnect(state: ServerState, request: Request, streams: list[ChoiceStream]) -> None:
    """Cancel the requests as soon as the client goes away, even while no token is being sent
    (a queued request would otherwise only notice at its first write)."""
    while True:
        await asyncio.sleep(_DISCONNECT_POLL_S * 2)
        if await request.is_disconnected():
            _cancel_all(state, streams)
            return


def _event(payload: dict[str, Any]) -> bytes:
    import json
    return b"data: " + json.dumps(payload, separators=(",", ":")).encode() + b"\n\n"
