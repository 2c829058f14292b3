"""Metric declarations as data, the samples collectors produce, and the OTel -> Prometheus naming.

Every collector declares its metrics once, as a tuple of `MetricSpec`; exposition, OTLP push and
docs/metrics.md are all derived from those tables. Naming follows the OpenTelemetry Collector's
Prometheus translation: dots become underscores, a unit suffix where the conventions give one,
`_total` on monotonic sums.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Literal

# UCUM unit -> Prometheus suffix (OTel prometheus translator); annotations like {rows} give none.
_UNIT_SUFFIXES = {
    "By": "bytes",
    "KiBy": "kibibytes",
    "MiBy": "mebibytes",
    "s": "seconds",
    "ms": "milliseconds",
    "us": "microseconds",
    "ns": "nanoseconds",
    "%": "percent",
    "Hz": "hertz",
    "min": "minutes",
    "h": "hours",
    "d": "days",
}
_PER_UNIT = {"s": "second", "m": "minute", "h": "hour", "d": "day", "min": "minute"}


def unit_suffix(unit: str, metric_type: str) -> str:
    """The Prometheus unit suffix for a UCUM unit: By -> bytes, {ops}/s -> per_second, 1 on a gauge -> ratio."""
    if "/" in unit:
        left, _, right = unit.partition("/")
        main = _UNIT_SUFFIXES.get(left, "")
        per = _PER_UNIT.get(right, "" if right.startswith("{") else right)
        return "_".join(p for p in (main, f"per_{per}" if per else "") if p)
    if unit == "1":
        return "ratio" if metric_type == "gauge" else ""
    return _UNIT_SUFFIXES.get(unit, "")


MetricType = Literal["sum", "gauge"]
Tier = Literal["reference", "beyond"]  # beyond = not in the OTel receiver
Reason = Literal["timeout", "connection", "permission", "unsupported", "server_error", "bad_reply"]


def _sanitize(name: str) -> str:
    return re.sub(r"[^a-zA-Z0-9_]", "_", name)


@dataclass(frozen=True)
class MetricSpec:
    """One metric, declared once."""

    name: str  # OTel name, e.g. postgresql.backends
    type: MetricType
    unit: str  # UCUM, e.g. By, s, 1, {connections}
    description: str
    source: str  # the query or command it comes from, for docs
    monotonic: bool = False  # only for sums
    attributes: tuple[str, ...] = ()  # OTel attribute names, in label order
    enabled_by_default: bool = True
    tier: Tier = "reference"
    # Where the metric was seen working: real servers ("PostgreSQL 15") or documented reply shapes
    # tested without a server ("MySQL 8.0 (documented shape)"). Rendered in docs/metrics.md.
    verified_on: tuple[str, ...] = ()

    @property
    def prometheus_name(self) -> str:
        base = _sanitize(self.name)
        suffix = unit_suffix(self.unit, self.type)
        if suffix and not base.endswith("_" + suffix):
            base = f"{base}_{suffix}"
        if self.is_counter:
            base += "_total"
        return base

    @property
    def is_counter(self) -> bool:
        return self.type == "sum" and self.monotonic

    @property
    def prometheus_type(self) -> str:
        return "counter" if self.is_counter else "gauge"

    @property
    def label_names(self) -> tuple[str, ...]:
        return tuple(_sanitize(a) for a in self.attributes)


def metric_spec(
    name: str,
    type_: MetricType,
    unit: str,
    description: str,
    source: str,
    *,
    monotonic: bool = False,
    attributes: tuple[str, ...] = (),
    enabled: bool = True,
    tier: Tier = "reference",
    verified: tuple[str, ...],
) -> MetricSpec:
    """A MetricSpec in the short form the metric tables are written in. A table with a usual `verified`
    binds it once: `_spec = functools.partial(metric_spec, verified=BOTH)`."""
    return MetricSpec(
        name=name,
        type=type_,
        unit=unit,
        description=description,
        source=source,
        monotonic=monotonic,
        attributes=attributes,
        enabled_by_default=enabled,
        tier=tier,
        verified_on=verified,
    )


@dataclass(frozen=True)
class Sample:
    """One value of one metric, with its attribute values in `spec.attributes` order."""

    spec: MetricSpec
    value: float
    attributes: tuple[str, ...] = ()


@dataclass(frozen=True)
class QueryError:
    """A query that failed while the rest of the collection went on."""

    query: str  # the client method name, e.g. fetch_bgwriter_stats
    reason: Reason
    message: str  # never contains a secret


@dataclass
class CollectionResult:
    """What one collection produced: partial data plus per-query errors."""

    samples: list[Sample] = field(default_factory=list)
    errors: list[QueryError] = field(default_factory=list)
    statements: int = 0  # statements / commands sent to the server for this collection
    up: bool = True  # False when the server could not be reached at all


class MetricTable:
    """A collector's declarations, indexed by OTel name, plus the per-database enable switches."""

    def __init__(self, specs: Iterable[MetricSpec]):
        self.specs = tuple(specs)
        self.by_name = {s.name: s for s in self.specs}
        if len(self.by_name) != len(self.specs):
            raise ValueError("duplicate metric name in table")

    def enabled(self, overrides: dict[str, bool] | None = None) -> frozenset[str]:
        """Names enabled after per-metric `metrics: {name: {enabled: …}}` overrides."""
        overrides = overrides or {}
        unknown = set(overrides) - set(self.by_name)
        if unknown:
            raise ValueError(f"unknown metric(s): {', '.join(sorted(unknown))}")
        return frozenset(n for n, s in self.by_name.items() if overrides.get(n, s.enabled_by_default))

    def __iter__(self):
        return iter(self.specs)

    def __getitem__(self, name: str) -> MetricSpec:
        return self.by_name[name]
