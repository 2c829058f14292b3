"""`dbintel top RESOURCE` against a real coordinator (memory mode) and a real agent polling a real Redis:
the coordinator names the owner and its advertised HTTP address, the agent's /queries answers that
database's activity (seeded in-process through the scheduler, as the query loops publish it), and the
errors are clear: unknown resource, a database the agent does not hold, an unreachable agent."""

from __future__ import annotations

import asyncio
import json
import time
import urllib.error
import urllib.request

import pytest
import yaml

from dbintel.agent.queries.model import ActiveSession, SampleRead, StatementCounters, TopQuery, TopQueryReport
from dbintel.agent.queries.obfuscation import ObfuscatedText
from dbintel.agent.runtime import Agent, advertised_http_address
from dbintel.cli import main
from dbintel.common.config import parse_config
from dbintel.common.top import TopError, fetch_activity
from tests.coordinator_harness import start_coordinator, wait_for
from tests.servers import free_port

pytestmark = pytest.mark.integration

RESOURCE = "db:redis/cache"


def cluster_doc(redis_server, grpc_port: int) -> dict:
    return {
        "scaling": {
            "mode": "memory",
            "coordinator": {"heartbeat_interval": "300ms", "node_timeout": "2s", "min_rebalance_interval": "1s"},
            "receiver_scaling": {"check_interval": "300ms"},
        },
        "coordinator": {
            "grpc_listen": f"127.0.0.1:{grpc_port}",
            "metrics_listen": "127.0.0.1:0",
            "health_listen": "127.0.0.1:0",
        },
        "agent": {
            "coordinator": f"127.0.0.1:{grpc_port}",
            "shutdown_grace": "3s",
            # the loops stay off: the test publishes the activity itself
            "top_query_collection": {"enabled": False},
            "query_sample_collection": {"enabled": False},
        },
        "databases": [
            {
                "name": "cache",
                "type": "redis",
                "endpoint": redis_server.address,
                "password": "${env:TOP_REDIS_PW}",
                "interval": "1s",
            }
        ],
    }


def seed(agent: Agent) -> float:
    """Publish a top-query report and a sample read for RESOURCE, as the scheduler's loops do."""
    scheduler = agent.scheduler
    poller = scheduler._pollers[RESOURCE]
    now = time.time()
    statement = StatementCounters(
        query_id="c0ffee",
        calls=100,
        total_time_s=3.0,
        text=ObfuscatedText("GET user:?"),
        summary="GET",
    )
    report = TopQueryReport(
        interval_start=now - 60,
        interval_end=now,
        queries=(TopQuery(statement=statement, calls=10, total_time_s=0.5, rows=0, text=statement.text),),
    )
    session = ActiveSession(
        session_id="17", state="active", duration_s=2.5, blocked_by=("9",), text=ObfuscatedText("BLPOP ? ?")
    )
    scheduler._set_activity(poller, report=report, sessions=SampleRead(sessions=(session,)), sessions_at=now)
    return now


async def run_cli(capsys, *argv: str) -> tuple[int, str, str]:
    code = await asyncio.to_thread(main, list(argv))
    out, err = capsys.readouterr()
    return code, out, err


async def test_top_shows_the_owners_activity_and_clear_errors(redis_server, monkeypatch, capsys):
    monkeypatch.setenv("TOP_REDIS_PW", redis_server.password)
    grpc_port = free_port()
    address = f"127.0.0.1:{grpc_port}"
    config = parse_config(yaml.safe_dump(cluster_doc(redis_server, grpc_port)))
    coordinator = await start_coordinator(config, "coord")
    agent = Agent(config, agent_id="agent-a", metrics_listen="127.0.0.1:0", health_listen="127.0.0.1:0")
    await agent.start()
    try:
        assert agent.http_address == f"127.0.0.1:{agent.metrics_port}"  # the bound port, not :0
        await wait_for(lambda: RESOURCE in agent.polling, timeout=10, message="the grant")

        # Before any read: the shape, from the owner.
        code, out, err = await run_cli(capsys, "top", RESOURCE, "--once", "--json", "--coordinator", address)
        assert code == 0, err
        document = json.loads(out)
        assert document["owner_agent_id"] == "agent-a" and document["agent_id"] == "agent-a"
        assert document["agent_http_address"] == agent.http_address
        assert document["resource_id"] == RESOURCE and document["db_system"] == "redis"
        assert {"top", "sessions", "sessions_at", "errors"} <= document.keys()

        read_at = seed(agent)
        code, out, err = await run_cli(capsys, "top", RESOURCE, "--once", "--json", "--coordinator", address)
        assert code == 0, err
        document = json.loads(out)
        [query] = document["top"]["queries"]
        assert query["query_id"] == "c0ffee" and query["text"] == "GET user:?" and query["summary"] == "GET"
        assert query["calls"] == 10 and query["total_time_s"] == 0.5 and query["mean_time_s"] == 0.05
        assert query["share"] == 1.0
        [session] = document["sessions"]
        assert session["session_id"] == "17" and session["blocked_by"] == ["9"] and session["duration_s"] == 2.5
        assert document["sessions_at"] == read_at

        # The terminal view.
        code, out, err = await run_cli(capsys, "top", RESOURCE, "--once", "--coordinator", address)
        assert code == 0, err
        assert "on agent agent-a" in out and "GET" in out and "BLPOP ? ?" in out and "QUERY" in out

        # The agents table shows the address.
        code, out, err = await run_cli(capsys, "status", "--coordinator", address)
        assert code == 0, err
        assert "HTTP" in out and agent.http_address in out

        # Clear errors: an unknown database; the agent asked for one it does not hold; an unreachable agent.
        code, out, err = await run_cli(capsys, "top", "db:redis/nope", "--once", "--coordinator", address)
        assert code == 1 and "unknown resource 'db:redis/nope'" in err and out == ""
        with pytest.raises(urllib.error.HTTPError) as refused:
            url = f"http://{agent.http_address}/queries?resource=db:redis/nope"
            await asyncio.to_thread(urllib.request.urlopen, url, timeout=5)
        assert refused.value.code == 404
        assert json.loads(refused.value.read())["error"] == "agent agent-a does not hold db:redis/nope"
        with pytest.raises(TopError, match="answered 404: agent agent-a does not hold db:redis/nope"):
            await asyncio.to_thread(fetch_activity, agent.http_address, "db:redis/nope")
        code, out, err = await run_cli(capsys, "top", RESOURCE, "--once", "--coordinator", "127.0.0.1:1")
        assert code == 1 and "dbintel top: 127.0.0.1:1" in err
    finally:
        await agent.shutdown()
        await coordinator.shutdown()
    code, out, err = await run_cli(capsys, "top", RESOURCE, "--once", "--coordinator", address)
    assert code == 1 and "dbintel top:" in err
    with pytest.raises(TopError, match="is unreachable"):  # the agent is gone
        await asyncio.to_thread(fetch_activity, agent.http_address, RESOURCE, timeout=2)


def test_the_advertised_address(monkeypatch):
    monkeypatch.delenv("POD_IP", raising=False)
    assert advertised_http_address("agents.example:9000", "0.0.0.0:8889", 8889) == "agents.example:9000"
    assert advertised_http_address("", "127.0.0.1:0", 40123) == "127.0.0.1:40123"
    monkeypatch.setenv("POD_IP", "10.1.2.3")
    assert advertised_http_address("", "0.0.0.0:8889", 8889) == "10.1.2.3:8889"
    assert advertised_http_address("", "[::]:8889", 8889) == "10.1.2.3:8889"
    monkeypatch.setenv("POD_IP", "fd00::7")
    assert advertised_http_address("", ":8889", 8889) == "[fd00::7]:8889"
