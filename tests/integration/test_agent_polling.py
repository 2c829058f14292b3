"""Polling real servers through a fault-injecting proxy: a black-holed or refusing database marks
only itself down (up=0, error counters by reason) while the others keep their anchored schedule,
and it recovers when the network heals. Real Redis and PostgreSQL, real collectors, found through
the collector registry (dbintel.agent.collectors.<type>.COLLECTOR)."""

from __future__ import annotations

import asyncio
import itertools
import re
import time
import urllib.request
from collections.abc import AsyncIterator

import pytest

from dbintel.agent.runtime import Agent
from dbintel.common.config import parse_config
from tests.faultproxy import FaultProxy
from tests.servers import PostgresServer, RedisServer

pytestmark = pytest.mark.integration


@pytest.fixture
async def proxy_factory() -> AsyncIterator:
    proxies: list[FaultProxy] = []

    async def make(host: str, port: int) -> FaultProxy:
        proxy = FaultProxy(host, port)
        await proxy.start()
        proxies.append(proxy)
        return proxy

    yield make
    for proxy in proxies:
        proxy.pass_through()
        await proxy.stop()


def redis_entry(name: str, endpoint: str, db: int) -> str:
    return (
        f"  - {{name: {name}, type: redis, endpoint: '{endpoint}', password: '${{env:POLL_REDIS_PW}}', "
        f"database: '{db}', interval: 1s, timeout: 400ms}}"
    )


def postgres_entry(name: str, endpoint: str, pg: PostgresServer) -> str:
    return (
        f"  - {{name: {name}, type: postgresql, endpoint: '{endpoint}', username: {pg.monitor_user}, "
        f"password: '${{env:POLL_PG_PW}}', database: {pg.app_database}, interval: 1s, timeout: 800ms}}"
    )


async def start_agent(*entries: str) -> Agent:
    config = parse_config(
        "scaling: {receiver_scaling: {ignore_assignments: true}}\n"
        "agent: {shutdown_grace: 5s}\ndatabases:\n" + "\n".join(entries) + "\n"
    )
    agent = Agent(config, agent_id="polling-agent", metrics_listen="127.0.0.1:0", health_listen="127.0.0.1:0")
    await agent.start()
    return agent


async def eventually(condition, timeout: float = 15.0, what: str = "condition", agent: Agent | None = None) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            reasons = {rid: s.down_reason for rid, s in agent.scheduler.snapshots().items()} if agent else {}
            raise AssertionError(f"{what} not met within {timeout}s; down reasons: {reasons}")
        await asyncio.sleep(0.02)


def snapshot(agent: Agent, resource_id: str):
    return agent.scheduler.snapshots()[resource_id]


async def watch_polls(agent: Agent, resource_id: str, seconds: float) -> list:
    """Every distinct snapshot of one database over `seconds` (one per poll)."""
    seen = []
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        current = snapshot(agent, resource_id)
        if not seen or current.polls_total != seen[-1].polls_total:
            seen.append(current)
        await asyncio.sleep(0.01)
    return seen


async def scrape(agent: Agent) -> str:
    def get() -> str:
        with urllib.request.urlopen(f"http://127.0.0.1:{agent.metrics_port}/metrics", timeout=5) as response:
            return response.read().decode()

    return await asyncio.to_thread(get)


def has_series(text: str, family: str, resource_id: str) -> bool:
    return re.search(rf'^{family}{{[^}}]*dbintel_resource="{re.escape(resource_id)}"', text, re.MULTILINE) is not None


def assert_on_schedule(polls: list, interval: float) -> None:
    """Consecutive polls one interval apart: none delayed, none skipped, none doubled."""
    starts = [p.last_poll_time for p in polls]
    gaps = [b - a for a, b in itertools.pairwise(starts)]
    assert gaps and all(abs(gap - interval) < 0.25 for gap in gaps), gaps


async def test_a_black_holed_redis_marks_only_itself_down_while_postgresql_keeps_its_schedule(
    redis_server: RedisServer, postgres_server: PostgresServer, proxy_factory, monkeypatch
):
    monkeypatch.setenv("POLL_REDIS_PW", redis_server.password)
    monkeypatch.setenv("POLL_PG_PW", postgres_server.monitor_password)
    proxy = await proxy_factory(redis_server.host, redis_server.port)
    agent = await start_agent(
        redis_entry("cache", proxy.address, 3), postgres_entry("orders", postgres_server.address, postgres_server)
    )
    cache, orders = "db:redis/cache", "db:postgresql/orders"
    try:
        await eventually(lambda: snapshot(agent, cache).up and snapshot(agent, orders).up, what="both up", agent=agent)

        proxy.blackhole()
        during = asyncio.create_task(watch_polls(agent, orders, 4.5))
        await eventually(lambda: not snapshot(agent, cache).up, timeout=5, what="cache down")
        orders_polls = await during
        down = snapshot(agent, cache)
        assert down.error_counts.get("timeout", 0) >= 1 and down.down_reason.startswith("timeout")
        assert all(p.up for p in orders_polls) and len(orders_polls) >= 4
        assert_on_schedule(orders_polls, 1.0)

        text = await scrape(agent)
        assert 'dbintel_database_up{dbintel_resource="db:redis/cache",type="redis"} 0.0' in text
        assert 'dbintel_database_up{dbintel_resource="db:postgresql/orders",type="postgresql"} 1.0' in text
        assert 'dbintel_agent_poll_errors_total{dbintel_resource="db:redis/cache",reason="timeout"}' in text
        assert not has_series(text, "redis_uptime_seconds_total", cache)  # a down database shows no stale values
        assert has_series(text, "postgresql_backends", orders)

        proxy.pass_through()
        await eventually(lambda: snapshot(agent, cache).up, timeout=10, what="cache recovered")
    finally:
        await agent.shutdown()


async def test_a_black_holed_postgresql_marks_only_itself_down_and_recovers(
    redis_server: RedisServer, postgres_server: PostgresServer, proxy_factory, monkeypatch
):
    monkeypatch.setenv("POLL_REDIS_PW", redis_server.password)
    monkeypatch.setenv("POLL_PG_PW", postgres_server.monitor_password)
    proxy = await proxy_factory(postgres_server.host, postgres_server.port)
    agent = await start_agent(
        postgres_entry("orders", proxy.address, postgres_server), redis_entry("cache", redis_server.address, 4)
    )
    cache, orders = "db:redis/cache", "db:postgresql/orders"
    try:
        await eventually(lambda: snapshot(agent, cache).up and snapshot(agent, orders).up, what="both up", agent=agent)
        proxy.blackhole()
        during = asyncio.create_task(watch_polls(agent, cache, 4.5))
        await eventually(lambda: not snapshot(agent, orders).up, timeout=5, what="orders down")
        cache_polls = await during
        assert snapshot(agent, orders).error_counts.get("timeout", 0) >= 1
        assert all(p.up for p in cache_polls) and len(cache_polls) >= 4
        assert_on_schedule(cache_polls, 1.0)

        proxy.pass_through()
        await eventually(lambda: snapshot(agent, orders).up, timeout=15, what="orders recovered")
    finally:
        await agent.shutdown()


async def test_a_refusing_redis_is_down_for_connection_while_another_redis_keeps_polling(
    redis_server: RedisServer, proxy_factory, monkeypatch
):
    monkeypatch.setenv("POLL_REDIS_PW", redis_server.password)
    proxy = await proxy_factory(redis_server.host, redis_server.port)
    agent = await start_agent(redis_entry("refused", proxy.address, 5), redis_entry("fine", redis_server.address, 6))
    refused, fine = "db:redis/refused", "db:redis/fine"
    try:
        await eventually(lambda: snapshot(agent, refused).up and snapshot(agent, fine).up, what="both up", agent=agent)
        proxy.reset()  # every connection gets an RST
        during = asyncio.create_task(watch_polls(agent, fine, 3.5))
        await eventually(lambda: not snapshot(agent, refused).up, timeout=5, what="refused down")
        fine_polls = await during
        assert snapshot(agent, refused).error_counts.get("connection", 0) >= 1
        assert all(p.up for p in fine_polls) and len(fine_polls) >= 3
        assert_on_schedule(fine_polls, 1.0)
        proxy.pass_through()
        await eventually(lambda: snapshot(agent, refused).up, timeout=10, what="refused recovered")
    finally:
        await agent.shutdown()
