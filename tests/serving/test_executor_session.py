"""``ModelRunner.generate`` through the executor (``ExecutorSession``) gives what its own
``GenerationSession`` gives: same tokens, lengths and finish reasons, end ids and stop words
included, with several prompts in flight."""

from __future__ import annotations

import torch

from trtdsl.runtime.executor_session import ExecutorSession
from trtdsl.runtime.model_runner import ModelRunner

PROMPTS = [[5, 17, 99, 3], [200, 1, 2, 3, 4, 5, 6, 7, 8], [42] * 12]


def test_model_runner_through_the_executor_matches_its_session(tiny_engine):
    runner = ModelRunner.from_dir(tiny_engine)
    free = runner.generate(PROMPTS, max_new_tokens=12, end_id=-1)
    tokens = [free["output_ids"][i, 0, len(p):].tolist() for i, p in enumerate(PROMPTS)]
    kwargs = dict(max_new_tokens=12, end_id=tokens[0][4], stop_words=[[tokens[1][5]]])
    expected = runner.generate(PROMPTS, **kwargs)
    via_executor = ExecutorSession(runner.engine, runner.device)
    runner.session = via_executor  # the one-line change ModelRunner.__init__ would make
    try:
        got = runner.generate(PROMPTS, **kwargs)
        streamed = list(runner.generate(PROMPTS, streaming=True, **kwargs))
    finally:
        via_executor.shutdown()
    assert torch.equal(got["sequence_lengths"], expected["sequence_lengths"])
    assert torch.equal(got["output_ids"], expected["output_ids"])
    assert got["finish_reasons"] == expected["finish_reasons"]
    assert "stop" in got["finish_reasons"]
    assert torch.equal(streamed[-1]["output_ids"], expected["output_ids"])
