"""Shape ops: reshape/view, permute/transpose, (un)squeeze, flatten, expand, slicing and indexing,
concatenation, stack, split/chunk/unbind.

Dtype rules: none of these change the dtype; inputs of ``cat``/``stack`` must share one. Shapes may
be symbolic: ``reshape`` infers ``-1`` exactly when the sizes divide symbolically.
"""

from __future__ import annotations

from typing import Any, Sequence

import torch

from ..dtypes import DType
from ..errors import DTypeError, ShapeError
from ..ir.network import LayerKind, Tensor
from ..ir.symbolic import Dim, SymDim, _poly, dim_add, dim_equal, dim_floordiv, dim_mul, numel
from ._core import as_tensor, check_same_dtype, network_of, normalize_axis, op_error, single


def _shuffle(x: Tensor, name: str, shape: tuple, first: tuple | None = None,
             second: tuple | None = None) -> Tensor:
    return single(x.network.add_layer(LayerKind.SHUFFLE, name, [x], [(x.dtype, tuple(shape))],
                                      {"first_transpose": first, "reshape_dims": tuple(shape),
                                       "second_transpose": second}))


def _div_exact(a: Dim, b: Dim) -> Dim | None:
    """``a / b`` when ``b`` is one monomial that divides every term of ``a``; else None."""
    pb = _poly(b)
    if len(pb) != 1:
        return None
    (mono_b, coeff_b), = pb.items()
    if coeff_b == 0:
        return None
    out: dict = {}
    for mono, coeff in _poly(a).items():
        rest = list(mono)
        for atom in mono_b:
            if atom not in rest:
                return None
            rest.remove(atom)
        if coeff % coeff_b:
            return None
        out[tuple(rest)] = coeff // coeff_b
    return SymDim._make(out)


def reshape(x: Tensor, *shape: Any) -> Tensor:
    """Reshape to ``shape`` (ints, symbolic dims such as ``x.shape[0]``, and at most one ``-1``).

    >>> y = reshape(x, -1, 4)                    # float32[n, 8] -> float32[2*n, 4]
    """
    if len(shape) == 1 and isinstance(shape[0], (tuple, list)):
        shape = tuple(shape[0])
    infer = [i for i, d in enumerate(shape) if isinstance(d, int) and d == -1]
    if len(infer) > 1:
        raise op_error(ShapeError, "reshape", f"more than one -1 in target shape {shape}", [x])
    for d in shape:
        if isinstance(d, int) and d < -1 or not isinstance(d, (int, SymDim)):
            raise op_error(ShapeError, "reshape", f"bad target dim {d!r} in {shape}", [x])
    total = numel(x.shape)
    known: Dim = 1
    for d in shape:
        if not (isinstance(d, int) and d == -1):
            known = dim_mul(known, d)
    target = list(shape)
    if infer:
        inferred = _div_exact(total, known)
        if inferred is None or (isinstance(inferred, int) and inferred < 0):
            raise op_error(ShapeError, "reshape", f"cannot infer -1: {total} elements do not divide "
                           f"into {shape}", [x])
        target[infer[0]] = inferred
    elif not dim_equal(total, known) and isinstance(total, int) and isinstance(known, int):
        raise op_error(ShapeError, "reshape", f"{total} elements cannot be viewed as {tuple(shape)} "
                       f"({known} elements)", [x])
    if isinstance(total, int) and isinstance(numel(tuple(target)), int) and total != numel(tuple(target)):
        raise op_error(ShapeError, "reshape", f"{total} elements cannot be viewed as {tuple(shape)}", [x])
    if tuple(target) == x.shape:
        return x
    return _shuffle(x, "reshape", tuple(target))


view = reshape


def permute(x: Tensor, *dims: int) -> Tensor:
    """Reorder axes.

    >>> y = permute(q, 0, 2, 1, 3)               # [1, 2, n, 8] -> [1, n, 2, 8]
    """
    if len(dims) == 1 and isinstance(dims[0], (tuple, list)):
        dims = tuple(dims[0])
    perm = tuple(normalize_axis(d, x.ndim, "permute", x) for d in dims)
    if sorted(perm) != list(range(x.ndim)):
        raise op_error(ShapeError, "permute", f"{dims} is not a permutation of {x.ndim} axes", [x])
    if perm == tuple(range(x.ndim)):
        return x
    shape = tuple(x.shape[p] for p in perm)
    return single(x.network.add_layer(LayerKind.SHUFFLE, "permute", [x], [(x.dtype, shape)],
                                      {"first_transpose": perm, "reshape_dims": None,
                                       "second_transpose": None}))


def transpose(x: Tensor, dim0: int, dim1: int) -> Tensor:
    """Swap two axes.

    >>> y = transpose(x, 0, 1)                   # [n, 8] -> [8, n]
    """
    perm = list(range(x.ndim))
    a, b = normalize_axis(dim0, x.ndim, "transpose", x), normalize_axis(dim1, x.ndim, "transpose", x)
    perm[a], perm[b] = perm[b], perm[a]
    return permute(x, *perm)


def unsqueeze(x: Tensor, dim: int) -> Tensor:
    """Insert a size-1 axis.

    >>> y = unsqueeze(x, 0)                      # [n, 8] -> [1, n, 8]
    """
    axis = normalize_axis(dim, x.ndim + 1, "unsqueeze", x)
    return _shuffle(x, "unsqueeze", x.shape[:axis] + (1,) + x.shape[axis:])


def squeeze(x: Tensor, dim: int | Sequence[int] | None = None) -> Tensor:
    """Remove size-1 axes (all, or the given ones, which must have size 1).

    >>> y = squeeze(var, 1)                      # [n, 1] -> [n]
    """
    if dim is None:
        axes = [i for i, d in enumerate(x.shape) if isinstance(d, int) and d == 1]
    else:
        axes = [normalize_axis(d, x.ndim, "squeeze", x) for d in ([dim] if isinstance(dim, int) else dim)]
        for a in axes:
            if not (isinstance(x.shape[a], int) and x.shape[a] == 1):
                raise op_error(ShapeError, "squeeze", f"dim {a} has size {x.shape[a]}, not 1", [x])
    return _shuffle(x, "squeeze", tuple(d for i, d in enumerate(x.shape) if i not in axes))


def flatten(x: Tensor, start_dim: int = 0, end_dim: int = -1) -> Tensor:
    """Merge axes ``start_dim..end_dim`` into one.

    >>> y = flatten(q, 2)                        # [1, 2, n, 8] -> [1, 2, 8*n]
    """
    if x.ndim == 0:
        return reshape(x, 1)
    s = normalize_axis(start_dim, x.ndim, "flatten", x)
    e = normalize_axis(end_dim, x.ndim, "flatten", x)
    merged = numel(x.shape[s:e + 1])
    return reshape(x, *x.shape[:s], merged, *x.shape[e + 1:])


def expand(x: Tensor, *sizes: Any) -> Tensor:
    """Broadcast size-1 axes to ``sizes`` (``-1`` keeps a dim), like ``torch.Tensor.expand``.

    >>> y = expand(var, -1, 8)                   # [n, 1] -> [n, 8]
    """
    if len(sizes) == 1 and isinstance(sizes[0], (tuple, list)):
        sizes = tuple(sizes[0])
    if len(sizes) < x.ndim:
        raise op_error(ShapeError, "expand", f"target {sizes} has fewer dims than the input", [x])
    from ._core import expand_rank
    x = expand_rank(x, len(sizes))
    target = []
    for axis, (cur, new) in enumerate(zip(x.shape, sizes)):
        if isinstance(new, int) and new == -1 or dim_equal(cur, new):
            target.append(cur)
        elif isinstance(cur, int) and cur == 1:
            target.append(new)
        else:
            raise op_error(ShapeError, "expand", f"dim {axis} has size {cur}; only size-1 dims can be "
                           f"expanded (to {new})", [x])
    if tuple(target) == x.shape:
        return x
    rank = len(target)
    # A wrapping slice repeats the single element of each size-1 axis (TensorRT's SampleMode.WRAP).
    return single(x.network.add_layer(LayerKind.SLICE, "expand", [x], [(x.dtype, tuple(target))],
                                      {"start": (0,) * rank, "size": tuple(target), "stride": (1,) * rank,
                                       "mode": "wrap", "dynamic": ()}))


def slice(x: Tensor, dim: int, start: Any = None, end: Any = None, step: int = 1) -> Tensor:  # noqa: A001
    """``x`` narrowed along ``dim`` to ``start:end:step`` (negative and symbolic bounds allowed).

    >>> y = slice(x, 1, 0, -1)                   # x[:, :-1]: [n, 8] -> [n, 7]
    """
    axis = normalize_axis(dim, x.ndim, "slice", x)
    size = x.shape[axis]
    if isinstance(start, Tensor) or isinstance(end, Tensor):
        return _dynamic_slice(x, axis, start, end, step)
    if not isinstance(step, int) or step <= 0:
        raise op_error(ShapeError, "slice", f"step must be a positive int, got {step!r}", [x])
    lo = _resolve_bound(start, size, 0)
    hi = _resolve_bound(end, size, size)
    if isinstance(lo, int) and isinstance(hi, int):
        length: Dim = max(0, -(-(hi - lo) // step))
    elif step == 1:
        length = dim_add(hi, dim_mul(lo, -1))
    else:
        length = dim_floordiv(dim_add(dim_add(hi, dim_mul(lo, -1)), step - 1), step)
    starts: list[Dim] = [0] * x.ndim
    sizes = list(x.shape)
    strides = [1] * x.ndim
    starts[axis], sizes[axis], strides[axis] = lo, length, step
    return single(x.network.add_layer(LayerKind.SLICE, "slice", [x], [(x.dtype, tuple(sizes))],
                                      {"start": tuple(starts), "size": tuple(sizes),
                                       "stride": tuple(strides), "mode": "default", "dynamic": ()}))


def _resolve_bound(bound: Any, size: Dim, default: Dim) -> Dim:
    if bound is None:
        return default
    if isinstance(bound, SymDim):
        return bound
    if not isinstance(bound, int):
        raise ShapeError(f"slice: bound {bound!r} must be an int, a symbolic dim or a Tensor")
    if isinstance(size, int):
        b = bound + size if bound < 0 else bound
        return min(max(b, 0), size)
    return dim_add(size, bound) if bound < 0 else bound


def _dynamic_slice(x: Tensor, axis: int, start: Any, end: Any, step: int) -> Tensor:
    """Slice along ``axis`` with run-time bounds given as 0-d/1-element int tensors.

    Bounds follow Python: negative ones count from the end, and both are clamped into
    ``[0, size]`` (with layers, since their values are only known at run time)."""
    net = x.network
    if step != 1:
        raise op_error(ShapeError, "slice", f"step {step} with tensor bounds; only step 1 is "
                       "supported when a bound is a Tensor", [x])
    for b in (start, end):
        if isinstance(b, Tensor) and (b.dtype not in (DType.int32, DType.int64) or
                                      not (b.ndim == 0 or b.shape == (1,))):
            raise op_error(DTypeError, "slice", "tensor slice bounds must be 0-d or [1] int32/int64 "
                           f"tensors, got {b.dtype.value}{b.shape}", [x, b])
        if b is not None and not isinstance(b, (Tensor, int)):
            raise op_error(ShapeError, "slice", f"bound {b!r} mixed with a tensor bound must be an "
                           "int or a Tensor", [x])
    from .elementwise import add, cast, lt, maximum, minimum, sub, where
    from .nn import shape_of
    full = shape_of(x)
    size = slice(full, 0, axis, axis + 1)  # int64 [1]

    def bound(b: Any) -> Tensor:
        t = cast(reshape(as_tensor(b, net, op="slice"), 1), DType.int64)
        t = where(lt(t, 0), add(t, size), t)
        return minimum(maximum(t, 0), size)

    lo = as_tensor(torch.zeros(1, dtype=torch.int64), net) if start is None else bound(start)
    hi = size if end is None else bound(end)
    length = maximum(sub(hi, lo), 0)
    zero = as_tensor(torch.zeros(1, dtype=torch.int64), net)
    starts = cat([lo if i == axis else zero for i in range(x.ndim)], 0)
    sizes = cat([length if i == axis else slice(full, 0, i, i + 1) for i in range(x.ndim)], 0)
    out_shape = list(x.shape)
    layer = net.add_layer(LayerKind.SLICE, "dynamic_slice", [x, starts, sizes], [(x.dtype, ())],
                          {"start": (0,) * x.ndim, "size": tuple(out_shape), "stride": (1,) * x.ndim,
                           "mode": "default", "dynamic": ("start", "size")})
    out_shape[axis] = net.new_symbol("slice", ("layer_output", layer.name, 0, axis))
    layer.outputs[0].shape = tuple(out_shape)
    layer.attrs["size"] = tuple(out_shape)
    return layer.outputs[0]


def cat(tensors: Sequence[Tensor], dim: int = 0) -> Tensor:
    """Concatenate along ``dim``; equal dtypes and equal other dims.

    >>> y = cat([x, x], -1)                      # [n, 8] twice -> [n, 16]
    """
    tensors = list(tensors)
    if not tensors:
        raise op_error(ShapeError, "cat", "needs at least one tensor")
    net = network_of(*tensors, op="cat")
    tensors = [as_tensor(t, net, op="cat") for t in tensors]
    check_same_dtype("cat", *tensors)
    rank = tensors[0].ndim
    if any(t.ndim != rank for t in tensors):
        raise op_error(ShapeError, "cat", "inputs have different ranks", tensors)
    axis = normalize_axis(dim, rank, "cat", tensors[0])
    total: Dim = 0
    for t in tensors:
        for a in range(rank):
            if a != axis and not dim_equal(t.shape[a], tensors[0].shape[a]) and \
                    isinstance(t.shape[a], int) and isinstance(tensors[0].shape[a], int):
                raise op_error(ShapeError, "cat", f"dim {a} differs between inputs (only dim {axis} may)",
                               tensors)
        total = dim_add(total, t.shape[axis])
    if len(tensors) == 1:
        return tensors[0]
    shape = tensors[0].shape[:axis] + (total,) + tensors[0].shape[axis + 1:]
    return single(net.add_layer(LayerKind.CONCATENATION, "cat", tensors, [(tensors[0].dtype, shape)],
                                {"axis": axis}))


concat = cat


def stack(tensors: Sequence[Tensor], dim: int = 0) -> Tensor:
    """Stack equal-shaped tensors along a new axis.

    >>> y = stack([x, x], 0)                     # [n, 8] twice -> [2, n, 8]
    """
    tensors = list(tensors)
    if not tensors:
        raise op_error(ShapeError, "stack", "needs at least one tensor")
    axis = normalize_axis(dim, tensors[0].ndim + 1, "stack", tensors[0])
    return cat([unsqueeze(t, axis) for t in tensors], axis)


def split(x: Tensor, split_size_or_sections: int | Sequence[int], dim: int = 0) -> list[Tensor]:
    """Split along ``dim`` into chunks of a size, or into the given sections (static dims).

    >>> q_, k_, v_ = split(qkv, [8, 8, 8], dim=-1)   # [n, 24] -> 3 x [n, 8]
    """
    axis = normalize_axis(dim, x.ndim, "split", x)
    size = x.shape[axis]
    if isinstance(split_size_or_sections, int):
        if not isinstance(size, int):
            raise op_error(ShapeError, "split", f"dim {axis} is dynamic ({size}); give sections", [x])
        step = split_size_or_sections
        if step <= 0:
            raise op_error(ShapeError, "split", f"split size must be positive, got {step}", [x])
        sections = [min(step, size - i) for i in range(0, size, step)]
    else:
        sections = list(split_size_or_sections)
        if isinstance(size, int) and sum(sections) != size:
            raise op_error(ShapeError, "split", f"sections {sections} sum to {sum(sections)}, but dim "
                           f"{axis} has size {size}", [x])
    outs, offset = [], 0
    for s in sections:
        outs.append(slice(x, axis, offset, offset + s))
        offset += s
    return outs


def chunk(x: Tensor, chunks: int, dim: int = -1) -> list[Tensor]:
    """Split into ``chunks`` equal parts along ``dim`` (static size divisible by ``chunks``).

    >>> gate, up = chunk(gate_up, 2, dim=-1)     # [n, 16] -> 2 x [n, 8]
    """
    axis = normalize_axis(dim, x.ndim, "chunk", x)
    size = x.shape[axis]
    if not isinstance(size, int) or size % chunks:
        raise op_error(ShapeError, "chunk", f"dim {axis} of size {size} does not split into {chunks} "
                       "equal static chunks", [x])
    return split(x, size // chunks, axis)


def unbind(x: Tensor, dim: int = 0) -> list[Tensor]:
    """Remove axis ``dim`` (static) returning its slices.

    >>> k_, v_ = unbind(kv, 0)                   # [2, n, 8] -> 2 x [n, 8]
    """
    axis = normalize_axis(dim, x.ndim, "unbind", x)
    return [squeeze(t, axis) for t in split(x, 1, axis)]


def getitem(x: Tensor, index: Any) -> Tensor:
    """``x[index]`` with ints, slices (negative, symbolic or tensor bounds), ``None``, ``...``, and
    integer tensors or lists (``index_select`` along that axis).

    >>> y = getitem(x, (Ellipsis, -1))           # x[..., -1]: [n, 8] -> [n]
    """
    from .nn import index_select
    items = list(index) if isinstance(index, tuple) else [index]
    n_ellipsis = sum(1 for i in items if i is Ellipsis)
    if n_ellipsis > 1:
        raise op_error(ShapeError, "getitem", "more than one Ellipsis in the index", [x])
    consumed = sum(1 for i in items if i is not None and i is not Ellipsis)
    if consumed > x.ndim:
        raise op_error(ShapeError, "getitem", f"too many indices ({consumed}) for {x.ndim} dims", [x])
    if n_ellipsis:
        e = items.index(Ellipsis)
        items = items[:e] + [builtin_slice(None)] * (x.ndim - consumed) + items[e + 1:]
    out, axis, squeeze_axes = x, 0, []
    for item in items:
        if item is None:
            out = unsqueeze(out, axis)
            axis += 1
        elif isinstance(item, builtin_slice):
            if not (item.start is None and item.stop is None and item.step in (None, 1)):
                out = slice(out, axis, item.start, item.stop, 1 if item.step is None else item.step)
            axis += 1
        elif isinstance(item, int):
            size = out.shape[axis]
            if isinstance(size, int) and not -size <= item < size:
                raise op_error(ShapeError, "getitem", f"index {item} is out of range for dim {axis} "
                               f"of size {size}", [x])
            out = slice(out, axis, item, item + 1 if item != -1 else None)
            squeeze_axes.append(axis)
            axis += 1
        elif isinstance(item, (Tensor, list)):
            idx = as_tensor(item if isinstance(item, Tensor) else torch.tensor(item), x.network)
            out = index_select(out, axis, idx)
            axis += idx.ndim
        else:
            raise op_error(ShapeError, "getitem", f"unsupported index {item!r}", [x])
    return squeeze(out, squeeze_axes) if squeeze_axes else out


import builtins  # noqa: E402

builtin_slice = builtins.slice
