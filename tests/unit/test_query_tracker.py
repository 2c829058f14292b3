"""The top-query tracker: deltas, resets, ranking and the hand-off state (pure, no I/O)."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dbintel.agent.queries.model import StatementCounters, StatementRead
from dbintel.agent.queries.obfuscation import ObfuscatedText
from dbintel.agent.queries.tracker import (
    HANDOFF_LIMIT,
    HandoffStateError,
    StatementTexts,
    TopQueryTracker,
)

LIMIT = 1000


def stmt(qid: str, calls: float, seconds: float, rows: float = 0.0, **kw) -> StatementCounters:
    return StatementCounters(query_id=qid, calls=calls, total_time_s=seconds, rows=rows, **kw)


def read(*counters: StatementCounters, **kw) -> StatementRead:
    return StatementRead(counters=counters, **kw)


def by_id(report) -> dict[str, tuple[float, float, float]]:
    return {q.statement.query_id: (q.calls, q.total_time_s, q.rows) for q in report.queries}


def test_first_read_is_a_baseline_and_the_second_reports_the_interval():
    tracker = TopQueryTracker(10)
    assert tracker.observe(read(stmt("a", 10, 5.0, 100)), 100.0, limit=LIMIT) is None
    report = tracker.observe(read(stmt("a", 13, 6.5, 130)), 160.0, limit=LIMIT)
    assert report is not None
    assert (report.interval_start, report.interval_end) == (100.0, 160.0)
    assert by_id(report) == {"a": (3, 1.5, 30)}
    assert report.queries[0].statement.calls == 13  # the server's total, for the Prometheus counter


def test_ranked_by_time_in_the_interval_not_by_history():
    tracker = TopQueryTracker(2)
    tracker.observe(read(stmt("old", 1000, 900.0), stmt("b", 1, 0.1), stmt("c", 1, 0.1)), 0.0, limit=LIMIT)
    report = tracker.observe(read(stmt("old", 1001, 900.5), stmt("b", 50, 8.0), stmt("c", 2, 0.3)), 60.0, limit=LIMIT)
    assert [q.statement.query_id for q in report.queries] == ["b", "old"]


def test_idle_statements_are_not_ranked():
    tracker = TopQueryTracker(10)
    tracker.observe(read(stmt("a", 5, 1.0), stmt("b", 5, 1.0)), 0.0, limit=LIMIT)
    report = tracker.observe(read(stmt("a", 5, 1.0), stmt("b", 6, 1.2)), 60.0, limit=LIMIT)
    assert list(by_id(report)) == ["b"]


def test_a_counter_that_went_down_was_recreated_so_all_it_holds_is_the_interval():
    tracker = TopQueryTracker(10)
    tracker.observe(read(stmt("a", 500, 80.0)), 0.0, limit=LIMIT)
    report = tracker.observe(read(stmt("a", 4, 0.2)), 60.0, limit=LIMIT)
    assert by_id(report) == {"a": (4, 0.2, 0)}


def test_a_new_statement_counts_in_full_only_when_the_source_proves_it_is_new():
    # the previous read hit its limit: an unseen statement may have been outside it -> baseline only
    tracker = TopQueryTracker(10)
    tracker.observe(read(stmt("a", 1, 1.0), stmt("b", 1, 1.0)), 0.0, limit=2)
    report = tracker.observe(read(stmt("a", 2, 2.0), stmt("huge", 10**6, 10**5)), 60.0, limit=2)
    assert by_id(report) == {"a": (1, 1.0, 0)}
    # ... unless the server says when it was created
    tracker = TopQueryTracker(10)
    tracker.observe(read(stmt("a", 1, 1.0), stmt("b", 1, 1.0)), 0.0, limit=2)
    report = tracker.observe(read(stmt("a", 2, 2.0), stmt("n", 3, 0.5, first_seen=30.0)), 60.0, limit=2)
    assert by_id(report) == {"a": (1, 1.0, 0), "n": (3, 0.5, 0)}
    # ... or the previous read saw every entry
    tracker = TopQueryTracker(10)
    tracker.observe(read(stmt("a", 1, 1.0)), 0.0, limit=5)
    report = tracker.observe(read(stmt("a", 2, 2.0), stmt("n", 3, 0.5)), 60.0, limit=5)
    assert by_id(report)["n"] == (3, 0.5, 0)
    # ... and the next interval it has a baseline like any other
    report = tracker.observe(read(stmt("a", 2, 2.0), stmt("n", 4, 0.75)), 120.0, limit=5)
    assert by_id(report) == {"n": (1, 0.25, 0)}


def test_a_statistics_reset_after_the_previous_read_makes_every_counter_the_interval():
    tracker = TopQueryTracker(10)
    tracker.observe(read(stmt("a", 100, 10.0)), 0.0, limit=2)
    report = tracker.observe(read(stmt("a", 120, 12.0), stmt("b", 1, 1.0), reset_at=30.0), 60.0, limit=2)
    assert by_id(report) == {"a": (120, 12.0, 0), "b": (1, 1.0, 0)}


def test_a_read_that_failed_changes_nothing():
    tracker = TopQueryTracker(10)
    from dbintel.agent.collectors.metric_table import QueryError

    tracker.observe(read(stmt("a", 1, 1.0)), 0.0, limit=LIMIT)
    assert tracker.observe(read(errors=(QueryError("q", "timeout", "slow"),)), 60.0, limit=LIMIT) is None
    report = tracker.observe(read(stmt("a", 3, 2.0)), 120.0, limit=LIMIT)
    assert (report.interval_start, by_id(report)) == (0.0, {"a": (2, 1.0, 0)})


def test_extra_counters_get_deltas_under_their_own_names():
    tracker = TopQueryTracker(10)
    tracker.observe(read(stmt("a", 1, 1.0, extra={"postgresql.shared_blks_hit": 10.0})), 0.0, limit=LIMIT)
    report = tracker.observe(read(stmt("a", 2, 2.0, extra={"postgresql.shared_blks_hit": 25.0})), 60.0, limit=LIMIT)
    assert report.queries[0].extra == {"postgresql.shared_blks_hit": 15.0}


def test_incremental_sources_accumulate_totals_and_keep_their_cursor():
    tracker = TopQueryTracker(10)
    assert tracker.observe(read(cumulative=False, cursor="41"), 0.0, limit=LIMIT) is None
    report = tracker.observe(
        read(stmt("SET k:?", 2, 0.002), stmt("SET k:?", 1, 0.001), cumulative=False, cursor="44"), 10.0, limit=LIMIT
    )
    assert tracker.cursor == "44"
    assert by_id(report) == {"SET k:?": (3, pytest.approx(0.003), 0)}
    report = tracker.observe(read(stmt("SET k:?", 1, 0.001), cumulative=False, cursor="45"), 20.0, limit=LIMIT)
    assert report.queries[0].statement.calls == 4  # running total: a counter in Prometheus
    assert report.queries[0].calls == 1


def test_the_hand_off_state_continues_the_interval_on_the_next_owner():
    old = TopQueryTracker(10)
    old.observe(read(stmt("a", 10, 1.0), stmt("b", 5, 0.5)), 100.0, limit=LIMIT)
    old.observe(read(stmt("a", 20, 2.0), stmt("b", 6, 0.6)), 160.0, limit=LIMIT)
    blob = old.handoff_state()
    assert blob is not None and len(blob) <= HANDOFF_LIMIT
    new = TopQueryTracker.from_handoff_state(blob, 10)
    report = new.observe(read(stmt("a", 25, 2.5), stmt("b", 6, 0.6)), 190.0, limit=LIMIT)
    assert (report.interval_start, by_id(report)) == (160.0, {"a": (5, 0.5, 0)})


def test_the_hand_off_state_of_an_incremental_source_carries_cursor_and_totals():
    old = TopQueryTracker(10)
    old.observe(read(cumulative=False, cursor="7"), 0.0, limit=LIMIT)
    old.observe(read(stmt("GET", 3, 0.3), cumulative=False, cursor="10"), 10.0, limit=LIMIT)
    new = TopQueryTracker.from_handoff_state(old.handoff_state(), 10)
    assert new.cursor == "10"
    report = new.observe(read(stmt("GET", 1, 0.1), cumulative=False, cursor="11"), 20.0, limit=LIMIT)
    assert report.interval_start == 10.0 and report.queries[0].statement.calls == 4


def test_a_large_baseline_is_cut_to_the_limit_and_marked_partial():
    tracker = TopQueryTracker(10)
    many = [stmt(f"{i:020d}", i + 1, float(i), extra={f"x{j}": float(i * j) for j in range(8)}) for i in range(20000)]
    tracker.observe(read(*many), 0.0, limit=100_000)
    blob = tracker.handoff_state()
    assert blob is not None and len(blob) <= HANDOFF_LIMIT
    new = TopQueryTracker.from_handoff_state(blob, 10)
    assert 0 < new.baseline_size < 20000
    # a statement left out of the state has unknown history on the new owner: no spike
    grown = [stmt(s.query_id, s.calls + 1, s.total_time_s + 1.0, extra=dict(s.extra)) for s in many]
    report = new.observe(read(*grown), 60.0, limit=100_000)
    assert all(q.calls == 1 for q in report.queries)


@pytest.mark.parametrize("blob", [b"", b"not zlib", __import__("zlib").compress(b'{"v": 99}')])
def test_a_bad_hand_off_state_is_refused_clearly(blob):
    with pytest.raises(HandoffStateError):
        TopQueryTracker.from_handoff_state(blob, 10)


def test_texts_are_fetched_once_and_filled_in():
    texts = StatementTexts(capacity=2)
    tracker = TopQueryTracker(10)
    tracker.observe(read(stmt("a", 1, 1.0), stmt("b", 1, 1.0)), 0.0, limit=LIMIT)
    report = tracker.observe(read(stmt("a", 2, 2.0), stmt("b", 3, 1.5)), 60.0, limit=LIMIT)
    assert texts.missing(q.statement.query_id for q in report.queries) == ["a", "b"]
    texts.put({"a": (ObfuscatedText("SELECT ?"), "SELECT"), "b": (ObfuscatedText("UPDATE t SET x = ?"), "UPDATE t")})
    filled = texts.fill(report)
    assert [(q.text, q.summary) for q in filled.queries] == [("SELECT ?", "SELECT"), ("UPDATE t SET x = ?", "UPDATE t")]
    assert texts.missing(["a", "b", "c"]) == ["c"]
    texts.put({"c": (ObfuscatedText("?"), "OTHER")})
    assert len(texts) == 2  # bounded: the least recently used went


# -- properties -------------------------------------------------------------------------------

# One interval of one statement: how much really happened, and whether its entry was reset first.
intervals = st.lists(
    st.tuples(st.integers(0, 50), st.integers(0, 10_000), st.booleans(), st.booleans()), min_size=1, max_size=12
)


@settings(max_examples=200, deadline=None)
@given(intervals, st.integers(0, 12), st.integers(0, 1000), st.integers(0, 10**6))
def test_deltas_are_never_negative_nor_more_than_happened_and_exact_without_resets(steps, handoff_at, c0, t0):
    """Sum over a hand-off at any interval: each reported delta lies in [0, what happened], equal to it
    when no reset hid inside the interval; hand-off or not changes nothing."""
    calls, micros = c0, t0
    tracker = TopQueryTracker(10)
    tracker.observe(read(stmt("q", calls, micros / 1e6)), 0.0, limit=LIMIT)
    for index, (more_calls, more_micros, reset, tell_reset) in enumerate(steps):
        if index == handoff_at:
            tracker = TopQueryTracker.from_handoff_state(tracker.handoff_state(), 10)
        now = 60.0 * (index + 1)
        if reset:
            calls, micros = 0, 0
        calls, micros = calls + more_calls, micros + more_micros
        reset_at = now - 30.0 if reset and tell_reset else None
        report = tracker.observe(read(stmt("q", calls, micros / 1e6), reset_at=reset_at), now, limit=LIMIT)
        assert report is not None and report.interval_start == now - 60.0
        got = by_id(report).get("q", (0, 0.0, 0))
        assert 0 <= got[0] <= more_calls and -1e-9 <= got[1] <= more_micros / 1e6 + 1e-9
        if not reset or tell_reset:
            assert got[0] == more_calls and got[1] == pytest.approx(more_micros / 1e6, abs=1e-9)


@settings(max_examples=100, deadline=None)
@given(
    st.lists(st.dictionaries(st.sampled_from("abcdefgh"), st.integers(0, 100), max_size=8), min_size=2, max_size=8),
    st.integers(1, 4),
)
def test_a_report_holds_at_most_top_n_ranked_heaviest_first(increments, top_n):
    tracker = TopQueryTracker(top_n)
    totals: dict[str, int] = dict.fromkeys("abcdefgh", 0)
    tracker.observe(read(*(stmt(k, v, float(v)) for k, v in totals.items())), 0.0, limit=LIMIT)
    for index, step in enumerate(increments):
        for key, more in step.items():
            totals[key] += more
        report = tracker.observe(
            read(*(stmt(k, v, float(v)) for k, v in totals.items())), float(index + 1), limit=LIMIT
        )
        times = [q.total_time_s for q in report.queries]
        assert len(times) <= top_n and times == sorted(times, reverse=True)
        assert all(t > 0 for t in times)
        busy = sorted((more for more in step.values() if more > 0), reverse=True)
        assert times == [float(v) for v in busy[:top_n]]


def test_a_read_held_back_after_a_refusal_is_no_news_not_an_empty_server():
    tracker = TopQueryTracker(10)
    tracker.observe(read(statements=0), 0.0, limit=LIMIT)  # held back: nothing sent
    assert tracker.read_at is None
    tracker.observe(read(stmt("a", 10**6, 10**4), statements=1), 60.0, limit=LIMIT)
    report = tracker.observe(read(stmt("a", 10**6 + 2, 10**4 + 1), statements=1), 120.0, limit=LIMIT)
    assert by_id(report) == {"a": (2, 1.0, 0)}  # history never reported as one interval


def test_a_source_that_changes_kind_starts_a_new_baseline():
    tracker = TopQueryTracker(10)
    tracker.observe(read(stmt("ns find", 100, 5.0)), 0.0, limit=LIMIT)  # `top`: cumulative
    tracker.observe(read(stmt("ns find", 110, 6.0)), 60.0, limit=LIMIT)
    # the profiler was switched on: per-interval amounts, not comparable with top's totals
    assert tracker.observe(read(stmt("shape", 3, 0.3), cumulative=False, cursor="t1"), 120.0, limit=LIMIT) is None
    report = tracker.observe(read(stmt("shape", 2, 0.2), cumulative=False, cursor="t2"), 180.0, limit=LIMIT)
    assert by_id(report) == {"shape": (2, 0.2, 0)} and report.interval_start == 120.0
    # and back to top: a baseline again, no spike of top's totals
    assert tracker.observe(read(stmt("ns find", 200, 9.0)), 240.0, limit=LIMIT) is None
