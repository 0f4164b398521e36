"""Symbolic dimensions.

A dim is either an ``int`` or a :class:`SymDim`: a polynomial with integer coefficients over named
symbols (``num_tokens``, ``batch``, ...) and a few opaque atoms (exact floor division, data-dependent
sizes). Polynomials are kept in a canonical form, so ``a*b == b*a`` and ``(n*64)//64 == n`` compare
equal structurally, which is all that shape inference needs: "provably equal", "provably static".

Every symbol is defined by where its value comes from (a network input's dim, or a value computed at
run time); each backend materializes symbols its own way (the torch executor binds them to ints, the
TensorRT and ONNX lowerings build shape-tensor arithmetic).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping, Union

# An atom is a symbol name, or ("floordiv", SymDim, int) for a floor division that is not exact.
Atom = Union[str, tuple]
Monomial = tuple  # sorted tuple of atoms; () is the constant monomial


@dataclass(frozen=True)
class SymDim:
    """A symbolic dimension: sum of ``coeff * product(atoms)`` terms, canonically ordered."""

    terms: tuple[tuple[Monomial, int], ...]

    # -- construction -------------------------------------------------------------------------------
    @staticmethod
    def symbol(name: str) -> "SymDim":
        return SymDim((((name,), 1),))

    @staticmethod
    def _make(poly: dict) -> "Dim":
        items = tuple(sorted(((m, c) for m, c in poly.items() if c != 0), key=lambda t: repr(t[0])))
        if not items:
            return 0
        if len(items) == 1 and items[0][0] == ():
            return items[0][1]
        return SymDim(items)

    # -- arithmetic ---------------------------------------------------------------------------------
    def __add__(self, other: "Dim") -> "Dim":
        return dim_add(self, other)

    __radd__ = __add__

    def __sub__(self, other: "Dim") -> "Dim":
        return dim_add(self, dim_mul(other, -1))

    def __rsub__(self, other: "Dim") -> "Dim":
        return dim_add(other, dim_mul(self, -1))

    def __mul__(self, other: "Dim") -> "Dim":
        return dim_mul(self, other)

    __rmul__ = __mul__

    def __floordiv__(self, other: int) -> "Dim":
        return dim_floordiv(self, other)

    def __repr__(self) -> str:
        parts = []
        for mono, coeff in self.terms:
            names = "*".join(_atom_repr(a) for a in mono)
            if not names:
                parts.append(str(coeff))
            elif coeff == 1:
                parts.append(names)
            else:
                parts.append(f"{coeff}*{names}")
        return " + ".join(parts).replace("+ -", "- ")

    @property
    def symbols(self) -> set[str]:
        out: set[str] = set()
        for mono, _ in self.terms:
            for atom in mono:
                if isinstance(atom, str):
                    out.add(atom)
                else:
                    out |= atom[1].symbols if isinstance(atom[1], SymDim) else set()
        return out


Dim = Union[int, SymDim]


def _atom_repr(atom: Atom) -> str:
    if isinstance(atom, str):
        return atom
    return f"(({atom[1]})//{atom[2]})"


def _poly(d: Dim) -> dict:
    if isinstance(d, SymDim):
        return dict(d.terms)
    return {(): int(d)}


def dim_add(a: Dim, b: Dim) -> Dim:
    if isinstance(a, int) and isinstance(b, int):
        return a + b
    poly = _poly(a)
    for mono, coeff in _poly(b).items():
        poly[mono] = poly.get(mono, 0) + coeff
    return SymDim._make(poly)


def dim_mul(a: Dim, b: Dim) -> Dim:
    if isinstance(a, int) and isinstance(b, int):
        return a * b
    poly: dict = {}
    for ma, ca in _poly(a).items():
        for mb, cb in _poly(b).items():
            mono = tuple(sorted(ma + mb, key=repr))
            poly[mono] = poly.get(mono, 0) + ca * cb
    return SymDim._make(poly)


def dim_floordiv(a: Dim, b: int) -> Dim:
    """``a // b`` for a positive int ``b``; exact when every coefficient divides, else an opaque atom."""
    if b <= 0:
        raise ValueError(f"can only divide a dim by a positive integer, got {b}")
    if isinstance(a, int):
        return a // b
    poly = _poly(a)
    if all(c % b == 0 for c in poly.values()):
        return SymDim._make({m: c // b for m, c in poly.items()})
    return SymDim(((( ("floordiv", a, b), ), 1),))


def dim_equal(a: Dim, b: Dim) -> bool:
    """True when the two dims are provably equal (same canonical form)."""
    return _poly(a) == _poly(b)


def is_static(d: Dim) -> bool:
    return isinstance(d, int)


def static_or_none(d: Dim) -> int | None:
    return d if isinstance(d, int) else None


def evaluate(d: Dim, env: Mapping[str, int]) -> int:
    """The value of a dim once every symbol is bound (``KeyError`` names a missing symbol)."""
    if isinstance(d, int):
        return d
    total = 0
    for mono, coeff in d.terms:
        value = coeff
        for atom in mono:
            if isinstance(atom, str):
                value *= env[atom]
            else:
                value *= evaluate(atom[1], env) // atom[2]
        total += value
    return total


def shape_repr(shape: tuple) -> str:
    return "(" + ", ".join(str(d) for d in shape) + ("," if len(shape) == 1 else "") + ")"


def numel(shape: tuple) -> Dim:
    total: Dim = 1
    for d in shape:
        total = dim_mul(total, d)
    return total
