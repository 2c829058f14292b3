#!/usr/bin/env python3
"""Render docs/metrics.md from the collectors' metric declarations (the file is never edited by hand).

    python scripts/generate_metrics_doc.py           # rewrite docs/metrics.md
    python scripts/generate_metrics_doc.py --check   # exit 1 if docs/metrics.md is stale

Every collector package that exists is read through `dbintel.agent.collectors.table_for(type)`;
a database type whose package is not there yet is listed as "not yet implemented", so the catalog
never claims more than the code does. Coverage is counted against the reference metric sets in
tests/reference/metrics/<type>.tsv. The output depends only on the declarations and the TSVs
(sorted, no timestamps), so running it twice gives the same bytes.
"""

from __future__ import annotations

import argparse
import csv
import difflib
import sys
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "metrics.md"
REFERENCE_DIR = ROOT / "tests" / "reference" / "metrics"
COMMAND = "python scripts/generate_metrics_doc.py"

DISPLAY_NAMES = {"postgresql": "PostgreSQL", "mysql": "MySQL / MariaDB", "mongodb": "MongoDB", "redis": "Redis"}


def load_reference(db_type: str, reference_dir: Path = REFERENCE_DIR) -> list[dict[str, str]]:
    """The rows of tests/reference/metrics/<db_type>.tsv (empty if there is no such file)."""
    path = reference_dir / f"{db_type}.tsv"
    if not path.exists():
        return []
    with path.open(newline="") as handle:
        return list(csv.DictReader(handle, delimiter="\t"))


def load_tables(db_types: Iterable[str]) -> dict[str, object | None]:
    """type -> its MetricTable, or None when its collector package is not (yet) there."""
    from dbintel.agent.collectors import CollectorUnavailable, table_for

    tables: dict[str, object | None] = {}
    for db_type in db_types:
        try:
            tables[db_type] = table_for(db_type)
        except CollectorUnavailable:
            tables[db_type] = None
    return tables


@dataclass(frozen=True)
class Coverage:
    """How much of one reference set a table declares."""

    default_covered: int
    default_total: int
    optional_covered: int
    optional_total: int
    beyond: int
    missing_default: tuple[str, ...]
    missing_optional: tuple[str, ...]


def coverage(specs: Sequence | None, reference: Sequence[Mapping[str, str]]) -> Coverage:
    """Reference rows declared by `specs` (None = not implemented), split default / optional, plus beyond."""
    declared = {spec.name for spec in specs or ()}
    default = sorted(row["metric_name"] for row in reference if row["enabled_by_default"] == "true")
    optional = sorted(row["metric_name"] for row in reference if row["enabled_by_default"] != "true")
    return Coverage(
        default_covered=sum(name in declared for name in default),
        default_total=len(default),
        optional_covered=sum(name in declared for name in optional),
        optional_total=len(optional),
        beyond=sum(spec.tier == "beyond" for spec in specs or ()),
        missing_default=tuple(name for name in default if name not in declared),
        missing_optional=tuple(name for name in optional if name not in declared),
    )


def cell(text: str) -> str:
    """Text safe inside a Markdown table cell: one line, pipes escaped."""
    return " ".join(str(text).split()).replace("|", "\\|")


def code(text: str) -> str:
    return f"`{cell(text)}`" if text else ""


def _otel_type(spec) -> str:
    if spec.type == "sum":
        return "sum (monotonic)" if spec.monotonic else "sum (non-monotonic)"
    return spec.type


def _metric_rows(specs: Iterable) -> list[str]:
    lines = [
        "| OTel name | Prometheus name | Prometheus type | OTel type | Unit | Labels | Default | Tier "
        "| Description | Source | Verified on |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for spec in sorted(specs, key=lambda s: s.name):
        labels = ", ".join(code(label) for label in spec.label_names)
        lines.append(
            "| "
            + " | ".join(
                (
                    code(spec.name),
                    code(spec.prometheus_name),
                    spec.prometheus_type,
                    _otel_type(spec),
                    code(spec.unit),
                    labels,
                    "on" if spec.enabled_by_default else "off",
                    spec.tier,
                    cell(spec.description),
                    cell(spec.source),
                    cell("; ".join(spec.verified_on)) or "—",
                )
            )
            + " |"
        )
    return lines


# Where the replication metrics were seen: the "… primary + replica/standby" claims of the tables.
REPLICATION_NOTE = (
    "Replication metrics were seen on real replication pairs (`tests/integration/test_replication.py`, "
    "pairs built by `tests/replication.py`, each replica linked to its primary through a fault proxy), "
    "polled at both ends by the real collectors with every metric on, without a query error on either end: "
    'a PostgreSQL 15 primary (archiving WAL) and a streaming hot standby ("PostgreSQL 15 primary + streaming '
    'standby"), a MariaDB 10.11 source and replica ("MariaDB 10.11 source + replica"), a Redis 7.0 primary and '
    'replica ("Redis 7.0 primary + replica"). Each pair is checked in step, with its replica falling behind '
    "(PostgreSQL replay paused: primary-side replay lag and unreplayed bytes and standby-side replay lag grow "
    "while write/flush lag stay small; MariaDB MASTER_DELAY: Seconds_Behind_Master climbs to the delay; a stopped "
    "SQL thread; a frozen Redis replica: its lag and offset lag grow on the primary), and with its link cut on "
    "the wire and mended (the primary stops listing the replica: `postgresql.replication.*` per client gone and "
    "the slot inactive while it retains WAL, `mysql.replicas.connected` 0, `redis.slaves.connected` 0; the "
    "replica shows it: `postgresql.wal_receiver.connected` 0 while its replay lag reads 0, the IO thread down "
    "with error 2003/2013, `redis.replication.link.up` 0 with its down duration), and a PostgreSQL standby query "
    "cancelled by a replay conflict (`postgresql.query.conflicts`). MongoDB replication metrics were seen only "
    "on SecantusDB's one-member replica set (member state and count; no secondary, so no lag)."
)


def _fraction(covered: int, total: int) -> str:
    return f"{covered} of {total}"


def render(
    tables: Mapping[str, Sequence | None],
    references: Mapping[str, Sequence[Mapping[str, str]]],
    query_specs: Sequence = (),
) -> str:
    """docs/metrics.md for these tables (type -> specs, None = not implemented), in `tables` order."""
    out = [
        "# Database metrics",
        "",
        f"<!-- Generated by `{COMMAND}` from the collectors' MetricTables and "
        "tests/reference/metrics/*.tsv. Do not edit by hand. -->",
        "",
        f"**This file is generated** by `{COMMAND}` from the metric declarations of each collector "
        "(`services/agent/collectors/<type>/metrics.py`) and the reference metric sets in "
        "`tests/reference/metrics/`. Do not edit it by hand: change the declarations and re-run the command; "
        f"`{COMMAND} --check` (run by the test suite) fails when this file is stale.",
        "",
        "Names follow the OpenTelemetry Collector receivers (postgresqlreceiver, mysqlreceiver, mongodbreceiver, "
        "redisreceiver). The Prometheus name is derived from the OTel name: dots become underscores, a unit "
        "suffix where the conventions give one, `_total` on monotonic sums. Every series also carries "
        "`dbintel_resource` and the database's configured `labels`; through the shipped agent PodMonitor it "
        "carries no `pod` or `instance` and its samples carry their poll's start time, so a database is one "
        'series whichever agent polls it (docs/architecture.md, "A database\'s series across the hand-off"). '
        "A metric that is off by default is switched "
        "on per database with `metrics: {<otel name>: {enabled: true}}` (and a default one off with "
        "`enabled: false`).",
        "",
        "Tier `reference` = a metric of the OTel receiver (its reference row in `tests/reference/metrics/`); "
        "`beyond` = what the receivers lack and the peers (Prometheus exporters, Datadog) have. "
        '"Verified on" names the servers the metric was seen working on, or "(documented shape)" / '
        '"(captured)" where it was tested with replies shaped like the server\'s documented or captured output.',
        "",
        REPLICATION_NOTE,
        "",
        "## Coverage",
        "",
        "Counted against the reference rows of `tests/reference/metrics/<type>.tsv`.",
        "",
        "| Database | Collector | Metrics declared | Default reference rows | Optional reference rows | Beyond |",
        "|---|---|---|---|---|---|",
    ]
    covered = {db_type: coverage(specs, references.get(db_type, ())) for db_type, specs in tables.items()}
    for db_type, specs in tables.items():
        c = covered[db_type]
        status = "implemented" if specs is not None else "not yet implemented"
        declared = str(len(tuple(specs))) if specs is not None else "0"
        out.append(
            f"| {DISPLAY_NAMES.get(db_type, db_type)} (`{db_type}`) | {status} | {declared} | "
            f"{_fraction(c.default_covered, c.default_total)} | "
            f"{_fraction(c.optional_covered, c.optional_total)} | {c.beyond} |"
        )
    for db_type, specs in tables.items():
        name = DISPLAY_NAMES.get(db_type, db_type)
        out += ["", f"## {name}", ""]
        if specs is None:
            out.append(f"Not yet implemented: no collector package `dbintel.agent.collectors.{db_type}` yet.")
            continue
        c = covered[db_type]
        on = sum(spec.enabled_by_default for spec in specs)
        out.append(
            f"{len(tuple(specs))} metrics ({on} on by default). Reference coverage: default "
            f"{_fraction(c.default_covered, c.default_total)}, optional "
            f"{_fraction(c.optional_covered, c.optional_total)}; {c.beyond} beyond the receiver."
        )
        for label, missing in (
            ("Default reference rows not declared", c.missing_default),
            ("Optional reference rows not declared", c.missing_optional),
        ):
            if missing:
                out += ["", f"{label}: " + ", ".join(code(n) for n in missing) + "."]
        out += [""] + _metric_rows(specs)
    if query_specs:
        out += [
            "",
            "## Query intelligence (every database type)",
            "",
            "Only with `top_query_collection` / `query_sample_collection` enabled (off by default). Series per "
            "database: at most `top_n_query` statements × 3, plus one per state and wait event of the last "
            "sample; see docs/query-intelligence.md.",
            "",
        ] + _metric_rows(query_specs)
    return "\n".join(out) + "\n"


def generate() -> str:
    from dbintel.agent.queries.metrics import QUERY_TABLE
    from dbintel.common.config import DATABASE_TYPES

    tables = load_tables(DATABASE_TYPES)
    return render(
        {t: (tuple(table) if table is not None else None) for t, table in tables.items()},
        {t: load_reference(t) for t in DATABASE_TYPES},
        tuple(QUERY_TABLE),
    )


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="exit 1 if the file differs from what would be generated")
    parser.add_argument("--output", type=Path, default=DOC, help=f"file to write or check (default {DOC})")
    args = parser.parse_args(argv)
    text = generate()
    if args.check:
        current = args.output.read_text() if args.output.exists() else ""
        if current == text:
            return 0
        diff = difflib.unified_diff(
            current.splitlines(), text.splitlines(), str(args.output), "generated", lineterm="", n=0
        )
        print(f"{args.output} is stale; regenerate it with: {COMMAND}", file=sys.stderr)
        print("\n".join(list(diff)[:40]), file=sys.stderr)
        return 1
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(text)
    print(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
