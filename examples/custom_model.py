"""A new architecture in ~100 lines: a GPT-J-style decoder with *parallel* attention and MLP.

Each block computes ``x + attention(norm(x)) + feed_forward(norm(x))`` from one shared LayerNorm
(GPT-J / GPT-NeoX's parallel residual), with partial, interleaved ("gptj") rotary embeddings on a
quarter of each head and an untied LM head with a bias. It reuses trtdsl's layers and the
``CausalLM`` base class, so it gets the packed/paged step network, the K/V cache and the
plugin-free composite variant for free. ``main()`` fills it with random weights, runs a context
step and a generation step through the paged K/V cache, and checks the logits against a plain
torch forward written independently below.

Run: ``python examples/custom_model.py``   (walkthrough: docs/new_architecture.md)
"""

from __future__ import annotations

import math

import torch

from trtdsl import Tensor
from trtdsl.backends.torch_executor import TorchExecutor
from trtdsl.layers import MLP, Attention, Embedding, LayerNorm, Linear, RopeConfig, StepBatch
from trtdsl.models import CausalLM, ModelConfig
from trtdsl.module import Module, ModuleList


class ParallelBlock(Module):
    """``x + attention(norm(x)) + feed_forward(norm(x))``: both branches read the same input."""

    def __init__(self, c: ModelConfig, layer_idx: int):
        super().__init__()
        self.norm = LayerNorm(c.hidden_size, c.norm_eps, dtype=c.dtype)
        self.attention = Attention(c.hidden_size, c.num_heads, c.num_kv_heads, c.head_dim,
                                   layer_idx=layer_idx, rotary_dim=c.rope.rotary_dim,
                                   rope_style=c.rope.style, dtype=c.dtype)
        self.feed_forward = MLP(c.hidden_size, c.intermediate_size, c.hidden_act, bias=True, dtype=c.dtype)

    def forward(self, x: Tensor, batch: StepBatch) -> Tensor:
        h = self.norm(x)
        return x + self.attention(h, batch) + self.feed_forward(h)


class ParallelGPT(CausalLM):
    """Token embedding, parallel blocks, final LayerNorm, LM head with bias."""

    ARCHITECTURE = "parallel_gpt"

    def __init__(self, config: ModelConfig):
        super().__init__(config)
        c = config
        self.embed = Embedding(c.vocab_size, c.hidden_size, c.dtype)
        self.layers = ModuleList([ParallelBlock(c, i) for i in range(c.num_layers)])
        self.norm = LayerNorm(c.hidden_size, c.norm_eps, dtype=c.dtype)
        self.lm_head = Linear(c.hidden_size, c.vocab_size, bias=True, dtype=c.dtype)

    def forward(self, input_ids: Tensor, batch: StepBatch) -> Tensor:
        h = self.embed(input_ids)
        for layer in self.layers:
            h = layer(h, batch)
        return self.lm_head(self.norm(batch.logits_rows(h))).cast("float32")


CONFIG = ModelConfig(architecture="parallel_gpt", vocab_size=300, hidden_size=64, num_layers=2,
                     num_heads=4, num_kv_heads=4, head_dim=16, intermediate_size=256,
                     max_position_embeddings=128, norm_eps=1e-5, hidden_act="gelu_tanh",
                     rope=RopeConfig(rotary_dim=4, theta=10000.0, style="gptj"))


def random_weights(model: Module, seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    state = {}
    for name, p in model.named_parameters():
        base = 1.0 if name.endswith("norm.weight") else 0.0
        state[name] = base + 0.1 * torch.randn(p.shape, generator=g)
    return state


# -- an independent reference: the same architecture in plain torch ---------------------------------
def torch_forward(w: dict[str, torch.Tensor], c: ModelConfig, ids: list[int]) -> torch.Tensor:
    """Logits ``[len(ids), vocab]`` of one sequence, written without trtdsl."""
    F = torch.nn.functional
    n, h, d, rot = len(ids), c.num_heads, c.head_dim, c.rope.rotary_dim
    inv_freq = 1.0 / c.rope.theta ** (torch.arange(0, rot, 2, dtype=torch.float64) / rot)
    angles = torch.arange(n, dtype=torch.float64)[:, None] * inv_freq  # [n, rot/2]
    cos, sin = angles.cos().float(), angles.sin().float()  # broadcast over [heads, n, rot/2]

    def rope(t: torch.Tensor) -> torch.Tensor:  # interleaved pairs (x0, x1) -> rotated
        x0, x1 = t[..., :rot:2], t[..., 1:rot:2]
        out = torch.stack([x0 * cos - x1 * sin, x1 * cos + x0 * sin], -1).flatten(-2)
        return torch.cat([out, t[..., rot:]], -1)

    x = w["embed.weight"][ids]
    for i in range(c.num_layers):
        p = f"layers.{i}."
        hn = F.layer_norm(x, (c.hidden_size,), w[p + "norm.weight"], w[p + "norm.bias"], c.norm_eps)
        q, k, v = (hn @ w[p + "attention.qkv.weight"].T).split(h * d, -1)
        q, k, v = (t.view(n, h, d).transpose(0, 1) for t in (q, k, v))
        att = (rope(q) @ rope(k).transpose(-1, -2)) / math.sqrt(d)
        att = att.masked_fill(torch.ones(n, n).triu(1).bool(), float("-inf")).softmax(-1)
        a = (att @ v).transpose(0, 1).reshape(n, h * d) @ w[p + "attention.dense.weight"].T
        m = F.gelu(hn @ w[p + "feed_forward.fc.weight"].T + w[p + "feed_forward.fc.bias"], approximate="tanh")
        m = m @ w[p + "feed_forward.proj.weight"].T + w[p + "feed_forward.proj.bias"]
        x = x + a + m
    x = F.layer_norm(x, (c.hidden_size,), w["norm.weight"], w["norm.bias"], c.norm_eps)
    return x @ w["lm_head.weight"].T + w["lm_head.bias"]


def main() -> float:
    """Build, run a context step then a generation step; return the max |logit diff| vs torch."""
    model = ParallelGPT.from_config(CONFIG)
    weights = random_weights(model)
    model.load_state_dict(weights)
    tokens_per_block = 4
    net = model.build_network(max_batch_size=2, max_num_tokens=32, max_seq_len=32,
                              tokens_per_block=tokens_per_block)
    run = TorchExecutor(net).run
    kv_cache = torch.zeros(model.kv_cache_shape(8, tokens_per_block))
    prompts = [[5, 17, 42, 7, 99, 3], [250, 1, 8]]
    i32 = torch.int32
    # Context step: both prompts packed; sequence 0 owns blocks 0-1, sequence 1 owns blocks 4-5.
    tables = torch.tensor([[0, 1], [4, 5]], dtype=i32)
    ctx = run({"input_ids": torch.tensor(prompts[0] + prompts[1], dtype=i32),
               "position_ids": torch.tensor([0, 1, 2, 3, 4, 5, 0, 1, 2], dtype=i32),
               "seq_lens": torch.tensor([6, 3], dtype=i32), "past_lens": torch.tensor([0, 0], dtype=i32),
               "cu_seqlens": torch.tensor([0, 6, 9], dtype=i32), "block_tables": tables,
               "last_token_ids": torch.tensor([5, 8], dtype=i32), "kv_cache": kv_cache})["logits"]
    nxt = [int(t) for t in ctx.argmax(-1)]
    # Generation step: one new token per sequence, attending to the cached prompt.
    gen = run({"input_ids": torch.tensor(nxt, dtype=i32), "position_ids": torch.tensor([6, 3], dtype=i32),
               "seq_lens": torch.tensor([1, 1], dtype=i32), "past_lens": torch.tensor([6, 3], dtype=i32),
               "cu_seqlens": torch.tensor([0, 1, 2], dtype=i32), "block_tables": tables,
               "last_token_ids": torch.tensor([0, 1], dtype=i32), "kv_cache": kv_cache})["logits"]
    diff = 0.0
    for s, prompt in enumerate(prompts):
        ref = torch_forward(weights, CONFIG, prompt + [nxt[s]])
        diff = max(diff, float((ctx[s] - ref[-2]).abs().max()), float((gen[s] - ref[-1]).abs().max()))
    return diff


if __name__ == "__main__":
    print(f"max |logits - torch reference| = {main():.2e}")
