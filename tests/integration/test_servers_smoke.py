"""Each real server the tests use starts, answers the monitoring user, and survives a restart."""

from __future__ import annotations

import asyncio
import socket
import subprocess
import sys
import time
from pathlib import Path

import aiomysql
import asyncpg
import psutil
import pytest
import redis.asyncio as aioredis
import redis.exceptions
from pymongo import AsyncMongoClient
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from tests.servers import (
    MariaDBServer,
    PostgresServer,
    RedisServer,
    SecantusServer,
    ServerError,
    ServerNotInstalled,
    find_binary,
    free_port,
)

pytestmark = pytest.mark.integration

NO_RETRY = Retry(NoBackoff(), 0)  # redis-py retries 3 times with backoff by default


# --- Redis ----------------------------------------------------------------------------------
async def test_redis_answers_with_its_password(redis_server: RedisServer) -> None:
    client = aioredis.from_url(redis_server.url)
    try:
        assert await client.ping()
        await client.set("smoke:key", "value")
        assert await client.get("smoke:key") == b"value"
        info = await client.info("server")
        assert info["tcp_port"] == redis_server.port
    finally:
        await client.aclose()


async def test_redis_rejects_a_wrong_password(redis_server: RedisServer) -> None:
    client = aioredis.Redis(host=redis_server.host, port=redis_server.port, password="wrong", retry=NO_RETRY)
    try:
        with pytest.raises(redis.exceptions.AuthenticationError):
            await client.ping()
    finally:
        await client.aclose()


async def test_redis_restart_keeps_port_and_loses_data(fresh_redis: RedisServer) -> None:
    client = aioredis.from_url(fresh_redis.url)
    try:
        await client.set("smoke:gone", "1")
        port = fresh_redis.port
        fresh_redis.restart()
        assert fresh_redis.port == port
        await client.connection_pool.disconnect()  # pooled connections died with the old process
        assert await client.get("smoke:gone") is None  # --save '' --appendonly no
    finally:
        await client.aclose()


async def test_redis_kill_pause_and_start(fresh_redis: RedisServer) -> None:
    client = aioredis.from_url(fresh_redis.url, socket_timeout=0.5, socket_connect_timeout=0.5, retry=NO_RETRY)
    try:
        fresh_redis.kill()
        assert not fresh_redis.is_running()
        with pytest.raises(redis.exceptions.ConnectionError):
            await client.ping()
        fresh_redis.start()
        assert await client.ping()

        fresh_redis.pause()
        with pytest.raises(redis.exceptions.TimeoutError):
            await client.ping()
        fresh_redis.resume()
        await client.connection_pool.disconnect()  # the timed-out connection is unusable
        assert await client.ping()
    finally:
        await client.aclose()


# --- PostgreSQL -----------------------------------------------------------------------------
async def test_postgres_monitor_role_reads_statistics(postgres_server: PostgresServer) -> None:
    conn = await asyncpg.connect(postgres_server.dsn(database=postgres_server.app_database))
    try:
        assert await conn.fetchval("SELECT pg_has_role(current_user, 'pg_monitor', 'member')")
        assert await conn.fetchval("SHOW track_io_timing") == "on"
        assert await conn.fetchval("SELECT count(*) FROM pg_stat_statements") > 0
        orders = await conn.fetchrow(
            "SELECT n_tup_ins, n_tup_upd, n_tup_del FROM pg_stat_user_tables WHERE relname = 'orders'"
        )
        assert orders["n_tup_ins"] > 0 and orders["n_tup_upd"] > 0 and orders["n_tup_del"] > 0
        index_scans = await conn.fetchval(
            "SELECT idx_scan FROM pg_stat_user_indexes WHERE indexrelname = 'orders_customer_id_idx'"
        )
        assert index_scans > 0
    finally:
        await conn.close()


async def test_postgres_requires_a_password_over_tcp(postgres_server: PostgresServer) -> None:
    with pytest.raises(asyncpg.InvalidPasswordError):
        await asyncpg.connect(postgres_server.dsn(postgres_server.monitor_user, "wrong"))
    superuser = await asyncpg.connect(
        postgres_server.dsn(postgres_server.superuser, postgres_server.superuser_password)
    )
    try:
        assert await superuser.fetchval("SELECT current_setting('is_superuser')") == "on"
    finally:
        await superuser.close()


async def test_postgres_restart_keeps_port_and_data(postgres_server: PostgresServer) -> None:
    postgres_server.execute("CREATE TABLE smoke_restart (v int); INSERT INTO smoke_restart VALUES (41), (42);")
    port = postgres_server.port
    try:
        postgres_server.restart()
        assert postgres_server.port == port
        conn = await asyncpg.connect(postgres_server.dsn())
        try:
            assert await conn.fetchval("SELECT 1") == 1
        finally:
            await conn.close()
        assert postgres_server.execute("SELECT v FROM smoke_restart ORDER BY v") == [("41",), ("42",)]
    finally:
        postgres_server.execute("DROP TABLE IF EXISTS smoke_restart")


async def test_postgres_survives_a_crash_and_a_hang(postgres_server: PostgresServer) -> None:
    postgres_server.execute("CREATE TABLE smoke_crash (v int); INSERT INTO smoke_crash VALUES (7);")
    try:
        conn = await asyncpg.connect(postgres_server.dsn())
        backend = psutil.Process(await conn.fetchval("SELECT pg_backend_pid()"))
        postgres_server.kill()  # the postmaster and every backend, as in a power cut
        assert not backend.is_running() or backend.status() == psutil.STATUS_ZOMBIE
        conn.terminate()
        postgres_server.start()  # crash recovery replays the WAL
        assert postgres_server.execute("SELECT v FROM smoke_crash") == [("7",)]

        conn = await asyncpg.connect(postgres_server.dsn())
        postgres_server.pause()
        try:
            with pytest.raises(TimeoutError):
                await asyncio.wait_for(conn.fetchval("SELECT 1"), timeout=0.5)
        finally:
            postgres_server.resume()
            conn.terminate()
        conn = await asyncpg.connect(postgres_server.dsn())
        assert await conn.fetchval("SELECT 2") == 2
        await conn.close()
    finally:
        postgres_server.execute("DROP TABLE IF EXISTS smoke_crash")


# --- MariaDB --------------------------------------------------------------------------------
async def mariadb_monitor_connection(server: MariaDBServer) -> aiomysql.Connection:
    return await aiomysql.connect(
        host=server.host, port=server.port, user=server.monitor_user, password=server.monitor_password
    )


async def test_mariadb_monitor_user_reads_status_and_schema(mariadb_server: MariaDBServer) -> None:
    conn = await mariadb_monitor_connection(mariadb_server)
    try:
        async with conn.cursor() as cur:
            await cur.execute("SELECT @@performance_schema")
            assert (await cur.fetchone())[0] == 1
            await cur.execute("SHOW GLOBAL STATUS LIKE 'Uptime'")
            assert int((await cur.fetchone())[1]) >= 0
            await cur.execute("SELECT count(*) FROM performance_schema.events_statements_summary_by_digest")
            assert (await cur.fetchone())[0] > 0
            await cur.execute("SELECT count(*) FROM dbintel_app.orders")
            seen_by_monitor = (await cur.fetchone())[0]
            assert seen_by_monitor > 0
            assert mariadb_server.execute("SELECT count(*) FROM dbintel_app.orders") == [(str(seen_by_monitor),)]
            await cur.execute("SHOW PROCESSLIST")  # needs PROCESS to see other users' threads
            await cur.execute("SHOW GRANTS")
            grants = " ".join(row[0] for row in await cur.fetchall())
            assert "PROCESS" in grants and "SELECT" in grants
            with pytest.raises(aiomysql.OperationalError):  # monitoring, not writing
                await cur.execute("DELETE FROM dbintel_app.orders")
    finally:
        conn.close()


async def test_mariadb_rejects_a_wrong_password(mariadb_server: MariaDBServer) -> None:
    with pytest.raises(aiomysql.OperationalError):
        await aiomysql.connect(
            host=mariadb_server.host, port=mariadb_server.port, user=mariadb_server.monitor_user, password="wrong"
        )


async def test_mariadb_restart_keeps_port_and_data(mariadb_server: MariaDBServer) -> None:
    before = mariadb_server.execute("SELECT count(*) FROM dbintel_app.orders")
    port = mariadb_server.port
    mariadb_server.restart()
    assert mariadb_server.port == port
    assert mariadb_server.execute("SELECT count(*) FROM dbintel_app.orders") == before
    conn = await mariadb_monitor_connection(mariadb_server)
    try:
        async with conn.cursor() as cur:
            await cur.execute("SELECT 1")
            assert await cur.fetchone() == (1,)
    finally:
        conn.close()


# --- SecantusDB (MongoDB wire protocol) -----------------------------------------------------
async def test_secantus_is_a_one_member_replica_set(secantus_server: SecantusServer) -> None:
    client = AsyncMongoClient(secantus_server.url)
    try:
        hello = await client.admin.command("hello")
        assert hello["setName"] == secantus_server.replica_set
        assert hello["isWritablePrimary"] is True
        await client.smoke.items.insert_one({"_id": "a", "n": 1})
        assert await client.smoke.items.find_one({"_id": "a"}) == {"_id": "a", "n": 1}
        status = await client.admin.command("serverStatus")
        assert status["connections"]["current"] >= 1
    finally:
        await client.close()


async def test_secantus_restart_keeps_port_and_data(secantus_server: SecantusServer) -> None:
    with secantus_server.client() as client:
        client.smoke.restart.insert_one({"_id": "kept"})
    port = secantus_server.port
    secantus_server.restart()
    assert secantus_server.port == port
    client = AsyncMongoClient(secantus_server.url)
    try:
        assert await client.smoke.restart.find_one({"_id": "kept"}) == {"_id": "kept"}
    finally:
        await client.close()


async def test_secantus_standalone_has_no_replica_set() -> None:
    with SecantusServer(standalone=True) as server:
        client = AsyncMongoClient(server.url)
        try:
            hello = await client.admin.command("hello")
            assert "setName" not in hello
            assert await client.admin.command("ping") == {"ok": 1.0}
        finally:
            await client.close()
    assert not server.root.exists()  # close() removed the temp dir


# --- failure reporting ----------------------------------------------------------------------
def test_a_missing_binary_names_the_install_script() -> None:
    with pytest.raises(ServerNotInstalled, match=r"run scripts/install-deps\.sh"):
        find_binary("dbintel-no-such-server")


def test_a_failed_start_reports_the_log_tail_without_the_password() -> None:
    server = RedisServer(password="not-in-any-message")
    with socket.socket() as squatter:
        squatter.bind((server.host, 0))
        squatter.listen()
        server.port = squatter.getsockname()[1]
        try:
            with pytest.raises(ServerError) as failure:
                server.start()
        finally:
            server.close()
    message = str(failure.value)
    assert "exited during startup" in message and "Address already in use" in message
    assert "not-in-any-message" not in message


def test_free_ports_are_distinct_bindable_and_below_the_ephemeral_range() -> None:
    ephemeral_low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    ports = [free_port() for _ in range(20)]
    assert len(set(ports)) == len(ports)
    for port in ports:
        assert port < ephemeral_low
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", port))


def test_a_test_process_killed_outright_leaves_no_server_behind(tmp_path) -> None:
    """atexit cannot run after SIGKILL; the reaper beside the test process cleans up instead."""
    script = (
        "import sys\n"
        "from tests.servers import RedisServer\n"
        "server = RedisServer().start()\n"
        "print(server.pid, server.root, flush=True)\n"
        "sys.stdin.read()\n"  # wait to be killed
    )
    victim = subprocess.Popen(
        [sys.executable, "-c", script],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        cwd=Path(__file__).resolve().parents[2],
    )
    try:
        pid, root = victim.stdout.readline().split()
        server = psutil.Process(int(pid))
        assert server.is_running() and Path(root).is_dir()
        victim.kill()
        victim.wait(timeout=10)
        server.wait(timeout=10)  # raises TimeoutExpired if the server outlives its test process
        deadline = time.monotonic() + 10
        while Path(root).exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not Path(root).exists()
    finally:
        victim.kill()
        victim.stdin.close()
        victim.stdout.close()
