"""Sampling: each logits processor against Hugging Face's own processor on the same logits (one
request's parameters per row), fixed seeds reproduce, top_k=1 is greedy, stop sequences match."""

from __future__ import annotations

import pytest
import torch
from transformers import (NoBadWordsLogitsProcessor, RepetitionPenaltyLogitsProcessor,
                          TemperatureLogitsWarper, TopKLogitsWarper, TopPLogitsWarper)

from trtdsl.errors import ConfigError
from trtdsl.runtime.sampling import (Sampler, SamplingParams, apply_bad_words, apply_presence_frequency_penalty,
                                     apply_repetition_penalty, apply_temperature, apply_top_k, apply_top_p,
                                     matches_stop, token_counts)

V = 50


@pytest.fixture
def logits():
    return torch.randn(4, V) * 3


def test_repetition_penalty_matches_hf(logits):
    seqs = [[1, 2, 3, 3], [4], [7, 8, 9, 10, 11], [0, 49]]
    penalties = [1.3, 0.7, 2.0, 1.0]
    ours = apply_repetition_penalty(logits, token_counts(seqs, V, "cpu"), torch.tensor(penalties))
    for row, (seq, p) in enumerate(zip(seqs, penalties)):
        hf = RepetitionPenaltyLogitsProcessor(p)(torch.tensor([seq]), logits[row:row + 1].clone())
        torch.testing.assert_close(ours[row:row + 1], hf)
    assert not torch.equal(ours[0], logits[0])


def test_presence_frequency_penalty():
    logits = torch.zeros(1, V)
    counts = token_counts([[3, 3, 5]], V, "cpu")
    out = apply_presence_frequency_penalty(logits, counts, torch.tensor([0.5]), torch.tensor([0.25]))
    expected = torch.zeros(1, V)
    expected[0, 3] = -0.5 - 2 * 0.25
    expected[0, 5] = -0.5 - 0.25
    torch.testing.assert_close(out, expected)


def test_bad_words_match_hf(logits):
    seqs = [[1, 2, 3], [5, 6], [1, 2], [9]]
    bad = [[10], [2, 3, 11], [6, 12], [1, 2, 13]]
    ours = apply_bad_words(logits, seqs, [bad] * 4)
    for row, seq in enumerate(seqs):
        hf = NoBadWordsLogitsProcessor(bad, eos_token_id=0)(torch.tensor([seq]), logits[row:row + 1].clone())
        torch.testing.assert_close(ours[row:row + 1], hf)
    assert torch.isinf(ours[0, 10]) and torch.isinf(ours[0, 11]) and not torch.isinf(ours[1, 11])


@pytest.mark.parametrize("k", [1, 3, 7, 0])
def test_top_k_matches_hf(logits, k):
    ours = apply_top_k(logits, torch.full((4,), k))
    hf = TopKLogitsWarper(k)(None, logits.clone()) if k else logits
    torch.testing.assert_close(ours, hf)


@pytest.mark.parametrize("p", [0.1, 0.5, 0.9, 1.0])
def test_top_p_matches_hf(logits, p):
    ours = apply_top_p(logits, torch.full((4,), p))
    hf = TopPLogitsWarper(p)(None, logits.clone())
    torch.testing.assert_close(ours, hf)


def test_per_row_parameters_and_temperature_match_hf(logits):
    temps, ks, ps = [0.5, 1.0, 2.0, 0.7], [0, 5, 2, 10], [0.8, 1.0, 0.3, 0.95]
    ours = apply_top_p(apply_top_k(apply_temperature(logits, torch.tensor(temps)), torch.tensor(ks)),
                       torch.tensor(ps))
    for row in range(4):
        hf = TemperatureLogitsWarper(temps[row])(None, logits[row:row + 1].clone())
        if ks[row]:
            hf = TopKLogitsWarper(ks[row])(None, hf)
        hf = TopPLogitsWarper(ps[row])(None, hf)
        torch.testing.assert_close(ours[row:row + 1], hf)


def test_seed_reproduces_and_top_k_1_is_greedy(logits):
    params = [SamplingParams(temperature=1.5, top_p=0.95, seed=123), SamplingParams(top_k=1, seed=5),
              SamplingParams(temperature=0.0), SamplingParams(temperature=1.0, seed=77)]
    rows, hist = [0, 1, 2, 3], [[1], [2], [3], [4]]

    def draw(n):
        s = Sampler(params, V)
        return [s.sample(logits, rows, hist, [[]] * 4)[0] for _ in range(n)]

    a, b = draw(20), draw(20)
    assert all(torch.equal(x, y) for x, y in zip(a, b))
    greedy = logits.argmax(-1)
    assert all(int(x[1]) == int(greedy[1]) and int(x[2]) == int(greedy[2]) for x in a)
    assert len({int(x[0]) for x in a}) > 1  # really sampling
    other = Sampler([SamplingParams(temperature=1.5, top_p=0.95, seed=124)] + params[1:], V)
    c = [other.sample(logits, rows, hist, [[]] * 4)[0] for _ in range(20)]
    assert [int(x[0]) for x in a] != [int(x[0]) for x in c]


def test_sampled_tokens_respect_filters(logits):
    s = Sampler([SamplingParams(temperature=1.0, top_k=3, seed=i) for i in range(4)], V)
    top3 = logits.topk(3, dim=-1).indices
    for _ in range(10):
        tokens, logprobs = s.sample(logits, [0, 1, 2, 3], [[]] * 4, [[]] * 4)
        assert all(int(t) in top3[i].tolist() for i, t in enumerate(tokens))
        assert (logprobs <= 0).all()


def test_stop_words_and_bad_params():
    assert matches_stop([1, 2, 3], [[9], [2, 3]]) and not matches_stop([1, 2, 3], [[1, 2]])
    with pytest.raises(ConfigError, match="top_p"):
        SamplingParams(top_p=0.0)
    with pytest.raises(ConfigError, match="temperature"):
        SamplingParams(temperature=-1.0)
