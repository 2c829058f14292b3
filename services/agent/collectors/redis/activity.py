"""Redis query intelligence, pure: SLOWLOG entries -> per-pattern counters, CLIENT LIST -> sessions.

Top queries come from the slowlog, read incrementally by entry id. Redis numbers its slowlog entries
0, 1, 2 ... and restarts at 0 on a server restart and on SLOWLOG RESET, so the cursor holds the newest
entry already counted as "<id>:<unix seconds it was logged>":
- entries with an id above the cursor's are new;
- a newest id below the cursor's, or an entry at or below the cursor's id logged after the cursor's
  entry, means the numbering restarted: every entry there is new (all of them were logged after the
  restart, which emptied the slowlog). A reset and a new entry within the cursor entry's own second,
  with the new ids still below the cursor's, go unnoticed until the ids overtake it (then they count).
- no cursor (a fresh owner without hand-off state): the slowlog is history; nothing is counted, the
  cursor is set to its newest entry (or "-1:0" for an empty slowlog, so every later entry counts).
Losses are possible: the slowlog keeps `slowlog-max-len` entries (128 by default) and a read asks for at
most `limit`; entries that fell off between two reads are never seen. They show as a gap in the ids:
`lost_entries` = the oldest new id - the cursor's id - 1 (0 when nothing was lost); raise
slowlog-max-len or read more often when it is not 0.

Entries group by their obfuscated command (`redis_command`: name, key patterns, `?` for every other
argument), so `SET user:1:email a@b.c` and `SET user:2:email c@d.e` are one statement, `SET user:?:email ?`.
The counters are the interval's amounts (calls = entries, time = their durations), not cumulative.

Samples: Redis runs one command at a time, so what "runs now" is the clients waiting in a blocking
command (flag `b`: BLPOP, BRPOPLPUSH, XREAD BLOCK, WAIT ...; state "blocked", the command as wait event,
duration = the client's idle time, which counts from the blocking command's arrival) and the clients in
a MULTI transaction (flag `x`; state "in transaction", no duration: Redis does not say when MULTI came).
Idle clients, subscribers and replication links are not sessions at work and are left out. CLIENT LIST
carries the last command's name only (never its arguments), and that is all a session's text says.
Redis has no lock graph: blocked_by is always empty (a blocked client waits for data, not for a client).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from ...queries.model import ActiveSession, StatementCounters
from ...queries.obfuscation import ObfuscatedText, redis_command, redis_summary

NO_ENTRY = (-1, 0)  # the cursor of an empty slowlog: every entry logged later is new


@dataclass(frozen=True, slots=True)
class SlowlogEntry:
    id: int
    logged_at: int  # unix seconds
    duration_us: int
    args: tuple[bytes | str, ...]


def _text(value: Any) -> str:
    return value.decode("utf-8", errors="replace") if isinstance(value, bytes) else str(value)


def slowlog_entries(reply: Iterable[Any]) -> list[SlowlogEntry]:
    """A SLOWLOG GET reply: one [id, unix time, duration µs, [args...], (client addr, client name)] per
    entry, newest first. The client fields (4.0+) are ignored: they identify people, not statements."""
    entries = []
    for item in reply:
        entry_id, logged_at, duration, args = item[0], item[1], item[2], item[3]
        entries.append(SlowlogEntry(int(entry_id), int(logged_at), int(duration), tuple(args)))
    return entries


def parse_cursor(cursor: str | None) -> tuple[int, int | None] | None:
    """ "<id>:<unix seconds>" -> (id, seconds); a bare "<id>" -> (id, None) (restarts then show only as a
    newest id below it); None (and anything unreadable) -> None: start afresh."""
    if not cursor:
        return None
    entry_id, sep, logged_at = cursor.partition(":")
    try:
        return int(entry_id), (int(logged_at) if sep else None)
    except ValueError:
        return None


def format_cursor(position: tuple[int, int | None]) -> str:
    return f"{position[0]}" if position[1] is None else f"{position[0]}:{position[1]}"


@dataclass(frozen=True, slots=True)
class NewEntries:
    entries: tuple[SlowlogEntry, ...]  # to count in this interval
    cursor: str  # the next read's
    restarted: bool = False  # the ids started over (server restart, SLOWLOG RESET)
    lost_entries: int = 0  # entries logged since the cursor but gone from the slowlog before this read


def new_entries(entries: Sequence[SlowlogEntry], cursor: str | None) -> NewEntries:
    """The entries logged after `cursor`, and the next cursor; see the module docstring."""
    newest = max(entries, key=lambda e: e.id, default=None)
    position = parse_cursor(cursor)
    if position is None:  # history: counted by nobody, so a hand-off or restart never replays it as a spike
        return NewEntries((), format_cursor((newest.id, newest.logged_at) if newest else NO_ENTRY))
    if newest is None:
        return NewEntries((), format_cursor(position))
    last_id, last_at = position
    restarted = newest.id < last_id or (
        last_at is not None and any(e.id <= last_id and e.logged_at > last_at for e in entries)
    )
    fresh = tuple(entries) if restarted else tuple(e for e in entries if e.id > last_id)
    next_position: tuple[int, int | None] = (newest.id, newest.logged_at) if fresh else position
    lost = 0
    if fresh:
        oldest = min(e.id for e in fresh)
        lost = oldest if restarted else max(0, oldest - last_id - 1)  # after a restart ids start at 0
    return NewEntries(fresh, format_cursor(next_position), restarted, lost)


def statement_id(text: str) -> str:
    """A stable short id of an obfuscated command: the same pattern gets the same id on every agent."""
    return hashlib.sha1(text.encode("utf-8")).hexdigest()[:16]


def slowlog_counters(entries: Iterable[SlowlogEntry], limit: int) -> tuple[StatementCounters, ...]:
    """Entries grouped by obfuscated command: calls = entries, time = their durations; at most `limit`
    patterns, the heaviest by time first."""
    groups: dict[ObfuscatedText, list[Any]] = {}  # text -> [calls, µs, summary]
    for entry in entries:
        text = redis_command(entry.args)
        group = groups.setdefault(text, [0, 0, None])
        group[0] += 1
        group[1] += entry.duration_us
        if group[2] is None:
            group[2] = redis_summary(entry.args)
    counters = [
        StatementCounters(
            query_id=statement_id(text),
            calls=float(calls),
            total_time_s=micros / 1e6,
            text=text,
            summary=summary,
        )
        for text, (calls, micros, summary) in groups.items()
    ]
    counters.sort(key=lambda c: (-c.total_time_s, -c.calls, c.query_id))
    return tuple(counters[: max(limit, 0)])


# --- CLIENT LIST ---------------------------------------------------------------------------------


def parse_client_list(reply: str) -> list[dict[str, str]]:
    """CLIENT LIST text: one line per client of space-separated key=value fields."""
    clients = []
    for line in reply.splitlines():
        fields = {}
        for item in line.split(" "):
            key, sep, value = item.partition("=")
            if sep:
                fields[key] = value
        if fields:
            clients.append(fields)
    return clients


def _int(value: str | None) -> int | None:
    try:
        return int(value) if value not in (None, "") else None
    except ValueError:
        return None


def _command_words(cmd: str) -> list[str]:
    # 7.0 names subcommands "client|list"; before, CLIENT LIST shows "client"
    return [word for word in cmd.split("|") if word]


def client_session(client: dict[str, str]) -> ActiveSession | None:
    """One CLIENT LIST entry as a session, or None for a client not at work (see the module docstring)."""
    flags = client.get("flags", "")
    if "b" in flags:
        state = "blocked"
    elif "x" in flags:
        state = "in transaction"
    else:
        return None
    words = _command_words(client.get("cmd", ""))
    text = redis_command(words) if words else None
    summary = redis_summary(words) if words else ""
    host, _, port = client.get("addr", "").rpartition(":")
    attributes: dict[str, str | int] = {"redis.client.flags": flags}
    db = _int(client.get("db"))
    if db is not None:
        attributes["redis.db"] = db
    idle = _int(client.get("idle"))
    return ActiveSession(
        session_id=client.get("id", ""),
        state=state,
        wait_event_type="Blocking command" if state == "blocked" else "",
        wait_event=summary if state == "blocked" else "",
        duration_s=float(idle) if state == "blocked" and idle is not None else None,
        text=text,
        summary=summary,
        namespace=str(db) if db is not None else "",
        user=client.get("user", ""),
        client_address=host,
        client_port=_int(port),
        application=client.get("name", ""),
        attributes=attributes,
    )


def client_sessions(reply: str, own_id: int | None, limit: int) -> tuple[ActiveSession, ...]:
    """The sessions at work in a CLIENT LIST reply, ours excluded, the longest-running first."""
    sessions = [
        session
        for client in parse_client_list(reply)
        if own_id is None or _int(client.get("id")) != own_id
        if (session := client_session(client)) is not None
    ]
    sessions.sort(key=lambda s: -(s.duration_s if s.duration_s is not None else -1.0))
    return tuple(sessions[: max(limit, 0)])
