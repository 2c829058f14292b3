"""The fenced lease under replication (issue 13): a Sentinel failover, a write the old primary
acknowledged and lost, Redis Cluster, and the key names before the hash tag. Real servers throughout
(tests/redis_topologies.py)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
import uuid

import pytest
import redis.asyncio as aioredis

from dbintel.common.config import RedisSettings
from dbintel.coordinator.model import HeartbeatReport, PlacementWrite, Registration, StoreUnavailable
from dbintel.coordinator.store.redis_store import RedisScalingStore, state_key
from tests.coordinator_harness import wait_for
from tests.faultproxy import FaultProxy
from tests.redis_topologies import RedisNode, SentinelSet
from tests.servers import _new_password, free_port


async def test_stores_follow_a_sentinel_failover_and_the_lease_holds(monkeypatch):
    """Kill the primary under a leader and a follower: both follow the promoted replica, the leader
    keeps its lease at its epoch (the replica acknowledged it), the follower cannot take it, and the
    state written before the crash is there. Two replicas: after the failover one is left to
    acknowledge the lease (replica_acks defaults to 1 with sentinel)."""
    with SentinelSet(replicas=2) as topology:
        settings = topology.settings(monkeypatch, f"failover:{uuid.uuid4().hex[:8]}:")
        leader, follower = RedisScalingStore(settings), RedisScalingStore(settings)
        try:
            lease = await leader.try_acquire_leadership("leader", 15_000)
            assert lease is not None
            await follower.record_heartbeat(
                HeartbeatReport("a1", Registration(pod_name="p", instance_id="i"), 0, {}), 90_000
            )
            await leader.write_placement(
                lease, PlacementWrite(target_set={"db:x": "a1"}, assignments={"a1": {"db:x": 0}})
            )
            killed = topology.kill_primary()
            started = time.monotonic()
            promoted = await asyncio.to_thread(topology.wait_for_failover, killed)

            async def renewed() -> bool:
                with contextlib.suppress(StoreUnavailable):
                    return await leader.renew_leadership(lease, 15_000)
                return False

            await wait_for(renewed, timeout=20, message="the leader renewing on the promoted replica")
            recovered = time.monotonic() - started
            assert await follower.try_acquire_leadership("follower", 15_000) is None
            current = await follower.read_leader()
            assert current is not None and (current.holder, current.epoch) == ("leader", lease.epoch)
            assert await follower.read_target() == {"db:x": "a1"}
            assert set(await follower.read_agents()) == {"a1"}
            assert promoted is not killed and recovered < 20
        finally:
            await leader.close()
            await follower.close()


async def _replicated(primary: RedisNode, replicas: int) -> bool:
    client = aioredis.Redis(host=primary.host, port=primary.port, password=primary.password)
    try:
        await client.set("probe", "1")
        return int(await client.execute_command("WAIT", replicas, 100)) >= replicas
    finally:
        await client.aclose()


async def test_a_lease_no_replica_acknowledged_is_never_led_on(monkeypatch):
    """The write a primary acknowledged and lost: the replica's link is cut (a proxy holds what the
    primary sent), a coordinator takes the lease at epoch 2 on the primary alone, the primary dies
    and the replica is promoted without it, and another coordinator gets epoch 2 there. With
    replica_acks the first never led at epoch 2, so one epoch never has two leaders; without it
    (the code before issue 13) both would have."""
    password = _new_password()
    primary = RedisNode(password).start()
    proxy = FaultProxy(primary.host, primary.port)
    await proxy.start(free_port())
    replica = RedisNode(password, ["--replicaof", "127.0.0.1", str(proxy.address.rsplit(":", 1)[1])])
    replica.start()
    monkeypatch.setenv("LOST_PW", password)
    prefix = f"lost:{uuid.uuid4().hex[:8]}:"
    first = RedisScalingStore(
        RedisSettings(address=primary.address, password="${env:LOST_PW}", key_prefix=prefix, replica_acks=1)
    )
    second = None
    try:
        await wait_for(lambda: _replicated(primary, 1), timeout=20, message="the replica in sync")
        # On a loaded machine the replica's first acknowledgement can miss the 500 ms WAIT: the lease
        # then stays pending, and the next attempt confirms the same lease.
        lease = await wait_for(lambda: first.try_acquire_leadership("first", 1000), timeout=10, message="lease 1")
        assert lease.epoch == 1
        proxy.blackhole()
        # A renewal only the primary has does not count: the leader treats it as a failed one.
        with pytest.raises(StoreUnavailable, match="acknowledged by 0 of 1 replicas"):
            await first.renew_leadership(lease, 1000)
        await asyncio.sleep(1.1)  # lease 1 runs out
        assert await first.try_acquire_leadership("first", 10_000) is None  # epoch 2, held, not led on
        held = await first.read_leader()
        assert held is not None and (held.holder, held.epoch) == ("first", 2)
        primary.kill()
        proxy.reset()  # what the proxy held for the replica is lost with the primary
        replica.client().execute_command("REPLICAOF", "NO", "ONE")  # the promotion a sentinel makes
        second = RedisScalingStore(RedisSettings(address=replica.address, password="${env:LOST_PW}", key_prefix=prefix))
        taken = await second.try_acquire_leadership("second", 10_000)
        assert taken is not None and taken.epoch == 2  # the promoted replica never saw epoch 2
        with pytest.raises(StoreUnavailable):  # the first is cut off with its dead primary, leading nothing
            await first.try_acquire_leadership("first", 10_000)
    finally:
        await first.close()
        if second is not None:
            await second.close()
        await proxy.stop()
        replica.close()
        primary.close()


async def test_on_a_cluster_a_lease_waits_for_replicas_too(redis_cluster, monkeypatch):
    """WAIT goes to the node of the state's slot: with replica_acks 1 and no replica, nobody leads."""
    monkeypatch.setenv("CLUSTER_PW", redis_cluster.password)
    prefix = f"wait:{uuid.uuid4().hex[:8]}:"

    def settings(**extra: object) -> RedisSettings:
        return RedisSettings(
            address=redis_cluster.address, password="${env:CLUSTER_PW}", cluster=True, key_prefix=prefix, **extra
        )

    strict = RedisScalingStore(settings(replica_acks=1))
    try:
        assert await strict.try_acquire_leadership("c1", 5000) is None
        held = await strict.read_leader()
        assert held is not None and held.holder == "c1"  # held while it waits, so nobody else leads
    finally:
        await strict.close()  # releases the lease it never led on
    relaxed = RedisScalingStore(settings())
    try:
        lease = await relaxed.try_acquire_leadership("c2", 5000)
        assert lease is not None and lease.epoch == 2
    finally:
        await relaxed.close()


async def test_state_under_the_old_key_names_moves_once_and_an_older_leader_is_not_joined(fresh_redis, monkeypatch):
    monkeypatch.setenv("LEGACY_PW", fresh_redis.password)
    prefix = "legacy:"
    client = fresh_redis.client(decode_responses=True)
    # What a coordinator before the hash tag leaves: its lease, epoch and placement under key_prefix + name.
    client.set(f"{prefix}leader", "7:token:old-coordinator", px=60_000)
    client.set(f"{prefix}leader:epoch", 7)
    client.hset(f"{prefix}target", "db:x", "a1")
    client.hset(f"{prefix}agents", "a1", json.dumps({"reg": {"pod_name": "p"}, "state": "active", "hb": 1, "cur": {}}))
    store = RedisScalingStore(
        RedisSettings(address=fresh_redis.address, password="${env:LEGACY_PW}", key_prefix=prefix)
    )
    try:
        assert await store.try_acquire_leadership("new", 5000) is None  # the older one still leads there
        assert client.exists(f"{prefix}target") and not client.exists(state_key(prefix, "leader"))
        client.delete(f"{prefix}leader")  # the older coordinators are gone
        lease = await store.try_acquire_leadership("new", 5000)
        assert lease is not None and lease.epoch == 8  # the epoch continues
        assert await store.read_target() == {"db:x": "a1"} and set(await store.read_agents()) == {"a1"}
        marker = client.get(f"{prefix}leader")
        assert marker is not None and marker.split(":")[1] == "migrated"
        assert client.ttl(f"{prefix}leader") == -1  # kept: an older coordinator never leads here again
        # A straggler of the older version writes under the old names: never moved over the live state.
        client.hset(f"{prefix}target", "db:x", "stale")
        again = RedisScalingStore(
            RedisSettings(address=fresh_redis.address, password="${env:LEGACY_PW}", key_prefix=prefix)
        )
        try:
            assert await again.try_acquire_leadership("other", 5000) is None  # "new" leads
            assert await again.read_target() == {"db:x": "a1"}
        finally:
            await again.close()
    finally:
        await store.close()
