"""Redis query intelligence against a real redis-server: SLOWLOG top queries, CLIENT LIST samples.

Each test takes its own server (fresh_redis): they change slowlog settings and ACL users.
"""

from __future__ import annotations

import asyncio
import re

import pytest
import redis.asyncio

from dbintel.agent.collectors.redis import REDIS_METRICS, RedisCollector
from dbintel.common.config import DatabaseConfig
from dbintel.common.secrets import resolve_secret
from tests.servers import RedisServer

pytestmark = pytest.mark.integration

PASSWORD_ENV = "DBINTEL_TEST_REDIS_QI_PASSWORD"
# A slow command: a script spinning a few million times, tens of ms (no redis.call in it: with
# slowlog-log-slower-than 0 every call a script makes is logged too).
SLOW_SCRIPT = "local i = 0 while i < 3000000 do i = i + 1 end return i"
EMAILS = [f"person{i}.secret@example.com" for i in range(5)]


def make_collector(
    server: RedisServer, monkeypatch: pytest.MonkeyPatch, *, username: str | None = None, password: str | None = None
) -> RedisCollector:
    monkeypatch.setenv(PASSWORD_ENV, password or server.password)
    database = DatabaseConfig(
        name="cache",
        type="redis",
        endpoint=server.address,
        username=username,
        password=f"${{env:{PASSWORD_ENV}}}",
    )
    return RedisCollector(database, password=resolve_secret(database.password), enabled=REDIS_METRICS.enabled())


def by_text(read) -> dict[str, object]:
    return {c.text: c for c in read.counters}


def workload(server: RedisServer) -> None:
    with server.client() as client:
        for i, email in enumerate(EMAILS):
            client.set(f"user:{1000 + i}:email", email)
        for _ in range(2):
            client.eval(SLOW_SCRIPT, 0)


async def test_slow_commands_show_up_once_heaviest_first(fresh_redis: RedisServer, monkeypatch):
    with fresh_redis.client() as admin:
        admin.config_set("slowlog-log-slower-than", 0)  # every command is "slow": the workload is all there
        admin.set("before:history", "old")
    collector = make_collector(fresh_redis, monkeypatch)
    try:
        history = await collector.read_statement_stats(100, None)
        assert history.counters == () and history.errors == () and history.cursor is not None
        assert history.statements >= 1 and not history.cumulative

        workload(fresh_redis)
        read = await collector.read_statement_stats(100, history.cursor)
        assert read.errors == () and not read.cumulative and read.statements == 1
        assert read.counters[0].text == "EVAL ? ?"  # the heaviest pattern first by time
        counters = by_text(read)
        assert (
            read.counters[0].calls == 2 and read.counters[0].total_time_s > counters["SET user:?:email ?"].total_time_s
        )
        assert counters["SET user:?:email ?"].calls == 5
        assert counters["SET user:?:email ?"].summary == "SET"
        assert "SET before:history ?" not in counters  # history before the first read is not counted
        for counter in read.counters:
            assert not re.search(r"\d|@", counter.text), counter.text

        again = await collector.read_statement_stats(100, read.cursor)  # each slow command counted once
        assert "EVAL ? ?" not in by_text(again) and "SET user:?:email ?" not in by_text(again)

        with fresh_redis.client() as admin:
            admin.slowlog_reset()  # ids start over at 0: still counted, never skipped
            for i in range(3):
                admin.set(f"user:{i}:email", EMAILS[i])
        after_reset = await collector.read_statement_stats(100, again.cursor)
        assert by_text(after_reset)["SET user:?:email ?"].calls == 3
    finally:
        await collector.close()


async def test_blocked_client_is_a_sample(fresh_redis: RedisServer, monkeypatch):
    blocker = redis.asyncio.Redis(
        host=fresh_redis.host, port=fresh_redis.port, password=fresh_redis.password, client_name="order-worker"
    )
    collector = make_collector(fresh_redis, monkeypatch)
    try:
        waiting = asyncio.create_task(blocker.blpop(["queue:orders"], timeout=30))
        for _ in range(200):  # until the server has the client blocked
            samples = await collector.read_query_samples(10)
            if samples.sessions:
                break
            await asyncio.sleep(0.02)
        assert samples.errors == ()
        (session,) = samples.sessions  # ours (running CLIENT LIST) is left out
        assert (session.state, session.wait_event_type, session.wait_event) == ("blocked", "Blocking command", "BLPOP")
        assert (session.summary, session.text, session.application) == ("BLPOP", "BLPOP", "order-worker")
        assert session.user == "default" and session.client_address == "127.0.0.1" and session.blocked_by == ()
        assert session.duration_s is not None and session.duration_s >= 0
        assert "queue" not in session.text

        with fresh_redis.client() as admin:
            admin.lpush("queue:orders", "job")
        assert tuple(await waiting) == (b"queue:orders", b"job")
        assert (await collector.read_query_samples(10)).sessions == ()
        assert (await collector.read_query_samples(10)).statements == 1  # CLIENT ID only once per connection
    finally:
        await blocker.aclose()
        await collector.close()


async def test_acl_refusal_reported_once_with_the_grant(fresh_redis: RedisServer, monkeypatch):
    with fresh_redis.client() as admin:
        admin.execute_command("ACL", "SETUSER", "monitor", "on", ">monitor-pw", "~*", "+@all", "-slowlog")
    collector = make_collector(fresh_redis, monkeypatch, username="monitor", password="monitor-pw")
    try:
        first = await collector.read_statement_stats(100, None)
        (error,) = first.errors
        assert error.reason == "permission" and "ACL SETUSER monitor +slowlog|get" in error.message
        assert first.cursor is None  # nothing read: no place to keep
        second = await collector.read_statement_stats(100, None)
        assert second.errors == () and second.statements == 0  # held back, not repeated
        samples = await collector.read_query_samples(10)  # the rest flows
        assert samples.errors == ()
    finally:
        await collector.close()
