"""``QuantConfig``: what to quantize and how, validated once when it is made."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from ..errors import ConfigError

__all__ = ["QuantConfig", "MODES", "CALIBRATED_MODES", "WEIGHT_ONLY_MODES", "OVERRIDE_MODES"]

#: Weight/activation modes. ``None`` leaves the GEMMs alone (e.g. only a quantized K/V cache).
MODES = ("fp8", "int8_wo", "int4_wo", "int4_awq", "int8_sq")
#: Modes whose scales come from calibration activations.
CALIBRATED_MODES = ("fp8", "int4_awq", "int8_sq")
#: Modes that quantize weights only (group sizes, zero points and float16 scale tables apply to these).
WEIGHT_ONLY_MODES = ("int8_wo", "int4_wo", "int4_awq")
_GROUP_SIZES = (0, 32, 64, 128, 256)
#: Modes a ``mode_overrides`` entry may give a GEMM: weight-only ones that need no activation statistics
#: of their own (GPTQ's Hessians, when the recipe asks for them, are collected for every GEMM input).
OVERRIDE_MODES = ("int8_wo", "int4_wo")


@dataclass(frozen=True)
class QuantConfig:
    """A quantization recipe.

    Attributes:
        mode: ``"fp8"`` (e4m3 W8A8, static per-tensor activation scale), ``"int8_wo"`` / ``"int4_wo"``
            (weight-only, round to nearest), ``"int4_awq"`` (weight-only int4 with AWQ's
            activation-aware scales and clipping), ``"int8_sq"`` (SmoothQuant W8A8, per-token
            dynamic activations), or ``None`` for no GEMM quantization.
        group_size: input channels sharing one scale for the weight-only modes (0 = one scale per
            output channel). int4 needs groups to stay accurate; int8 is fine per channel.
        kv_cache_dtype: ``"fp8"`` or ``"int8"`` to store the K/V cache quantized (per-layer K and V
            scales from calibration), ``None`` to keep the model dtype.
        zero_point: asymmetric weight-only quantization (per-group ``min``/``max`` onto all codes,
            ``w = q * scale + zero``); ``None`` = on for the int4 modes (AWQ's default; it also
            reproduces GGUF Q4_0/Q4_1 weights exactly with ``group_size=32``), off for int8_wo.
        fp8_per_channel_weights: one fp8 weight scale per output channel (else per tensor).
        fp8_dynamic: fp8 activations scaled per token at run time (``max|x_row| / 448``) instead of
            one static calibrated per-tensor scale.
        fp8_act_group_size: with ``fp8_dynamic``, one activation scale per token and block of this
            many channels (DeepSeek-V3's 1 x 128 blocks; must divide every quantized GEMM's input
            width) instead of one per token; 0 = per token. The reference (CPU) implements it; the
            CUDA executor runs such GEMMs through the reference for now and TensorRT refuses them.
        fp8_center_inputs: which static fp8 GEMM inputs are centered on their calibrated per-channel
            mean ``mu`` before quantization: ``"none"``, ``"norm"`` (inputs a normalization layer
            makes: qkv's and gate_up's, whose norm weights give channels large offsets),
            ``"norm+swiglu"`` (also down's input, the SwiGLU's output) or ``"all"``;
            ``None`` = ``"norm"`` for static fp8 (on the GPU it costs no kernel: the quantizing norm
            subtracts, the GEMV adds the bias), ``"none"`` otherwise.
            The GEMM quantizes ``x - mu`` (with the centered range's scale) and adds ``W mu`` back as a
            float bias computed with the float weights, so the weights' rounding error along ``mu``
            cancels too. e4m3's error is relative to each value, so a channel that sits far from
            zero loses most where its offset is large against its spread. The static GEMMs left
            uncentered (with ``"norm"``: o_proj and down) get that bias correction alone:
            ``(W - dequantized codes) mean``.
        fp8_lowrank: rank ``r`` of a float branch on each centered fp8 GEMM input (0 = none). ``U``
            holds the ``r`` leading eigenvectors of the input's calibrated covariance (needs
            ``calibrate(hessians=True)``); the GEMM computes ``c = (x - mu) U`` in the model's dtype,
            quantizes only the rest ``x - mu - c U^T`` and adds ``c (W U)^T`` with the float weights.
            The few directions that carry most of an activation's energy (massive activations, the
            per-token scale of a norm's output) then pass exactly, so neither e4m3 rounding of the
            activations nor the weights' rounding applies to them (GPTQ sees the residual's
            covariance). Costs ``r x (k + n)`` float weights per GEMM; on the GPU the quantizing
            RMSNorm / SwiGLU computes ``c`` and the FP8 GEMV adds ``c (W U)^T`` in its epilogue
            (ranks 2, 4, 8; sm_90), elsewhere a few small layers per input. SmolLM2 with GPTQ,
            ``fp8_center_inputs="norm+swiglu"`` and ``r = 4``: +0.81 to +0.91 % perplexity
            (three draws) against +1.41 % for the default (docs/quantization.md).
        fp8_lowrank_blocks: with ``fp8_lowrank``, the SwiGLU outputs' branch (down's input; needs
            ``fp8_center_inputs`` ``"norm+swiglu"`` or ``"all"``) uses a block-diagonal basis instead: the
            channels in this many contiguous chunks (``numerics.lowrank_block_chunks``), each with the
            ``fp8_lowrank_block_rank`` leading eigenvectors of its own covariance block, ``blocks x
            block_rank`` columns in all. Each chunk's coefficients are then sums over that chunk alone,
            so the CUDA SwiGLU computes them in independent thread blocks instead of a thread-block
            cluster (faster at decode). 0 = the global basis of the other inputs. SmolLM2 with GPTQ,
            ``"norm+swiglu"``, ``fp8_lowrank=4`` and 4 blocks of rank 2: +0.77 to +0.98 % (three draws), 8B
            decode 1.70-1.72x bf16 in GPU time against 1.68-1.69x with the global basis.
        fp8_lowrank_block_rank: leading eigenvectors per chunk of ``fp8_lowrank_blocks`` (1, 2, 4 or 8
            run the CUDA kernel; blocks x block_rank <= 8 keeps the GEMV epilogue's fast path).
        kv_cache_headroom: the K/V scales are ``headroom * max|calibrated| / qmax``: > 1 leaves room
            for values larger than calibration saw (fewer saturate), < 1 spends int8 codes on the bulk
            of the values (more saturate).
        kv_cache_scales: ``"head"`` (one K and one V scale per K/V head and layer) or ``"tensor"``
            (one K and one V scale per layer).
        kv_cache_rotation: ``"hadamard"`` stores K multiplied by the orthonormal Hadamard matrix of
            the head dimension (q gets the same rotation, so the scores are unchanged), which spreads
            the channels where q and k are both large over all channels; ``"none"`` (default)
            stores K as is. Needs a power-of-two head_dim (see :mod:`.kv_cache`).
        kv_cache_center_k: subtract each layer's calibrated mean key (per K/V head and channel, after
            RoPE and any rotation) before K is quantized, without adding it back: every score of a
            query shifts by the same amount, which the softmax cancels, and the stored deviations
            are smaller than the keys (see :mod:`.kv_cache`). Off by default.
        smoothquant_alpha: migration strength ``a`` of ``s_j = max|X_j|^a / max|W_j|^(1-a)``.
        awq_grid: number of steps of the AWQ alpha grid over ``[0, 1]``.
        awq_clip: also run AWQ's per-group clip-ratio search.
        exclude: glob patterns (matched against a GEMM layer's name, module path and weight name) of
            GEMMs to leave in float; the LM head is excluded by default, as in TensorRT-LLM.
        max_calibration_rows: activation rows kept per GEMM input for AWQ's searches.
        gptq: round the weights with GPTQ's error compensation (:mod:`trtdsl.quantization.gptq`)
            instead of to nearest, using ``X^T X`` summed over every calibration row (collected with
            ``calibrate(..., hessians=True)``; ``quantize_network`` does so itself when it calibrates);
            same stored format, so every kernel runs it. Applies to int8_wo, int4_wo, int4_awq and
            fp8 (needs calibration).
        gptq_damp: GPTQ's diagonal damping, as a fraction of the mean Hessian diagonal.
        gptq_act_order: GPTQ visits the input columns by decreasing Hessian diagonal instead of
            left to right (scales stay the per-group ones of the original weights, so the stored
            format is unchanged).
        gptq_static_groups: GPTQ keeps the round-to-nearest scales (and AWQ clip ratios) of the
            original weights; ``False`` computes each group's scales (and, for int4_awq with
            ``awq_clip``, runs the clip search) when the sweep reaches the group, on the weights as
            updated by the earlier columns (GPTQ's original scheme; needs ``group_size > 0``; with
            ``gptq_act_order`` when the sweep reaches the group's first column in that order, from
            all its columns as updated so far). Same stored format either way.
        awq_all_rows: AWQ's scale and clip searches score the output error over every calibration
            row, through rows with the same ``X^T X`` (a Cholesky factor: needs the statistics'
            Hessians, which ``quantize_network`` collects itself), instead of the first 256 / 128
            sampled rows.
        awq_tie_gqa: for an attention output (o_proj's input) of a GQA model, AWQ searches factors
            equal across the query heads that share a K/V head (the candidates' statistics are
            averaged geometrically over those heads; alpha = 0 is still plain rounding), and
            SmoothQuant (int8_sq) ties its factors the same way (their geometric mean). One factor
            per V channel is what ``optimize`` can fold exactly into the V rows of the qkv GEMM, so
            no multiply is left before o_proj. ``False``: one factor per channel (a multiply stays).
        grid_refit: weight-only modes: after rounding (to nearest or by GPTQ), this many rounds of
            "least-squares refit of every group's scale (and zero) to the codes, minimizing the
            output error ``(W - Q) H (W - Q)^T`` with the calibration Hessian" and "re-round the
            codes on the refitted grid" (the same rounding: nearest or a GPTQ sweep); the lowest
            error seen is kept. Same stored format; needs the Hessians (collected by
            ``quantize_network``). 0 = off.
        awq_clip_two_sided: after AWQ's clip search (one shrink factor for both ends of a group's
            range), search the upper end's factor, then the lower end's, separately (asymmetric
            format only; 3x the clip search's time).
        half_scales: weight-only modes: round every group's scale (and zero) to a float16 value at
            the end of the weight's quantization (stored float32 as before, so every kernel and the
            references run it unchanged), so that a decode GEMV may read them as float16 without
            changing a value (a group-64 int4 row would read 36 bytes per 64 weights instead of 40).
            The codes are kept (a rounded scale moves a weight by under 0.5 % of a quantization
            step); a scale or zero beyond float16's range is an error.
        group_size_overrides: ``((glob, group_size), ...)``: weight-only GEMMs matching a glob (as
            ``exclude`` matches: layer name, module path or weight name; for GEMMs sharing an input,
            any of them) use that group size instead of ``group_size``, the first match winning
            (a mixed recipe, e.g. ``(("*feed_forward.down*", 64),)`` in a g128 model). Each GEMM
            records its own group size in its plugin's fields, so every kernel runs it.
        float_fraction: leave the GEMM groups (those sharing an input: q/k/v, o, gate/up, down)
            whose quantization alone moves the logits most in float, by KL per weight, while they
            hold at most this fraction of the quantizable GEMM weights (0 = quantize every GEMM
            outside ``exclude``). Ranked on the first ``sensitivity_steps`` calibration feeds
            (:mod:`trtdsl.quantization.sensitivity`: one network run per feed and group); needs
            ``calibration_feeds``. The chosen layers are recorded in the network's metadata.
        sensitivity_steps: calibration feeds the ``float_fraction`` ranking runs.
        mode_overrides: ``((glob, mode), ...)``: GEMMs matching a glob (as ``group_size_overrides``
            matches) are quantized with that weight-only mode (``"int8_wo"`` or ``"int4_wo"``, with
            ``group_size`` and the recipe's GPTQ settings) instead of ``mode``, the first match
            winning: a mixed recipe such as an fp8 model whose LM head is int8 weight-only
            (``exclude=(), mode_overrides=(("*lm_head*", "int8_wo"),)``): at batch 1 the head is a
            tenth of an fp8 8B model's bytes, and int8 weight-only costs SmolLM2 +0.01 % perplexity.
    """

    mode: str | None = None
    group_size: int = 128
    kv_cache_dtype: str | None = None
    zero_point: bool | None = None
    fp8_per_channel_weights: bool = True
    fp8_dynamic: bool = False
    fp8_act_group_size: int = 0
    fp8_center_inputs: str | None = None
    fp8_lowrank: int = 0
    fp8_lowrank_blocks: int = 0
    fp8_lowrank_block_rank: int = 1
    kv_cache_scales: str = "head"
    kv_cache_headroom: float = 1.0
    kv_cache_rotation: str = "none"
    kv_cache_center_k: bool = False
    smoothquant_alpha: float = 0.5
    awq_grid: int = 20
    awq_clip: bool = True
    exclude: tuple[str, ...] = ("*lm_head*",)
    max_calibration_rows: int = 512
    gptq: bool = False
    gptq_damp: float = 0.01
    gptq_act_order: bool = False
    gptq_static_groups: bool = True
    awq_all_rows: bool = False
    awq_tie_gqa: bool = True
    grid_refit: int = 0
    awq_clip_two_sided: bool = False
    half_scales: bool = False
    group_size_overrides: tuple[tuple[str, int], ...] = ()
    float_fraction: float = 0.0
    sensitivity_steps: int = 4
    mode_overrides: tuple[tuple[str, str], ...] = ()

    def __post_init__(self) -> None:
        modes, problems = self._normalize_overrides()
        problems += self._range_problems() + self._kv_cache_problems()
        problems += self._weight_only_problems(modes) + self._fp8_problems()
        if problems:
            raise ConfigError("QuantConfig: " + "; ".join(problems))

    def _normalize_overrides(self) -> tuple[tuple[tuple[str, str], ...], list[str]]:
        """Overrides as hashable tuples (JSON gives lists), and the problems with them."""
        problems: list[str] = []
        try:  # JSON gives lists: a hashable tuple of (glob, size) pairs
            overrides = tuple((str(p), int(g)) for p, g in self.group_size_overrides)
            object.__setattr__(self, "group_size_overrides", overrides)
        except (TypeError, ValueError):
            problems.append(f"group_size_overrides {self.group_size_overrides!r} must be (glob, group_size) "
                            "pairs")
            overrides = ()
        try:
            modes = tuple((str(p), str(m)) for p, m in self.mode_overrides)
            object.__setattr__(self, "mode_overrides", modes)
        except (TypeError, ValueError):
            problems.append(f"mode_overrides {self.mode_overrides!r} must be (glob, mode) pairs")
            modes = ()
        if any(m not in OVERRIDE_MODES for _, m in modes) or (modes and self.mode is None):
            problems.append(f"mode_overrides {[list(p) for p in modes]}: modes must be in {list(OVERRIDE_MODES)} "
                            "and the recipe needs a mode of its own")
        bad = [g for _, g in overrides if g not in _GROUP_SIZES]
        if bad or (overrides and self.mode not in WEIGHT_ONLY_MODES and not modes):
            problems.append(f"group_size_overrides {list(overrides)}: group sizes must be in {list(_GROUP_SIZES)} "
                            f"and the mode weight-only (or given by mode_overrides), not {self.mode!r}")
        return modes, problems

    def _range_problems(self) -> list[str]:
        """The mode, group size and the numeric settings' ranges."""
        problems: list[str] = []
        if self.mode is not None and self.mode not in MODES:
            problems.append(f"mode {self.mode!r} is unknown; expected one of {list(MODES)} or None")
        if self.group_size not in _GROUP_SIZES:
            problems.append(f"group_size {self.group_size} is unsupported; expected one of "
                            f"{list(_GROUP_SIZES)} (0 = per channel)")
        if not 0.0 <= self.smoothquant_alpha <= 1.0:
            problems.append(f"smoothquant_alpha {self.smoothquant_alpha} must lie in [0, 1]")
        if self.awq_grid < 1:
            problems.append(f"awq_grid {self.awq_grid} must be >= 1")
        if self.max_calibration_rows < 1:
            problems.append(f"max_calibration_rows {self.max_calibration_rows} must be >= 1")
        if self.mode is None and self.kv_cache_dtype is None:
            problems.append("nothing to do: give a mode and/or a kv_cache_dtype")
        if self.gptq and self.mode not in ("int8_wo", "int4_wo", "int4_awq", "fp8"):
            problems.append(f"gptq applies to the int8_wo, int4_wo, int4_awq and fp8 weights, not mode "
                            f"{self.mode!r}")
        if not 0.0 < self.gptq_damp <= 10.0:
            problems.append(f"gptq_damp {self.gptq_damp} must lie in (0, 10]")
        if not self.gptq_static_groups and self.group_size == 0:
            problems.append("gptq_static_groups=False needs group_size > 0 (per-group scales)")
        if self.awq_all_rows and self.mode != "int4_awq":
            problems.append(f"awq_all_rows applies to mode 'int4_awq', not {self.mode!r}")
        if not 0.0 <= self.float_fraction < 1.0 or (self.float_fraction and self.mode is None):
            problems.append(f"float_fraction {self.float_fraction} must lie in [0, 1) and needs a GEMM mode")
        if self.sensitivity_steps < 1:
            problems.append(f"sensitivity_steps {self.sensitivity_steps} must be >= 1")
        if isinstance(self.exclude, str):
            problems.append("exclude must be a tuple of glob patterns, not a string")
        return problems

    def _kv_cache_problems(self) -> list[str]:
        problems: list[str] = []
        if self.kv_cache_dtype not in (None, "fp8", "int8"):
            problems.append(f"kv_cache_dtype {self.kv_cache_dtype!r}; expected 'fp8', 'int8' or None")
        if self.kv_cache_scales not in ("head", "tensor"):
            problems.append(f"kv_cache_scales {self.kv_cache_scales!r}; expected 'head' or 'tensor'")
        if self.kv_cache_rotation not in ("none", "hadamard"):
            problems.append(f"kv_cache_rotation {self.kv_cache_rotation!r}; expected 'none' or 'hadamard'")
        if self.kv_cache_center_k and self.kv_cache_dtype is None:
            problems.append("kv_cache_center_k applies to a quantized K/V cache: set kv_cache_dtype")
        if self.kv_cache_rotation != "none" and self.kv_cache_dtype is None:
            problems.append("kv_cache_rotation applies to a quantized K/V cache: set kv_cache_dtype")
        if not 0.0 < self.kv_cache_headroom <= 100.0:
            problems.append(f"kv_cache_headroom {self.kv_cache_headroom} must lie in (0, 100]")
        return problems

    def _weight_only_problems(self, modes: tuple[tuple[str, str], ...]) -> list[str]:
        """Settings that apply to the weight-only modes (or to GEMMs given one by mode_overrides)."""
        problems: list[str] = []
        if self.zero_point and self.mode not in WEIGHT_ONLY_MODES:
            problems.append(f"zero_point applies to the weight-only modes, not mode {self.mode!r}")
        if self.half_scales and self.mode not in WEIGHT_ONLY_MODES and not modes:
            problems.append(f"half_scales applies to the weight-only modes (or mode_overrides), not mode "
                            f"{self.mode!r}")
        if self.grid_refit < 0 or (self.grid_refit and self.mode not in WEIGHT_ONLY_MODES):
            problems.append(f"grid_refit {self.grid_refit} must be >= 0 and applies to the weight-only "
                            f"modes, not mode {self.mode!r}")
        return problems

    def _fp8_problems(self) -> list[str]:
        problems: list[str] = []
        if self.fp8_act_group_size < 0 or (self.fp8_act_group_size and not (self.mode == "fp8" and self.fp8_dynamic)):
            problems.append(f"fp8_act_group_size {self.fp8_act_group_size} must be >= 0 and needs mode 'fp8' "
                            f"with fp8_dynamic=True (static scales are per tensor)")
        if self.fp8_center_inputs not in (None, "none", "norm", "norm+swiglu", "all"):
            problems.append(f"fp8_center_inputs {self.fp8_center_inputs!r} must be 'none', 'norm', "
                            f"'norm+swiglu' or 'all'")
        elif self.fp8_center_inputs not in (None, "none") and not (self.mode == "fp8" and not self.fp8_dynamic):
            problems.append(f"fp8_center_inputs {self.fp8_center_inputs!r} needs mode 'fp8' with static "
                            f"activation scales (fp8_dynamic=False)")
        if self.fp8_lowrank < 0 or (self.fp8_lowrank and self.center_inputs == "none"):
            problems.append(f"fp8_lowrank {self.fp8_lowrank} must be >= 0 and applies to centered fp8 inputs "
                            f"(mode 'fp8', static scales, fp8_center_inputs other than 'none')")
        if self.fp8_lowrank_blocks < 0 or self.fp8_lowrank_block_rank < 1 or (self.fp8_lowrank_blocks and not (
                self.fp8_lowrank and self.center_inputs in ("norm+swiglu", "all"))):
            problems.append(f"fp8_lowrank_blocks {self.fp8_lowrank_blocks} must be >= 0 and "
                            f"fp8_lowrank_block_rank {self.fp8_lowrank_block_rank} >= 1; blocks apply to the "
                            f"SwiGLU outputs' low-rank branch (fp8_lowrank > 0 with fp8_center_inputs "
                            f"'norm+swiglu' or 'all')")
        return problems

    @property
    def calibrates_activations(self) -> bool:
        """Whether the GEMM quantizers read calibration statistics (dynamic fp8 does not)."""
        if self.gptq or self.grid_refit:  # their Hessian comes from calibration rows
            return True
        return self.mode in CALIBRATED_MODES and not (self.mode == "fp8" and self.fp8_dynamic)

    @property
    def needs_hessians(self) -> bool:
        """Whether the quantizers read ``X^T X`` of the GEMM inputs (``calibrate(hessians=True)``)."""
        return self.gptq or self.awq_all_rows or self.grid_refit > 0 or self.fp8_lowrank > 0

    @property
    def needs_calibration(self) -> bool:
        """Whether ``quantize_network`` needs calibration feeds (statistics, or the
        ``float_fraction`` ranking's network runs)."""
        return self.calibrates_activations or self.kv_cache_dtype is not None or self.float_fraction > 0

    @property
    def center_inputs(self) -> str:
        """Which fp8 GEMM inputs are centered (see ``fp8_center_inputs``)."""
        if self.fp8_center_inputs is None:
            return "norm" if self.mode == "fp8" and not self.fp8_dynamic else "none"
        return self.fp8_center_inputs

    @property
    def uses_zero_point(self) -> bool:
        """Whether weight-only GEMMs get the asymmetric format (see ``zero_point``)."""
        if self.zero_point is None:
            return self.mode in ("int4_wo", "int4_awq")
        return self.zero_point

    @property
    def weight_bits(self) -> int | None:
        return {"int8_wo": 8, "int4_wo": 4, "int4_awq": 4, "int8_sq": 8, "fp8": 8}.get(self.mode or "")

    def to_dict(self) -> dict[str, Any]:
        """A JSON-able form (stored in the network's metadata and so in the engine file)."""
        d = asdict(self)
        d["exclude"] = list(self.exclude)
        d["group_size_overrides"] = [list(p) for p in self.group_size_overrides]
        d["mode_overrides"] = [list(p) for p in self.mode_overrides]
        return d
