"""One contract, two stores: the in-memory store and a real Redis must behave the same."""

from __future__ import annotations

import asyncio
import dataclasses
import uuid

import pytest

from dbintel.common.config import RedisSettings, SentinelSettings
from dbintel.coordinator.model import (
    QUERY_BASELINE_TTL_MS,
    AgentAlreadyLeft,
    AgentIdConflict,
    FencedError,
    HeartbeatReport,
    PlacementWrite,
    PollStatus,
    QueryBaseline,
    Registration,
    SessionMismatch,
    StaleRead,
    session_digest,
)
from dbintel.coordinator.store.base import StoreEvent
from dbintel.coordinator.store.memory_store import MemoryScalingStore
from dbintel.coordinator.store.redis_store import RedisScalingStore, tagged_prefix
from tests.coordinator_harness import wait_for


def redis_settings(request, monkeypatch, topology: str, prefix: str) -> RedisSettings:
    """Settings for a store on `topology` (one Redis, a Sentinel set, a three-primary cluster)."""
    if topology == "sentinel":
        return request.getfixturevalue("sentinel_set").settings(monkeypatch, prefix)
    server = request.getfixturevalue("redis_cluster" if topology == "cluster" else "redis_server")
    monkeypatch.setenv("TEST_STORE_REDIS_PW", server.password)
    return RedisSettings(
        address=server.address, password="${env:TEST_STORE_REDIS_PW}", key_prefix=prefix, cluster=topology == "cluster"
    )


@pytest.fixture(params=["memory", "redis", "sentinel", "cluster"])
async def store(request, monkeypatch):
    if request.param == "memory":
        s = MemoryScalingStore()
    else:
        s = RedisScalingStore(redis_settings(request, monkeypatch, request.param, f"contract:{uuid.uuid4().hex[:8]}:"))
    await s.start()
    yield s
    await s.close()


SESSION = session_digest("s3cret")


def report(
    agent="a1", pod="pod-1", instance="i1", applied=0, current=None, capacity=0, session=SESSION, proven=True, seq=0
):
    return HeartbeatReport(
        agent_id=agent,
        registration=Registration(pod_name=pod, instance_id=instance, capacity=capacity, session=session),
        applied_epoch=applied,
        current=current or {},
        proven=proven,
        sequence=seq,
    )


async def test_lease_is_exclusive_and_epochs_increase(store):
    first = await store.try_acquire_leadership("c1", 5000, "10.0.0.1:50051")
    assert first is not None and first.epoch >= 1
    assert await store.try_acquire_leadership("c2", 5000) is None
    leader = await store.read_leader()
    assert (leader.holder, leader.epoch, leader.address) == ("c1", first.epoch, "10.0.0.1:50051")
    assert await store.renew_leadership(first, 5000)
    await store.release_leadership(first)
    assert await store.read_leader() is None
    assert not await store.renew_leadership(first, 5000)
    second = await store.try_acquire_leadership("c2", 5000, min_epoch=first.epoch + 10)
    assert second.epoch == first.epoch + 11  # never below an epoch a replica has seen


async def test_lease_expires_after_ttl(store):
    lease = await store.try_acquire_leadership("c1", 200)
    await asyncio.sleep(0.35)
    assert await store.read_leader() is None
    assert not await store.renew_leadership(lease, 200)
    assert await store.try_acquire_leadership("c2", 1000) is not None


async def test_fenced_write_refused_after_lease_loss(store):
    lease = await store.try_acquire_leadership("c1", 200)
    await asyncio.sleep(0.35)
    successor = await store.try_acquire_leadership("c2", 5000)
    await store.write_placement(successor, PlacementWrite(target_set={"db:x": "a2"}, assignments={"a2": {"db:x": 0}}))
    with pytest.raises(FencedError):
        await store.write_placement(lease, PlacementWrite(target_set={"db:x": "a1"}, assignments={"a1": {"db:x": 0}}))
    assert await store.read_target() == {"db:x": "a2"}
    assert set(await store.read_assignments()) == {"a2"}


async def test_heartbeat_registers_and_reports_changes(store):
    first = await store.record_heartbeat(report(current={"db:x": PollStatus(1000, 2.5, 3, 1, True)}), 90_000)
    assert first.changed and first.rejoined
    same = await store.record_heartbeat(report(current={"db:x": PollStatus(2000, 2.0, 4, 1, True)}), 90_000)
    assert not same.changed and not same.rejoined  # only poll stats moved
    acked = await store.record_heartbeat(report(applied=7, current={}), 90_000)
    assert acked.changed
    agents = await store.read_agents()
    record = agents["a1"]
    assert record.state == "active" and record.applied_epoch == 7 and record.current == {}
    assert record.registration.pod_name == "pod-1"
    assert abs(record.last_heartbeat_ms - await store.now_ms()) < 5_000


async def test_agent_id_of_live_pod_is_refused_but_same_pod_restart_is_not(store):
    await store.record_heartbeat(report(pod="pod-1", instance="i1"), 90_000)
    with pytest.raises(AgentIdConflict) as info:
        await store.record_heartbeat(report(pod="pod-2", instance="i2"), 90_000)
    assert "pod-1" in str(info.value)
    # A restarted container in the same pod takes its id back at once.
    outcome = await store.record_heartbeat(report(pod="pod-1", instance="i3"), 90_000)
    assert outcome.changed
    # Once the old holder is silent past node_timeout, another pod may take the id.
    await asyncio.sleep(0.05)
    await store.record_heartbeat(report(pod="pod-2", instance="i2"), 10)


async def test_leave_drain_and_rejoin(store):
    await store.record_heartbeat(report(current={"db:x": PollStatus(), "db:y": PollStatus()}), 90_000)
    assert await store.set_draining("a1", True)
    assert (await store.read_agents())["a1"].state == "draining"
    with pytest.raises(SessionMismatch):  # a Leave without this registration's secret changes nothing
        await store.record_leave("a1", session_digest("guess"), {})
    assert (await store.read_agents())["a1"].state == "draining"
    assert await store.record_leave("nobody", SESSION, {}) is None
    assert await store.record_leave("a1", SESSION, {"db:x": 1234, "db:z": 99}) == 2
    left = await store.read_agent("a1")
    assert left is not None and left.state == "left"
    assert left.released == {"db:x": 1234, "db:z": 99}  # the final poll times, even if Leave came first
    assert not await store.set_draining("a1", True)  # not a member any more
    with pytest.raises(AgentAlreadyLeft):  # a late heartbeat of the process that left does not revive it
        await store.record_heartbeat(report(), 90_000)
    assert (await store.read_agents())["a1"].state == "left"
    outcome = await store.record_heartbeat(report(instance="restarted"), 90_000)
    assert outcome.rejoined and (await store.read_agents())["a1"].state == "active"


async def test_a_registration_is_bound_to_its_session_and_stays_proven(store):
    first = await store.record_heartbeat(report(proven=False), 90_000)
    assert first.rejoined and not (await store.read_agent("a1")).proven
    with pytest.raises(SessionMismatch):  # the same instance under another secret is an impostor
        await store.record_heartbeat(report(session=session_digest("other")), 90_000)
    assert (await store.read_agent("a1")).registration.session == SESSION
    proving = await store.record_heartbeat(report(), 90_000)
    assert proving.changed  # becoming eligible is a membership change: the leader looks
    again = await store.record_heartbeat(report(proven=False), 90_000)  # a new stream's first heartbeat
    assert not again.changed and (await store.read_agent("a1")).proven
    assert await store.read_agent("nobody") is None


async def test_the_unacknowledged_flag_is_shared_through_the_meta(store):
    lease = await store.try_acquire_leadership("c1", 5000)
    await store.write_placement(lease, PlacementWrite(unacknowledged=("a2", "a1")))
    assert (await store.read_meta()).unacknowledged == ("a1", "a2")
    await store.write_placement(lease, PlacementWrite(moves=0))  # None: unchanged
    assert (await store.read_meta()).unacknowledged == ("a1", "a2")
    await store.write_placement(lease, PlacementWrite(unacknowledged=()))
    assert (await store.read_meta()).unacknowledged == ()


async def test_placement_write_is_atomic_and_epochs_monotonic(store):
    lease = await store.try_acquire_leadership("c1", 5000)
    await store.record_heartbeat(report("a1"), 90_000)
    await store.record_heartbeat(report("a2", pod="pod-2", instance="i2"), 90_000)
    epochs = await store.write_placement(
        lease,
        PlacementWrite(
            target_set={"db:x": "a1", "db:y": "a2"},
            assignments={"a1": {"db:x": 1234}, "a2": {"db:y": 0}},
            rebalance_reason="agent_joined",
            moves=2,
        ),
    )
    assert set(epochs) == {"a1", "a2"} and epochs["a1"] != epochs["a2"]
    again = await store.write_placement(
        lease,
        PlacementWrite(
            target_delete=("db:y",), assignments={"a2": {}}, expire=("a2",), rebalance_reason="agent_expired", moves=0
        ),
    )
    assert again["a2"] > max(epochs.values())
    assert await store.read_target() == {"db:x": "a1"}
    assignments = await store.read_assignments()
    assert assignments["a1"].grants == {"db:x": 1234} and assignments["a1"].leader_epoch == lease.epoch
    assert assignments["a2"].grants == {}
    assert (await store.read_assignments(["a2", "nobody"])).keys() == {"a2"}
    assert (await store.read_agents())["a2"].state == "expired"
    meta = await store.read_meta()
    assert meta.rebalances_total == 2 and meta.moves_total == 2 and meta.last_rebalance_reason == "agent_expired"
    assert meta.assignment_epoch == again["a2"]


async def test_a_disconnect_marks_a_member_suspect_unless_it_was_heard_from_since(store):
    await store.record_heartbeat(report(seq=5), 10_000)
    assert (await store.read_agent("a1")).sequence == 5
    # A late heartbeat of an older stream does not move the sequence back.
    await store.record_heartbeat(report(seq=3), 10_000)
    assert (await store.read_agent("a1")).sequence == 5
    # The stream that recorded 4 ended: a newer heartbeat (5) came through another, so no mark.
    assert not await store.record_disconnect("a1", "i1", 4)
    assert not await store.record_disconnect("a1", "another-instance", 5)
    assert not await store.record_disconnect("nobody", "i1", 5)
    assert await store.record_disconnect("a1", "i1", 5)
    first = (await store.read_agent("a1")).disconnected_ms
    assert first > 0 and (await store.read_agent("a1")).suspect
    assert not await store.record_disconnect("a1", "i1", 5)  # the first mark stays
    assert (await store.read_agent("a1")).disconnected_ms == first
    await store.record_heartbeat(report(seq=6), 10_000)  # it reconnected: cleared
    assert (await store.read_agent("a1")).disconnected_ms == 0
    # A new instance starts its sequence afresh; an agent that left is not marked.
    await store.record_heartbeat(report(instance="i2", seq=1), 10_000)
    assert (await store.read_agent("a1")).sequence == 1
    await store.record_leave("a1", SESSION, {})
    assert not await store.record_disconnect("a1", "i2", 1)


async def test_an_expiry_decided_on_a_stale_read_writes_nothing(store):
    lease = await store.try_acquire_leadership("c1", 5000)
    await store.record_heartbeat(report(seq=1), 10_000)
    heard = (await store.read_agent("a1")).last_heartbeat_ms
    seq = 2
    while (await store.read_agent("a1")).last_heartbeat_ms == heard:  # heard from after the leader's read
        await store.record_heartbeat(report(seq=seq), 10_000)
        seq += 1
    stale = PlacementWrite(
        target_set={"db:redis/x": "a2"}, expire=("a1",), expire_heard_ms={"a1": heard}, assignments={"a2": {}}
    )
    with pytest.raises(StaleRead):
        await store.write_placement(lease, stale)
    assert (await store.read_agent("a1")).state == "active"
    assert await store.read_target() == {} and await store.read_assignments() == {}
    fresh = dataclasses.replace(stale, expire_heard_ms={"a1": (await store.read_agent("a1")).last_heartbeat_ms})
    await store.write_placement(lease, fresh)
    assert (await store.read_agent("a1")).state == "expired"
    assert await store.read_target() == {"db:redis/x": "a2"}


async def test_mark_recovered_sets_grace(store):
    before = await store.now_ms()
    await store.mark_recovered()
    assert (await store.read_meta()).grace_from_ms >= before


async def test_events_reach_subscribers(store):
    subscription = store.subscribe()
    try:
        await asyncio.sleep(0.2)  # let the Redis listener subscribe
        await store.publish(StoreEvent("assignments", ("a1", "a2")))
        async with asyncio.timeout(5):
            while True:
                event = await subscription.queue.get()
                if event.kind == "assignments":
                    break
        assert event.agents == ("a1", "a2")
    finally:
        subscription.close()


BLOB = bytes(range(256)) * 3  # a baseline is compressed binary: NULs, invalid UTF-8


def released(baselines, **times):
    return dataclasses.replace(
        report(), released={rid: PollStatus(ms) for rid, ms in times.items()}, baselines=baselines
    )


async def test_a_release_stores_its_query_baseline_at_its_poll_time_apart_from_the_agent(store):
    await store.record_heartbeat(report(current={"db:x": PollStatus(1000), "db:y": PollStatus(1000)}), 90_000)
    await store.record_heartbeat(
        dataclasses.replace(released({"db:x": BLOB}), released={"db:x": PollStatus(1234), "db:y": PollStatus(1240)}),
        90_000,
    )
    assert await store.read_query_baselines(["db:x", "db:y", "db:z"]) == {"db:x": QueryBaseline(1234, BLOB)}
    assert (await store.read_agent("a1")).released == {"db:x": 1234, "db:y": 1240}  # the record as before
    # A Leave stores its own at its final poll times; a newer release replaces an older one.
    assert await store.record_leave("a1", SESSION, {"db:y": 1300}, {"db:y": b"\x00y"}) == 0
    assert await store.read_query_baselines(["db:x", "db:y"]) == {
        "db:x": QueryBaseline(1234, BLOB),
        "db:y": QueryBaseline(1300, b"\x00y"),
    }
    assert await store.read_query_baselines([]) == {}
    if isinstance(store, RedisScalingStore):
        key = store._baseline_prefix + "db:x"
        assert key.startswith(tagged_prefix(store._settings.key_prefix))  # in P's slot (Redis Cluster)
        assert 0 < await store._client.pttl(key) <= QUERY_BASELINE_TTL_MS
        assert len(await store._client.hget(store._keys["agents"], "a1")) < len(BLOB)  # not in the record
        if not store._cluster and not store._sentinel:  # one server: count the reads it served

            async def mgets() -> int:
                return int((await store._client.info("commandstats")).get("cmdstat_mget", {}).get("calls", 0))

            before = await mgets()
            await store.read_query_baselines(["db:x", "db:y", "db:z"])
            assert await mgets() == before + 1  # one batched read


async def test_a_refused_release_stores_no_baseline(store):
    await store.record_heartbeat(report(), 90_000)
    with pytest.raises(SessionMismatch):
        await store.record_heartbeat(
            dataclasses.replace(released({"db:x": BLOB}, **{"db:x": 5}), registration=Registration(instance_id="i1")),
            90_000,
        )
    with pytest.raises(SessionMismatch):
        await store.record_leave("a1", session_digest("guess"), {"db:y": 5}, {"db:y": BLOB})
    assert await store.record_leave("nobody", SESSION, {"db:z": 5}, {"db:z": BLOB}) is None
    assert await store.read_query_baselines(["db:x", "db:y", "db:z"]) == {}


@pytest.fixture(params=["memory", "redis"])
async def short_lived_baselines(request, monkeypatch):
    if request.param == "memory":
        s = MemoryScalingStore(query_baseline_ttl_ms=300)
    else:
        settings = redis_settings(request, monkeypatch, "redis", f"contract:{uuid.uuid4().hex[:8]}:")
        s = RedisScalingStore(settings, query_baseline_ttl_ms=300)
    yield s
    await s.close()


async def test_stored_baselines_expire_after_their_ttl(short_lived_baselines):
    store = short_lived_baselines
    await store.record_heartbeat(released({"db:x": BLOB}, **{"db:x": 1234}), 90_000)
    assert await store.read_query_baselines(["db:x"]) == {"db:x": QueryBaseline(1234, BLOB)}
    await wait_for(lambda: _absent(store, "db:x"), timeout=5, message="the baseline to expire")
    assert (await store.read_agent("a1")).released == {"db:x": 1234}  # the release itself stays


async def _absent(store, rid: str) -> bool:
    return await store.read_query_baselines([rid]) == {}


def test_redis_store_tls_settings_reach_the_connection_pool(tmp_path):
    from redis.asyncio.connection import SSLConnection

    from dbintel.common.config import TLSSettings

    ca = tmp_path / "ca.pem"
    ca.write_text("")
    store = RedisScalingStore(
        RedisSettings(address="redis.example:6380", tls=TLSSettings(enabled=True, ca_file=str(ca)))
    )
    pool = store._client.connection_pool
    assert pool.connection_class is SSLConnection
    assert pool.connection_kwargs["ssl_ca_certs"] == str(ca) and pool.connection_kwargs["ssl_cert_reqs"] == 2
    assert pool.max_connections == 32


def test_sentinel_store_uses_a_blocking_pool_that_asks_the_sentinels():
    from redis.asyncio.connection import BlockingConnectionPool
    from redis.asyncio.sentinel import SentinelConnectionPool

    store = RedisScalingStore(
        RedisSettings(sentinel=SentinelSettings(master_name="dbintel", addresses=["s0:26379", "s1:26379"]))
    )
    pool = store._client.connection_pool
    assert isinstance(pool, SentinelConnectionPool) and isinstance(pool, BlockingConnectionPool)
    assert pool.service_name == "dbintel" and pool.max_connections == 32
    assert [s.connection_pool.connection_kwargs["host"] for s in pool.sentinel_manager.sentinels] == ["s0", "s1"]
