"""How the agent names and picks coordinator replicas (dbintel.agent.replicas). Pure parts only."""

from __future__ import annotations

import random

from hypothesis import given
from hypothesis import strategies as st

from dbintel.agent.replicas import Replica, choose, listed_replicas, name_to_resolve
from dbintel.common.endpoints import HostPort


def test_address_lists_and_names_are_told_apart():
    assert listed_replicas("ipv4:10.0.0.1:50051,10.0.0.2:50051") == [
        Replica("10.0.0.1:50051"),
        Replica("10.0.0.2:50051"),
    ]
    assert listed_replicas("ipv6:[::1]:50051") == [Replica("[::1]:50051")]
    assert listed_replicas("coordinator:50051") is None
    assert name_to_resolve("coordinator.dbintel.svc:50051") == HostPort("coordinator.dbintel.svc", 50051)
    assert name_to_resolve("dns:///coordinator:50051") == HostPort("coordinator", 50051)
    assert name_to_resolve("dns://8.8.8.8/coordinator:50051") == HostPort("coordinator", 50051)
    assert name_to_resolve("[::1]:50051") == HostPort("::1", 50051)
    assert name_to_resolve("unix:/run/dbintel.sock") is None
    assert name_to_resolve("coordinator") is None  # no port: dialled as given, gRPC says what is wrong


replica_sets = st.lists(st.sampled_from([f"10.0.0.{i}:50051" for i in range(5)]), min_size=1, max_size=5, unique=True)


@given(replica_sets, st.integers(0, 4), st.randoms())
def test_a_switch_never_returns_to_the_replica_left_when_there_is_another(addresses, avoid_index, rng):
    replicas = [Replica(a) for a in addresses]
    avoid = replicas[avoid_index % len(replicas)]
    picked = choose(replicas, avoid, rng)
    assert picked in replicas
    assert picked != avoid or len(replicas) == 1


def test_first_picks_spread_over_every_replica():
    replicas = [Replica(f"10.0.0.{i}:50051") for i in range(3)]
    rng = random.Random(7)
    picked = {choose(replicas, None, rng) for _ in range(60)}
    assert picked == set(replicas)
