"""Per-choice streaming: executor outputs -> incremental text (with stop strings) -> OpenAI
choice objects. One :class:`ChoiceStream` per choice (``n`` of them per HTTP request)."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any, AsyncIterator, Sequence

from ..runtime.executor import Executor, GenerationRequest
from ..runtime.sampling import SamplingParams
from .protocol import SamplingRequest

__all__ = ["ChoiceDelta", "ChoiceStream", "Detokenizer", "merge_choices", "submit_choices"]


class Detokenizer:
    """Incremental detokenization with stop strings.

    Decodes the whole output each time (outputs are short next to the model step) so multi-byte
    characters split across tokens come out whole: text ending in U+FFFD is held back until the
    next token completes it. While stop strings are active, the last ``len(longest stop) - 1``
    characters are held back too, so a stop string is never partly streamed."""

    def __init__(self, tokenizer: Any, stops: Sequence[str]):
        self.tokenizer = tokenizer
        self.stops = tuple(stops)
        self.hold = max((len(s) for s in self.stops), default=1) - 1
        self.ids: list[int] = []
        self.sent = 0
        self.text = ""

    def add(self, token_ids: Sequence[int]) -> tuple[str, bool]:
        """Add tokens; returns the new text that may be sent, and whether a stop string matched
        (the text then ends right before it)."""
        self.ids.extend(token_ids)
        if self.tokenizer is None:
            return "", False
        text = self.tokenizer.decode(self.ids, skip_special_tokens=True)
        for stop in self.stops:  # search only where a new match can start
            at = text.find(stop, max(0, self.sent - len(stop) + 1))
            if at != -1:
                self.text = text[:at]
                return self._emit(len(self.text)), True
        self.text = text
        end = len(text) - self.hold
        if text.endswith("\ufffd"):
            end = min(end, len(text.rstrip("\ufffd")))
        return self._emit(end), False

    def flush(self) -> str:
        """The held-back text, at the end of generation."""
        return self._emit(len(self.text))

    def _emit(self, end: int) -> str:
        end = max(end, self.sent)
        out, self.sent = self.text[self.sent:end], end
        return out

    def token_text(self, token_id: int) -> str:
        if self.tokenizer is None:
            return str(token_id)
        return str(self.tokenizer.decode([token_id]))


@dataclass(frozen=True)
class ChoiceDelta:
    """What one choice produced since its previous delta."""

    text: str
    token_ids: tuple[int, ...]
    logprobs: tuple[float, ...]
    top_logprobs: tuple[dict[int, float], ...]
    finish_reason: str | None


class ChoiceStream:
    """One choice: an executor request, its detokenizer and the OpenAI formatting."""

    def __init__(self, executor: Executor, request_id: int, index: int, detok: Detokenizer,
                 logprobs: int | None):
        self.executor, self.request_id, self.index = executor, request_id, index
        self.detok, self.logprobs = detok, logprobs
        self._unsent: list[int] = []  # token ids of deltas held back (no text yet)

    async def deltas(self) -> AsyncIterator[ChoiceDelta]:
        async for out in self.executor.astream(self.request_id):
            text, stopped = self.detok.add(out.token_ids)
            reason = "stop" if stopped else out.finish_reason
            if stopped:
                self.executor.cancel(self.request_id)
            elif out.finished:
                text += self.detok.flush()
            yield ChoiceDelta(text, out.token_ids, tuple(out.logprobs or ()),
                              tuple(out.top_logprobs or ()), reason)
            if stopped or out.finished:
                return

    # -- OpenAI formatting -------------------------------------------------------------------------
    def _chat_logprobs(self, d: ChoiceDelta) -> dict[str, Any] | None:
        if self.logprobs is None:
            return None
        content = []
        for tok, lp, top in zip(d.token_ids, d.logprobs, d.top_logprobs or ({},) * len(d.token_ids)):
            text = self.detok.token_text(tok)
            content.append({"token": text, "logprob": lp, "bytes": list(text.encode()),
                            "top_logprobs": [{"token": self.detok.token_text(t), "logprob": v,
                                              "bytes": list(self.detok.token_text(t).encode())}
                                             for t, v in top.items()]})
        return {"content": content}

    def _completion_logprobs(self, d: ChoiceDelta, offset: int) -> dict[str, Any] | None:
        if self.logprobs is None:
            return None
        tokens = [self.detok.token_text(t) for t in d.token_ids]
        offsets = []
        for t in tokens:
            offsets.append(offset)
            offset += len(t)
        return {"tokens": tokens, "token_logprobs": list(d.logprobs),
                "top_logprobs": [{self.detok.token_text(t): v for t, v in top.items()}
                                 for top in (d.top_logprobs or ({},) * len(d.token_ids))],
                "text_offset": offsets}

    def chunk_choice(self, d: ChoiceDelta, chat: bool) -> dict[str, Any] | None:
        """The streamed choice for one delta (None when there is nothing to send yet)."""
        self._unsent.extend(d.token_ids)
        if not d.text and d.finish_reason is None and self.logprobs is None:
            return None
        ids, self._unsent = self._unsent, []
        reason = _finish(d.finish_reason)
        if chat:
            return {"index": self.index, "delta": {"content": d.text} if d.text else {},
                    "logprobs": self._chat_logprobs(d), "finish_reason": reason, "token_ids": ids}
        return {"index": self.index, "text": d.text, "logprobs": self._completion_logprobs(d, 0),
                "finish_reason": reason, "token_ids": ids}

    def final_choice(self, deltas: list[ChoiceDelta], chat: bool) -> dict[str, Any]:
        """The non-streamed choice, from all of its deltas."""
        merged = ChoiceDelta("".join(d.text for d in deltas),
                             tuple(t for d in deltas for t in d.token_ids),
                             tuple(x for d in deltas for x in d.logprobs),
                             tuple(x for d in deltas for x in d.top_logprobs),
                             deltas[-1].finish_reason if deltas else "stop")
        reason = _finish(merged.finish_reason)
        if chat:
            return {"index": self.index, "message": {"role": "assistant", "content": merged.text},
                    "logprobs": self._chat_logprobs(merged), "finish_reason": reason,
                    "token_ids": list(merged.token_ids)}
        return {"index": self.index, "text": merged.text,
                "logprobs": self._completion_logprobs(merged, 0), "finish_reason": reason,
                "token_ids": list(merged.token_ids)}


def _finish(reason: str | None) -> str | None:
    # The executor says "cancelled" only if someone else cancelled the request (shutdown).
    return "abort" if reason == "cancelled" else reason


def submit_choices(executor: Executor, tokenizer: Any, req: SamplingRequest, ids: list[int],
                   max_tokens: int, end_id: int | None) -> list[ChoiceStream]:
    """Submit the ``n`` choices of a request (choice ``i`` uses ``seed + i``); all or none: if a
    later submit fails, the earlier ones are cancelled before the error propagates."""
    if req.ignore_eos:
        end_id = None
    streams: list[ChoiceStream] = []
    try:
        for i in range(req.n):
            sampling = SamplingParams(
                temperature=req.temperature, top_k=req.top_k, top_p=req.top_p,
                repetition_penalty=req.repetition_penalty, presence_penalty=req.presence_penalty,
                frequency_penalty=req.frequency_penalty,
                seed=None if req.seed is None else (req.seed + i) % 2**63)
            rid = executor.submit(GenerationRequest(ids, max_tokens, end_id, (), sampling, req.logprobs))
            streams.append(ChoiceStream(executor, rid, i, Detokenizer(tokenizer, req.stop), req.logprobs))
    except BaseException:
        for s in streams:
            executor.cancel(s.request_id)
        raise
    return streams


async def merge_choices(streams: list[ChoiceStream]) -> AsyncIterator[tuple[int, ChoiceDelta]]:
    """``(choice index, delta)`` from every choice as they arrive."""
    if len(streams) == 1:
        async for d in streams[0].deltas():
            yield 0, d
        return
    queue: asyncio.Queue[tuple[int, ChoiceDelta | BaseException | None]] = asyncio.Queue()

    async def pump(s: ChoiceStream) -> None:
        try:
            async for d in s.deltas():
                await queue.put((s.index, d))
        except Exception as exc:  # noqa: BLE001 - re-raised in the consumer
            await queue.put((s.index, exc))
        finally:
            await queue.put((s.index, None))

    tasks = [asyncio.ensure_future(pump(s)) for s in streams]
    try:
        open_ = len(tasks)
        while open_:
            index, item = await queue.get()
            if item is None:
                open_ -= 1
            elif isinstance(item, BaseException):
                raise item
            else:
                yield index, item
    finally:
        for t in tasks:
            t.cancel()
