"""Go-style durations (`500ms`, `30s`, `1m30s`, `2h`) as a pydantic type of `datetime.timedelta`."""

from __future__ import annotations

import re
from datetime import timedelta
from typing import Annotated, Any

from pydantic import BeforeValidator, PlainSerializer

_UNITS_SECONDS = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}
_PART = re.compile(r"(\d+(?:\.\d+)?)(ns|us|µs|ms|s|m|h)")


def parse_duration(text: str) -> timedelta:
    """Parse a Go duration string; a bare number is not accepted (the unit must be explicit)."""
    value = text.strip()
    if not value:
        raise ValueError("empty duration")
    if value == "0":
        return timedelta(0)
    position, total = 0, 0.0
    for match in _PART.finditer(value):
        if match.start() != position:
            break
        total += float(match.group(1)) * _UNITS_SECONDS[match.group(2)]
        position = match.end()
    if position != len(value):
        raise ValueError(f"invalid duration {text!r}: use a number and a unit, like 500ms, 30s, 5m or 1h30m")
    try:
        return timedelta(seconds=total)
    except OverflowError:
        raise ValueError(f"duration {text!r} is too long") from None


def format_duration(value: timedelta) -> str:
    """Render a timedelta the way Go prints durations, shortest exact form (90s -> 1m30s)."""
    ms = round(value.total_seconds() * 1000)
    if ms == 0:
        return "0s"
    if ms % 1000:
        return f"{ms}ms"
    seconds = ms // 1000
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    out = (f"{hours}h" if hours else "") + (f"{minutes}m" if minutes else "") + (f"{secs}s" if secs else "")
    return out


def _coerce(value: Any) -> Any:
    if isinstance(value, timedelta):
        return value
    if isinstance(value, bool):
        raise ValueError("a duration must be a string like 30s, not a boolean")
    if isinstance(value, (int, float)):
        raise ValueError(f"a duration needs a unit: write {value}s or {value}ms, not {value}")
    if isinstance(value, str):
        return parse_duration(value)
    raise ValueError(f"a duration must be a string like 30s, got {type(value).__name__}")


Duration = Annotated[timedelta, BeforeValidator(_coerce), PlainSerializer(format_duration, return_type=str)]
