"""The e2e ownership checker's analysis (tests/e2e/ownership.py), on made-up scrapes: no I/O."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from tests.e2e.ownership import (
    Observation,
    Poll,
    analyse,
    parse_poll_counters,
    polls_from_observations,
)

INTERVAL = 1.0
RID = "db:redis/a"


def scrape_history(polls_by_agent: dict[str, list[float]], revoked_at: dict[str, float], scrape_times: list[float]):
    """What a sampler would have seen: at each scrape time, every agent that has polled and still holds
    the database shows its count and last poll; every agent is scraped every round."""
    observations, scrapes = [], {agent: [] for agent in polls_by_agent}
    for at in scrape_times:
        for agent, polls in polls_by_agent.items():
            scrapes[agent].append(at)
            done = [p for p in polls if p <= at]
            if done and at < revoked_at.get(agent, float("inf")):
                observations.append(Observation(at, agent, RID, len(done), done[-1]))
    return observations, scrapes


@st.composite
def handoff_histories(draw):
    """One database handed from owner to owner with clean hand-offs (the next owner's first poll one
    interval after the previous owner's last), each revocation somewhere within the interval after
    the owner's last poll, scraped at irregular times less than half an interval apart."""
    tenures = draw(st.lists(st.integers(2, 6), min_size=1, max_size=5))  # each on show a whole interval: a
    # tenure no scrape ever saw is beyond any sampler
    polls_by_agent: dict[str, list[float]] = {}
    revoked_at: dict[str, float] = {}
    slot = 100.0
    for index, length in enumerate(tenures):
        agent = f"agent-{index}"
        polls_by_agent[agent] = [slot + k * INTERVAL for k in range(length)]
        slot += length * INTERVAL
        if index < len(tenures) - 1:
            revoked_at[agent] = polls_by_agent[agent][-1] + draw(st.floats(0.01, 0.99)) * INTERVAL
    scrape_times, at = [], 99.5
    end = slot + 0.5
    while at < end:
        at += draw(st.floats(0.05, 0.45))
        scrape_times.append(at)
    truth = sorted((p, agent) for agent, polls in polls_by_agent.items() for p in polls if p <= scrape_times[-1])
    return polls_by_agent, revoked_at, scrape_times, truth


@settings(max_examples=300, deadline=None)
@given(handoff_histories())
def test_clean_handoffs_are_reconstructed_exactly_with_no_gap_and_no_duplicate(history):
    polls_by_agent, revoked_at, scrape_times, truth = history
    observations, scrapes = scrape_history(polls_by_agent, revoked_at, scrape_times)
    polls = polls_from_observations(observations, {RID: INTERVAL}, scrapes)
    rebuilt = [(p.at, p.agent) for p in polls.get(RID, [])]
    # The last poll may be beyond the last scrape's reach (not seen yet); everything before it is exact.
    assert rebuilt == truth or rebuilt == truth[:-1]
    report = analyse(polls, {RID: INTERVAL}, [RID], 0.0, scrape_times[-1])
    assert not report.duplicates
    assert all(abs(gap.length - INTERVAL) < 1e-9 for gap in report.gaps if gap.to_agent)


@settings(max_examples=200, deadline=None)
@given(phase=st.floats(0.0, 0.999), overlap=st.integers(1, 4))
def test_two_agents_polling_one_database_are_always_reported(phase, overlap):
    """Whatever their phases, two agents polling the same database at the same interval make a
    pair of polls at most half an interval apart."""
    a = [100.0 + k for k in range(6)]
    b = [100.0 + phase + k for k in range(overlap)]
    scrape_times = [99.0 + 0.2 * k for k in range(45)]
    observations, scrapes = scrape_history({"a": a, "b": b}, {}, scrape_times)
    polls = polls_from_observations(observations, {RID: INTERVAL}, scrapes)
    report = analyse(polls, {RID: INTERVAL}, [RID], 99.0, scrape_times[-1])
    assert report.duplicates
    assert {report.duplicates[0].first.agent, report.duplicates[0].second.agent} == {"a", "b"}


def test_a_missed_slot_is_a_gap_of_two_intervals():
    polls = [100.0, 101.0, 103.0, 104.0]
    observations, scrapes = scrape_history({"a": polls}, {}, [99.9 + 0.25 * k for k in range(18)])
    report = analyse(
        polls_from_observations(observations, {RID: INTERVAL}, scrapes), {RID: INTERVAL}, [RID], 99.0, 104.2
    )
    assert report.max_gap() == 2.0
    assert [(g.start, g.end) for g in report.longest(1)] == [(101.0, 103.0)]


def test_a_late_sample_infers_the_polls_its_counter_skipped():
    observations = [Observation(100.1, "a", RID, 1, 100.0), Observation(103.1, "a", RID, 4, 103.0)]
    polls = polls_from_observations(observations, {RID: INTERVAL})
    assert [(p.at, p.inferred) for p in polls[RID]] == [(100.0, False), (101.0, True), (102.0, True), (103.0, False)]


def test_a_retaken_database_counts_from_its_new_tenure():
    observations = [
        Observation(100.1, "a", RID, 5, 100.0),
        Observation(100.35, "a", RID, 5, 100.0),
        Observation(105.1, "a", RID, 2, 105.0),
    ]  # revoked, then granted again: counter restarted
    polls = polls_from_observations(observations, {RID: INTERVAL})
    assert [(p.at, p.inferred) for p in polls[RID]] == [(100.0, False), (104.0, True), (105.0, False)]


def test_an_unseen_final_poll_is_inferred_only_when_no_successor_took_that_slot():
    # "a" was last seen at 100.9 with its poll of 100.0; at the next scrape (101.2) its series was gone.
    # Its slot at 101.0 fell in between: it polled then, unless the next owner polled at that slot.
    observations = [Observation(100.9, "a", RID, 1, 100.0), Observation(102.1, "b", RID, 1, 102.0)]
    scrapes = {"a": [100.9, 101.2, 102.1], "b": [100.9, 101.2, 102.1]}
    polls = polls_from_observations(observations, {RID: INTERVAL}, scrapes)
    assert Poll(101.0, "a", inferred=True) in polls[RID]
    observations = [Observation(100.9, "a", RID, 1, 100.0), Observation(101.1, "b", RID, 1, 101.0)]
    polls = polls_from_observations(observations, {RID: INTERVAL}, scrapes)
    assert [p.agent for p in polls[RID]] == ["a", "b"]  # the grant carried 100.0: b's 101.0 is that slot


def test_a_stalled_sampler_infers_every_slot_the_agent_held_the_database_through():
    # Seen at 100.9 (last poll 100.0), then no scrape until 103.5, when "a" was gone; "b" took over
    # with the schedule's next slot at 104.0. Slots 101 to 103 are a's; 104 is b's.
    observations = [Observation(100.9, "a", RID, 1, 100.0), Observation(104.1, "b", RID, 1, 104.0)]
    scrapes = {"a": [100.9, 103.5], "b": [100.9, 103.5, 104.1]}
    polls = polls_from_observations(observations, {RID: INTERVAL}, scrapes)
    assert [(p.at, p.agent) for p in polls[RID]] == [
        (100.0, "a"),
        (101.0, "a"),
        (102.0, "a"),
        (103.0, "a"),
        (104.0, "b"),
    ]
    assert analyse(polls, {RID: INTERVAL}, [RID], 99.0, 104.5).max_gap() == 1.0


def test_a_poll_in_flight_at_the_last_sighting_is_inferred():
    # At 101.2 the poll of 101.0 was still running (last poll shown: 100.0); at 101.7 the series was
    # gone; the grant carried 101.0, so b polls at 102.0.
    observations = [Observation(101.2, "a", RID, 1, 100.0), Observation(102.1, "b", RID, 1, 102.0)]
    scrapes = {"a": [101.2, 101.7], "b": [101.2, 101.7, 102.1]}
    polls = polls_from_observations(observations, {RID: INTERVAL}, scrapes)
    assert [(p.at, p.agent) for p in polls[RID]] == [(100.0, "a"), (101.0, "a"), (102.0, "b")]


def test_orphans_and_trailing_silence():
    polls = {RID: [Poll(100.0, "a"), Poll(101.0, "a")], "db:redis/b": [Poll(100.0, "b"), Poll(104.0, "b")]}
    report = analyse(polls, {}, [RID, "db:redis/b", "db:redis/never"], 99.0, 104.5)
    assert report.orphans == {RID, "db:redis/never"}
    assert max(g.length for g in report.gaps if g.resource == RID) == 3.5  # from its last poll to the end
    assert report.pollers("db:redis/b", 103.0, 105.0) == {"b"}


def test_parse_poll_counters_reads_only_the_two_bookkeeping_series():
    text = (
        "# HELP dbintel_agent_polls_total Polls of the database since this agent took it.\n"
        "# TYPE dbintel_agent_polls_total counter\n"
        'dbintel_agent_polls_total{dbintel_resource="db:redis/a"} 12.0\n'
        'dbintel_agent_polls_total{dbintel_resource="db:postgresql/b"} 1.0\n'
        'dbintel_agent_last_poll_timestamp_seconds{dbintel_resource="db:redis/a"} 1.7e+09\n'
        'dbintel_database_up{dbintel_resource="db:redis/a",type="redis"} 1.0\n'
        'redis_commands_processed_total{dbintel_resource="db:redis/a"} 99.0\n'
    )
    assert parse_poll_counters(text) == {"db:redis/a": (12, 1.7e9), "db:postgresql/b": (1, None)}
