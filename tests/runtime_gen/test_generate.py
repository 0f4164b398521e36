"""ModelRunner.generate on a tiny random Llama against transformers' own generate/forward."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoModelForCausalLM
from transformers.generation.logits_process import RepetitionPenaltyLogitsProcessor

from trtdsl.errors import ConfigError
from trtdsl.runtime import ModelRunner

PROMPTS = [[5, 6, 7, 8, 9, 10, 11], [12, 13], list(range(20, 90)), [40, 41, 42, 43]]


@pytest.fixture(scope="module")
def hf(tiny_llama):
    return AutoModelForCausalLM.from_pretrained(tiny_llama).eval()


@pytest.fixture(scope="module")
def runner(tiny_engine):
    return ModelRunner.from_dir(tiny_engine)


def _hf_greedy(hf, prompt, n, **kw):
    with torch.no_grad():
        out = hf.generate(torch.tensor([prompt]), max_new_tokens=n, do_sample=False, eos_token_id=None,
                          pad_token_id=0, **kw)
    return out[0, len(prompt):].tolist()


def _generated(out, i):
    start = out["input_lengths"][i]
    return out["output_ids"][i, 0, start:int(out["sequence_lengths"][i, 0])].tolist()


def test_greedy_matches_transformers(runner, hf):
    # 4 prompts > max_batch_size 3, and a 70-token prompt > max_num_tokens 48 (chunked context)
    out = runner.generate(PROMPTS, max_new_tokens=12, end_id=-1)
    assert out["output_ids"].shape == (4, 1, 70 + 12) and out["output_ids"].dtype == torch.int32
    for i, p in enumerate(PROMPTS):
        assert out["output_ids"][i, 0, :len(p)].tolist() == p
        assert _generated(out, i) == _hf_greedy(hf, p, 12)
    assert out["finish_reasons"] == ["length"] * 4


def test_logits_and_logprobs_match_transformers(runner, hf, tiny_engine):
    from trtdsl.builder import BuildConfig, Builder, load_model
    # context logits need an engine built with context_logits=True (in memory here)
    engine = Builder(BuildConfig(max_batch_size=2, max_seq_len=64, context_logits=True)).build(
        load_model(runner.engine.extra["source"]["checkpoint"], "float32"))
    r = ModelRunner(engine)
    prompt = PROMPTS[0]
    out = r.generate([prompt], max_new_tokens=5, end_id=-1, output_context_logits=True,
                     output_generation_logits=True, output_log_probs=True)
    with torch.no_grad():
        ref = hf.generate(torch.tensor([prompt]), max_new_tokens=5, do_sample=False, output_logits=True,
                          return_dict_in_generate=True, eos_token_id=None, pad_token_id=0)
        ctx = hf(torch.tensor([prompt])).logits[0]
    torch.testing.assert_close(out["context_logits"][0], ctx, atol=1e-4, rtol=1e-4)
    gen = torch.stack([x[0] for x in ref.logits])
    torch.testing.assert_close(out["generation_logits"][0, 0], gen, atol=1e-4, rtol=1e-4)
    expected_lp = gen.log_softmax(-1).gather(1, ref.sequences[0, len(prompt):, None])[:, 0]
    torch.testing.assert_close(out["log_probs"][0, 0], expected_lp, atol=1e-4, rtol=1e-4)


def test_streaming_yields_growing_outputs(runner):
    chunks = list(runner.generate([PROMPTS[1]], max_new_tokens=6, end_id=-1, streaming=True))
    lengths = [int(c["sequence_lengths"][0, 0]) for c in chunks]
    # One update per new token, except that the executor path folds the tokens that arrived while
    # the consumer was busy (how many depends on the machine's load, so the count is not asserted).
    assert lengths == sorted(set(lengths)) and lengths[-1] == 2 + 6
    final = runner.generate([PROMPTS[1]], max_new_tokens=6, end_id=-1)
    assert torch.equal(chunks[-1]["output_ids"], final["output_ids"])
    for chunk, n in zip(chunks, lengths):  # every update is a prefix of the final sequence
        assert torch.equal(chunk["output_ids"][0, 0, :n], final["output_ids"][0, 0, :n])


def test_end_id_stop_words_and_bad_words(runner, hf):
    ref = _hf_greedy(hf, PROMPTS[0], 10)
    end = ref[4]
    out = runner.generate([PROMPTS[0]], max_new_tokens=10, end_id=end)
    first = ref.index(end)
    assert _generated(out, 0) == ref[:first] and out["finish_reasons"] == ["stop"]
    out = runner.generate([PROMPTS[0]], max_new_tokens=10, end_id=-1, stop_words=[ref[2:4]])
    assert _generated(out, 0) == ref[:4]
    out = runner.generate([PROMPTS[0]], max_new_tokens=10, end_id=-1, bad_words=[[ref[0]]])
    gen = _generated(out, 0)
    assert ref[0] not in gen and gen == _hf_greedy(hf, PROMPTS[0], 10, bad_words_ids=[[ref[0]]])


def test_repetition_penalty_matches_transformers(runner, hf):
    out = runner.generate([PROMPTS[3]], max_new_tokens=10, end_id=-1, repetition_penalty=1.8)
    with torch.no_grad():
        ref = hf.generate(torch.tensor([PROMPTS[3]]), max_new_tokens=10, do_sample=False, eos_token_id=None,
                          pad_token_id=0, logits_processor=[RepetitionPenaltyLogitsProcessor(1.8)])
    assert _generated(out, 0) == ref[0, len(PROMPTS[3]):].tolist()


def test_seeded_sampling_reproduces_and_top_k_1_is_greedy(runner):
    kw = dict(max_new_tokens=10, end_id=-1, temperature=1.0, top_k=0, top_p=0.95)
    a = runner.generate(PROMPTS[:3], random_seed=[1, 2, 3], **kw)
    b = runner.generate(PROMPTS[:3], random_seed=[1, 2, 3], **kw)
    c = runner.generate(PROMPTS[:3], random_seed=[4, 5, 6], **kw)
    assert torch.equal(a["output_ids"], b["output_ids"])
    assert not torch.equal(a["output_ids"], c["output_ids"])
    # the same seed gives the same tokens whatever else is in the batch
    alone = runner.generate([PROMPTS[1]], random_seed=[2], **kw)
    assert _generated(alone, 0) == _generated(a, 1)
    greedy = runner.generate(PROMPTS[:2], max_new_tokens=8, end_id=-1, temperature=0.0)
    top1 = runner.generate(PROMPTS[:2], max_new_tokens=8, end_id=-1, temperature=0.7, top_k=1, random_seed=9)
    assert torch.equal(greedy["output_ids"], top1["output_ids"])


def test_prefix_reuse_across_calls_keeps_outputs(tiny_engine, hf):
    r = ModelRunner.from_dir(tiny_engine)
    prompt = list(range(30, 100))  # > 2 blocks of 32
    first = r.generate([prompt], max_new_tokens=5, end_id=-1)
    second = r.generate([prompt + [7]], max_new_tokens=5, end_id=-1)
    assert r.session.stats["reused_tokens"] >= 64
    assert _generated(first, 0) == _hf_greedy(hf, prompt, 5)
    assert _generated(second, 0) == _hf_greedy(hf, prompt + [7], 5)


def test_text_prompts_and_chat_template(runner):
    out = runner.generate(["The assignment statement"], max_new_tokens=4, end_id=-1)
    assert isinstance(out["output_texts"][0], str)
    ids = runner.encode(["hello"], apply_chat_template=True)[0]
    assert ids == runner.tokenizer("<s>user: hello\nassistant:")["input_ids"]


def test_bad_requests_raise_clear_errors(runner):
    with pytest.raises(ConfigError, match="max_input_len"):
        runner.generate([[1] * 200], max_new_tokens=2)
    with pytest.raises(ConfigError, match="outside the vocabulary"):
        runner.generate([[1, 100000]], max_new_tokens=2)
    with pytest.raises(ConfigError, match="temperature has 1 values for 2 prompts"):
        runner.generate([[1], [2]], temperature=[0.5])
    with pytest.raises(ConfigError, match="context_logits"):
        runner.generate([[1, 2]], output_context_logits=True)


def test_static_session_path_matches_transformers(tiny_engine, hf):
    """The step-by-step GenerationSession (used for logits and when no executor is installed)."""
    r = ModelRunner.from_dir(tiny_engine, use_executor=False)
    out = r.generate(PROMPTS, max_new_tokens=8, end_id=-1)
    for i, p in enumerate(PROMPTS):
        assert _generated(out, i) == _hf_greedy(hf, p, 8)
    kw = dict(max_new_tokens=6, end_id=-1, temperature=0.9, top_k=20, random_seed=[3, 4])
    assert torch.equal(r.generate(PROMPTS[:2], **kw)["output_ids"], r.generate(PROMPTS[:2], **kw)["output_ids"])
    assert r.session.stats["steps"] > 0
