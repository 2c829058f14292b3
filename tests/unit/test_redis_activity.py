"""Redis query intelligence, pure mapping: slowlog cursor arithmetic, grouping, CLIENT LIST sessions."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from dbintel.agent.collectors.redis.activity import (
    SlowlogEntry,
    client_sessions,
    new_entries,
    parse_cursor,
    slowlog_counters,
    slowlog_entries,
    statement_id,
)


def entry(entry_id: int, at: int = 1000, micros: int = 10, *args: str) -> SlowlogEntry:
    return SlowlogEntry(entry_id, at, micros, tuple(args or ("GET", "k")))


def log(*ids: int, at: int = 1000) -> list[SlowlogEntry]:
    """A slowlog as SLOWLOG GET returns it: newest first, one second apart."""
    return [entry(i, at + i) for i in sorted(ids, reverse=True)]


def ids(read) -> list[int]:
    return sorted(e.id for e in read.entries)


def test_reply_shape_with_and_without_client_fields():
    reply = [
        [7, 1700000001, 52000, [b"DEBUG", b"SLEEP", b"0.05"], b"127.0.0.1:5000", b""],
        [6, 1700000000, 12, [b"SET", b"user:1:email", b"a@b.c"]],  # before 4.0: no client fields
    ]
    assert slowlog_entries(reply) == [
        SlowlogEntry(7, 1700000001, 52000, (b"DEBUG", b"SLEEP", b"0.05")),
        SlowlogEntry(6, 1700000000, 12, (b"SET", b"user:1:email", b"a@b.c")),
    ]


def test_no_cursor_is_history_nothing_counted():
    read = new_entries(log(3, 4, 5), None)
    assert read.entries == ()
    assert parse_cursor(read.cursor) == (5, 1005)
    # the next read counts only what came after
    assert ids(new_entries(log(3, 4, 5, 6, 7), read.cursor)) == [6, 7]


def test_no_cursor_empty_slowlog_counts_everything_later():
    read = new_entries([], None)
    assert read.entries == ()
    assert ids(new_entries(log(0, 1), read.cursor)) == [0, 1]


def test_incremental_reads_count_each_entry_once():
    first = new_entries(log(0, 1, 2), "-1:0")
    assert ids(first) == [0, 1, 2]
    second = new_entries(log(0, 1, 2, 3), first.cursor)
    assert ids(second) == [3]
    third = new_entries(log(0, 1, 2, 3), second.cursor)
    assert third.entries == () and third.cursor == second.cursor


def test_restart_with_lower_ids_counts_all_new_entries():
    cursor = new_entries(log(8, 9, 10), None).cursor
    read = new_entries(log(0, 1, at=5000), cursor)  # ids restarted below the cursor
    assert read.restarted and ids(read) == [0, 1]
    assert parse_cursor(read.cursor) == (1, 5001)


def test_reset_whose_new_ids_overtook_the_cursor_is_still_a_restart():
    cursor = new_entries(log(2, 3), None).cursor  # newest id 3, logged at 1003
    read = new_entries(log(0, 1, 2, 3, 4, 5, at=9000), cursor)  # after SLOWLOG RESET, already past id 3
    assert read.restarted and ids(read) == [0, 1, 2, 3, 4, 5]


def test_empty_slowlog_after_reset_keeps_cursor_then_counts_new_ones():
    cursor = new_entries(log(5), None).cursor
    empty = new_entries([], cursor)
    assert empty.entries == () and empty.cursor == cursor
    assert ids(new_entries(log(0, at=9000), empty.cursor)) == [0]


def test_bare_id_cursor():
    assert ids(new_entries(log(3, 4, 5), "4")) == [5]  # old entries are not taken for a restart
    assert new_entries(log(0, 1, at=9000), "4").restarted
    assert parse_cursor("x:y") is None and parse_cursor("") is None


def test_gap_in_ids_reports_lost_entries():
    cursor = new_entries(log(10), None).cursor
    read = new_entries(log(15, 16, 17), cursor)  # 11..14 fell off the end (slowlog-max-len)
    assert ids(read) == [15, 16, 17] and read.lost_entries == 4
    assert new_entries(log(10, 11), cursor).lost_entries == 0


@given(st.lists(st.integers(min_value=1, max_value=20), min_size=1, max_size=12))
def test_every_entry_counted_exactly_once_across_reads(batches):
    """Entries arrive in batches; a bounded slowlog (max 8) and reads after each batch: each entry still
    in the slowlog at a read is counted once at most, and counted + lost = logged."""
    next_id, slowlog, cursor = 0, [], "-1:0"
    counted, lost = [], 0
    for size in batches:
        slowlog = ([entry(next_id + i, 1000 + next_id + i) for i in range(size)][::-1] + slowlog)[:8]
        next_id += size
        read = new_entries(slowlog, cursor)
        counted += [e.id for e in read.entries]
        lost += read.lost_entries
        cursor = read.cursor
    assert len(counted) == len(set(counted))
    assert len(counted) + lost == next_id


def test_grouping_by_pattern_heaviest_first_and_no_value_survives():
    entries = [entry(i, 1000, 100, "SET", f"user:{i}:email", f"person{i}@example.com") for i in range(5)]
    entries += [entry(10 + i, 1000, 50_000, "DEBUG", "SLEEP", "0.05") for i in range(2)]
    entries += [entry(20, 1000, 10, "HSET", "card:4111111111111111", "number", "4111111111111111")]
    counters = slowlog_counters(entries, limit=10)
    assert [(c.text, c.calls, c.total_time_s) for c in counters] == [
        ("DEBUG SLEEP ?", 2.0, 0.1),
        ("SET user:?:email ?", 5.0, 0.0005),
        ("HSET card:? ? ?", 1.0, 0.00001),
    ]
    assert [c.summary for c in counters] == ["DEBUG SLEEP", "SET", "HSET"]
    assert counters[1].query_id == statement_id("SET user:?:email ?")
    for c in counters:
        assert "@" not in c.text and "4111" not in c.text and not any(ch.isdigit() for ch in c.text)
    assert len(slowlog_counters(entries, limit=1)) == 1


@given(st.lists(st.text(min_size=1, max_size=20), min_size=1, max_size=5))
def test_no_argument_value_survives(values):
    counters = slowlog_counters([entry(1, 1000, 5, "SET", "k", *values)], limit=5)
    assert counters[0].text == " ".join(["SET", "k", *["?"] * len(values)])


CLIENT_LIST = "\n".join(
    [
        "id=3 addr=127.0.0.1:40001 laddr=127.0.0.1:6379 fd=8 name=worker age=20 idle=7 flags=b db=2 sub=0 "
        "psub=0 ssub=0 multi=-1 qbuf=0 qbuf-free=0 argv-mem=13 multi-mem=0 rbs=1024 rbp=0 obl=0 oll=0 "
        "omem=0 tot-mem=1800 events=r cmd=blpop user=app redir=-1 resp=2",
        "id=4 addr=127.0.0.1:40002 laddr=127.0.0.1:6379 fd=9 name= age=5 idle=1 flags=x db=0 multi=2 cmd=set user=default",
        "id=5 addr=127.0.0.1:40003 laddr=127.0.0.1:6379 fd=10 name= age=9 idle=9 flags=N db=0 cmd=get user=default",
        "id=6 addr=127.0.0.1:40004 laddr=127.0.0.1:6379 fd=11 name=dbintel-agent age=1 idle=0 flags=N db=0 "
        "cmd=client|list user=default",
        "id=7 addr=[::1]:40005 laddr=[::1]:6379 fd=12 name= age=9 idle=3 flags=b db=0 cmd=xread user=default",
        "",
    ]
)


def test_client_list_sessions():
    sessions = client_sessions(CLIENT_LIST, own_id=6, limit=10)
    assert [s.session_id for s in sessions] == ["3", "7", "4"]  # blocked longest first, then MULTI
    blocked = sessions[0]
    assert (blocked.state, blocked.wait_event_type, blocked.wait_event, blocked.duration_s) == (
        "blocked",
        "Blocking command",
        "BLPOP",
        7.0,
    )
    assert (blocked.text, blocked.summary, blocked.user, blocked.application) == ("BLPOP", "BLPOP", "app", "worker")
    assert (blocked.client_address, blocked.client_port, blocked.namespace) == ("127.0.0.1", 40001, "2")
    assert blocked.blocked_by == ()
    assert sessions[1].client_address == "[::1]"
    multi = sessions[2]
    assert (multi.state, multi.duration_s, multi.wait_event) == ("in transaction", None, "")
    assert len(client_sessions(CLIENT_LIST, own_id=6, limit=1)) == 1


def test_own_client_excluded_and_subcommands_named():
    line = "id=9 addr=127.0.0.1:1 name=me age=1 idle=2 flags=b db=0 cmd=client|pause user=default"
    assert client_sessions(line, own_id=9, limit=5) == ()
    (session,) = client_sessions(line, own_id=None, limit=5)
    assert session.summary == "CLIENT PAUSE"
