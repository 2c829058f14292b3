"""Property tests of the KIP-848-style hand-off reconciliation (dbintel.coordinator.engine.handoff)."""

from __future__ import annotations

import random

from hypothesis import example, given, settings
from hypothesis import strategies as st

from dbintel.coordinator.engine.handoff import changed, holdings, pending

examples = settings(max_examples=100, deadline=None)

AGENTS = [f"agent-{i}" for i in range(5)]
RESOURCES = [f"db:redis/r{i}" for i in range(12)]

targets = st.dictionaries(st.sampled_from(RESOURCES), st.sampled_from(AGENTS))
currents = st.dictionaries(st.sampled_from(AGENTS), st.frozensets(st.sampled_from(RESOURCES)))


def pollers(current, rid):
    return {agent for agent, polled in current.items() if rid in polled}


@examples
@given(targets, currents)
def test_hold_sets_never_add_a_second_poller(target, current):
    hold = holdings(target, current)
    assert set(hold) == set(target.values()) | set(current)
    for rid in RESOURCES:
        holders = {agent for agent, held in hold.items() if rid in held}
        already = pollers(current, rid)
        assert len(holders | already) <= max(1, len(already))
        assert holders <= {target.get(rid)}  # only the target agent may be told to hold it


@examples
@given(targets, currents)
def test_revocations_take_effect_at_once(target, current):
    hold = holdings(target, current)
    for agent, polled in current.items():
        for rid in polled:
            if target.get(rid) != agent:
                assert rid not in hold[agent]
            else:
                assert rid in hold[agent]  # what it already polls for its target stays, with no gap


@examples
@given(targets, currents)
def test_grant_waits_exactly_until_every_other_holder_reported_the_resource_gone(target, current):
    hold = holdings(target, current)
    waiting = pending(target, current)
    for rid, agent in target.items():
        others = pollers(current, rid) - {agent}
        granted = rid in hold[agent]
        assert granted == (not others or rid in current.get(agent, frozenset()))
        assert (rid in waiting) == (not granted)
        if rid in waiting:
            assert waiting[rid] == agent


def test_move_between_live_agents_revokes_first_then_grants():
    target = {"db:postgresql/orders": "new"}
    step1 = holdings(target, {"old": frozenset({"db:postgresql/orders"}), "new": frozenset()})
    assert step1 == {"old": frozenset(), "new": frozenset()}
    assert pending(target, {"old": frozenset({"db:postgresql/orders"})}) == {"db:postgresql/orders": "new"}
    step2 = holdings(target, {"old": frozenset(), "new": frozenset()})  # old reported it gone
    assert step2 == {"old": frozenset(), "new": frozenset({"db:postgresql/orders"})}
    assert changed(step1, step2) == {"new"}


def test_an_expired_owner_counts_as_holding_nothing():
    target = {"db:mysql/users": "survivor"}
    assert holdings(target, {"survivor": frozenset()}) == {"survivor": frozenset({"db:mysql/users"})}
    assert pending(target, {"survivor": frozenset()}) == {}


@examples
@given(currents, currents)
def test_changed_lists_exactly_the_agents_whose_set_differs(before, after):
    empty = frozenset()
    diff = changed(before, after)
    for agent in set(before) | set(after) | set(AGENTS):
        assert (agent in diff) == (before.get(agent, empty) != after.get(agent, empty))


SIMULATED = RESOURCES[:4]  # few resources, so histories often move the same one repeatedly
STEPS = st.lists(
    st.tuples(
        st.sampled_from(["retarget", "reconcile", "apply", "leave", "join"]),
        st.integers(0, len(AGENTS) - 1),
        st.integers(0, 2**16),
    ),
    max_size=50,
)


# r0 goes agent-0 -> agent-1; agent-1 is told to hold it but has not applied that yet when r0 is
# retargeted to agent-2; agent-2 must not get it, or agent-1 applying its older message would
# make two pollers.
STALE_GRANT = [
    ("retarget", 1, 0),
    ("reconcile", 0, 0),
    ("apply", 0, 0),
    ("reconcile", 0, 0),
    ("retarget", 2, 0),
    ("reconcile", 0, 0),
    ("apply", 2, 0),
    ("apply", 1, 0),
]


@examples
@given(STEPS)
@example(STALE_GRANT)
def test_reconciliation_never_makes_two_pollers_and_converges_once_quiet(steps):
    """Agents apply hold messages at any later time, in order, maybe skipping to a newer one.

    The coordinator counts as current, per agent, what it acknowledged plus every message it sent
    since (the caller's contract in handoff.py); with that, no resource ever has two pollers.
    """
    live = set(AGENTS[:3])
    target = {rid: AGENTS[i % 3] for i, rid in enumerate(SIMULATED)}
    polling = {a: frozenset(r for r, owner in target.items() if owner == a) for a in live}  # a quiet start
    unacked: dict[str, list[frozenset[str]]] = {agent: [] for agent in live}  # sent, not yet applied

    def conservative_current():
        return {a: polling[a].union(*unacked[a]) for a in live}

    def reconcile():
        hold = holdings(target, conservative_current())
        for agent in live:
            latest = unacked[agent][-1] if unacked[agent] else polling[agent]
            if hold.get(agent, frozenset()) != latest:
                unacked[agent].append(hold.get(agent, frozenset()))

    for kind, pick, seed in steps:
        rng = random.Random(seed)
        members = sorted(live)
        agent = members[pick % len(members)]
        if kind == "retarget":
            target[SIMULATED[seed % len(SIMULATED)]] = agent
        elif kind == "reconcile":
            reconcile()
        elif kind == "apply" and unacked[agent]:
            index = seed % len(unacked[agent])  # a newer message may overtake older ones
            polling[agent] = unacked[agent][index]
            del unacked[agent][: index + 1]
        elif kind == "leave" and len(live) > 1:  # graceful: it stops polling, then is gone
            live.discard(agent)
            del polling[agent], unacked[agent]
            rest = sorted(live)
            for rid, owner in target.items():
                if owner == agent:
                    target[rid] = rng.choice(rest)
        elif kind == "join":
            newcomer = next((a for a in AGENTS if a not in live), None)
            if newcomer:
                live.add(newcomer)
                polling[newcomer], unacked[newcomer] = frozenset(), []
        for rid in SIMULATED:
            assert len({a for a in live if rid in polling[a]}) <= 1, (kind, rid, polling)

    for _ in range(3):  # quiet: every agent applies the newest message each round
        reconcile()
        for agent in live:
            if unacked[agent]:
                polling[agent] = unacked[agent][-1]
                unacked[agent].clear()
    for agent in live:
        assert polling[agent] == {rid for rid, owner in target.items() if owner == agent}
