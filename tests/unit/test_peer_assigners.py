"""Correctness of the peers' placement algorithms that bench/bench_assignment_quality.py compares with
the engine (bench/peers/assigners.py): a wrong peer would make the comparison meaningless."""

from __future__ import annotations

import math
from collections import Counter

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bench.peers.assigners import ConsistentHashingBoundedLoads, loads_of, rendezvous_owners, xxh64

examples = settings(max_examples=60, deadline=None)
NAMES = st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789-", min_size=1, max_size=12)
MEMBERS = st.lists(NAMES, min_size=1, max_size=25, unique=True)
KEYS = st.lists(NAMES.map(lambda s: f"db:redis/{s}"), min_size=0, max_size=120, unique=True)


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        (b"", 0xEF46DB3751D8E999),
        (b"a", 0xD24EC4F1A98C6E5B),
        (b"abc", 0x44BC2CF5AD770999),
        (b"Nobody inspects the spammish repetition", 0xFBCEA83C8A378BF1),  # > 32 bytes: the stripe loop
    ],
)
def test_xxh64_matches_the_reference_vectors(data, expected):
    assert xxh64(data) == expected


@examples
@given(members=MEMBERS, keys=KEYS, partitions=st.sampled_from([61, 1061]))
def test_ring_assigns_every_key_once_to_a_member(members, keys, partitions):
    ring = ConsistentHashingBoundedLoads(members, partition_count=partitions)
    owners = ring.owners(keys)
    assert set(owners) == set(keys)
    assert set(owners.values()) <= set(members)
    assert len(ring.partition_owner) == partitions


@examples
@given(members=MEMBERS, partitions=st.sampled_from([61, 1061]), load=st.sampled_from([1.05, 1.1, 1.25, 2.0]))
def test_ring_partitions_respect_the_load_bound(members, partitions, load):
    ring = ConsistentHashingBoundedLoads(members, partition_count=partitions, load=load)
    bound = math.ceil((partitions // len(members)) * load)  # the library divides as integers
    counts = Counter(ring.partition_owner)
    assert sum(counts.values()) == partitions
    assert max(counts.values()) <= bound
    assert dict(counts) == {m: c for m, c in ring.partition_loads.items() if c}


@examples
@given(members=MEMBERS, keys=KEYS, data=st.data())
def test_ring_is_deterministic_whatever_the_member_order(members, keys, data):
    shuffled = data.draw(st.permutations(members))
    assert ConsistentHashingBoundedLoads(members).owners(keys) == ConsistentHashingBoundedLoads(shuffled).owners(keys)


def test_ring_bound_leaves_members_without_partitions_when_they_outnumber_the_partitions_share():
    # 1061 partitions on 1000 members: the bound is ceil(1.061 * 1.1) = 2, so some members own none.
    ring = ConsistentHashingBoundedLoads([f"agent-{i:04d}" for i in range(1000)])
    assert ring.average_load() == 2
    assert 0 < sum(1 for c in ring.partition_loads.values() if c == 0) < 1000


def test_ring_refuses_more_members_than_partitions_as_the_library_panics():
    with pytest.raises(RuntimeError, match="not enough room"):
        ConsistentHashingBoundedLoads([f"m{i}" for i in range(8)], partition_count=7)


def test_key_goes_to_its_partitions_owner():
    ring = ConsistentHashingBoundedLoads(["a", "b", "c"])
    key = "db:postgresql/orders"
    assert ring.partition_of(key) == xxh64(key.encode()) % 1061
    assert ring.locate(key) == ring.partition_owner[ring.partition_of(key)]


@examples
@given(agents=MEMBERS, keys=KEYS, data=st.data())
def test_rendezvous_assigns_every_key_once_deterministically(agents, keys, data):
    owners = rendezvous_owners(keys, agents, chunk=7)
    assert set(owners) == set(keys) and set(owners.values()) <= set(agents)
    assert rendezvous_owners(keys, data.draw(st.permutations(agents))) == owners


@examples
@given(agents=st.lists(NAMES, min_size=2, max_size=25, unique=True), keys=KEYS, data=st.data())
def test_rendezvous_moves_only_what_the_membership_change_forces(agents, keys, data):
    leaver = data.draw(st.sampled_from(agents))
    before = rendezvous_owners(keys, agents)
    after = rendezvous_owners(keys, [a for a in agents if a != leaver])
    assert {k for k in keys if before[k] != after[k]} == {k for k in keys if before[k] == leaver}
    rejoined = rendezvous_owners(keys, agents)  # the leaver back: keys move only to it
    assert all(rejoined[k] == leaver for k in keys if rejoined[k] != after[k])


def test_loads_of_sums_costs_and_lists_idle_agents():
    loads = loads_of({"x": "a", "y": "a", "z": "b"}, {"x": 1.5, "y": 2.0, "z": 0.25}, ["a", "b", "c"])
    assert loads == {"a": 3.5, "b": 0.25, "c": 0.0}
