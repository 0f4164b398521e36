"""``ModelRunner``: load an engine directory and generate, TensorRT-LLM's ``ModelRunner`` style.

>>> runner = ModelRunner.from_dir("engines/smollm2")
>>> out = runner.generate(["The capital of France is"], max_new_tokens=16, temperature=0.0)
>>> runner.tokenizer.decode(out["output_ids"][0, 0, out["input_lengths"][0]:out["sequence_lengths"][0, 0]])

Returned dict (``return_dict=True``), TensorRT-LLM's names: ``output_ids`` int32 ``[batch, 1,
max_len]`` (prompt + generated, padded with ``pad_id``), ``sequence_lengths`` int32 ``[batch, 1]``,
``context_logits`` (list of float32 ``[prompt_len, vocab]``, when ``output_context_logits``),
``generation_logits`` float32 ``[batch, 1, max_new_tokens, vocab]`` (when
``output_generation_logits``), ``log_probs`` float32 ``[batch, 1, max_new_tokens]`` and
``cum_log_probs`` ``[batch, 1]`` (when ``output_log_probs``); plus ``input_lengths``,
``finish_reasons`` and, with a tokenizer, ``output_texts`` (generated text only).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Iterator, Sequence

import torch

from ..engine import Engine
from ..errors import ConfigError
from .sampling import SamplingParams
from .session import SessionRequest, GenerationSession, RequestState

__all__ = ["ModelRunner"]


def _load_plugins() -> None:
    """Register every plugin an engine may contain before its network is run."""
    import importlib
    from ..passes import fused_plugins  # noqa: F401
    for name in ("trtdsl.plugins.attention",):
        try:
            importlib.import_module(name)
        except ImportError:
            pass


class ModelRunner:
    """Generation over one engine on one device."""

    def __init__(self, engine: Engine, device: str | torch.device = "cpu", tokenizer: Any = None,
                 enable_prefix_reuse: bool = True, use_executor: bool | None = None):
        _load_plugins()
        self.engine = engine
        self.device = torch.device(device)
        self.enable_prefix_reuse = enable_prefix_reuse
        # One generation code path with the server: the in-flight executor (when installed) runs the
        # requests; the static GenerationSession serves what it does not (logits, single steps).
        self.session: Any = None
        if use_executor is not False:
            try:
                from .executor_session import ExecutorSession
                self.session = ExecutorSession(engine, self.device, enable_prefix_reuse=enable_prefix_reuse)
            except ImportError:
                if use_executor:
                    raise
        self._static: GenerationSession | None = None
        if self.session is None:
            self.session = self.static_session
        self._tokenizer = tokenizer
        mc = engine.model_config or {}
        eos = mc.get("eos_token_id")
        self.default_end_ids: tuple[int, ...] = tuple(eos) if isinstance(eos, (list, tuple)) else \
            ((int(eos),) if eos is not None else ())

    @classmethod
    def from_dir(cls, engine_dir: str | Path, device: str | torch.device = "cpu", *, verify: bool = True,
                 enable_prefix_reuse: bool = True, use_executor: bool | None = None) -> "ModelRunner":
        """Load ``engine_dir`` (checksum-verified, weights memory-mapped) for ``device``.
        ``use_executor``: run through the in-flight executor (default: when available)."""
        _load_plugins()
        engine = Engine.load(engine_dir, verify=verify)
        return cls(engine, device, enable_prefix_reuse=enable_prefix_reuse, use_executor=use_executor)

    @property
    def static_session(self) -> GenerationSession:
        """The step-by-step session (context/generation logits, ``run_context`` for tensor dumps)."""
        if self._static is None:
            self._static = GenerationSession(self.engine, self.device, enable_prefix_reuse=self.enable_prefix_reuse)
        return self._static

    def run_context(self, prompt: Sequence[int]) -> dict[str, torch.Tensor]:
        """Every network output (debug outputs included) for ``prompt`` as one context step."""
        return self.static_session.run_context(prompt)

    def close(self) -> None:
        """Stop the executor's background thread (if any)."""
        shutdown = getattr(self.session, "shutdown", None)
        if shutdown is not None:
            shutdown()

    # -- facts -------------------------------------------------------------------------------------
    @property
    def engine_dir(self) -> Path | None:
        return self.engine.path

    @property
    def tokenizer(self) -> Any:
        """The engine directory's tokenizer (``transformers.AutoTokenizer``), or None."""
        if self._tokenizer is None and self.engine_dir is not None and \
                (self.engine_dir / "tokenizer_config.json").is_file():
            from transformers import AutoTokenizer
            self._tokenizer = AutoTokenizer.from_pretrained(str(self.engine_dir))
        return self._tokenizer

    @property
    def max_batch_size(self) -> int:
        return self.session.max_batch_size

    @property
    def max_input_len(self) -> int:
        return self.session.max_input_len

    @property
    def max_seq_len(self) -> int:
        return self.session.max_seq_len

    @property
    def vocab_size(self) -> int:
        return self.session.vocab_size

    # -- generation --------------------------------------------------------------------------------
    def encode(self, texts: Sequence[str], apply_chat_template: bool = False) -> list[list[int]]:
        tok = self.tokenizer
        if tok is None:
            raise ConfigError("generate: got text prompts but the engine directory has no tokenizer; "
                              "pass token ids (batch_input_ids)")
        if apply_chat_template and getattr(tok, "chat_template", None):
            return [list(tok.apply_chat_template([{"role": "user", "content": t}], add_generation_prompt=True,
                                                 tokenize=True, return_dict=False)) for t in texts]
        return [list(tok(t)["input_ids"]) for t in texts]

    def generate(self, batch_input_ids: Any, max_new_tokens: int = 32, *, end_id: int | Sequence[int] | None = None,
                 pad_id: int | None = None, temperature: float | Sequence[float] = 1.0,
                 top_k: int | Sequence[int] = 1, top_p: float | Sequence[float] = 1.0,
                 repetition_penalty: float | Sequence[float] = 1.0,
                 presence_penalty: float | Sequence[float] = 0.0,
                 frequency_penalty: float | Sequence[float] = 0.0,
                 stop_words: Any = None, bad_words: Any = None, random_seed: int | Sequence[int] | None = None,
                 streaming: bool = False, output_log_probs: bool = False, output_context_logits: bool = False,
                 output_generation_logits: bool = False, return_dict: bool = True,
                 apply_chat_template: bool = False) -> Any:
        """Generate for a batch of prompts: token-id lists/tensors, or strings (tokenized with the
        engine's tokenizer; ``apply_chat_template`` wraps each as a user message).

        Sampling parameters are scalars or one value per prompt. As in TensorRT-LLM, ``top_k=1`` (the
        default) is greedy. ``stop_words``/``bad_words``: strings or token-id lists (one list for
        all prompts, or one list per prompt). ``end_id`` defaults to the model's EOS. With
        ``streaming=True`` an iterator yields the result after every step."""
        prompts = self._prompts(batch_input_ids, apply_chat_template)
        n = len(prompts)
        ends = self._end_ids(end_id)
        pad = pad_id if pad_id is not None else (ends[0] if ends else 0)
        stops, bads = self._word_lists(stop_words, n), self._word_lists(bad_words, n)
        seeds = _per_request(random_seed, n, "random_seed")
        params = [SamplingParams(temperature=float(t), top_k=int(k), top_p=float(p), repetition_penalty=float(r),
                                 presence_penalty=float(pp), frequency_penalty=float(fp), bad_words=bw,
                                 seed=None if s is None else int(s))
                  for t, k, p, r, pp, fp, bw, s in zip(
                      _per_request(temperature, n, "temperature"), _per_request(top_k, n, "top_k"),
                      _per_request(top_p, n, "top_p"), _per_request(repetition_penalty, n, "repetition_penalty"),
                      _per_request(presence_penalty, n, "presence_penalty"),
                      _per_request(frequency_penalty, n, "frequency_penalty"), bads, seeds)]
        requests = [SessionRequest(tuple(p), int(max_new_tokens), sp, ends, sw)
                    for p, sp, sw in zip(prompts, params, stops)]
        steps = self.session.generate(requests, want_context_logits=output_context_logits,
                                      want_generation_logits=output_generation_logits)
        fmt: dict[str, Any] = dict(pad=pad, max_new_tokens=int(max_new_tokens), log_probs=output_log_probs,
                                   ctx=output_context_logits, gen=output_generation_logits,
                                   return_dict=return_dict)
        if streaming:
            return self._stream(steps, fmt)
        states: list[RequestState] = []
        for states in steps:
            pass
        return self._result(states, **fmt)

    def _stream(self, steps: Iterator[list[RequestState]], fmt: dict) -> Iterator[Any]:
        for states in steps:
            yield self._result(states, **fmt)

    def _prompts(self, batch: Any, chat: bool) -> list[list[int]]:
        if isinstance(batch, str):
            batch = [batch]
        if isinstance(batch, torch.Tensor):
            batch = [batch] if batch.ndim == 1 else list(batch)
        if not isinstance(batch, (list, tuple)) or not batch:
            raise ConfigError("generate: batch_input_ids must be a non-empty list of prompts (token id "
                              "lists, 1-D tensors or strings)")
        if all(isinstance(p, str) for p in batch):
            return self.encode(batch, chat)
        out = []
        for i, p in enumerate(batch):
            if isinstance(p, torch.Tensor):
                p = p.reshape(-1).tolist()
            if not isinstance(p, (list, tuple)) or not all(isinstance(t, int) for t in p):
                raise ConfigError(f"generate: prompt {i} is not a list of token ids or a 1-D tensor")
            out.append([int(t) for t in p])
        return out

    def _end_ids(self, end_id: Any) -> tuple[int, ...]:
        if end_id is None:
            return self.default_end_ids
        if isinstance(end_id, int):
            return () if end_id < 0 else (end_id,)
        return tuple(int(e) for e in end_id)

    def _word_lists(self, words: Any, n: int) -> list[tuple[tuple[int, ...], ...]]:
        """Normalize stop/bad words to one tuple of token sequences per request."""
        if words is None:
            return [()] * n
        per_request = isinstance(words, (list, tuple)) and len(words) == n and n > 1 and \
            all(isinstance(w, (list, tuple)) and all(not isinstance(x, int) for x in w) for w in words)
        lists = list(words) if per_request else [words] * n
        return [tuple(self._to_ids(w) for w in (ws if isinstance(ws, (list, tuple)) else [ws])) for ws in lists]

    def _to_ids(self, word: Any) -> tuple[int, ...]:
        if isinstance(word, str):
            tok = self.tokenizer
            if tok is None:
                raise ConfigError(f"stop/bad word {word!r} is text but the engine has no tokenizer")
            return tuple(tok(word, add_special_tokens=False)["input_ids"])
        if isinstance(word, int):
            return (word,)
        return tuple(int(t) for t in word)

    def _result(self, states: list[RequestState], *, pad: int, max_new_tokens: int, log_probs: bool,
                ctx: bool, gen: bool, return_dict: bool) -> Any:
        n = len(states)
        width = max(len(s.request.prompt) for s in states) + max_new_tokens
        output_ids = torch.full((n, 1, width), pad, dtype=torch.int32)
        lengths = torch.zeros(n, 1, dtype=torch.int32)
        for i, s in enumerate(states):
            seq = s.history
            output_ids[i, 0, :len(seq)] = torch.tensor(seq, dtype=torch.int32)
            lengths[i, 0] = len(seq)
        if not return_dict:
            return output_ids
        out: dict[str, Any] = {"output_ids": output_ids, "sequence_lengths": lengths,
                               "input_lengths": [len(s.request.prompt) for s in states],
                               "finish_reasons": [s.finish_reason for s in states]}
        if log_probs:
            lp = torch.zeros(n, 1, max_new_tokens)
            for i, s in enumerate(states):
                lp[i, 0, :len(s.logprobs)] = torch.tensor(s.logprobs)
            out["log_probs"], out["cum_log_probs"] = lp, lp.sum(-1)
        if ctx:
            out["context_logits"] = [torch.cat(s.context_logits) if s.context_logits else None for s in states]
        if gen:
            gl = torch.zeros(n, 1, max_new_tokens, self.vocab_size)
            for i, s in enumerate(states):
                if s.generation_logits:
                    gl[i, 0, :len(s.generation_logits)] = torch.stack(s.generation_logits)
            out["generation_logits"] = gl
        if self._tokenizer is not None or (self.engine_dir is not None and
                                           (self.engine_dir / "tokenizer_config.json").is_file()):
            out["output_texts"] = [self.tokenizer.decode(s.output, skip_special_tokens=True) for s in states]
        return out


def _per_request(value: Any, n: int, name: str) -> list[Any]:
    if isinstance(value, (list, tuple)):
        if len(value) != n:
            raise ConfigError(f"generate: {name} has {len(value)} values for {n} prompts")
        return list(value)
    if isinstance(value, torch.Tensor):
        return _per_request(value.tolist(), n, name)
    return [value] * n
