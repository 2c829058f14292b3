"""Top queries of an interval from a database's statement counters: deltas, resets, ranking, hand-off.

Pure: no I/O and no clock (times come in as arguments), so the rules below are property-tested alone.

Deltas (sources whose counters are cumulative: pg_stat_statements, performance_schema digests, `top`)
-----------------------------------------------------------------------------------------------------
A statement's delta is its counters now minus its counters at the previous read. The previous read is
this tracker's, or — after a hand-off — the previous owner's (`handoff_state` / `from_handoff_state`),
so the interval after a move starts exactly where the old owner's last one ended and the deltas
exported across the move add up to the server's own difference. Three cases need care:

- A counter went *down*: the entry was reset or re-created after the previous read (stats reset,
  eviction and re-entry, server restart), so everything it holds now happened in this interval: the
  delta is the current value. Never negative.
- A statement absent from the previous read is new in the interval (delta = current value) when the
  source proves it: the server says when the entry was created (`first_seen` after the previous read),
  the whole statistics were reset after it (`reset_at`), or the previous read was complete (it
  returned fewer rows than its limit, so it saw every entry). Otherwise the entry may have been
  outside the previous read's limit, its history is unknown, and it gets no delta this interval (only
  a baseline): a statement is never reported with years of history as one interval's cost.
- The very first read of a tracker with no hand-off state is a baseline only: no report.

Sources that report per interval (`StatementRead.cumulative` False: Redis SLOWLOG, the MongoDB
profiler) are already deltas; the tracker adds them to running totals so the Prometheus counters
stay counters, and keeps the source's cursor so the next read (here or on the next owner) starts
after the last entry counted.

Ranking: by time spent in the interval, then calls, then id; statements that did nothing in the
interval are not ranked. The report holds at most `top_n`.

Bounds: the baseline holds one entry per statement of the last read (≤ max_rows_per_query); the
running totals at most `max_tracked` statements (the smallest are dropped first: their counters
restart, which Prometheus treats as a reset). The hand-off state is at most HANDOFF_LIMIT bytes
compressed (statement ids and numbers only, never text): when the baseline does not fit, the
heaviest statements are kept and the state says it is partial, so the next owner treats the rest as
of unknown history (no delta for one interval) rather than as new.
"""

from __future__ import annotations

import json
import zlib
from collections import OrderedDict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, replace

from dbintel.common.message_limits import MAX_QUERY_BASELINE_BYTES

from .model import StatementCounters, StatementRead, TopQuery, TopQueryReport
from .obfuscation import ObfuscatedText

HANDOFF_LIMIT = MAX_QUERY_BASELINE_BYTES  # the coordinator refuses larger baselines
_FORMAT = 1


class HandoffStateError(ValueError):
    """A hand-off state that cannot be used (corrupt, another version, another kind of source)."""


@dataclass(frozen=True, slots=True)
class _Counters:
    calls: float
    total_time_s: float
    rows: float
    extra: Mapping[str, float]

    @classmethod
    def of(cls, statement: StatementCounters) -> _Counters:
        return cls(statement.calls, statement.total_time_s, statement.rows, statement.extra)

    def went_down(self, later: _Counters) -> bool:
        return later.calls < self.calls or later.total_time_s < self.total_time_s or later.rows < self.rows

    def minus(self, earlier: _Counters) -> _Counters:
        return _Counters(
            self.calls - earlier.calls,
            self.total_time_s - earlier.total_time_s,
            self.rows - earlier.rows,
            {k: max(0.0, v - earlier.extra.get(k, 0.0)) for k, v in self.extra.items()},
        )

    def plus(self, other: _Counters) -> _Counters:
        keys = self.extra.keys() | other.extra.keys()
        return _Counters(
            self.calls + other.calls,
            self.total_time_s + other.total_time_s,
            self.rows + other.rows,
            {k: self.extra.get(k, 0.0) + other.extra.get(k, 0.0) for k in keys},
        )

    @property
    def idle(self) -> bool:
        return self.calls <= 0 and self.total_time_s <= 0


class TopQueryTracker:
    """One database's statement baseline and the top N of each interval."""

    def __init__(self, top_n: int, *, max_tracked: int = 10_000):
        if top_n < 1:
            raise ValueError(f"top_n must be at least 1, not {top_n}")
        self.top_n = top_n
        self.max_tracked = max_tracked
        self.read_at: float | None = None  # unix seconds of the previous read (this owner's or the last one's)
        self.cursor: str | None = None  # the source's, for incremental sources
        self._baseline: dict[str, _Counters] = {}
        self._complete = False  # the previous read saw every entry (fewer rows than its limit)
        self._totals: dict[str, _Counters] = {}  # incremental sources: running totals per statement
        self._incremental = False  # the source reports per interval (StatementRead.cumulative False)

    @property
    def baseline_size(self) -> int:
        return len(self._baseline)

    def observe(self, read: StatementRead, now: float, *, limit: int) -> TopQueryReport | None:
        """Take one read (made at `now` with `limit` rows at most); the interval's report, or None for a
        first read that only sets the baseline. A read with errors and no rows, or a cumulative read that
        sent no statement (held back after a refusal), changes nothing."""
        if not read.counters and (read.errors or (read.statements == 0 and read.cumulative)):
            return None  # failed, or held back (a refusal's quiet retry): no news, not an empty server
        if self.read_at is not None and self._incremental == read.cumulative:
            # The source changed kind (MongoDB: the profiler was switched on or off): the numbers are not
            # comparable with the previous read's, so this read is a new baseline.
            self.read_at, self._baseline, self._totals, self._complete = None, {}, {}, False
        if read.cursor is not None or not read.cumulative:
            self.cursor = read.cursor
        self._incremental = not read.cumulative
        if self._incremental:
            return self._observe_increments(read, now)
        previous_at, previous, complete = self.read_at, self._baseline, self._complete
        self._baseline = {s.query_id: _Counters.of(s) for s in read.counters}
        self._complete = len(read.counters) < limit
        self.read_at = now
        if previous_at is None:
            return None
        reset = read.reset_at is not None and read.reset_at > previous_at
        ranked: list[tuple[StatementCounters, _Counters]] = []
        for statement in read.counters:
            current = _Counters.of(statement)
            before = None if reset else previous.get(statement.query_id)
            if before is None:
                new = reset or complete or (statement.first_seen is not None and statement.first_seen >= previous_at)
                if not new:
                    continue  # history unknown: baseline only this interval
                delta = current
            elif before.went_down(current):
                delta = current  # re-created since the previous read: all of it is this interval's
            else:
                delta = current.minus(before)
            if not delta.idle:
                ranked.append((statement, delta))
        return TopQueryReport(previous_at, now, self._top(ranked))

    def _observe_increments(self, read: StatementRead, now: float) -> TopQueryReport | None:
        previous_at = self.read_at
        self.read_at = now
        ranked: list[tuple[StatementCounters, _Counters]] = []
        merged: dict[str, tuple[StatementCounters, _Counters]] = {}
        for statement in read.counters:  # a source may split one statement over several rows
            delta = _Counters.of(statement)
            if statement.query_id in merged:
                delta = merged[statement.query_id][1].plus(delta)
            merged[statement.query_id] = (statement, delta)
        for statement, delta in merged.values():
            total = self._totals.get(statement.query_id)
            total = delta if total is None else total.plus(delta)
            self._totals[statement.query_id] = total
            if not delta.idle:
                cumulative = replace(
                    statement,
                    calls=total.calls,
                    total_time_s=total.total_time_s,
                    rows=total.rows,
                    extra=dict(total.extra),
                )
                ranked.append((cumulative, delta))
        self._bound_totals()
        if previous_at is None:
            return None  # counted in the totals, but no interval to report them in yet
        return TopQueryReport(previous_at, now, self._top(ranked))

    def _bound_totals(self) -> None:
        if len(self._totals) > self.max_tracked:
            keep = sorted(self._totals.items(), key=lambda kv: (-kv[1].total_time_s, kv[0]))[: self.max_tracked]
            self._totals = dict(keep)

    def _top(self, ranked: list[tuple[StatementCounters, _Counters]]) -> tuple[TopQuery, ...]:
        ranked.sort(key=lambda pair: (-pair[1].total_time_s, -pair[1].calls, pair[0].query_id))
        return tuple(
            TopQuery(
                statement=statement,
                calls=delta.calls,
                total_time_s=delta.total_time_s,
                rows=delta.rows,
                extra=dict(delta.extra),
                text=statement.text,
                summary=statement.summary,
            )
            for statement, delta in ranked[: self.top_n]
        )

    # -- hand-off ----------------------------------------------------------------------------
    def handoff_state(self) -> bytes | None:
        """What the next owner needs to continue: the last read's time, cursor and counters (ids and
        numbers only), at most HANDOFF_LIMIT bytes; None before any read."""
        if self.read_at is None:
            return None
        incremental = self._incremental
        source = self._totals if incremental else self._baseline
        entries = sorted(source.items(), key=lambda kv: (-kv[1].total_time_s, kv[0]))
        keys = sorted({k for _, c in entries for k in c.extra})
        count = len(entries)
        while True:
            partial = count < len(entries)  # the next owner must not take a statement left out for a new one
            blob = _encode(
                self.read_at, self.cursor, incremental, self._complete and not partial, keys, entries[:count]
            )
            if len(blob) <= HANDOFF_LIMIT:
                return blob
            count //= 2  # the heaviest half still fits more often than not; the rest is "unknown history"

    @classmethod
    def from_handoff_state(cls, blob: bytes, top_n: int, *, max_tracked: int = 10_000) -> TopQueryTracker:
        """A tracker that continues the previous owner's (raises HandoffStateError for a bad blob)."""
        try:
            state = json.loads(zlib.decompress(blob))
            if not isinstance(state, dict) or state.get("v") != _FORMAT:
                raise HandoffStateError(
                    f"unknown hand-off state format {state.get('v') if isinstance(state, dict) else None!r}"
                )
            keys = [str(k) for k in state["keys"]]
            entries = {
                str(query_id): _Counters(
                    float(calls), float(seconds), float(rows), dict(zip(keys, (float(v) for v in extra), strict=True))
                )
                for query_id, calls, seconds, rows, extra in state["entries"]
            }
            read_at = float(state["at"])
            cursor = None if state["cursor"] is None else str(state["cursor"])
            incremental, complete = bool(state["incremental"]), bool(state["complete"])
        except HandoffStateError:
            raise
        except (zlib.error, ValueError, KeyError, TypeError) as exc:
            raise HandoffStateError(f"unreadable hand-off state ({type(exc).__name__})") from None
        tracker = cls(top_n, max_tracked=max_tracked)
        tracker.read_at, tracker.cursor = read_at, cursor
        tracker._incremental = incremental
        if incremental:
            tracker._totals = entries
        else:
            tracker._baseline, tracker._complete = entries, complete
        return tracker


def _encode(
    read_at: float,
    cursor: str | None,
    incremental: bool,
    complete: bool,
    keys: Sequence[str],
    entries: Sequence[tuple[str, _Counters]],
) -> bytes:
    state = {
        "v": _FORMAT,
        "at": read_at,
        "cursor": cursor,
        "incremental": incremental,
        "complete": complete,
        "keys": list(keys),
        "entries": [[q, c.calls, c.total_time_s, c.rows, [c.extra.get(k, 0.0) for k in keys]] for q, c in entries],
    }
    return zlib.compress(json.dumps(state, separators=(",", ":")).encode(), 6)


class StatementTexts:
    """Obfuscated texts and summaries by statement id, so each is fetched from the server once.

    Bounded (least recently used out): a statement whose text was dropped is fetched again the next
    time it ranks, which costs one statement then, not every interval."""

    def __init__(self, capacity: int = 1000):
        self.capacity = capacity
        self._texts: OrderedDict[str, tuple[ObfuscatedText, str]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._texts)

    def missing(self, query_ids: Iterable[str]) -> list[str]:
        return [q for q in dict.fromkeys(query_ids) if q not in self._texts]

    def put(self, texts: Mapping[str, tuple[ObfuscatedText, str]]) -> None:
        for query_id, value in texts.items():
            self._texts[query_id] = value
            self._texts.move_to_end(query_id)
        while len(self._texts) > self.capacity:
            self._texts.popitem(last=False)

    def fill(self, report: TopQueryReport) -> TopQueryReport:
        """The report with every known text and summary filled in (statements carrying their own kept)."""
        queries = []
        for query in report.queries:
            known = self._texts.get(query.statement.query_id)
            if known is not None:
                self._texts.move_to_end(query.statement.query_id)
            if query.text is None and known is not None:
                query = replace(query, text=known[0], summary=query.summary or known[1])
            queries.append(query)
        return replace(report, queries=tuple(queries))
