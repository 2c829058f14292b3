"""The metadata contract of every implemented collector's MetricTable against the reference sets.

For each collector package that exists (types whose package is not there yet are not collected,
and the generated docs/metrics.md lists them as not yet implemented):
- every default-enabled reference row is declared, on by default, with the reference's type,
  monotonicity, unit and data-point attributes (resource attributes may follow, as labels);
- every optional reference row is declared off by default (and, where the reference gives a type
  and unit, with those);
- a reference-tier name that is not in the reference is a naming bug; a beyond-tier one that is, a
  mislabelled tier;
- every spec names its source and the servers it was verified on, and its labels are valid,
  distinct Prometheus label names;
- Prometheus names are unique across all tables.
"""

from __future__ import annotations

import csv
import re
from pathlib import Path

import pytest

from dbintel.agent.collectors import CollectorUnavailable, table_for
from dbintel.agent.collectors.metric_table import MetricSpec, MetricTable
from dbintel.common.config import DATABASE_TYPES

REFERENCE_DIR = Path(__file__).resolve().parents[1] / "reference" / "metrics"
LABEL_NAME = re.compile(r"^[a-zA-Z_][a-zA-Z0-9_]*$")
METRIC_NAME = re.compile(r"^[a-zA-Z_:][a-zA-Z0-9_:]*$")
# Added to every series by the exposition, so no metric may declare them itself.
RESERVED_LABELS = {"dbintel_resource", "job", "instance"}
# Resource attributes that identify the server or the service, never emitted as labels.
SERVER_RESOURCE = {"server.address", "server.port", "service.instance.id", "service.name", "service.namespace"}


def _implemented() -> dict[str, MetricTable]:
    tables = {}
    for db_type in DATABASE_TYPES:
        try:
            tables[db_type] = table_for(db_type)
        except CollectorUnavailable:
            continue  # not written yet: docs/metrics.md says "not yet implemented"
    return tables


TABLES = _implemented()


def reference_rows(db_type: str) -> list[dict[str, str]]:
    with (REFERENCE_DIR / f"{db_type}.tsv").open(newline="") as handle:
        return list(csv.DictReader(handle, delimiter="\t"))


def attribute_names(cell: str) -> tuple[str, ...]:
    """`operation=ins|upd,db.namespace` -> ('operation', 'db.namespace')."""
    return tuple(part.split("=", 1)[0] for part in cell.split(",") if part)


def resource_names(cell: str) -> set[str]:
    return {part.removesuffix("(off)") for part in cell.split(",") if part}


def _rows(default: bool) -> list[tuple[str, dict[str, str]]]:
    return [
        (db_type, row)
        for db_type in TABLES
        for row in reference_rows(db_type)
        if (row["enabled_by_default"] == "true") == default
    ]


def _specs() -> list[tuple[str, MetricSpec]]:
    return [(db_type, spec) for db_type, table in TABLES.items() for spec in table]


def _row_id(item) -> str:
    return item[1]["metric_name"] if isinstance(item[1], dict) else item[1].name


def test_the_implemented_collectors_are_found() -> None:
    # PostgreSQL and Redis exist; a broken registry would otherwise make every test below vacuous.
    assert {"postgresql", "redis"} <= set(TABLES)
    for db_type in TABLES:
        assert reference_rows(db_type), db_type


def _assert_declared_as_the_reference_says(db_type: str, row: dict[str, str], spec: MetricSpec) -> None:
    assert spec.tier == "reference", f"{spec.name} is a reference row but declared tier {spec.tier!r}"
    if row["type"]:  # 15 Redis rows leave type/unit unverified: nothing to compare there
        assert spec.type == row["type"], spec.name
        assert spec.monotonic == (row["monotonic"] == "true"), spec.name
    if row["unit"]:
        assert spec.unit == row["unit"], spec.name
    attributes = attribute_names(row["attributes"])
    assert spec.attributes[: len(attributes)] == attributes, spec.name
    extra = set(spec.attributes[len(attributes) :])
    allowed = resource_names(row["resource_attributes"]) - SERVER_RESOURCE
    assert extra <= allowed, f"{spec.name}: labels {sorted(extra - allowed)} are neither attributes nor resource"


@pytest.mark.parametrize("item", _rows(default=True), ids=_row_id)
def test_every_default_reference_row_is_declared_on_and_as_the_reference_says(item) -> None:
    db_type, row = item
    table = TABLES[db_type]
    assert row["metric_name"] in table.by_name, f"{db_type}: default reference metric {row['metric_name']} missing"
    spec = table[row["metric_name"]]
    assert spec.enabled_by_default, spec.name
    _assert_declared_as_the_reference_says(db_type, row, spec)


@pytest.mark.parametrize("item", _rows(default=False), ids=_row_id)
def test_optional_reference_rows_are_declared_off_by_default(item) -> None:
    db_type, row = item
    spec = TABLES[db_type].by_name.get(row["metric_name"])
    if spec is None:
        return  # not implemented yet: the coverage table in docs/metrics.md counts it as missing
    assert not spec.enabled_by_default, f"{spec.name} is optional in the reference but on by default"
    _assert_declared_as_the_reference_says(db_type, row, spec)


@pytest.mark.parametrize("db_type", sorted(TABLES))
def test_reference_tier_names_are_reference_rows_and_beyond_ones_are_not(db_type: str) -> None:
    reference = {row["metric_name"] for row in reference_rows(db_type)}
    for spec in TABLES[db_type]:
        assert spec.name.startswith(f"{db_type}."), f"{spec.name} is not in the {db_type}. namespace"
        if spec.tier == "reference":
            assert spec.name in reference, f"{spec.name}: tier reference but not in {db_type}.tsv (naming bug?)"
        else:
            assert spec.tier == "beyond" and spec.name not in reference, spec.name


@pytest.mark.parametrize("item", _specs(), ids=_row_id)
def test_every_spec_names_its_source_and_where_it_was_verified(item) -> None:
    _, spec = item
    assert spec.source.strip(), spec.name
    assert spec.description.strip(), spec.name
    assert spec.verified_on and all(v.strip() for v in spec.verified_on), f"{spec.name}: verified_on is empty"
    assert isinstance(spec.verified_on, tuple), spec.name


@pytest.mark.parametrize("item", _specs(), ids=_row_id)
def test_names_and_labels_are_valid_prometheus_names(item) -> None:
    _, spec = item
    assert METRIC_NAME.match(spec.prometheus_name), spec.prometheus_name
    labels = spec.label_names
    for label in labels:
        assert LABEL_NAME.match(label) and not label.startswith("__"), f"{spec.name}: bad label {label!r}"
    assert len(set(labels)) == len(labels), f"{spec.name}: duplicate labels {labels}"
    assert not set(labels) & RESERVED_LABELS, f"{spec.name}: declares a label the exposition adds"
    assert spec.type in ("sum", "gauge") and (spec.type == "sum" or not spec.monotonic), spec.name


def test_prometheus_names_are_unique_across_all_tables() -> None:
    owners: dict[str, list[str]] = {}
    for db_type, spec in _specs():
        owners.setdefault(spec.prometheus_name, []).append(f"{db_type}:{spec.name}")
    clashes = {name: found for name, found in owners.items() if len(found) > 1}
    assert clashes == {}
