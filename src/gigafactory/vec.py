"""Array-friendly scalar helpers: the planner's formulas run unchanged on one layout (Python
numbers) or on many at once (numpy arrays of candidates, one element per layout).

Branches on a layout's numeric degrees are written with these instead of ``if``/``max``/
``min``, so the scalar path and the vectorised search path are the same code. With scalar
inputs they return Python scalars (so results stay JSON- and ``dataclasses``-friendly);
with an array input they return arrays.
"""

from __future__ import annotations

from functools import reduce
from typing import Any

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
