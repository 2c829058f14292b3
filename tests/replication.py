"""Replication topologies of real servers for the tests: a primary, a replica of it, and the link between.

    with ProxyLoop() as links, PostgresReplication(links) as pg:   # primary + streaming hot standby
        pg.primary, pg.standby, pg.link                             # servers (tests/servers.py) + Proxy
    MariaDBReplication(links)                                       # primary --log-bin + replica (SLAVE)
    RedisReplication(links)                                         # primary + --replicaof replica

Every replica reaches its primary through a FaultProxy (`link`, tests/faultproxy.py) and only
through it, so a test breaks the replication link on the wire — `link.reset()` RSTs the connection
and every reconnect, as a dropped route or a firewall would, while both servers stay up and
answer their monitors — and mends it with `link.pass_through()`. Monitors connect to each server
directly. How each replica is made follows each server's standard procedure:

- PostgreSQL: the primary archives WAL (archive_mode=on, archive_command cp into its temp dir);
  the standby is `pg_basebackup -R -X stream -C -S <slot>` of it (a physical slot, so the primary
  keeps the standby's WAL while it is away), started as a hot standby.
- MariaDB: the primary writes a binary log (--log-bin, server-id 1) and has a replication user;
  the replica (server-id 2) is provisioned with the same schema and rows as the primary (the
  same deterministic SQL, tests/servers.py), which stands in for a snapshot, and then replicates
  from the primary's binlog position after provisioning: CHANGE MASTER TO …; START SLAVE.
- Redis: the replica starts with --replicaof and --masterauth (each server has its own password).

The classes add only their replication settings to the tests/servers.py servers they subclass;
start, stop, kill, pause and the reaping of processes and temp dirs stay theirs.
"""

from __future__ import annotations

import secrets
import shutil
import time
from collections.abc import Callable
from typing import Any, Self

from tests.faultproxy import Proxy, ProxyLoop
from tests.servers import (
    LOOPBACK,
    ManagedServer,
    MariaDBServer,
    PostgresServer,
    RedisServer,
    find_binary,
    postgres_bin_dir,
)


def wait_until(
    predicate: Callable[[], Any], timeout: float, what: str, *, detail: Callable[[], str] = str, period: float = 0.1
) -> Any:
    """Poll `predicate` until it returns something truthy; AssertionError naming `what` after `timeout` s,
    with `detail()` (say, a server's log tail as it is then)."""
    deadline = time.monotonic() + timeout
    while True:
        result = predicate()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout} s: {what}\n{detail()}")
        time.sleep(period)


class _Pair:
    """A primary and its replica; closing the pair closes both (the replica first)."""

    primary: ManagedServer
    replica: ManagedServer | None = None

    def close(self) -> None:
        if self.replica is not None:
            self.replica.close()
        self.primary.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


# --- PostgreSQL ----------------------------------------------------------------------------------


class PostgresPrimary(PostgresServer):
    """A PostgreSQL primary that archives every finished WAL segment into `archive_dir`."""

    kind = "postgres-primary"

    def __init__(self) -> None:
        super().__init__()
        self.archive_dir = self.root / "archive"

    def _prepare(self) -> None:
        super()._prepare()
        self.archive_dir.mkdir()
        if self._run_as() is not None:
            shutil.chown(self.archive_dir, user=self.service_user, group=self.service_user)

    def _command(self) -> list[str]:
        return super()._command() + [
            "-c",
            "archive_mode=on",
            "-c",
            f"archive_command=test ! -f {self.archive_dir}/%f && cp %p {self.archive_dir}/%f",
        ]


class PostgresStandby(PostgresServer):
    """A streaming hot standby of `primary`, cloned with pg_basebackup through `upstream_port` (the
    primary's port, or a proxy in front of it), which it then streams from, through a physical slot."""

    kind = "postgres-standby"

    def __init__(self, primary: PostgresServer, *, upstream_port: int | None = None, slot: str) -> None:
        self.primary, self.slot = primary, slot
        self.upstream_port = primary.port if upstream_port is None else upstream_port
        find_binary("pg_basebackup", (postgres_bin_dir(),))
        super().__init__()
        # Roles and their passwords come with the cloned catalogs.
        self.superuser_password, self.monitor_password = primary.superuser_password, primary.monitor_password

    def _prepare(self) -> None:
        conninfo = (
            f"host={self.primary.host} port={self.upstream_port} user={self.primary.superuser} "
            f"password={self.primary.superuser_password} application_name={self.kind}"
        )
        self._run(
            [
                str(self.bin_dir / "pg_basebackup"),
                "-d",
                conninfo,
                "-D",
                str(self.data_dir),
                "-R",  # standby.signal + primary_conninfo (this conninfo) in postgresql.auto.conf
                "-X",
                "stream",
                "-c",
                "fast",
                "--no-sync",
                "-C",
                "-S",
                self.slot,
            ],
            as_service_user=True,
            what="pg_basebackup",
        )

    def _command(self) -> list[str]:
        return super()._command() + [
            "-c",
            "wal_retrieve_retry_interval=200ms",  # reconnect soon after a broken link is mended
            "-c",
            "max_standby_streaming_delay=0",  # a replay conflict cancels the standby query at once
        ]

    def _provision(self) -> None:
        pass  # read-only: everything arrived with the base backup


class PostgresReplication(_Pair):
    """A PostgreSQL primary and a streaming hot standby of it, linked through `link`."""

    slot = "dbintel_standby"

    def __init__(self, links: ProxyLoop) -> None:
        self.primary: PostgresPrimary = PostgresPrimary()
        self.replica: PostgresStandby | None = None
        try:
            self.primary.start()
            self.link: Proxy = links.proxy(self.primary.host, self.primary.port)
            self.replica = PostgresStandby(self.primary, upstream_port=self.link.port, slot=self.slot)
            self.replica.start()
            self.wait_streaming()
        except BaseException:
            self.close()
            raise

    @property
    def standby(self) -> PostgresStandby:
        assert self.replica is not None
        return self.replica

    def wait_streaming(self, timeout: float = 30.0) -> None:
        """Until the primary has the standby in pg_stat_replication as streaming and the standby's WAL
        receiver streams."""
        standby = self.standby
        wait_until(
            lambda: (
                self.primary.execute("SELECT count(*) FROM pg_stat_replication WHERE state = 'streaming'") == [("1",)]
                and standby.execute("SELECT count(*) FROM pg_stat_wal_receiver WHERE status = 'streaming'") == [("1",)]
            ),
            timeout,
            "standby streaming",
            detail=standby.log_tail,
        )


# --- MariaDB -------------------------------------------------------------------------------------


class MariaDBPrimary(MariaDBServer):
    """MariaDB writing a binary log (server-id 1), with a user the replica replicates as."""

    kind = "mariadb-primary"
    server_id = 1
    replication_user = "dbintel_repl"

    def __init__(self) -> None:
        super().__init__()
        self.replication_password = secrets.token_hex(16)

    def _command(self) -> list[str]:
        command = [arg for arg in super()._command() if arg != "--skip-log-bin"]
        return command + [f"--log-bin={self.data_dir / 'binlog'}", f"--server-id={self.server_id}"]

    def _provision(self) -> None:
        super()._provision()
        user = f"'{self.replication_user}'@'%'"
        self.execute(
            f"CREATE USER {user} IDENTIFIED BY '{self.replication_password}';\nGRANT REPLICATION SLAVE ON *.* TO {user};"
        )

    def binlog_position(self) -> tuple[str, int]:
        """(file, position) the next write goes to: SHOW MASTER STATUS."""
        [row] = self.execute("SHOW MASTER STATUS")
        return row[0], int(row[1])

    def _secrets(self) -> tuple[str, ...]:
        return (*super()._secrets(), self.replication_password)


class MariaDBReplica(MariaDBServer):
    """MariaDB (server-id 2) that replicates a MariaDBPrimary on its default (unnamed) connection."""

    kind = "mariadb-replica"
    server_id = 2

    def __init__(self, primary: MariaDBPrimary) -> None:
        self.primary = primary
        super().__init__()

    def _command(self) -> list[str]:
        return super()._command() + [
            f"--server-id={self.server_id}",
            f"--relay-log={self.data_dir / 'relay'}",
            "--skip-slave-start",  # replication starts when start_replication() says so, not at boot
        ]

    def start_replication(self, host: str, port: int, file: str, position: int) -> None:
        """CHANGE MASTER TO the primary at host:port (a proxy in front of it), from binlog file:position."""
        self.execute(
            f"CHANGE MASTER TO MASTER_HOST='{host}', MASTER_PORT={port}, "
            f"MASTER_USER='{self.primary.replication_user}', MASTER_PASSWORD='{self.primary.replication_password}', "
            f"MASTER_LOG_FILE='{file}', MASTER_LOG_POS={position}, MASTER_CONNECT_RETRY=1;\nSTART SLAVE;"
        )

    def replica_status(self) -> dict[str, str]:
        """SHOW SLAVE STATUS of the default connection as {column: text}, as the superuser sees it."""
        output = self._run(
            [
                self.client_binary,
                "--no-defaults",
                f"--socket={self.socket_path}",
                f"--user={self.superuser}",
                "--batch",
                "--vertical",
            ],
            input_text="SHOW SLAVE STATUS",
            what="SHOW SLAVE STATUS",
        )
        status: dict[str, str] = {}
        for line in output.splitlines():
            name, sep, value = line.strip().partition(":")
            if sep:
                status[name] = value.strip()
        return status

    def _secrets(self) -> tuple[str, ...]:
        return (*super()._secrets(), self.primary.replication_password)


class MariaDBReplication(_Pair):
    """A MariaDB primary and a replica of it, linked through `link`."""

    def __init__(self, links: ProxyLoop) -> None:
        self.primary = MariaDBPrimary()
        self.replica: MariaDBReplica | None = None
        try:
            self.primary.start()
            file, position = self.primary.binlog_position()  # after provisioning: the replica has all that
            self.link: Proxy = links.proxy(self.primary.host, self.primary.port)
            self.replica = MariaDBReplica(self.primary)
            self.replica.start()
            self.replica.start_replication(LOOPBACK, self.link.port, file, position)
            self.wait_replicating()
        except BaseException:
            self.close()
            raise

    def wait_replicating(self, timeout: float = 30.0) -> None:
        """Until both replica threads run, the replica has applied all the primary wrote, and the primary
        counts it connected."""
        assert self.replica is not None
        replica = self.replica

        def caught_up() -> bool:
            status = replica.replica_status()
            file, position = self.primary.binlog_position()
            return (
                status.get("Slave_IO_Running") == "Yes"
                and status.get("Slave_SQL_Running") == "Yes"
                and (status.get("Relay_Master_Log_File"), status.get("Exec_Master_Log_Pos")) == (file, str(position))
                and self.primary.execute("SHOW GLOBAL STATUS LIKE 'Slaves_connected'") == [("Slaves_connected", "1")]
            )

        wait_until(caught_up, timeout, "replica caught up", detail=replica.log_tail)


# --- Redis ---------------------------------------------------------------------------------------


class RedisPrimary(RedisServer):
    """Redis that serves a new replica at once (no diskless-sync delay) and pings replicas every second."""

    kind = "redis-primary"

    def _command(self) -> list[str]:
        return super()._command() + ["--repl-diskless-sync-delay", "0", "--repl-ping-replica-period", "1"]


class RedisReplica(RedisServer):
    """Redis started as a replica of the primary at host:port (a proxy in front of it)."""

    kind = "redis-replica"

    def __init__(self, primary: RedisServer, host: str, port: int) -> None:
        self.primary, self.upstream = primary, (host, port)
        super().__init__()

    def _command(self) -> list[str]:
        host, port = self.upstream
        return super()._command() + ["--replicaof", host, str(port), "--masterauth", self.primary.password]

    def _secrets(self) -> tuple[str, ...]:
        return (*super()._secrets(), self.primary.password)


class RedisReplication(_Pair):
    """A Redis primary and a replica of it, linked through `link`."""

    def __init__(self, links: ProxyLoop) -> None:
        self.primary = RedisPrimary()
        self.replica: RedisReplica | None = None
        try:
            self.primary.start()
            self.link: Proxy = links.proxy(self.primary.host, self.primary.port)
            self.replica = RedisReplica(self.primary, LOOPBACK, self.link.port)
            self.replica.start()
            self.wait_linked()
        except BaseException:
            self.close()
            raise

    def wait_linked(self, timeout: float = 30.0) -> None:
        """Until the replica's link is up and the primary lists it as online."""
        assert self.replica is not None
        replica = self.replica

        def linked() -> bool:
            with replica.client() as on_replica, self.primary.client() as on_primary:
                mine, theirs = on_replica.info("replication"), on_primary.info("replication")
            return mine.get("master_link_status") == "up" and theirs.get("slave0", {}).get("state") == "online"

        wait_until(linked, timeout, "replica linked", detail=replica.log_tail)
