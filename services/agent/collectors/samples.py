"""Reply values -> samples, the same way in every mapping: `number()` reads a value, `SampleEmitter` keeps
the samples of enabled metrics.

A server answers in text (Redis INFO, MySQL SHOW STATUS), typed values (BSON, most SQL columns) or a
mix. `number()` reads either kind without ever raising: None for NULL, a missing field, a bool, NaN
text or text such as 'ON'. It keeps integers exact (int stays int, '12' reads 12), so an OTLP
consumer sees an integer where the server gave one; `float_number()` is the same reading as float, for
mappings that do float arithmetic on their values.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Collection, Iterable, Mapping
from decimal import Decimal
from typing import Any

from .metric_table import MetricTable, Sample


def number(value: object, *, text: bool = True) -> int | float | None:
    """`value` as a number: int, float and Decimal as they are (Decimal as float); with `text`, a str or
    bytes holding one (an int when it is integral text); None for anything else. A typed NaN passes
    (the server said so); NaN text does not. `text=False` for typed replies (BSON), where text is never
    a count."""
    if isinstance(value, bool):  # an int subclass, but a flag, not a count
        return None
    if isinstance(value, (int, float)):
        return value
    if isinstance(value, Decimal):
        return float(value)
    if not text or not isinstance(value, (str, bytes)):
        return None
    try:
        return int(value)
    except ValueError:
        pass
    try:
        parsed = float(value)
    except ValueError:
        return None
    return None if math.isnan(parsed) else parsed


def float_number(value: object, *, text: bool = True) -> float | None:
    """number(), as float."""
    parsed = number(value, text=text)
    return None if parsed is None else float(parsed)


class SampleEmitter:
    """Collects the samples of a table's enabled metrics; a value `read` turns into None gives no sample.

    `read` says what a reply's values are: `float_number` (the default) for text or typed numbers,
    `number` to keep integers exact, or a mapping's own strict reader (one that raises on a value of the
    wrong type, so that the reply is reported as bad). None never reaches `read`."""

    def __init__(
        self,
        table: MetricTable,
        enabled: Collection[str],
        read: Callable[[Any], float | None] = float_number,
    ):
        self.table = table
        self.enabled = enabled
        self._read = read
        self.samples: list[Sample] = []

    def __call__(self, name: str, value: Any, *attributes: str) -> None:
        if name not in self.enabled or value is None:
            return
        reading = self._read(value)
        if reading is not None:
            self.samples.append(Sample(self.table[name], reading, attributes))

    def fields(self, pairs: Iterable[tuple[str, str]], reply: Mapping[str, Any]) -> None:
        """One attribute-less sample per (metric, field) pair, from `reply[field]`."""
        for name, field in pairs:
            self(name, reply.get(field))
