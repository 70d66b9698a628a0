"""Helpers shared by the spec dataclasses: checked construction from plain dicts."""

from __future__ import annotations

import dataclasses
import difflib
import math
from typing import Any, TypeVar

from gigafactory.errors import SpecError

T = TypeVar("T")


def from_dict(cls: type[T], data: dict[str, Any], spec_name: str) -> T:
    """Build ``cls`` from ``data``, refusing unknown keys with a did-you-mean hint."""
    names = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    for key in data:
        if key not in names:
            close = difflib.get_close_matches(key, sorted(names), n=1)
            hint = (
                f"; did you mean '{close[0]}'?" if close else f"; valid: {', '.join(sorted(names))}"
            )
            raise SpecError(spec_name, key, f"unknown field{hint}")
    required = [
        f.name
        for f in dataclasses.fields(cls)  # type: ignore[arg-type]
        if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
    ]
    for name in required:
        if name not in data:
            raise SpecError(spec_name, name, "is required")
    return cls(**data)


def positive_int(spec: str, field: str, value: Any, minimum: int = 1) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise SpecError(spec, field, f"must be an integer >= {minimum}, got {value!r}")


def positive_float(spec: str, field: str, value: Any, allow_zero: bool = False) -> None:
    """Refuse anything but a finite number > 0 (>= 0 with ``allow_zero``); NaN and ±inf too."""
    ok = isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
    if not ok or value < 0 or (value == 0 and not allow_zero):
        bound = ">= 0" if allow_zero else "> 0"
        raise SpecError(spec, field, f"must be a finite number {bound}, got {value!r}")


def one_of(spec: str, field: str, value: Any, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise SpecError(spec, field, f"must be one of {', '.join(choices)}; got {value!r}")
