"""Calibration: run the float network over text and record what the quantizers need.

* Built-in text: Python's own documentation strings (``pydoc_data.topics.topics``), which every Python
  ships. :data:`CALIBRATION_TOPICS` and :data:`EVALUATION_TOPICS` are disjoint, so accuracy is measured
  on text the scales never saw.
* :func:`prefill_feeds` turns token chunks into step feeds (docs/batch_interface.md) for a network.
* :func:`collect_statistics` runs a copy of the network with every GEMM input marked as an extra
  output, keeping per-channel ``max|x|`` and ``mean|x|``, a bounded sample of rows (AWQ's searches),
  optionally ``X^T X`` over *all* rows (GPTQ's Hessian), and each attention layer's K/V ``max|.|``
  read back from the cache pool after each step.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Iterable, Iterator, Mapping, Sequence

import torch

from ..backends.torch_executor import TorchExecutor
from ..errors import ConfigError
from ..ir.network import LayerKind, Network
from ..runtime.kv_cache import blocks_for_tokens
from ..runtime.step_inputs import build_static_step_inputs
from .graph import clone_network, find_gemm_sites
from .kv_cache import hadamard

__all__ = ["CALIBRATION_TOPICS", "EVALUATION_TOPICS", "builtin_text", "token_chunks", "prefill_feeds",
           "CalibrationStats", "collect_statistics", "calibrate"]

#: pydoc topics used for calibration (prose about the language, present since Python 3.0).
CALIBRATION_TOPICS = ("class", "compound", "customization", "exceptions", "execmodel", "import",
                      "numeric-types", "specialnames", "typesseq", "function")
#: Held-out pydoc topics used to measure accuracy (disjoint from the calibration ones).
EVALUATION_TOPICS = ("string-methods", "typesmapping", "formatstrings", "typesfunctions", "with",
                     "lambda", "attribute-access", "context-managers")


def builtin_text(split: str = "calibration") -> str:
    """The built-in text: ``"calibration"`` or ``"evaluation"`` topics, joined by blank lines."""
    from pydoc_data.topics import topics  # stdlib; imported lazily since it is ~0.5 MB of text

    keys = {"calibration": CALIBRATION_TOPICS, "evaluation": EVALUATION_TOPICS}.get(split)
    if keys is None:
        raise ConfigError(f"builtin_text: split {split!r}; expected 'calibration' or 'evaluation'")
    return "\n\n".join(topics[k].strip() for k in keys if k in topics)


def token_chunks(token_ids: Sequence[int], chunk_len: int, max_chunks: int | None = None) -> list[list[int]]:
    """Consecutive non-overlapping chunks of ``chunk_len`` tokens (the short tail is dropped)."""
    if chunk_len < 2:
        raise ConfigError(f"token_chunks: chunk_len must be >= 2, got {chunk_len}")
    n = len(token_ids) // chunk_len
    if max_chunks is not None:
        n = min(n, max_chunks)
    if n == 0:
        raise ConfigError(f"token_chunks: {len(token_ids)} tokens make no chunk of {chunk_len}")
    return [list(map(int, token_ids[i * chunk_len:(i + 1) * chunk_len])) for i in range(n)]


def prefill_feeds(network: Network, chunks: Iterable[Sequence[int]], batch_size: int = 1,
                  device: str | torch.device = "cpu") -> Iterator[dict[str, torch.Tensor]]:
    """Step feeds running ``batch_size`` chunks at a time as fresh contexts, each step with its own
    zeroed K/V pool sized from the network's ``kv_cache`` input
    ``[layers, num_blocks, 2, kv_heads, tokens_per_block, head_dim]``."""
    spec = network.input_specs.get("kv_cache")
    if spec is None or len(spec.shape) != 6 or not all(isinstance(d, int) for i, d in enumerate(spec.shape)
                                                       if i != 1):
        raise ConfigError(f"prefill_feeds: network {network.name!r} has no kv_cache input of the batch "
                          "interface (docs/batch_interface.md); pass your own step feeds instead")
    layers, _, two, kv_heads, tpb, head_dim = spec.shape
    batch: list[Sequence[int]] = []
    for chunk in list(chunks) + [None]:  # type: ignore[list-item]
        if chunk is not None:
            batch.append(chunk)
        if batch and (len(batch) == batch_size or chunk is None):
            steps, _ = build_static_step_inputs(batch, tpb, device)
            blocks = sum(blocks_for_tokens(len(c), tpb) for c in batch)
            pool = torch.zeros(layers, blocks, two, kv_heads, tpb, head_dim, dtype=spec.dtype.torch,
                               device=device)
            yield {**steps.as_dict(), "kv_cache": pool}
            batch = []


@dataclass
class CalibrationStats:
    """What calibration saw. Keys of the per-tensor dicts are tensor names of the float network."""

    amax: dict[str, torch.Tensor] = field(default_factory=dict)  # [k] max |x| per channel
    abs_sum: dict[str, torch.Tensor] = field(default_factory=dict)  # [k] sum |x| per channel
    rows: dict[str, int] = field(default_factory=dict)  # tokens seen
    # [3, k] float64 per channel: the signed sum, min and max (fp8_center_inputs' mean and range)
    channels: dict[str, torch.Tensor] = field(default_factory=dict)
    samples: dict[str, torch.Tensor] = field(default_factory=dict)  # [<= max_rows, k]
    # [k, k] float64 sum of x^T x over every row (only when collected with hessians=True): GPTQ needs
    # the full Hessian, since a few hundred sampled rows of a 1536-wide input under-determine it.
    xtx: dict[str, torch.Tensor] = field(default_factory=dict)
    # [k, >= r] orthonormal columns, leading first: fp8_lowrank's basis for an input when given (e.g. a
    # top-r PCA computed elsewhere, or a fixed basis for a speed run), instead of xtx's eigenvectors;
    # calibrate() never fills it.
    lowrank_basis: dict[str, torch.Tensor] = field(default_factory=dict)
    kv_amax: dict[int, torch.Tensor] = field(default_factory=dict)  # layer_idx -> [2, kv_heads] (K, V)
    # layer_idx -> [kv_heads] max |k H| of the keys rotated by the Hadamard matrix (``k_rotation``);
    # only when head_dim is a power of two.
    k_amax_rotated: dict[int, torch.Tensor] = field(default_factory=dict)
    # layer_idx -> float64 [bases, 3, kv_heads, head_dim]: per key channel the sum, min and max over
    # every cached token, of K as stored (basis 0) and Hadamard-rotated (basis 1, power-of-two
    # head_dim only): the calibrated mean key of ``kv_cache_center_k`` and the range around it.
    k_channels: dict[int, torch.Tensor] = field(default_factory=dict)
    k_tokens: dict[int, int] = field(default_factory=dict)
    steps: int = 0
    _sample_keys: dict[str, torch.Tensor] = field(default_factory=dict, repr=False)

    def abs_mean(self, name: str) -> torch.Tensor:
        return self.abs_sum[name] / max(self.rows[name], 1)

    def channel_mean(self, name: str) -> torch.Tensor | None:
        """The signed per-channel mean ``[k]`` (float64) of ``name``, or ``None`` for statistics
        collected before it was kept."""
        channels = getattr(self, "channels", {}).get(name)  # getattr: statistics pickled before the field
        return None if channels is None else channels[0] / max(self.rows[name], 1)

    def centered_amax(self, name: str, mean: torch.Tensor) -> torch.Tensor:
        """``max |x - mean|`` over every row and channel of ``name`` (a float64 scalar), from the
        per-channel min and max."""
        lo, hi = self.channels[name][1], self.channels[name][2]
        return torch.maximum(hi - mean, mean - lo).max()

    def second_moment(self, name: str) -> torch.Tensor | None:
        """``X^T X / N`` (float64 ``[k, k]``) over every calibration row of ``name``, or ``None``
        when the statistics were collected without ``hessians=True``."""
        xtx = self.xtx.get(name)
        return None if xtx is None else xtx / max(self.rows[name], 1)


def collect_statistics(network: Network, tensor_names: Sequence[str],
                       feeds: Iterable[Mapping[str, Any]], *, max_rows: int = 512,
                       kv_cache: bool = False, progress: bool = True, seed: int = 0,
                       hessians: bool = False) -> CalibrationStats:
    """Run ``network`` (unchanged: a copy gets the extra outputs) over ``feeds`` and collect
    statistics of the tensors named ``tensor_names`` (and of the K/V cache when ``kv_cache``).
    ``hessians`` also sums ``X^T X`` over every row of each tensor (``[k, k]`` float64 each: 19 MB
    for a 1536-wide input; GPTQ reads it)."""
    probe = clone_network(network)
    by_name = {t.name: t for layer in probe.layers for t in layer.outputs}
    by_name.update({t.name: t for t in probe.inputs.values()})
    # Only the probed tensors are outputs, so the executor skips what no probe needs (the LM head).
    probe.outputs = {}
    attn_layers = [(layer, layer.attrs["fields"]["layer_idx"]) for layer in probe.layers
                   if layer.kind is LayerKind.PLUGIN and "layer_idx" in layer.attrs.get("fields", {})]
    if kv_cache:  # the attention layers must run for the pool to be written
        for layer, idx in attn_layers:
            probe.mark_output(layer.outputs[0], f"__calibration__.attention.{idx}")
    out_names = {}
    for name in tensor_names:
        if name not in by_name:
            raise ConfigError(f"calibration: tensor {name!r} is not in network {network.name!r}")
        out_names[name] = f"__calibration__.{name}"
        probe.mark_output(by_name[name], out_names[name])
    if not probe.outputs:
        raise ConfigError("calibration: nothing to calibrate (no tensors and no K/V cache)")
    executor = TorchExecutor(probe, "cpu")
    stats = CalibrationStats()
    gen = torch.Generator().manual_seed(seed)
    for feed in progress_bar(feeds, progress):
        result = executor.run(feed)
        for name, out in out_names.items():
            _accumulate(stats, name, result[out].detach().float(), max_rows, gen, hessians)
        if kv_cache:
            pool = feed["kv_cache"]
            for _, idx in attn_layers:
                _accumulate_kv(stats, idx, pool[idx])
        stats.steps += 1
    if stats.steps == 0:
        raise ConfigError("calibration: the calibration feeds were empty")
    return stats


def _accumulate_kv(stats: CalibrationStats, idx: int, layer_pool: torch.Tensor) -> None:
    """Fold one layer's pool ``[blocks, 2, kv_heads, tpb, head_dim]`` into the K/V ranges."""
    pool = layer_pool.float()
    amax = pool.abs().amax(dim=(0, 3, 4))  # [2, kv_heads]: K, V per head
    prev = stats.kv_amax.get(idx)
    stats.kv_amax[idx] = amax if prev is None else torch.maximum(prev, amax)
    head_dim = pool.shape[-1]
    bases = [pool[:, 0]]  # [blocks, kv_heads, tpb, head_dim]
    if head_dim & (head_dim - 1) == 0:
        bases.append(pool[:, 0] @ hadamard(head_dim))
        rotated = bases[1].abs().amax(dim=(0, 2, 3))  # [kv_heads]
        prev = stats.k_amax_rotated.get(idx)
        stats.k_amax_rotated[idx] = rotated if prev is None else torch.maximum(prev, rotated)
    # Every slot of the step's pool counts: prefill_feeds sizes it to the tokens (a zero tail only
    # in a chunk's last, partly filled block), and any mean keeps the centering exact (see kv_cache).
    keys = [k.double().transpose(0, 1).reshape(k.shape[1], -1, head_dim) for k in bases]  # [kv_heads, n, d]
    channels = torch.stack([torch.stack([k.sum(1), k.amin(1), k.amax(1)]) for k in keys])
    prev = stats.k_channels.get(idx)
    if prev is not None:
        channels = torch.stack([prev[:, 0] + channels[:, 0], torch.minimum(prev[:, 1], channels[:, 1]),
                                torch.maximum(prev[:, 2], channels[:, 2])], dim=1)
    stats.k_channels[idx] = channels
    stats.k_tokens[idx] = stats.k_tokens.get(idx, 0) + keys[0].shape[1]


def calibrate(network: Network, calibration_feeds: Iterable[Mapping[str, Any]], *,
              max_rows: int = 512, progress: bool = True, hessians: bool = False) -> CalibrationStats:
    """Statistics for every quantization mode at once: the inputs of all GEMMs with constant weights
    and, when the network has a K/V cache, its per-layer ranges. Pass the result to several
    ``quantize_network(..., calibration=stats)`` calls to calibrate only once. ``hessians=True``
    also collects GPTQ's ``X^T X`` (needed by ``gptq=True`` configurations; ~0.8 GB for a 30-layer
    model with 576/1536-wide GEMM inputs)."""
    names = sorted({site.x.name for site in find_gemm_sites(network)})
    has_cache = any(layer.kind is LayerKind.PLUGIN and "layer_idx" in layer.attrs.get("fields", {})
                    for layer in network.layers)
    return collect_statistics(network, names, calibration_feeds, max_rows=max_rows,
                              kv_cache=has_cache, progress=progress, hessians=hessians)


def _accumulate(stats: CalibrationStats, name: str, x: torch.Tensor, max_rows: int,
                gen: torch.Generator, hessian: bool = False) -> None:
    x = x.reshape(-1, x.shape[-1])
    if hessian:  # float32 product of one step's rows, float64 sum over steps
        xtx = (x.T @ x).double()
        stats.xtx[name] = xtx if name not in stats.xtx else stats.xtx[name] + xtx
    channels = torch.stack([x.double().sum(dim=0), x.amin(dim=0).double(), x.amax(dim=0).double()])
    if name in stats.channels:
        prev = stats.channels[name]
        channels = torch.stack([prev[0] + channels[0], torch.minimum(prev[1], channels[1]),
                                torch.maximum(prev[2], channels[2])])
    stats.channels[name] = channels
    amax, total = x.abs().amax(dim=0), x.abs().sum(dim=0)
    if name in stats.amax:
        amax, total = torch.maximum(stats.amax[name], amax), stats.abs_sum[name] + total
    stats.amax[name], stats.abs_sum[name] = amax, total
    stats.rows[name] = stats.rows.get(name, 0) + x.shape[0]
    # A uniform sample of all rows seen: every row draws a random key, the max_rows smallest stay.
    keys = torch.rand(x.shape[0], generator=gen)
    if name in stats.samples:
        x, keys = torch.cat([stats.samples[name], x]), torch.cat([stats._sample_keys[name], keys])
    if x.shape[0] > max_rows:
        keep = keys.topk(max_rows, largest=False).indices.sort().values
        x, keys = x[keep], keys[keep]
    stats.samples[name], stats._sample_keys[name] = x, keys


def progress_bar(items: Iterable[Any], enabled: bool, desc: str = "calibrating",
                 unit: str = "step") -> Iterable[Any]:
    """``items`` under a tqdm progress bar when ``enabled`` (and tqdm imports), else as they are."""
    if not enabled:
        return items
    try:
        from tqdm.auto import tqdm  # type: ignore[import-untyped]
    except ImportError:  # tqdm is a dependency, but calibration must not fail without a progress bar
        return items
    total = len(items) if hasattr(items, "__len__") else None  # type: ignore[arg-type]
    return tqdm(items, total=total, desc=desc, unit=unit)
