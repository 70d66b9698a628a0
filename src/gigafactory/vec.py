"""Array-friendly scalar helpers: the planner's formulas run unchanged on one layout (Python
numbers) or on many at once (numpy arrays of candidates, one element per layout).

Branches on a layout's numeric degrees are written with these instead of ``if``/``max``/
``min``, so the scalar path and the vectorised search path are the same code. With scalar
inputs they return Python scalars (so results stay JSON- and ``dataclasses``-friendly);
with an array input they return arrays.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from functools import reduce
from typing import Any, TypeVar

import numpy as np


def _out(r: Any) -> Any:
    return r.item() if np.ndim(r) == 0 else r


def vmax(*xs: Any) -> Any:
    """Elementwise maximum of numbers or arrays (Python scalar for scalar inputs)."""
    return _out(reduce(np.maximum, xs))


def vmin(*xs: Any) -> Any:
    """Elementwise minimum of numbers or arrays (Python scalar for scalar inputs)."""
    return _out(reduce(np.minimum, xs))


def where(cond: Any, a: Any, b: Any) -> Any:
    """``a`` where ``cond`` holds, else ``b``, elementwise (Python scalar for scalars)."""
    return _out(np.where(cond, a, b))


def is_array(x: Any) -> bool:
    return np.ndim(x) > 0


T = TypeVar("T")


def per_unique(layout: Any, fields: tuple[str, ...], fn: Callable[[Any], T]) -> T:
    """``fn(layout)`` computed once per distinct combination of ``fields``: for an array
    layout (the search's candidates, with ``subset``), on one representative of each
    combination, the result's arrays then spread back to every candidate. A scalar layout
    is passed straight through. An optimisation only: the result is what ``fn(layout)``
    gives."""
    if not is_array(layout.tp):
        return fn(layout)
    key = np.zeros(len(layout.tp), dtype=np.int64)
    size = 1
    for f in fields:  # mixed-radix key of the (non-negative integer) fields' value ranks
        rank, radix = _dense_codes(np.asarray(getattr(layout, f), dtype=np.int64))
        key, size = key * radix + rank, size * radix
    first, inverse = _group(key, size)
    return _spread(fn(layout.subset(first)), inverse)


def _dense_codes(col: np.ndarray) -> tuple[np.ndarray, int]:
    """Each element's rank among the distinct values of ``col`` (non-negative integers),
    and how many distinct values there are: a table over 0..max, linear time, no sort."""
    present = np.zeros(int(col.max()) + 1, dtype=np.int64)
    present[col] = 1
    codes = np.cumsum(present) - 1
    return codes[col], int(codes[-1]) + 1


def _group(key: np.ndarray, size: int) -> tuple[np.ndarray, np.ndarray]:
    """(one index of each distinct key, ascending by key; each element's group), like
    ``np.unique(key, return_index=True, return_inverse=True)`` but by a table over the key
    range 0..size (linear in the candidates) when that range is small, else by a sort."""
    if size > 4 * len(key) + 65536:
        _, first, inverse = np.unique(key, return_index=True, return_inverse=True)
        return first, inverse.ravel()
    rep = np.full(size, -1, dtype=np.int64)
    rep[key] = np.arange(len(key))  # some element of each key (any one: they are alike)
    present = np.flatnonzero(rep >= 0)
    group = np.zeros(size, dtype=np.int64)
    group[present] = np.arange(len(present))
    return rep[present], group[key]


def _spread(value: Any, index: np.ndarray) -> Any:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        fields = {f.name: _spread(getattr(value, f.name), index) for f in dataclasses.fields(value)}
        return dataclasses.replace(value, **fields)
    if isinstance(value, dict):
        return {k: _spread(v, index) for k, v in value.items()}
    if isinstance(value, tuple):
        return tuple(_spread(v, index) for v in value)
    return value[index] if is_array(value) else value
