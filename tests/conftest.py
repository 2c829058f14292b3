"""Fixtures for real servers (tests/servers.py). Each starts only when a test asks for it.

Session-scoped servers are shared: a test may restart them (data survives for PostgreSQL,
MariaDB and SecantusDB) but must leave them running. A test that kills, flushes or restarts
Redis takes `fresh_redis`, its own throwaway server.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.redis_topologies import RedisClusterSet, SentinelSet
from tests.servers import ManagedServer, MariaDBServer, PostgresServer, RedisServer, SecantusServer


def _serve(server: ManagedServer) -> Iterator[ManagedServer]:
    try:
        server.start()
        yield server
    finally:
        server.close()


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisServer]:
    yield from _serve(RedisServer())


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    yield from _serve(PostgresServer())


@pytest.fixture(scope="session")
def mariadb_server() -> Iterator[MariaDBServer]:
    yield from _serve(MariaDBServer())


@pytest.fixture(scope="session")
def secantus_server() -> Iterator[SecantusServer]:
    yield from _serve(SecantusServer())


@pytest.fixture
def fresh_redis() -> Iterator[RedisServer]:
    yield from _serve(RedisServer())


@pytest.fixture(scope="session")
def sentinel_set() -> Iterator[SentinelSet]:
    """A primary, a replica and three sentinels (tests/redis_topologies.py); a test that fails it over
    takes its own SentinelSet."""
    with SentinelSet() as topology:
        yield topology


@pytest.fixture(scope="session")
def redis_cluster() -> Iterator[RedisClusterSet]:
    """A real three-primary Redis Cluster."""
    with RedisClusterSet() as topology:
        yield topology
