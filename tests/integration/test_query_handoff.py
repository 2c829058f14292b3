"""Top queries stay correct across a hand-off: a real coordinator moves a real PostgreSQL (with
pg_stat_statements) from one real agent to another while a workload runs, and the calls the two agents
report for the workload's statement add up to exactly the calls the workload made — no spike of history
on the new owner, no interval lost between the owners."""

from __future__ import annotations

import asyncio
import secrets

import asyncpg
import pytest
import yaml

from dbintel.agent.queries.model import TopQueryReport
from dbintel.agent.runtime import Agent
from dbintel.agent.scheduler import ResourceSnapshot
from dbintel.common.config import parse_config
from tests.coordinator_harness import FAST_TIMING, start_coordinator, wait_for
from tests.servers import free_port

pytestmark = pytest.mark.integration

RID = "db:postgresql/app"


class Reports:
    """Every top-query report each agent published, in order (from the agents' activity listeners)."""

    def __init__(self) -> None:
        self.by_agent: dict[str, list[TopQueryReport]] = {}

    def listener(self, agent: str):
        def record(before: ResourceSnapshot | None, after: ResourceSnapshot) -> None:
            old = before.activity.top if before is not None and before.activity is not None else None
            new = after.activity.top if after.activity is not None else None
            if new is not None and new is not old:
                self.by_agent.setdefault(agent, []).append(new)

        return record

    def calls(self, agent: str, query_id: str) -> float:
        return sum(q.calls for r in self.by_agent.get(agent, []) for q in r.queries if q.statement.query_id == query_id)


async def test_the_calls_reported_across_a_move_add_up_to_the_calls_made(postgres_server, monkeypatch):
    pg = postgres_server
    monkeypatch.setenv("HANDOFF_PG_PW", pg.monitor_password)
    grpc_port = free_port()
    doc = {
        "scaling": {"mode": "memory", "coordinator": FAST_TIMING},
        "coordinator": {
            "grpc_listen": f"127.0.0.1:{grpc_port}",
            "metrics_listen": "127.0.0.1:0",
            "health_listen": "127.0.0.1:0",
        },
        "agent": {
            "coordinator": f"127.0.0.1:{grpc_port}",
            "shutdown_grace": "5s",
            "top_query_collection": {"enabled": True, "top_n_query": 100, "collection_interval": "1s"},
        },
        "databases": [
            {
                "name": "app",
                "type": "postgresql",
                "endpoint": pg.address,
                "username": pg.monitor_user,
                "password": "${env:HANDOFF_PG_PW}",
                "database": pg.app_database,
                "interval": "1s",
            }
        ],
    }
    config = parse_config(yaml.safe_dump(doc))
    marker = f"handoff_{secrets.token_hex(6)}"  # a statement no other test runs
    statement = f"SELECT count(*) AS {marker} FROM generate_series(1, 200) AS g WHERE g % 7 = 3"
    workload = await asyncpg.connect(pg.dsn(database=pg.app_database))
    reports = Reports()
    coordinator = await start_coordinator(config, "coord")
    agents: dict[str, Agent] = {}
    made = 0
    try:
        for name in ("agent-a", "agent-b"):
            agents[name] = Agent(config, agent_id=name, metrics_listen="127.0.0.1:0", health_listen="127.0.0.1:0")
            agents[name].add_activity_listener(reports.listener(name))
        await agents["agent-a"].start()
        await wait_for(lambda: "agent-a" in reports.by_agent, timeout=20, message="agent-a's first interval")

        async def run(count: int) -> None:
            nonlocal made
            for _ in range(count):
                await workload.fetchval(statement)
                made += 1
                await asyncio.sleep(0.01)

        await run(60)  # counted by agent-a
        await agents["agent-b"].start()
        moving = asyncio.create_task(run(120))  # running while the database changes hands
        await agents["agent-a"].shutdown()  # Leave: the database moves at once, its baseline with it
        await wait_for(lambda: RID in agents["agent-b"].polling, timeout=10, message="the move")
        await moving
        await run(60)  # counted by agent-b
        done_at = await workload.fetchval("SELECT extract(epoch FROM clock_timestamp())::float8")
        await wait_for(
            lambda: any(r.interval_start > done_at for r in reports.by_agent.get("agent-b", [])),
            timeout=20,
            message="agent-b's interval after the workload",
        )
        query_id = str(
            await workload.fetchval("SELECT queryid FROM pg_stat_statements WHERE query LIKE $1 LIMIT 1", f"%{marker}%")
        )
        a, b = reports.calls("agent-a", query_id), reports.calls("agent-b", query_id)
        assert a > 0 and b > 0, (a, b)  # both owners saw part of it
        assert a + b == made == 240, (a, b, made)
        last_a = reports.by_agent["agent-a"][-1]
        first_b = reports.by_agent["agent-b"][0]
        assert first_b.interval_start == last_a.interval_end  # b's first interval starts where a's last ended
    finally:
        await workload.close()
        for agent in agents.values():
            await agent.shutdown()
        await coordinator.shutdown()
