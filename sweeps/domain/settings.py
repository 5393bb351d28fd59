"""The environment variables that tune kdsweep, each read in one place: a value that is not a
number in range is refused with one line naming the variable (SpecError), before any work."""

from __future__ import annotations

import math
import os

from .spec import SpecError


def env_number(name: str, default: float, minimum: float = 0.0, integer: bool = False):
    """``name``'s value from the environment (``default`` when unset): a finite number (an
    integer with ``integer``) greater than ``minimum``."""
    raw = os.environ.get(name)
    if raw is None or not raw.strip():
        return default
    kind = "a whole number" if integer else "a number"
    try:
        value = int(raw) if integer else float(raw)
    except ValueError:
        raise SpecError(f"{name}: not {kind} (got {raw!r})") from None
    if not math.isfinite(value) or value <= minimum:
        raise SpecError(f"{name}: must be {kind} above {minimum:g} (got {raw!r})")
    return value
