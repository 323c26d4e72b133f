"""Checks of public arguments (the model constructors, masks, layouts): a wrong type or an impossible value is
refused before anything is built or allocated, naming the argument and what is expected.

numpy scalars count as the Python numbers they hold (``np.int64(8)`` is an int, ``np.float32(0.6)`` a real:
they are ``numbers.Integral`` / ``numbers.Real``); bools are never numbers here (``True`` is an int to Python,
but ``patch_size=True`` is a mistake), and a float is not an int even when whole (``56.0``).
"""

from __future__ import annotations

import math
import numbers


def _is_bool(v) -> bool:
    return isinstance(v, bool) or type(v).__name__ in ("bool", "bool_")  # numpy's bool (2.x, 1.x), no import


def _got(v) -> str:
    return f"{v!r} ({type(v).__name__})"


def int_at_least(name: str, v, least: int, what: str | None = None) -> int:
    """``v`` as a Python int >= ``least``; TypeError for a bool, float or anything not an integer."""
    what = what or f"an int >= {least}"
    if _is_bool(v) or not isinstance(v, numbers.Integral):
        raise TypeError(f"{name} must be {what}, got {_got(v)}")
    if v < least:
        raise ValueError(f"{name} must be {what}, got {int(v)}")
    return int(v)


def positive_int(name: str, v, what: str = "a positive int") -> int:
    """``v`` as a Python int >= 1."""
    return int_at_least(name, v, 1, what)


def ints(name: str, v, count: int) -> tuple[int, ...]:
    """``count`` positive ints (a list or tuple), as a tuple."""
    if isinstance(v, (str, bytes)) or not hasattr(v, "__len__") or len(v) != count:
        raise ValueError(f"{name} must be {count} positive ints (one per stage), got {v!r}")
    return tuple(positive_int(f"{name}[{i}]", x) for i, x in enumerate(v))


def real_in(name: str, v, lo: float, hi: float) -> float:
    """``v`` as a finite float in [lo, hi]; TypeError for a bool or a non-number."""
    if _is_bool(v) or not isinstance(v, numbers.Real):
        raise TypeError(f"{name} must be a number in [{lo}, {hi}], got {_got(v)}")
    f = float(v)
    if not (math.isfinite(f) and lo <= f <= hi):
        raise ValueError(f"{name} must be a number in [{lo}, {hi}], got {v!r}")
    return f


def flag(name: str, v) -> bool:
    """A bool (Python's or numpy's), not 0/1 or a string."""
    if not _is_bool(v):
        raise TypeError(f"{name} must be True or False, got {_got(v)}")
    return bool(v)


def choice(name: str, v, choices) -> str:
    """One of ``choices`` (strings)."""
    if not isinstance(v, str) or v not in choices:
        raise ValueError(f"{name} must be one of {', '.join(choices)}, got {v!r}")
    return v
