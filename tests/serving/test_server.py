"""The OpenAI-compatible server over real HTTP on 127.0.0.1 (uvicorn in a thread): every endpoint,
streaming, 400 / 429 answers, and client disconnects cancelling requests and freeing K/V blocks.
References: the executor's own greedy tokens (checked against Hugging Face in test_executor.py),
Hugging Face's logits for logprobs, and the tokenizer for text and chat templates."""

from __future__ import annotations

import json
import time
from typing import Any, Mapping

import httpx
import pytest
import torch

from trtdsl.runtime import Executor
from trtdsl.runtime.executor import EagerStepRunner, GenerationRequest
from trtdsl.server import ServerThread, create_app
from trtdsl.server.runner import load_tokenizer


class SlowStep:
    """Wraps the eager step with a delay, so a request stays in flight long enough to disconnect."""

    def __init__(self, inner: EagerStepRunner, delay: float):
        self.inner, self.delay = inner, delay

    def run(self, feed: Mapping[str, torch.Tensor], hints: Mapping[str, Any]) -> torch.Tensor:
        time.sleep(self.delay)
        return self.inner.run(feed, hints)


@pytest.fixture(scope="module")
def server(tiny_engine):
    ex = Executor(tiny_engine, kv_cache_max_tokens=2048)
    tok = load_tokenizer(tiny_engine)
    with ServerThread(create_app(ex, tok, "tiny")) as th:
        yield th, ex, tok
    ex.shutdown()


@pytest.fixture(scope="module")
def client(server):
    with httpx.Client(base_url=server[0].url, timeout=60) as c:
        yield c


def _sse(lines) -> list[Any]:
    events = []
    for line in lines:
        if line.startswith("data: "):
            data = line[len("data: "):]
            events.append(data if data == "[DONE]" else json.loads(data))
    return events


def _metric(text: str, name: str) -> float:
    return float(next(line.split()[1] for line in text.splitlines() if line.startswith(name + " ")))


def test_health_models_metrics(client):
    assert client.get("/health").json() == {"status": "ok"}
    models = client.get("/v1/models").json()
    assert [m["id"] for m in models["data"]] == ["tiny"]
    text = client.get("/metrics").text
    for name in ("trtdsl_requests_waiting", "trtdsl_requests_running", "trtdsl_kv_cache_usage_ratio",
                 "trtdsl_time_to_first_token_seconds_bucket", "trtdsl_inter_token_latency_seconds_bucket",
                 "trtdsl_generation_tokens_per_second"):
        assert name in text


def test_completion_matches_executor_tokens(server, client):
    _, ex, tok = server
    prompt = "Hello, world"
    ids = tok(prompt)["input_ids"]
    expected = ex.generate([GenerationRequest(ids, 12, end_id=tok.eos_token_id)])[0].output_token_ids
    r = client.post("/v1/completions", json={"model": "tiny", "prompt": prompt, "max_tokens": 12,
                                             "temperature": 0})
    assert r.status_code == 200
    body = r.json()
    choice = body["choices"][0]
    assert choice["token_ids"] == list(expected)
    assert choice["text"] == tok.decode(expected, skip_special_tokens=True)
    assert body["usage"] == {"prompt_tokens": len(ids), "completion_tokens": len(expected),
                             "total_tokens": len(ids) + len(expected)}
    # A prompt of token ids gives the same answer.
    r2 = client.post("/v1/completions", json={"prompt": ids, "max_tokens": 12, "temperature": 0})
    assert r2.json()["choices"][0]["token_ids"] == list(expected)


def test_chat_uses_the_chat_template(server, client):
    _, ex, tok = server
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi there"}]
    ids = tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=True, return_dict=False)
    expected = ex.generate([GenerationRequest(ids, 8, end_id=tok.eos_token_id)])[0].output_token_ids
    r = client.post("/v1/chat/completions", json={"messages": messages, "max_tokens": 8, "temperature": 0})
    body = r.json()
    assert body["object"] == "chat.completion" and body["usage"]["prompt_tokens"] == len(ids)
    msg = body["choices"][0]["message"]
    assert msg["role"] == "assistant"
    assert msg["content"] == tok.decode(expected, skip_special_tokens=True)


def test_streaming_equals_non_streaming(client):
    req = {"prompt": "Stream me", "max_tokens": 10, "temperature": 0}
    full = client.post("/v1/completions", json=req).json()["choices"][0]
    with client.stream("POST", "/v1/completions",
                       json={**req, "stream": True, "stream_options": {"include_usage": True}}) as r:
        assert r.headers["content-type"].startswith("text/event-stream")
        events = _sse(r.iter_lines())
    assert events[-1] == "[DONE]"
    usage = events[-2]
    assert usage["choices"] == [] and usage["usage"]["completion_tokens"] == len(full["token_ids"])
    chunks = [e for e in events[:-2]]
    assert "".join(c["choices"][0]["text"] for c in chunks) == full["text"]
    assert [t for c in chunks for t in c["choices"][0]["token_ids"]] == full["token_ids"]
    assert chunks[-1]["choices"][0]["finish_reason"] == full["finish_reason"]


def test_chat_streaming_n_and_seed(client):
    req = {"messages": [{"role": "user", "content": "two please"}], "max_tokens": 6, "n": 2,
           "seed": 7, "temperature": 1.0, "stream": True}
    with client.stream("POST", "/v1/chat/completions", json=req) as r:
        events = _sse(r.iter_lines())
    assert events[0]["choices"][0]["delta"]["role"] == "assistant" and events[-1] == "[DONE]"
    texts = {0: "", 1: ""}
    for e in events[1:-1]:
        for c in e["choices"]:
            texts[c["index"]] += c["delta"].get("content", "")
    again = client.post("/v1/chat/completions", json={**req, "stream": False}).json()
    assert [c["message"]["content"] for c in again["choices"]] == [texts[0], texts[1]]


def test_stop_string_truncates(client):
    base = client.post("/v1/completions", json={"prompt": "abc", "max_tokens": 16, "temperature": 0})
    text = base.json()["choices"][0]["text"]
    stop = text[5:7]
    assert stop.strip("\ufffd"), "the reference output has no usable stop string"
    r = client.post("/v1/completions", json={"prompt": "abc", "max_tokens": 16, "temperature": 0,
                                             "stop": [stop]}).json()["choices"][0]
    assert r["text"] == text[:text.find(stop)] and r["finish_reason"] == "stop"


def test_ignore_eos_runs_past_the_end_token(tiny_engine):
    """An app whose end token is the 3rd greedy token (of our own executor): stops there unless
    ``ignore_eos``, which returns all 8 tokens, the same as the executor without an end token."""
    ex = Executor(tiny_engine, kv_cache_max_tokens=2048)
    try:
        greedy = list(ex.generate([GenerationRequest([9, 8, 7], 8)])[0].output_token_ids)
        end = greedy[2]
        cut = greedy[:greedy.index(end) + 1]
        body = {"prompt": [9, 8, 7], "max_tokens": 8, "temperature": 0}
        with ServerThread(create_app(ex, load_tokenizer(tiny_engine), "tiny", end_id=end)) as th:
            with httpx.Client(base_url=th.url, timeout=60) as c:
                stopped = c.post("/v1/completions", json=body).json()["choices"][0]
                full = c.post("/v1/completions", json={**body, "ignore_eos": True}).json()["choices"][0]
                bad = c.post("/v1/completions", json={**body, "ignore_eos": "yes"})
    finally:
        ex.shutdown()
    assert stopped["token_ids"] == cut and stopped["finish_reason"] == "stop"
    assert full["token_ids"] == greedy and full["finish_reason"] == "length"
    assert bad.status_code == 400 and bad.json()["error"]["param"] == "ignore_eos"


def test_logprobs_match_hugging_face(server, client, hf_model):
    _, _, tok = server
    r = client.post("/v1/completions", json={"prompt": "log", "max_tokens": 2, "temperature": 0,
                                             "logprobs": 2}).json()["choices"][0]
    ids = tok("log")["input_ids"]
    with torch.no_grad():
        ref = hf_model(torch.tensor([ids])).logits[0, -1].log_softmax(-1)
    first = r["token_ids"][0]
    assert r["logprobs"]["token_logprobs"][0] == pytest.approx(ref[first].item(), abs=1e-4)
    assert len(r["logprobs"]["top_logprobs"][0]) <= 2
    chat = client.post("/v1/chat/completions", json={
        "messages": [{"role": "user", "content": "x"}], "max_tokens": 2, "logprobs": True,
        "top_logprobs": 3}).json()["choices"][0]
    assert len(chat["logprobs"]["content"]) == len(chat["token_ids"])
    assert len(chat["logprobs"]["content"][0]["top_logprobs"]) == 3


@pytest.mark.parametrize("path,body,param", [
    ("/v1/completions", {"prompt": "x", "temperature": -1}, "temperature"),
    ("/v1/completions", {"prompt": "x", "max_tokens": 0}, "max_tokens"),
    ("/v1/completions", {"prompt": "x", "max_tokens": 10_000}, "max_tokens"),
    ("/v1/completions", {"prompt": "x", "n": "two"}, "n"),
    ("/v1/completions", {"prompt": "x", "top_p": 3}, "top_p"),
    ("/v1/completions", {"prompt": "x", "stop": [1]}, "stop"),
    ("/v1/completions", {"prompt": "x", "logprobs": 50}, "logprobs"),
    ("/v1/completions", {"max_tokens": 3}, "prompt"),
    ("/v1/completions", {"prompt": [1, 10**9]}, "prompt"),
    ("/v1/completions", {"prompt": "x" * 400}, "prompt"),
    ("/v1/completions", {"prompt": "x", "stream_options": {"include_usage": True}}, "stream_options"),
    ("/v1/chat/completions", {"messages": []}, "messages"),
    ("/v1/chat/completions", {"messages": [{"role": "robot", "content": "x"}]}, "messages[0].role"),
    ("/v1/chat/completions", {"messages": [{"role": "user", "content": 3}]}, "messages[0].content"),
    ("/v1/chat/completions", {"messages": [{"role": "user", "content": "x"}], "top_logprobs": 2},
     "top_logprobs"),
])
def test_invalid_requests_get_400_naming_the_field(client, path, body, param):
    r = client.post(path, json=body)
    assert r.status_code == 400, r.text
    err = r.json()["error"]
    assert err["type"] == "invalid_request_error" and err["param"] == param and err["message"]


def test_bad_json_and_unknown_model(client):
    r = client.post("/v1/completions", content=b"{not json", headers={"content-type": "application/json"})
    assert r.status_code == 400 and r.json()["error"]["code"] == "invalid_json"
    r = client.post("/v1/completions", json={"model": "gpt-9", "prompt": "x"})
    assert r.status_code == 404 and r.json()["error"]["param"] == "model"


@pytest.fixture()
def slow_server(tiny_engine):
    """One sequence at a time, 20 ms per step, a queue of 1: easy to overload and to disconnect from
    (slow enough that a 0.3 s client timeout always lands mid-request, however fast the CPU)."""
    ex = Executor(tiny_engine, max_batch_size=1, max_queue_size=1, kv_cache_max_tokens=2048)
    ex.step_runner = SlowStep(ex.step_runner, 0.02)  # type: ignore[assignment]
    with ServerThread(create_app(ex, load_tokenizer(tiny_engine), "tiny")) as th:
        yield th, ex
    ex.shutdown()


def _wait_idle(ex: Executor, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        s = ex.stats()
        if s.kv.used_blocks == 0 and s.running_requests == 0 and s.waiting_requests == 0:
            return
        time.sleep(0.02)
    raise AssertionError(f"executor not idle: {ex.stats()}")


def test_overload_answers_429(slow_server):
    th, ex = slow_server
    # ignore_eos: the running request holds its slot for all 200 steps whatever the random model emits.
    body = {"prompt": [1, 2, 3], "max_tokens": 200, "stream": True, "temperature": 0, "ignore_eos": True}
    with httpx.Client(base_url=th.url, timeout=30) as c:
        with c.stream("POST", "/v1/completions", json=body) as running:   # runs
            next(running.iter_lines())
            with c.stream("POST", "/v1/completions", json=body) as queued:   # waits
                assert queued.status_code == 200
                r = c.post("/v1/completions", json=body)                    # no room
                assert r.status_code == 429
                assert r.json()["error"]["type"] == "rate_limit_error"
    _wait_idle(ex)  # leaving the streams disconnected both: cancelled, blocks freed


def test_disconnect_cancels_and_frees_blocks(slow_server):
    th, ex = slow_server
    with httpx.Client(base_url=th.url, timeout=30) as c:
        with c.stream("POST", "/v1/chat/completions", json={
                "messages": [{"role": "user", "content": "go on"}], "max_tokens": 200, "stream": True,
                "temperature": 0, "ignore_eos": True}) as r:
            lines = r.iter_lines()
            next(lines)
            next(lines)
        _wait_idle(ex)
        assert ex.stats().cancelled_requests == 1
        # Non-streaming: the client gives up (timeout) while the request runs.
        try:
            # ignore_eos: the request runs the full 200 steps (4 s of 20 ms), whatever it draws.
            r = c.post("/v1/completions", json={"prompt": [5, 6], "max_tokens": 200, "ignore_eos": True},
                       timeout=0.3)
        except httpx.ReadTimeout:
            pass
        else:
            pytest.fail(f"answered before the client gave up: {r.status_code} {r.text[:300]}")
        _wait_idle(ex)
        assert ex.stats().cancelled_requests == 2
        metrics = c.get("/metrics").text
    assert _metric(metrics, "trtdsl_kv_cache_used_blocks") == 0
    assert _metric(metrics, "trtdsl_requests_running") == 0
