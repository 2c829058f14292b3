"""Property 2: an ex-leader paused past its lease cannot change a single key."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import uuid

import pytest
import yaml

from dbintel.common.config import RedisSettings
from dbintel.coordinator.model import FencedError, HeartbeatReport, PlacementWrite, Registration
from dbintel.coordinator.store.redis_store import RedisScalingStore, state_key, tagged_prefix
from tests.coordinator_harness import ScriptedAgent, wait_for
from tests.servers import free_port


def dump_keys(client, prefix: str) -> dict[bytes, bytes]:
    return {key: client.dump(key) for key in sorted(client.scan_iter(match=f"{tagged_prefix(prefix)}*"))}


async def test_paused_ex_leader_changes_no_key(redis_server, monkeypatch):
    monkeypatch.setenv("FENCE_PW", redis_server.password)
    prefix = f"fence:{uuid.uuid4().hex[:8]}:"
    settings = RedisSettings(address=redis_server.address, password="${env:FENCE_PW}", key_prefix=prefix)
    old, new = RedisScalingStore(settings), RedisScalingStore(settings)
    try:
        old_lease = await old.try_acquire_leadership("old", 300)
        await old.record_heartbeat(HeartbeatReport("a1", Registration(pod_name="p", instance_id="i"), 0, {}), 90_000)
        await old.write_placement(old_lease, PlacementWrite(target_set={"db:x": "a1"}, assignments={"a1": {"db:x": 0}}))
        await asyncio.sleep(0.5)  # the old leader is "paused" past its lease
        new_lease = await new.try_acquire_leadership("new", 10_000)
        assert new_lease is not None and new_lease.epoch > old_lease.epoch
        client = redis_server.client()
        before = dump_keys(client, prefix)
        # The resumed ex-leader tries every kind of leader write; each is refused inside Redis.
        for write in (
            PlacementWrite(target_set={"db:x": "a2"}),
            PlacementWrite(target_delete=("db:x",)),
            PlacementWrite(assignments={"a1": {}}),
            PlacementWrite(expire=("a1",)),
            PlacementWrite(rebalance_reason="periodic", moves=3),
        ):
            with pytest.raises(FencedError):
                await old.write_placement(old_lease, write)
        assert not await old.renew_leadership(old_lease, 300)
        assert dump_keys(client, prefix) == before
    finally:
        await old.close()
        await new.close()


def _coordinator_process(config_path, port, name):
    env = {**os.environ, "POD_NAME": name, "DBINTEL_LOG_LEVEL": "debug"}
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "dbintel.cli",
            "coordinator",
            "--config",
            str(config_path),
            "--grpc-listen",
            f"127.0.0.1:{port}",
            "--metrics-listen",
            f"127.0.0.1:{free_port()}",
            "--health-listen",
            f"127.0.0.1:{free_port()}",
        ],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )


async def test_sigstopped_leader_process_is_fenced_after_resume(fresh_redis, tmp_path):
    """A real coordinator process frozen with SIGSTOP past leader_ttl: a follower takes over; after
    SIGCONT the ex-leader steps down and no assignment carries its epoch after the takeover."""
    prefix = "fence-proc:"
    config = {
        "scaling": {
            "mode": "redis",
            "redis": {
                "address": fresh_redis.address,
                "password": "${env:FENCE_PROC_PW}",
                "key_prefix": prefix,
                "leader_ttl": "1500ms",
            },
            "coordinator": {"heartbeat_interval": "300ms", "node_timeout": "3s", "min_rebalance_interval": "1s"},
        },
        "databases": [{"name": f"d{i}", "type": "redis", "endpoint": "127.0.0.1:1"} for i in range(6)],
    }
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    os.environ["FENCE_PROC_PW"] = fresh_redis.password
    ports = [free_port(), free_port()]
    first = _coordinator_process(path, ports[0], "coord-a")
    client = fresh_redis.client()
    await wait_for(lambda: client.get(state_key(prefix, "leader")), message="a leader")
    second = _coordinator_process(path, ports[1], "coord-b")
    agents = [ScriptedAgent(f"agent-{i}", f"127.0.0.1:{ports[1]}").start() for i in range(2)]
    try:
        await wait_for(lambda: sum(len(a.held) for a in agents) == 6, message="all six databases held")
        leader = client.get(state_key(prefix, "leader")).decode()
        old_epoch = int(leader.split(":")[0])
        frozen = first if leader.endswith("coord-a") else second
        survivor = second if frozen is first else first
        frozen.send_signal(signal.SIGSTOP)
        await wait_for(
            lambda: (client.get(state_key(prefix, "leader")) or b"").decode() not in ("", leader),
            timeout=10,
            message="a new leader",
        )
        new_epoch = int(client.get(state_key(prefix, "leader")).decode().split(":")[0])
        assert new_epoch > old_epoch
        # Force work for the leader while the old one is frozen: one agent leaves.
        await agents[0].leave("test")
        await wait_for(lambda: len(agents[1].held) == 6, timeout=10, message="hand-off to the remaining agent")
        frozen.send_signal(signal.SIGCONT)
        await asyncio.sleep(2.0)  # the ex-leader resumes, tries its stale loop, and steps down
        import json

        docs = {k.decode(): json.loads(v) for k, v in client.hgetall(state_key(prefix, "assignments")).items()}
        assert docs["agent-1"]["leader_epoch"] == new_epoch
        assert int(client.get(state_key(prefix, "leader")).decode().split(":")[0]) == new_epoch
        assert survivor.poll() is None and frozen.poll() is None
    finally:
        for agent in agents:
            await agent.stop()
        for process in (first, second):
            with __import__("contextlib").suppress(Exception):
                process.send_signal(signal.SIGCONT)
            process.terminate()
        for process in (first, second):
            try:
                process.wait(10)
            except subprocess.TimeoutExpired:
                process.kill()
