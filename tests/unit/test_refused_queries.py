"""RefusedQueries, the report-once-and-retry bookkeeping the PostgreSQL, MySQL and MongoDB collectors share."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from dbintel.agent.collectors.metric_table import QueryError
from dbintel.agent.collectors.refusals import RefusedQueries

RETRY = 300.0


def denied(query: str, reason: str = "permission") -> QueryError:
    return QueryError(query, reason, f"{query}: permission denied")  # type: ignore[arg-type]


def test_a_refusal_is_news_once_then_held_until_its_retry() -> None:
    refused = RefusedQueries(RETRY)
    assert refused.allowed("fetch_table_stats", 1000.0)
    assert refused.refuse(denied("fetch_table_stats"), 1000.0) is True
    assert not refused.allowed("fetch_table_stats", 1000.0 + RETRY - 0.001)
    assert refused.allowed("fetch_table_stats", 1000.0 + RETRY)
    assert refused.allowed("fetch_server_stats", 1000.0)  # only the refused query waits
    assert refused.refuse(denied("fetch_table_stats"), 1000.0 + RETRY) is False  # still refused: quiet
    assert not refused.allowed("fetch_table_stats", 1000.0 + 2 * RETRY - 0.001)
    assert refused.held() == {"fetch_table_stats"}


def test_success_releases_and_a_later_refusal_is_news_again() -> None:
    refused = RefusedQueries(RETRY)
    refused.refuse(denied("q"), 0.0)
    refused.succeeded("q")
    assert refused.allowed("q", 0.0) and refused.held() == frozenset()
    assert refused.refuse(denied("q"), 1.0) is True


def test_reported_once_per_query_across_targets_and_again_only_after_working_everywhere() -> None:
    refused = RefusedQueries(RETRY)
    assert refused.refuse(denied("dbStats"), 0.0, "shop") is True
    assert refused.refuse(denied("dbStats"), 0.0, "crm") is False
    assert not refused.allowed("dbStats", 1.0, "shop") and refused.allowed("dbStats", 1.0, "admin")
    refused.succeeded("dbStats", "shop")
    assert refused.refuse(denied("dbStats"), 2.0, "shop") is False  # still refused on crm: not news
    refused.succeeded("dbStats", "shop")
    refused.succeeded("dbStats", "crm")
    assert refused.refuse(denied("dbStats"), 3.0, "crm") is True


def test_retry_due_by_reason() -> None:
    refused = RefusedQueries(RETRY)
    refused.refuse(denied("perf", "unsupported"), 0.0)
    refused.refuse(denied("innodb", "permission"), 100.0)
    assert not refused.retry_due(RETRY + 99, "permission")
    assert refused.retry_due(RETRY, "unsupported")
    assert refused.retry_due(RETRY + 100, "permission")


def test_only_permission_and_unsupported_are_held() -> None:
    assert {
        reason
        for reason in ("timeout", "connection", "permission", "unsupported", "server_error", "bad_reply")
        if RefusedQueries.holds(QueryError("q", reason, ""))
    } == {"permission", "unsupported"}  # type: ignore


events = st.lists(
    st.tuples(
        st.sampled_from(["refuse", "succeed"]),
        st.sampled_from(["a", "b"]),
        st.sampled_from([None, "x", "y"]),
        st.floats(0, 2 * RETRY),
    ),
    max_size=40,
)


@given(events)
def test_news_and_holds_follow_the_history(history) -> None:
    """Whatever happens: a query's refusal is news exactly when none of its targets was held just before,
    and a (query, target) is held back exactly for RETRY seconds after its last refusal unless it worked since."""
    refused = RefusedQueries(RETRY)
    now = 0.0
    last_refusal: dict[tuple[str, object], float] = {}  # (query, target) -> time, while not worked since
    for action, query, target, step in history:
        now += step
        if action == "refuse":
            news = refused.refuse(denied(query), now, target)
            assert news == (not any(q == query for q, _ in last_refusal))
            last_refusal[(query, target)] = now
        else:
            refused.succeeded(query, target)
            last_refusal.pop((query, target), None)
        for q in ("a", "b"):
            for t in (None, "x", "y"):
                at = last_refusal.get((q, t))
                for probe in (now, now + RETRY / 2, now + RETRY):
                    assert refused.allowed(q, probe, t) == (at is None or probe >= at + RETRY)
        assert refused.held() == {q for q, _ in last_refusal}
