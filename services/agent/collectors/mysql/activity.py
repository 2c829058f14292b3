"""Query intelligence rows -> records: statement digests, digest texts, live sessions. Pure; no I/O.

The client returns plain dicts (the UNION kit's `split_union` shape); this module turns them into the
`queries.model` records, applying the obfuscation to every text that came from the server.

Units and choices:
- Timers in performance_schema are picoseconds: times become seconds here (`PICOSECONDS`).
- `rows` of a digest = SUM_ROWS_SENT + SUM_ROWS_AFFECTED: what the statement returned or changed (a
  SELECT's rows sent, a DML's rows affected), like pg_stat_statements' `rows`; rows *examined* is the
  cost side and goes in `extra`.
- `query_id` = DIGEST, suffixed with ":SCHEMA_NAME" when the row has one: the summary table keys its
  rows by (SCHEMA_NAME, DIGEST) and MySQL 8's digest does not include the schema, so one digest may
  have a row per schema. DIGEST is hex, so the first ':' splits the id back apart.
- Extra counters are named like the OpenTelemetry mysqlreceiver's top-query attributes
  (`mysql.events_statements_summary_by_digest.<column lowercased>`), times in seconds.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from ...queries.model import ActiveSession, StatementCounters
from ...queries.obfuscation import ObfuscatedText, obfuscate_sql, query_summary
from ..samples import float_number, number

PICOSECONDS = 1e12
DIGEST_ATTRIBUTE_PREFIX = "mysql.events_statements_summary_by_digest."
DIGEST_ATTRIBUTE = DIGEST_ATTRIBUTE_PREFIX + "digest"

# Cumulative counter columns of events_statements_summary_by_digest read every interval (all servers).
DIGEST_COUNT_COLUMNS = (
    "SUM_ERRORS",
    "SUM_WARNINGS",
    "SUM_ROWS_AFFECTED",
    "SUM_ROWS_SENT",
    "SUM_ROWS_EXAMINED",
    "SUM_CREATED_TMP_DISK_TABLES",
    "SUM_CREATED_TMP_TABLES",
    "SUM_SELECT_FULL_JOIN",
    "SUM_SELECT_SCAN",
    "SUM_SORT_MERGE_PASSES",
    "SUM_SORT_ROWS",
    "SUM_NO_INDEX_USED",
    "SUM_NO_GOOD_INDEX_USED",
)
# Picosecond columns, exported in seconds. SUM_CPU_TIME exists from MySQL 8.0.28 only (client adds it).
DIGEST_TIME_COLUMNS = ("SUM_LOCK_TIME",)
CPU_TIME_COLUMN = "SUM_CPU_TIME"

_DIGEST = re.compile(r"[0-9a-fA-F]{1,64}")

# The consumers each read needs (performance_schema's hierarchy: a consumer only counts when the ones
# above it are on).
DIGEST_CONSUMERS = ("global_instrumentation", "statements_digest")
SAMPLE_CONSUMERS = (
    "global_instrumentation",
    "thread_instrumentation",
    "events_statements_current",
    "events_waits_current",
)
# The instruments the samples need that a server may have off: MariaDB ships the metadata-lock one off.
SAMPLE_INSTRUMENTS = ("wait/lock/metadata/sql/mdl",)
_CONSUMER_OPTION = {
    "global_instrumentation": "performance-schema-consumer-global-instrumentation",
    "thread_instrumentation": "performance-schema-consumer-thread-instrumentation",
    "statements_digest": "performance-schema-consumer-statements-digest",
    "events_statements_current": "performance-schema-consumer-events-statements-current",
    "events_waits_current": "performance-schema-consumer-events-waits-current",
}


def attribute_name(column: str) -> str:
    return DIGEST_ATTRIBUTE_PREFIX + column.lower()


# --- ids -------------------------------------------------------------------------------------------


def digest_query_id(schema: str | None, digest: str) -> str:
    return f"{digest}:{schema}" if schema else digest


def split_query_id(query_id: str) -> tuple[str | None, str] | None:
    """(schema, digest) of a digest_query_id; None when it is not one (never inlined into SQL then)."""
    digest, _, schema = query_id.partition(":")
    if not _DIGEST.fullmatch(digest):
        return None
    return (schema or None), digest


# --- statement digests ----------------------------------------------------------------------------


def _seconds(picoseconds: object) -> float:
    value = float_number(picoseconds)
    return value / PICOSECONDS if value is not None else 0.0


def _count(value: object) -> float:
    read = float_number(value)
    return read if read is not None else 0.0


_COUNT_KEYS = tuple((column.lower(), attribute_name(column)) for column in DIGEST_COUNT_COLUMNS)
_TIME_KEYS = tuple((column.lower(), attribute_name(column)) for column in DIGEST_TIME_COLUMNS)
_CPU_TIME_KEYS = ((CPU_TIME_COLUMN.lower(), attribute_name(CPU_TIME_COLUMN)),)


def digest_counters(rows: Iterable[Mapping[str, Any]], *, cpu_time: bool = False) -> tuple[StatementCounters, ...]:
    """events_statements_summary_by_digest rows (keys: schema, digest; values: the columns, lowercased)
    -> counters, text left to fetch_statement_texts. Rows without a digest (the overflow row) are dropped."""
    time_keys = _TIME_KEYS + (_CPU_TIME_KEYS if cpu_time else ())
    counters = []
    for row in rows:
        digest = row.get("digest")
        if not digest:
            continue
        schema = row.get("schema") or None
        extra = {name: _count(row.get(key)) for key, name in _COUNT_KEYS}
        extra.update({name: _seconds(row.get(key)) for key, name in time_keys})
        counters.append(
            StatementCounters(
                query_id=digest_query_id(schema, str(digest)),
                calls=_count(row.get("count_star")),
                total_time_s=_seconds(row.get("sum_timer_wait")),
                rows=_count(row.get("sum_rows_sent")) + _count(row.get("sum_rows_affected")),
                extra=extra,
                namespace=schema or "",
                attributes={DIGEST_ATTRIBUTE: str(digest)},
                first_seen=float_number(row.get("first_seen")),
            )
        )
    return tuple(counters)


def digest_texts(rows: Iterable[Mapping[str, Any]], wanted: Sequence[str]) -> dict[str, tuple[ObfuscatedText, str]]:
    """(schema, digest, digest_text) rows -> {query id: (obfuscated text, summary)} for the wanted ids only
    (`DIGEST IN (...)` also matches the digest's rows in other schemas)."""
    wanted_ids = set(wanted)
    texts = {}
    for row in rows:
        digest, text = row.get("digest"), row.get("digest_text")
        if not digest or text is None:
            continue
        query_id = digest_query_id(row.get("schema") or None, str(digest))
        if query_id in wanted_ids:
            texts[query_id] = (obfuscate_sql(str(text), "mysql"), query_summary(str(text), "mysql"))
    return texts


# --- setup ---------------------------------------------------------------------------------------


def missing_setup(setup: Mapping[str, Any] | None, needed: Sequence[str]) -> tuple[bool, tuple[str, ...]]:
    """(performance_schema on, consumers of `needed` that are off) from the read's setup row."""
    if setup is None:
        return True, ()
    on = number(setup.get("performance_schema"))
    if on == 0:
        return False, ()
    enabled = {name for name in str(setup.get("enabled") or "").split(",") if name}
    return True, tuple(name for name in needed if name not in enabled)


def performance_schema_off_message(what: str) -> str:
    return f"performance_schema is OFF on the server, so there are no {what}: set performance_schema=ON in my.cnf and restart"


def setup_off_message(what: str, missing: Sequence[str]) -> str:
    """The statements that turn on the missing consumers (names) and instruments (names with a '/')."""
    consumers = [name for name in missing if "/" not in name]
    instruments = [name for name in missing if "/" in name]
    statements, options = [], []
    if consumers:
        names = ", ".join(f"'{name}'" for name in consumers)
        statements.append(f"UPDATE performance_schema.setup_consumers SET ENABLED='YES' WHERE NAME IN ({names})")
        options += [f"{_CONSUMER_OPTION.get(name, name)}=ON" for name in consumers]
    if instruments:
        names = ", ".join(f"'{name}'" for name in instruments)
        statements.append(
            f"UPDATE performance_schema.setup_instruments SET ENABLED='YES', TIMED='YES' WHERE NAME IN ({names})"
        )
        options += [f"performance-schema-instrument='{name}=ON'" for name in instruments]
    kinds = " and ".join(kind for kind, names in (("consumers", consumers), ("instruments", instruments)) if names)
    return (
        f"performance_schema {kinds} needed for {what} are off: run {'; '.join(statements)} "
        f"(and set {' '.join(options)} in my.cnf to keep them on across restarts)"
    )


# --- live sessions --------------------------------------------------------------------------------


def wait_event_type(event_name: str, *, lock_wait: bool) -> str:
    """The class of a performance_schema wait instrument (wait/io/file/... -> "IO"). An InnoDB row lock wait
    (INNODB_TRX trx_state 'LOCK WAIT') is a "Lock" whatever instrument the handler call shows."""
    if lock_wait:
        return "Lock"
    if event_name == "idle":
        return "Idle"
    parts = event_name.split("/")
    if len(parts) >= 2 and parts[0] == "wait":
        return {"io": "IO", "lock": "Lock", "synch": "Synch"}.get(parts[1], parts[1].capitalize())
    return ""


def session_state(*, statement_running: bool, waiting: bool, in_transaction: bool) -> str:
    """A low-cardinality state: "waiting" (a wait in progress), "running" (a statement in progress),
    "idle in transaction" (between statements of an open transaction), else "idle"."""
    if statement_running and waiting:
        return "waiting"
    if statement_running:
        return "running"
    if in_transaction:
        return "idle in transaction"
    return "idle"


def _split_host(host: str) -> tuple[str, int | None]:
    """PROCESSLIST_HOST 'addr:port' (or a bare host, or '[v6]:port') -> (address, port)."""
    address, sep, port = host.rpartition(":")
    if sep and port.isdigit() and address and (address.count(":") == 0 or address.endswith("]")):
        return address.strip("[]"), int(port)
    return host, None


def _int(value: object) -> int | None:
    read = number(value)  # the UNION reply may carry integers as Decimal
    return int(read) if read is not None else None


def _id(value: object) -> str:
    read = _int(value)
    return str(read) if read is not None else ""


def _blockers(value: object) -> tuple[str, ...]:
    ids = {part.strip() for part in str(value or "").split(",") if part.strip()}
    return tuple(sorted(ids, key=lambda part: (len(part), part)))


def sessions(rows: Iterable[Mapping[str, Any]]) -> tuple[ActiveSession, ...]:
    """The sample read's session rows -> ActiveSessions, in the read's order (longest first)."""
    result = []
    for row in rows:
        running = bool(number(row.get("statement_running")))
        event_name = str(row.get("wait_event") or "")
        trx_state = str(row.get("trx_state") or "")
        blocked_by = _blockers(row.get("blocked_by"))
        lock_wait = trx_state == "LOCK WAIT" or bool(blocked_by)
        waiting = bool(event_name) or lock_wait
        state = session_state(statement_running=running, waiting=waiting, in_transaction=bool(trx_state))
        duration: float | None = _seconds(row.get("statement_timer_wait")) if running else None
        if duration is None:
            duration = float_number(row.get("processlist_time"))  # seconds in the current command
        text = row.get("sql_text")
        address, port = _split_host(str(row.get("host") or ""))
        digest = str(row.get("digest") or "")
        schema = str(row.get("current_schema") or row.get("db") or "")
        attributes: dict[str, str | int | float | bool] = {}
        thread_id = _int(row.get("thread_id"))
        if thread_id is not None:
            attributes["mysql.threads.thread_id"] = thread_id
        for key, name in (
            ("command", "mysql.threads.processlist_command"),
            ("processlist_state", "mysql.threads.processlist_state"),
            ("trx_state", "mysql.innodb_trx.trx_state"),
        ):
            if row.get(key):
                attributes[name] = str(row[key])
        wait_seconds = row.get("wait_timer_wait")
        if event_name and wait_seconds is not None:
            attributes["mysql.events_waits_current.timer_wait"] = _seconds(wait_seconds)
        if digest:
            attributes["mysql.events_statements_current.digest"] = digest
        result.append(
            ActiveSession(
                session_id=_id(row.get("processlist_id")),
                state=state,
                wait_event_type=wait_event_type(event_name, lock_wait=lock_wait) if waiting else "",
                wait_event=event_name if waiting else "",
                duration_s=duration,
                blocked_by=blocked_by,
                query_id=digest_query_id(schema or None, digest) if digest else "",
                text=obfuscate_sql(str(text), "mysql") if text else None,
                summary=query_summary(str(text), "mysql") if text else "",
                namespace=str(row.get("db") or ""),
                user=str(row.get("user") or ""),
                client_address=address,
                client_port=port,
                attributes=attributes,
            )
        )
    return tuple(result)
