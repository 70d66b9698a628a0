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
    for f in fields:  # mixed-radix key of the (non-negative integer) fields
        col = np.asarray(getattr(layout, f), dtype=np.int64)
        key = key * (int(col.max()) + 1) + col
    _, first, inverse = np.unique(key, return_index=True, return_inverse=True)
    return _spread(fn(layout.subset(first)), inverse.ravel())


def _spread(value: Any, index: np.ndarray) -> Any:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        fields = {f.name: _spread(getattr(value, f.name), index) for f in dataclasses.fields(value)}
        return dataclasses.replace(value, **fields)
    if isinstance(value, dict):
        return {k: _spread(v, index) for k, v in value.items()}
    if isinstance(value, tuple):
        return tuple(_spread(v, index) for v in value)
    return value[index] if is_array(value) else value
