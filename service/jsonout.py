"""JSON bytes written by orjson, whatever integers an answer echoes back.

orjson writes integers of at most 64 bits and refuses larger ones. Answers and problem
details can echo numbers a caller wrote (a formula answer ``10**20``, a shape of ``1e20``
entries), so a refusal there would turn a wrong answer into a 500. Such integers are written
as floats instead (as JSON readers would take them anyway), or as text beyond a float's
range. Only when orjson refuses: the usual answer costs nothing more.
"""

from __future__ import annotations

import math
from typing import Any

import orjson

NONFINITE_NAMES = frozenset({"NaN", "Infinity", "-Infinity"})
"""How a non-finite number is written in JSON, which has none: in answers (beside a
``nonfinite`` count), and by the client in a student's answer."""


def nonfinite_name(x: float) -> str:
    """The JSON spelling of a non-finite ``x``: ``"NaN"``, ``"Infinity"`` or ``"-Infinity"``."""
    if math.isnan(x):
        return "NaN"
    return "Infinity" if x > 0 else "-Infinity"


_LOWEST, _HIGHEST = -(1 << 63), (1 << 64) - 1  # what orjson writes as an integer


def dumps(content: Any, option: int = 0) -> bytes:
    """``orjson.dumps(content, option=option)``, with integers orjson refuses widened.

    Raises:
        orjson.JSONEncodeError: content orjson cannot write for another reason.
    """
    try:
        return orjson.dumps(content, option=option)
    except orjson.JSONEncodeError:
        return orjson.dumps(_widened(content), option=option)


def _widened(value: Any) -> Any:
    """``value`` with every integer outside 64 bits as a float (or text past a float's range)."""
    if isinstance(value, int) and not isinstance(value, bool):
        if _LOWEST <= value <= _HIGHEST:
            return value
        try:
            wide = float(value)
        except OverflowError:
            return str(value)
        return wide if math.isfinite(wide) else str(value)
    if isinstance(value, dict):
        return {key: _widened(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_widened(item) for item in value]
    return value
