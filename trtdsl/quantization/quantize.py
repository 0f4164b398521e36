"""``quantize_network``: the quantization IR pass.

It works on any built network, whatever the architecture: every MATRIX_MULTIPLY whose weight is a
constant (``F.linear`` on a Parameter) becomes one quantized-GEMM plugin
(:mod:`trtdsl.quantization.plugins`) holding its quantized weights and scales as constants (so they
are stored in the engine file like any weight), and every ``trtdsl.attention`` layer becomes
``trtdsl.attention_quant_kv`` when the K/V cache is quantized. The input network is not modified.

Per-input-channel scales (AWQ, SmoothQuant) are chosen per *group* of GEMMs reading the same
activation (q/k/v; gate/up), folded into the weight of the normalization that produces the activation
when nothing else reads it, or else applied by one multiply before the group.
"""

from __future__ import annotations

import fnmatch
from dataclasses import replace
from typing import Any, Callable, Iterable, Mapping

import torch

from .. import functional as F
from ..dtypes import DType
from ..errors import ConfigError
from ..ir.network import Layer, LayerKind, Network, Tensor
from . import kv_cache as kvq
from . import gptq
from . import numerics as nq
from .calibration import CalibrationStats, collect_statistics
from .config import QuantConfig
from ..passes.dce import eliminate_dead_code
from ..passes.fusion import swiglu_match
from ..passes.graph import consumers
from .graph import GemmSite, clone_network, constant_source, find_gemm_sites, group_by_input, splice
from .plugins import FP8_GEMM, INT8_GEMM, WEIGHT_ONLY_GEMM
from .sensitivity import GroupSensitivity, choose_float_groups, gemm_sensitivity

__all__ = ["quantize_network"]

_QUANT_PLUGINS = (WEIGHT_ONLY_GEMM, FP8_GEMM, INT8_GEMM, kvq.ATTENTION_QUANT_KV)


def quantize_network(network: Network, mode: str | None = None, *,
                     calibration_feeds: Iterable[Mapping[str, Any]] | None = None,
                     group_size: int = 128, kv_cache_dtype: str | None = None,
                     config: QuantConfig | None = None, calibration: CalibrationStats | None = None,
                     progress: bool = True, **options: Any) -> Network:
    """Return a quantized copy of ``network``.

    ``mode`` is one of ``"fp8"``, ``"int8_wo"``, ``"int4_wo"``, ``"int4_awq"``, ``"int8_sq"`` (or
    ``None`` with a ``kv_cache_dtype``); ``options`` are the other :class:`QuantConfig` fields, or
    pass a whole ``config``. ``calibration_feeds`` (step feeds of the float network, e.g. from
    :func:`~trtdsl.quantization.prefill_feeds`) are needed by fp8, int4_awq, int8_sq and K/V cache
    quantization; or pass ``calibration``, statistics from :func:`~trtdsl.quantization.calibrate`
    on this network, to quantize several ways with one calibration run.

    >>> qnet = quantize_network(net, "int4_awq", calibration_feeds=feeds, group_size=64)
    """
    cfg = config or QuantConfig(mode=mode, group_size=group_size, kv_cache_dtype=kv_cache_dtype,
                                **options)
    already = sorted({layer.attrs["name"] for layer in network.layers
                      if layer.kind is LayerKind.PLUGIN and layer.attrs.get("name") in _QUANT_PLUGINS})
    if already:
        raise ConfigError(f"quantize_network: network {network.name!r} is already quantized (it has "
                          f"{already} layers); quantize the float network instead")
    if cfg.float_fraction and calibration_feeds is not None:
        calibration_feeds = list(calibration_feeds)  # calibration and the sensitivity ranking read them
    net = clone_network(network)
    sites = find_gemm_sites(net, cfg.exclude) if cfg.mode else []
    if cfg.mode and not sites:
        raise ConfigError(f"quantize_network: network {network.name!r} has no GEMM with constant float "
                          f"weights outside the excluded {list(cfg.exclude)}; nothing to quantize "
                          f"with mode {cfg.mode!r}")
    attention = _attention_layers(net) if cfg.kv_cache_dtype else []
    stats = calibration
    if cfg.calibrates_activations or cfg.kv_cache_dtype:  # (float_fraction alone needs feeds, no statistics)
        names = sorted({s.x.name for s in sites}) if cfg.calibrates_activations else []
        if stats is None:
            stats = _calibrate(network, cfg, names, calibration_feeds, progress)
        missing = [n for n in names if n not in stats.amax]
        if missing or (cfg.kv_cache_dtype and not stats.kv_amax):
            raise ConfigError(f"quantize_network: the calibration statistics lack GEMM inputs "
                              f"{missing[:3]}{' ...' if len(missing) > 3 else ''}"
                              f"{' and K/V ranges' if cfg.kv_cache_dtype and not stats.kv_amax else ''}; "
                              f"were they collected with calibrate() on network {network.name!r}?")
    float_groups: list[GroupSensitivity] = []
    if cfg.mode:
        def quantize_group(n: Network, group: list[GemmSite]) -> None:
            group_cfg = _group_config(cfg, group)
            _GROUP_QUANTIZERS[group_cfg.mode](n, group, group_cfg, stats)  # type: ignore[index]
        if cfg.float_fraction:
            float_groups = _sensitive_groups(network, cfg, calibration_feeds, quantize_group, progress)
            kept = {name for g in float_groups for name in g.layers}
            sites = [s for s in sites if s.layer.name not in kept]
        for group in group_by_input(sites):
            quantize_group(net, group)
    if cfg.kv_cache_dtype:
        _quantize_kv_cache(net, attention, kvq.KV_CACHE_DTYPES[cfg.kv_cache_dtype], stats,
                           per_head=cfg.kv_cache_scales == "head", headroom=cfg.kv_cache_headroom,
                           rotation=cfg.kv_cache_rotation, center_k=cfg.kv_cache_center_k)
    eliminate_dead_code(net)  # the float weights the quantized GEMMs replaced
    net.metadata["quantization"] = cfg.to_dict()
    if cfg.float_fraction:
        net.metadata["quantization"]["float_gemms"] = [
            {"layers": list(g.layers), "weights": g.weights, "kl": g.kl} for g in float_groups]
    return net


def _sensitive_groups(network: Network, cfg: QuantConfig, feeds: Iterable[Mapping[str, Any]] | None,
                      quantize_group: Callable[[Network, list[GemmSite]], None],
                      progress: bool) -> list[GroupSensitivity]:
    """The GEMM groups ``cfg.float_fraction`` leaves in float (see :mod:`.sensitivity`)."""
    if feeds is None:
        raise ConfigError("quantize_network: float_fraction ranks the GEMMs by running the network on "
                          "calibration feeds; pass calibration_feeds (also when passing calibration=)")
    steps = list(feeds)[:cfg.sensitivity_steps]
    ranking = gemm_sensitivity(network, steps, quantize_group, cfg.exclude, progress)
    return choose_float_groups(ranking, cfg.float_fraction)


def _group_config(cfg: QuantConfig, group: list[GemmSite]) -> QuantConfig:
    """``cfg`` with the mode of the first ``mode_overrides`` glob and the group size of the first
    ``group_size_overrides`` glob matching the group (any of its layer names, module paths, weights)."""
    names = [n for s in group for n in (s.layer.name, s.layer.module_path, s.weight_name)]

    def first(pairs: tuple[tuple[str, Any], ...]) -> Any:
        return next((v for pattern, v in pairs if any(fnmatch.fnmatchcase(n, pattern) for n in names)), None)
    mode, size = first(cfg.mode_overrides), first(cfg.group_size_overrides)
    if mode is not None:  # a weight-only recipe: the main mode's activation options do not apply
        cfg = replace(cfg, mode=mode, zero_point=None, fp8_dynamic=False, fp8_act_group_size=0, fp8_center_inputs=None,
                      fp8_lowrank=0, fp8_lowrank_blocks=0, awq_all_rows=False, group_size_overrides=(),
                      mode_overrides=())
    return cfg if size is None else replace(cfg, group_size=size)


def _calibrate(network: Network, cfg: QuantConfig, names: list[str],
               feeds: Iterable[Mapping[str, Any]] | None, progress: bool) -> CalibrationStats:
    if feeds is None:
        what = f"mode {cfg.mode!r}" if cfg.calibrates_activations else \
            f"kv_cache_dtype {cfg.kv_cache_dtype!r}"
        raise ConfigError(f"quantize_network: {what} needs calibration_feeds (step feeds of the "
                          "float network), e.g. trtdsl.quantization.prefill_feeds(network, "
                          "token_chunks(tokenizer.encode(builtin_text()), 256, 16))")
    return collect_statistics(network, names, feeds, max_rows=cfg.max_calibration_rows,
                              kv_cache=cfg.kv_cache_dtype is not None, progress=progress,
                              hessians=cfg.needs_hessians)


# -- GEMM rewrites ---------------------------------------------------------------------------------------
def _const(net: Network, value: torch.Tensor, dtype: DType, name: str) -> Tensor:
    # contiguous, as an engine file stores it: a GEMM on a transposed view may round differently
    with net.scope():
        return F.constant(value.contiguous(), dtype, name=name)


def _replace_gemm(net: Network, site: GemmSite, x: Tensor, plugin: str,
                  consts: list[tuple[str, torch.Tensor, DType]], bias: torch.Tensor | None = None,
                  lowrank: tuple[Tensor, torch.Tensor] | None = None, **fields: Any) -> None:
    """Replace ``site``'s matmul by ``plugin(x, *consts)`` (``+ c @ wu [r, n]`` for ``lowrank = (c,
    wu)``, then ``+ bias [n]``, in x's dtype, when given); constants are named after the weight."""
    def build() -> Tensor:
        tensors = [_const(net, v, dt, f"{site.weight_name}.{label}") for label, v, dt in consts]
        y = F.plugin(plugin, [x, *tensors], **fields)[0]
        if lowrank is not None:
            c, wu = lowrank
            y = F.add(y, F.matmul(c, _const(net, wu.to(x.dtype.torch), x.dtype, f"{site.weight_name}.lowrank_weight")))
        if bias is None:
            return y
        return F.add(y, _const(net, bias.to(x.dtype.torch), x.dtype, f"{site.weight_name}.center_bias"))
    splice(net, site.layer, build, replace_layer=True, module_path=site.layer.module_path)


def _weight_only(net: Network, site: GemmSite, x: Tensor, w: torch.Tensor, bits: int,
                 cfg: QuantConfig, clip: torch.Tensor | None = None,
                 hessian: torch.Tensor | None = None,
                 group_params: gptq.GroupParams | None = None) -> None:
    """Replace ``site`` by a weight-only GEMM of ``w`` rounded to nearest or, with ``cfg.gptq``,
    by GPTQ with ``hessian``; ``cfg.grid_refit`` then refits the grid to the codes (same Hessian)."""
    k, group_size, zero_point = w.shape[1], cfg.group_size, cfg.uses_zero_point
    if bits == 4 and k % 2:
        raise ConfigError(f"quantize_network: int4 needs an even number of input features; "
                          f"{site.describe()} has {k}; exclude it (exclude=(...)) or use int8_wo")
    consts: list[tuple[str, torch.Tensor, DType]] = []
    zeros: torch.Tensor | None = None
    if cfg.gptq:  # GPTQ rounding onto the same grid
        assert hessian is not None
        codes, scales, zeros = gptq.gptq_int(w, hessian, bits, group_size, zero_point, clip,
                                             act_order=cfg.gptq_act_order, group_params=group_params)
    elif zero_point:
        codes, scales, zeros = nq.quantize_weight_asym(w, bits, group_size, clip)
    else:
        codes, scales = nq.quantize_weight(w, bits, group_size, clip)
    if cfg.grid_refit:
        assert hessian is not None

        def reround(sc: torch.Tensor, z: torch.Tensor | None) -> torch.Tensor:
            if not cfg.gptq:
                return nq.round_to_grid(w, bits, group_size, sc, z)
            return gptq.gptq_int(w, hessian, bits, group_size, zero_point, act_order=cfg.gptq_act_order,
                                 grid=(sc, z))[0]
        codes, scales, zeros = gptq.refine_grid(w, hessian, codes, scales, zeros, group_size,
                                                cfg.grid_refit, reround)
    if cfg.half_scales:
        scales, zeros = nq.half_grid(scales, zeros, site.describe())
    if zeros is not None:
        consts.append(("zeros", zeros, DType.float32))
    qweight = (nq.pack_int4(codes), DType.int4) if bits == 4 else (codes, DType.int8)
    consts[:0] = [("qweight", qweight[0], qweight[1]), ("scales", scales, DType.float32)]
    _replace_gemm(net, site, x, WEIGHT_ONLY_GEMM, consts, bits=bits, group_size=group_size, in_features=k)


def _second_moment(stats: CalibrationStats | None, group: list[GemmSite], why: str) -> torch.Tensor:
    assert stats is not None
    name = group[0].x.name
    h = stats.second_moment(name)
    if h is None:
        raise ConfigError(f"quantize_network: {why} needs X^T X of every GEMM input, and the "
                          f"calibration statistics have none for {name!r} ({group[0].describe()}); "
                          f"collect them with calibrate(network, feeds, hessians=True)")
    return h


def _centered_second_moment(stats: CalibrationStats | None, group: list[GemmSite], why: str,
                            mean: torch.Tensor | None) -> torch.Tensor:
    """``X^T X / N`` of the group's input, or with ``mean`` its covariance: E[(x - mu)(x - mu)^T] =
    E[x x^T] - mu mu^T for the calibrated mean mu."""
    h = _second_moment(stats, group, why)
    return h if mean is None else h - torch.outer(mean.double(), mean.double())


def _hessian(cfg: QuantConfig, stats: CalibrationStats | None, group: list[GemmSite],
             s: torch.Tensor | None = None, mean: torch.Tensor | None = None,
             basis: torch.Tensor | None = None) -> torch.Tensor | None:
    """GPTQ's damped ``X^T X / N`` of the group's input over all calibration rows (of ``x / s`` when
    the group is smoothed by ``s``; the covariance of ``x - mean`` when the input is centered, projected
    off the low-rank branch's ``basis [k, r]`` when there is one), or ``None`` without ``gptq`` or
    ``grid_refit``."""
    if not cfg.gptq and not cfg.grid_refit:
        return None
    h = _centered_second_moment(stats, group, "gptq=True" if cfg.gptq else "grid_refit", mean)
    if basis is not None:  # the quantized GEMM sees P (x - mu), P = I - U U^T
        proj = torch.eye(h.shape[0], dtype=torch.float64) - basis.double() @ basis.double().T
        h = proj @ h @ proj
    if s is not None:  # (x / s)^T (x / s) = diag(1/s) X^T X diag(1/s)
        inv = 1.0 / s.double()
        h = h * inv[:, None] * inv[None, :]
    return gptq.damped(h, cfg.gptq_damp)


def _equivalent_rows(h: torch.Tensor) -> torch.Tensor:
    """``[k, k]`` rows ``R`` with ``R^T R == h`` (``L^T`` of ``h = L L^T``): any output error that
    is quadratic in the activations is the same over ``R`` as over every calibration row."""
    eye = torch.eye(h.shape[0], dtype=torch.float64)
    l, info = torch.linalg.cholesky_ex(h.double() + eye * 1e-10 * float(torch.diagonal(h).mean()))
    if int(info):  # numerically singular (dead channels): a symmetric square root instead
        vals, vecs = torch.linalg.eigh(h.double())
        return (vecs * vals.clamp_min(0).sqrt()).T.float()
    return l.T.float()


def _group_params(cfg: QuantConfig, bits: int, x: torch.Tensor | None) -> gptq.GroupParams | None:
    """Per-group scales/zeros computed from GPTQ's updated weights (``gptq_static_groups=False``),
    with AWQ's clip search on the group when ``x`` (calibration rows of the GEMM input) is given."""
    if not cfg.gptq or cfg.gptq_static_groups:
        return None
    zp = cfg.uses_zero_point

    def params(j: int, wg: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        clip = None if x is None else nq.awq_search_clip(x[:, j:j + wg.shape[1]], wg, 0, zero_point=zp,
                                                         max_rows=x.shape[0],
                                                         two_sided=cfg.awq_clip_two_sided)
        if zp:
            _, scales, zeros = nq.quantize_weight_asym(wg, bits, 0, clip)
            return scales[:, 0], zeros[:, 0]
        return nq.quantize_weight(wg, bits, 0, clip)[1][:, 0], None
    return params


def _quantize_wo(net: Network, group: list[GemmSite], cfg: QuantConfig, stats: Any) -> None:
    h = _hessian(cfg, stats, group)
    bits = cfg.weight_bits or 8
    for site in group:
        _weight_only(net, site, site.x, site.weight, bits, cfg, hessian=h,
                     group_params=_group_params(cfg, bits, None))


def _quantize_awq(net: Network, group: list[GemmSite], cfg: QuantConfig,
                  stats: CalibrationStats | None) -> None:
    assert stats is not None
    name = group[0].x.name
    samples, x_mean, rows = stats.samples[name], None, {}
    if cfg.awq_all_rows:  # rows equivalent to all calibration rows; mean|x| from the statistics
        samples = _equivalent_rows(_second_moment(stats, group, "awq_all_rows=True"))
        x_mean, rows = stats.abs_mean(name), {"max_rows": samples.shape[0]}
    weights = [s.weight.float() for s in group]
    zp = cfg.uses_zero_point
    s, _, _ = nq.awq_search_scales(samples, weights, cfg.group_size, cfg.awq_grid, zero_point=zp,
                                   x_abs_mean=x_mean, tie=_gqa_tie(cfg, group[0].x), **rows)
    # s == 1 (the search kept plain rounding): no multiply to add, nothing to fold.
    x = group[0].x if bool((s == 1).all()) else _scale_activation(net, group, 1.0 / s)
    h = _hessian(cfg, stats, group, s)
    xs = samples / s
    dynamic = _group_params(cfg, 4, xs if cfg.awq_clip else None)
    for site, w in zip(group, weights):
        ws = w * s
        clip = nq.awq_search_clip(xs, ws, cfg.group_size, zero_point=zp, two_sided=cfg.awq_clip_two_sided,
                                  **rows) \
            if cfg.awq_clip and dynamic is None else None
        _weight_only(net, site, x, ws, 4, cfg, clip, hessian=h, group_params=dynamic)


def _gqa_tie(cfg: QuantConfig, x: Tensor) -> torch.Tensor | None:
    """Channel classes tying AWQ's factors of an attention output across the query heads sharing a
    K/V head (``awq_tie_gqa``): so tied, the multiply before o_proj folds exactly into the V rows of
    the qkv GEMM (:mod:`trtdsl.passes.scale_fold`). ``None`` for other inputs and without GQA."""
    layer = x.producer
    if not cfg.awq_tie_gqa or layer is None or layer.kind is not LayerKind.PLUGIN or \
            layer.attrs.get("name") != kvq.ATTENTION:
        return None
    f = layer.attrs["fields"]
    heads, kv_heads, hd = int(f["num_heads"]), int(f["num_kv_heads"]), int(f["head_dim"])
    if heads == kv_heads or heads % kv_heads or x.shape[-1] != heads * hd:
        return None
    return nq.gqa_tie(heads, kv_heads, hd)


def _quantize_fp8(net: Network, group: list[GemmSite], cfg: QuantConfig,
                  stats: CalibrationStats | None) -> None:
    consts: list[tuple[str, torch.Tensor, DType]] = []
    x, mean = group[0].x, None
    correction = None  # an uncentered input's mean, for the weights' bias correction
    branch: tuple[Tensor, torch.Tensor] | None = None  # the low-rank branch's (c, U)
    if not cfg.fp8_dynamic:  # a static input scale; without one the plugin scales per token
        assert stats is not None
        x, mean, x_amax = _fp8_input(net, group, cfg, stats)
        if mean is None and cfg.center_inputs != "none":
            correction = _channel_mean(stats, x)
        elif mean is not None and cfg.fp8_lowrank:
            x, branch = _lowrank_split(net, group, x, mean, cfg, stats)
        consts.append(("input_scale", (x_amax.float().clamp_min(1e-8) / nq.FP8_MAX).reshape(1), DType.float32))
    h = _hessian(cfg, stats, group, mean=mean, basis=None if branch is None else branch[1])
    for site in group:
        w = site.weight.float()
        amax = w.abs().amax(dim=1) if cfg.fp8_per_channel_weights else w.abs().amax().reshape(1)
        w_scale = amax.clamp_min(1e-8) / nq.FP8_MAX
        codes = nq.quantize_fp8(w, w_scale[:, None]) if h is None else \
            gptq.gptq_fp8(w, h, w_scale, act_order=cfg.gptq_act_order)
        fields = {"act_group_size": cfg.fp8_act_group_size} if cfg.fp8_act_group_size else {}
        bias = _fp8_bias(w, codes, w_scale, mean, correction)
        lowrank = None if branch is None else (branch[0], (w.double() @ branch[1].to(w.device).double()).T.float())
        _replace_gemm(net, site, x, FP8_GEMM, [("weight", codes, DType.fp8),
                      ("weight_scale", w_scale, DType.float32), *consts], bias=bias, lowrank=lowrank, **fields)


def _fp8_bias(w: torch.Tensor, codes: torch.Tensor, w_scale: torch.Tensor, mean: torch.Tensor | None,
              correction: torch.Tensor | None) -> torch.Tensor | None:
    """The float bias of a static fp8 GEMM: ``W mean`` for a centered input (the float weights, so the
    codes' rounding error along the mean cancels too), ``(W - dequantized codes) mean`` for an
    uncentered one when the recipe centers others (bias correction of the weights' mean error, which
    round-to-nearest leaves and a GEMV epilogue adds for free), else None."""
    if mean is not None:
        return (w.double() @ mean.double()).float()
    if correction is None:
        return None
    deq = codes.double() * w_scale.double().reshape(-1, 1)
    return ((w.double() - deq) @ correction.to(w.device).double()).float()


def _fp8_input(net: Network, group: list[GemmSite], cfg: QuantConfig,
               stats: CalibrationStats) -> tuple[Tensor, torch.Tensor | None, torch.Tensor]:
    """What the group's static fp8 GEMMs quantize: ``(tensor, mean or None, max |tensor|)``. With
    ``fp8_center_inputs`` covering the group, the tensor is ``x - mean`` (one subtraction before the
    group's first GEMM; ``mean`` rounded to x's dtype, as subtracted) and the range is the centered one."""
    x = group[0].x
    producer = x.producer
    centered = _centered_input(cfg.center_inputs, producer, net)
    if not centered:
        return x, None, stats.amax[x.name].max()
    mean = _channel_mean(stats, x).to(x.dtype.torch)
    first = group[0].layer
    centered_x = splice(net, first, lambda: F.sub(x, _const(net, mean, x.dtype, f"{first.name}.input_mean")),
                        replace_layer=False, module_path=first.module_path)
    assert centered_x is not None
    return centered_x, mean.double(), stats.centered_amax(x.name, mean.double())


def _lowrank_split(net: Network, group: list[GemmSite], centered: Tensor, mean: torch.Tensor, cfg: QuantConfig,
                   stats: CalibrationStats) -> tuple[Tensor, tuple[Tensor, torch.Tensor]]:
    """``fp8_lowrank``: the leading ``rank`` eigenvectors ``U [k, r]`` of the centered input's calibrated
    covariance (a SwiGLU output's with ``fp8_lowrank_blocks``: each chunk's own, block-diagonal), and
    the layers ``c = centered @ U`` and ``rest = centered - c @ U^T`` before the group's first GEMM.
    Returns ``(rest, (c, U))``: the GEMMs quantize ``rest`` and add ``c (W U)^T``.

    The static scale stays the centered range's: e4m3's error is relative to each value, so a scale
    larger than ``rest`` needs only costs precision for values below its normal range."""
    k, rank = centered.shape[-1], cfg.fp8_lowrank
    if not isinstance(k, int) or not 0 < rank < k:
        raise ConfigError(f"quantize_network: fp8_lowrank {rank} must be below the input width {k} of "
                          f"{group[0].describe()}")
    if cfg.fp8_lowrank_blocks and _made_by_swiglu(group[0].x.producer, net):
        basis = _block_basis(stats, group, mean, cfg.fp8_lowrank_blocks, cfg.fp8_lowrank_block_rank)
    else:
        basis = _lowrank_basis(stats, group, mean, rank)
    basis = basis.to(centered.dtype.torch)
    first = group[0].layer
    out: dict[str, Tensor] = {}

    def build() -> Tensor:
        u = _const(net, basis, centered.dtype, f"{first.name}.lowrank_basis")
        ut = _const(net, basis.T.contiguous(), centered.dtype, f"{first.name}.lowrank_basis_t")
        out["c"] = F.matmul(centered, u)
        return F.sub(centered, F.matmul(out["c"], ut))
    rest = splice(net, first, build, replace_layer=False, module_path=first.module_path)
    assert rest is not None
    return rest, (out["c"], basis.double())


def _channel_mean(stats: CalibrationStats, x: Tensor) -> torch.Tensor:
    """The calibrated per-channel mean of GEMM input ``x``: centered inputs subtract it, the others'
    weights are bias-corrected along it."""
    mean = stats.channel_mean(x.name)
    if mean is None:
        raise ConfigError(f"quantize_network: fp8_center_inputs needs each GEMM input's per-channel mean, and "
                          f"these calibration statistics have none for {x.name!r} (collected by an older "
                          f"trtdsl): calibrate again, or pass fp8_center_inputs='none'")
    return mean


def _centered_input(which: str, producer: Layer | None, net: Network) -> bool:
    """Whether ``fp8_center_inputs`` (``which``) covers a GEMM input made by ``producer``."""
    if which in ("none", "all") or producer is None:
        return which == "all"
    if producer.kind is LayerKind.NORMALIZATION:
        return True
    return which == "norm+swiglu" and _made_by_swiglu(producer, net)


def _made_by_swiglu(producer: Layer | None, net: Network) -> bool:
    """Whether ``producer`` is the last layer of a SwiGLU (its output is down's input)."""
    return producer is not None and swiglu_match(producer, consumers(net)) is not None


def _lowrank_basis(stats: CalibrationStats, group: list[GemmSite], mean: torch.Tensor, rank: int) -> torch.Tensor:
    """The ``rank`` leading eigenvectors ``[k, rank]`` (float64, leading first) of the group input's
    calibrated covariance ``X^T X / N - mean mean^T``, or the first ``rank`` columns of the statistics'
    ``lowrank_basis`` for that input when they carry one."""
    name, k = group[0].x.name, mean.shape[0]
    given = getattr(stats, "lowrank_basis", {}).get(name)  # getattr: statistics pickled before the field
    if given is not None:
        if given.ndim != 2 or given.shape[0] != k or given.shape[1] < rank:
            raise ConfigError(f"quantize_network: the statistics' lowrank_basis for {name!r} "
                              f"({group[0].describe()}) is {tuple(given.shape)}; fp8_lowrank {rank} needs "
                              f"[{k}, >= {rank}] orthonormal columns")
        basis = given[:, :rank].double()
        gram, eye = basis.T @ basis, torch.eye(rank, dtype=torch.float64)
        if not torch.allclose(gram, eye, atol=1e-4):
            raise ConfigError(f"quantize_network: the statistics' lowrank_basis for {name!r} is not "
                              f"orthonormal (max |U^T U - I| = {float((gram - eye).abs().max()):.3g}); "
                              f"the split d - (d U) U^T removes the span only for orthonormal columns")
        return basis
    cov = _centered_second_moment(stats, group, "fp8_lowrank", mean)
    return torch.linalg.eigh(cov).eigenvectors[:, -rank:].flip(1)  # eigh sorts ascending


def _block_basis(stats: CalibrationStats, group: list[GemmSite], mean: torch.Tensor, blocks: int,
                 rank: int) -> torch.Tensor:
    """``fp8_lowrank_blocks``: ``[k, blocks * rank]`` (float64), block-diagonal in
    ``nq.lowrank_block_chunks``' layout, chunk b's columns ``b * rank ..`` the ``rank`` leading
    eigenvectors of its own block of the centered covariance; or the first ``blocks * rank`` columns of
    the statistics' ``lowrank_basis`` when given, which must be orthonormal and block-diagonal so."""
    name, k = group[0].x.name, mean.shape[0]
    chunks = nq.lowrank_block_chunks(k, blocks)
    if len(chunks) != blocks or any(end - start <= rank for start, end in chunks):
        raise ConfigError(f"quantize_network: fp8_lowrank_blocks {blocks} x fp8_lowrank_block_rank {rank} does "
                          f"not fit the input width {k} of {group[0].describe()} (chunks of whole 8-channel "
                          f"vectors, each wider than its rank)")
    given = getattr(stats, "lowrank_basis", {}).get(name)
    if given is not None:
        basis = _lowrank_basis(stats, group, mean, blocks * rank)  # shape and orthonormality checks
        if nq.compact_block_basis(basis, blocks) is None:
            raise ConfigError(f"quantize_network: the statistics' lowrank_basis for {name!r} is not "
                              f"block-diagonal in {blocks} chunks of {rank} (fp8_lowrank_blocks)")
        return basis
    cov = _centered_second_moment(stats, group, "fp8_lowrank", mean)
    basis = torch.zeros(k, blocks * rank, dtype=torch.float64)
    for b, (start, end) in enumerate(chunks):  # eigh sorts ascending: the leading ones last
        vectors = torch.linalg.eigh(cov[start:end, start:end]).eigenvectors
        basis[start:end, b * rank:(b + 1) * rank] = vectors[:, -rank:].flip(1)
    return basis


def _quantize_sq(net: Network, group: list[GemmSite], cfg: QuantConfig,
                 stats: CalibrationStats | None) -> None:
    assert stats is not None
    weights = [s.weight.float() for s in group]
    # tied over a K/V group's query heads for o_proj (awq_tie_gqa): optimize folds 1/s into V's rows
    s = nq.tie_channels(nq.smoothquant_scales(stats.amax[group[0].x.name], weights, cfg.smoothquant_alpha),
                        _gqa_tie(cfg, group[0].x))
    x = _scale_activation(net, group, 1.0 / s)
    for site, w in zip(group, weights):
        codes, scales = nq.quantize_weight(w * s, 8, 0)
        _replace_gemm(net, site, x, INT8_GEMM, [("weight", codes, DType.int8),
                      ("weight_scale", scales.reshape(-1), DType.float32)])


_GROUP_QUANTIZERS: dict[str, Callable[..., None]] = {
    "int8_wo": _quantize_wo, "int4_wo": _quantize_wo, "int4_awq": _quantize_awq,
    "fp8": _quantize_fp8, "int8_sq": _quantize_sq,
}


def _scale_activation(net: Network, group: list[GemmSite], factor: torch.Tensor) -> Tensor:
    """Multiply the group's shared activation by ``factor [k]`` per channel: folded into the weight
    (and bias) of the producing normalization when the group's GEMMs are its only readers, else one
    elementwise multiply before the first GEMM of the group. Returns the tensor the GEMMs read."""
    x = group[0].x
    norm = x.producer
    readers = consumers(net)
    if norm is not None and norm.kind is LayerKind.NORMALIZATION and \
            {id(layer) for layer in readers.get(id(x), [])} == {id(s.layer) for s in group} and \
            not any(t is x for t in net.outputs.values()):
        sources = [_private_constant(t, readers) for t in norm.inputs[1:]]
        if all(src is not None for src in sources):
            for src in sources:
                assert src is not None
                value = src.attrs["value"]
                src.attrs["value"] = (value.float() * factor).to(value.dtype)
            return x
    first = group[0].layer
    result = splice(net, first, lambda: F.mul(x, _const(net, factor.to(x.dtype.torch), x.dtype,
                                                        f"{first.name}.input_scale")),
                    replace_layer=False, module_path=first.module_path)
    assert result is not None
    return result


def _private_constant(t: Tensor, readers: dict[int, list[Layer]]) -> Layer | None:
    """The constant behind ``t`` if ``t`` is its only use (so changing it affects nothing else)."""
    src = constant_source(t)
    if src is None:
        return None
    cur = src.outputs[0]
    while cur is not t:  # walk the reshape chain down to t, checking each link has one reader
        users = readers.get(id(cur), [])
        if len(users) != 1:
            return None
        cur = users[0].outputs[0]
    return src if len(readers.get(id(t), [])) == 1 else None


# -- K/V cache ---------------------------------------------------------------------------------------------
def _attention_layers(net: Network) -> list[Layer]:
    layers = [layer for layer in net.layers
              if layer.kind is LayerKind.PLUGIN and layer.attrs.get("name") == kvq.ATTENTION]
    if not layers:
        raise ConfigError(f"quantize_network: kv_cache_dtype needs {kvq.ATTENTION} layers and network "
                          f"{net.name!r} has none")
    return layers


def _rotated_k_amax(stats: CalibrationStats, layer: Layer, heads: int) -> torch.Tensor:
    """Calibrated ``max |k H|`` of ``layer``'s keys, per K/V head (or one value if ``heads == 1``)."""
    fields = layer.attrs["fields"]
    # Statistics saved before rotated ranges were collected have no such attribute.
    rotated = getattr(stats, "k_amax_rotated", {}).get(fields["layer_idx"])
    if rotated is None:
        raise ConfigError(f"quantize_network: kv_cache_rotation needs the calibrated ranges of the "
                          f"rotated keys of attention layer {layer.name!r} (head_dim "
                          f"{fields['head_dim']} must be a power of two; statistics from before this "
                          f"option must be collected again with calibrate())")
    rotated = rotated.float().reshape(-1)
    return rotated if heads == rotated.numel() else rotated.amax().reshape(1)


def _mean_key(stats: CalibrationStats, layer: Layer, rotation: str) -> tuple[torch.Tensor, torch.Tensor]:
    """The calibrated mean key ``[kv_heads, head_dim]`` of ``layer`` (in the rotated basis with a
    rotation) and the largest deviation from it per K/V head ``[kv_heads]``."""
    idx = layer.attrs["fields"]["layer_idx"]
    channels = getattr(stats, "k_channels", {}).get(idx)  # statistics saved before this option lack it
    basis = 0 if rotation == "none" else 1
    if channels is None or channels.shape[0] <= basis:
        raise ConfigError(f"quantize_network: kv_cache_center_k needs the per-channel key statistics of "
                          f"attention layer {layer.name!r}; statistics from before this option must be "
                          f"collected again with calibrate()")
    total, low, high = channels[basis]
    mean = total / stats.k_tokens[idx]
    return mean.float(), torch.maximum(high - mean, mean - low).amax(dim=-1).float()


def _quantize_kv_cache(net: Network, layers: list[Layer], dtype: DType,
                       stats: CalibrationStats | None, per_head: bool, headroom: float = 1.0,
                       rotation: str = "none", center_k: bool = False) -> None:
    assert stats is not None
    pool = layers[0].inputs[6]
    input_name = next((n for n, t in net.inputs.items() if t is pool), None)
    other = [layer.name for layer in consumers(net).get(id(pool), []) if not any(layer is a for a in layers)]
    if input_name is None or other:
        raise ConfigError(f"quantize_network: the K/V cache {pool.name!r} must be a network input read "
                          f"only by {kvq.ATTENTION} layers (also read by {other})")
    pool.dtype = dtype  # the pool is stored quantized: its input's dtype changes with it
    net.input_specs[input_name] = replace(net.input_specs[input_name], dtype=dtype)
    for layer in layers:
        fields = dict(layer.attrs["fields"])
        amax = stats.kv_amax.get(fields["layer_idx"])
        if amax is None:
            raise ConfigError(f"quantize_network: calibration saw no K/V for attention layer "
                              f"{layer.name!r} (layer_idx {fields['layer_idx']})")
        amax = amax.float().reshape(2, -1).clone()  # [2, kv_heads] (older statistics: [2, 1])
        k_bias = None
        if center_k:  # the K scale bounds the deviation from the mean key (statistics of the same run)
            k_bias, amax[0] = _mean_key(stats, layer, rotation)
        elif rotation != "none":
            amax[0] = _rotated_k_amax(stats, layer, amax.shape[1])
        if not per_head or amax.shape[1] != fields["num_kv_heads"]:
            amax = amax.amax(dim=1)
        scales = amax.clamp_min(1e-6) * headroom / kvq.KV_QMAX[dtype]
        inputs = list(layer.inputs)

        def build(inputs: list[Tensor] = inputs, scales: torch.Tensor = scales, k_bias: torch.Tensor | None = k_bias,
                  fields: dict = fields, name: str = layer.name) -> Tensor:
            consts = [_const(net, scales, DType.float32, f"{name}.kv_scales")]
            if k_bias is not None:
                consts.append(_const(net, k_bias, DType.float32, f"{name}.k_bias"))
            extra = {"k_rotation": rotation} if rotation != "none" else {}
            return F.plugin(kvq.ATTENTION_QUANT_KV, [*inputs, *consts], **fields,
                            kv_cache_dtype=dtype.value, **extra)[0]
        splice(net, layer, build, replace_layer=True, module_path=layer.module_path)
    net.metadata["kv_cache_dtype"] = dtype.value
    if isinstance(net.metadata.get("build"), dict):  # what the model's build_network recorded
        net.metadata["build"]["kv_cache_dtype"] = dtype.value
