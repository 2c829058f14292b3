"""Collection cost of dbintel's PostgreSQL, MariaDB and Redis collectors, side by side with the Debian peer exporters.

Run:  python bench/bench_collection.py [--rounds N] [--collections N] [--agent-polls N] [--no-profile] [--no-write]

Starts a real PostgreSQL, MariaDB and Redis (tests/servers.py), the peers prometheus-postgres-exporter,
prometheus-mysqld-exporter and prometheus-redis-exporter against them, and measures, in one run and
interleaved round by round:

- dbintel, direct: the collector classes called in this process, `--collections` collections a window;
- dbintel, agent: a real `dbintel agent` process per database type (ignore_assignments, interval 1s),
  scraped once per interval, `--agent-polls` polls a window, one agent at a time; SIGSTOPped outside
  its own windows so its polls never land in another contender's server-side counts;
- the peers: one collection = one scrape of their /metrics.

Per collection: CPU seconds of the collecting process (its CPU-time clock), samples (exposition lines for an
exposition, len(result.samples) for the direct collector), statements/commands the server received
from the monitoring role (pg_stat_statements calls; MariaDB performance_schema statement events of
the monitoring user; Redis INFO commandstats minus our own INFO), new connections (PostgreSQL
`connection authorized` log lines of the monitoring role, with log_connections switched on for the
run; MariaDB `Connections`; Redis total_connections_received), and latency. Two scenarios: the small
test schema, and 200 extra tables × 2 indexes (PostgreSQL and MariaDB) / 16 Redis databases with keys.
Prints the figures and rewrites the "## Collection cost vs the peer exporters" section of
docs/benchmarks.md (other sections are kept). Where a peer spends less CPU per sample than the agent,
the agent is profiled with py-spy for a few seconds and the shares of its stack samples by layer reported.
"""

from __future__ import annotations

import argparse
import asyncio
import math
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import asyncpg
import psutil
import pymysql
import yaml
from pydantic import SecretStr
from report import DOC, MachineLoad, image_link, machine_line, write_data, write_section  # bench/report.py
from servers import (
    AgentProcess,
    metric_total,
    process_cpu_seconds,
    sample_lines,  # bench/servers.py, which
    scrape,
)  # also puts the repo root on sys.path

from dbintel.agent.collectors import collector_class
from dbintel.common.config import DatabaseConfig
from tests.servers import MariaDBServer, PostgresServer, RedisServer, free_port

SECTION = "## Collection cost vs the peer exporters"
DEFAULTS = {"rounds": 5, "collections": 10, "agent_polls": 3, "growth_rounds": 3}
PG_PASSWORD_ENV, MARIADB_PASSWORD_ENV, REDIS_PASSWORD_ENV = (
    "BENCH_PG_PASSWORD",
    "BENCH_MARIADB_PASSWORD",
    "BENCH_REDIS_PASSWORD",
)
AGENT_INTERVAL = 1.0  # the shortest interval the config allows
EXAMPLE_QUERIES = Path("/usr/share/doc/prometheus-postgres-exporter/examples/queries.yaml")
TABLE_QUERIES = ("pg_stat_user_tables", "pg_statio_user_tables")
# Lines about the exporting process itself, not the database: left out of "database samples".
SELF_PREFIXES = (
    "go_",
    "process_",
    "promhttp_",
    "pg_exporter_",
    "pg_scrape_collector_",
    "postgres_exporter_",
    "mysql_exporter_",
    "mysqld_exporter_",
    "redis_exporter_",
    "dbintel_agent_",
)
KINDS = ("postgresql", "mysql", "redis")  # the order of the tables
TARGET_STATEMENTS = {"postgresql": 5, "mysql": 5, "redis": 3}
# The peers' server-settings samples: many lines from one statement, told apart in the notes.
SETTINGS_PREFIXES = {"postgresql": "pg_settings_", "mysql": "mysql_global_variables_"}
EXTRA_TABLES, EXTRA_REDIS_DBS, KEYS_PER_DB = 200, 16, 200
# The server-size growth: PostgreSQL databases / MariaDB schemas on the server (the first is the app's),
# each extra one with TABLES_PER_EXTRA tables × 1 secondary index.
GROWTH_SIZES, TABLES_PER_EXTRA = (1, 10, 50), 5


def database_lines(lines: list[str]) -> list[str]:
    return [line for line in lines if not line.startswith(SELF_PREFIXES)]


# --- what the servers saw ------------------------------------------------------------------------


@dataclass
class ServerCounts:
    statements: int
    connections: int
    by_command: Counter = field(default_factory=Counter)


class PostgresWatch:
    """Statements (pg_stat_statements) and connections (server log) of the monitoring role, read as superuser."""

    def __init__(self, server: PostgresServer):
        self.server = server
        self.role = server.monitor_user
        self._conn: asyncpg.Connection | None = None

    async def open(self) -> None:
        # One persistent superuser connection over the unix socket: never the monitoring role, never new.
        self._conn = await asyncpg.connect(
            host=str(self.server.socket_dir), port=self.server.port, user=self.server.superuser, database="postgres"
        )
        await self._conn.execute("ALTER SYSTEM SET log_connections = on")
        await self._conn.execute("SELECT pg_reload_conf()")

    def _authorized(self) -> int:
        text = self.server.log_path.read_text(errors="replace")
        return text.count(f"connection authorized: user={self.role} ")

    async def snapshot(self) -> ServerCounts:
        assert self._conn is not None
        calls = await self._conn.fetchval(
            "SELECT coalesce(sum(s.calls), 0)::bigint FROM pg_stat_statements s"
            " JOIN pg_roles r ON r.oid = s.userid WHERE r.rolname = $1",
            self.role,
        )
        return ServerCounts(statements=int(calls), connections=self._authorized())

    async def settle(self) -> None:
        await asyncio.sleep(0.15)  # the log line of a connection opened at the very end reaches the file

    def minus_own(self, counts: ServerCounts) -> ServerCounts:
        return counts  # our connection is the superuser's: not counted

    async def close(self) -> None:
        if self._conn is not None:
            await self._conn.execute("ALTER SYSTEM RESET log_connections")
            await self._conn.execute("SELECT pg_reload_conf()")
            await self._conn.close()


class MariaDBWatch:
    """Statements of the monitoring user and connections (`Connections` status), read as the superuser.

    Statements: performance_schema.events_statements_summary_by_user_by_event_name for the monitoring
    user, every event (statement/sql/* and statement/com/*: a Ping or a Quit is a command the server
    handled too); it includes the user's live sessions and those already closed. Our own probes run
    as the superuser over one persistent unix-socket connection, so they are neither statements of
    the monitoring user nor new connections."""

    def __init__(self, server: MariaDBServer):
        self.server = server
        self.user = server.monitor_user
        self._conn: pymysql.Connection | None = None

    async def open(self) -> None:
        self._conn = pymysql.connect(
            unix_socket=str(self.server.socket_path), user=self.server.superuser, autocommit=True
        )

    def _read(self) -> ServerCounts:
        assert self._conn is not None
        with self._conn.cursor() as cursor:
            cursor.execute(
                "SELECT EVENT_NAME, COUNT_STAR FROM performance_schema."
                "events_statements_summary_by_user_by_event_name WHERE USER = %s AND COUNT_STAR > 0",
                (self.user,),
            )
            by_command = Counter({name.removeprefix("statement/"): int(calls) for name, calls in cursor.fetchall()})
            cursor.execute("SHOW GLOBAL STATUS LIKE 'Connections'")
            connections = int(cursor.fetchone()[1])
        return ServerCounts(statements=sum(by_command.values()), connections=connections, by_command=by_command)

    async def snapshot(self) -> ServerCounts:
        return self._read()

    async def settle(self) -> None:
        await asyncio.sleep(0.15)  # an exporter's COM_QUIT may reach the server after its scrape was answered

    def minus_own(self, counts: ServerCounts) -> ServerCounts:
        return counts

    async def close(self) -> None:
        if self._conn is not None:
            self._conn.close()


class RedisWatch:
    """Commands (INFO commandstats) and connections (total_connections_received), less our own INFO."""

    def __init__(self, server: RedisServer):
        self._client = server.client(decode_responses=True)
        self._own = Counter()

    def _read(self) -> ServerCounts:
        info = self._client.info("commandstats", "stats")
        by_command = Counter(
            {
                key.removeprefix("cmdstat_"): int(value["calls"])
                for key, value in info.items()
                if key.startswith("cmdstat_")
            }
        )
        return ServerCounts(
            statements=sum(by_command.values()),
            connections=int(info["total_connections_received"]),
            by_command=by_command,
        )

    async def open(self) -> None:
        self._read()  # connect first, so the calibration below sees no handshake
        first, second = self._read(), self._read()
        self._own = second.by_command - first.by_command  # what one snapshot itself costs: one INFO

    async def snapshot(self) -> ServerCounts:
        return self._read()

    async def settle(self) -> None:
        return None

    def minus_own(self, counts: ServerCounts) -> ServerCounts:
        by_command = counts.by_command - self._own
        return ServerCounts(sum(by_command.values()), counts.connections, by_command)

    async def close(self) -> None:
        self._client.close()


def delta(before: ServerCounts, after: ServerCounts) -> ServerCounts:
    return ServerCounts(
        after.statements - before.statements,
        after.connections - before.connections,
        after.by_command - before.by_command,
    )


async def measured(watch, body):
    """Run `body` between two server snapshots; the server-side delta and body's result."""
    before = await watch.snapshot()
    result = await body()
    await watch.settle()
    return watch.minus_own(delta(before, await watch.snapshot())), result


# --- contenders ----------------------------------------------------------------------------------


@dataclass
class Window:
    collections: int
    cpu: float
    samples: float  # per collection
    database_samples: float
    latencies: list[float]
    server: ServerCounts | None = None
    own_statements: int | None = None  # what the collector says it sent
    problems: list[str] = field(default_factory=list)
    scrape_cpu: float | None = None  # agent path: the share of `cpu` spent serving the scrapes
    scrape_latencies: list[float] = field(default_factory=list)
    last_exposition: str = ""


class DirectCollector:
    """A dbintel collector class called in this process."""

    family = "dbintel"

    def __init__(self, kind: str, database: DatabaseConfig, password: str):
        self.kind, self.name = kind, f"dbintel {kind} collector (in-process)"
        cls = collector_class(kind)
        self.collector = cls(database, password=SecretStr(password), enabled=cls.table.enabled())

    async def warm(self) -> None:
        for _ in range(2):  # connect, statement cache, the first (slow) round that fetches sizes
            result = await self.collector.collect()
            if not result.up or result.errors:
                raise RuntimeError(f"{self.name}: warm-up collection failed: {result.errors}")

    async def window(self, n: int) -> Window:
        cpu, latencies, samples, statements, problems = 0.0, [], 0, 0, []
        for _ in range(n):
            cpu_before, start = time.process_time(), time.perf_counter()
            result = await self.collector.collect()
            latencies.append(time.perf_counter() - start)
            cpu += time.process_time() - cpu_before
            samples += len(result.samples)
            statements += result.statements
            problems += [f"{e.query}: {e.reason}" for e in result.errors]
        return Window(n, cpu, samples / n, samples / n, latencies, own_statements=statements, problems=problems)

    async def close(self) -> None:
        await self.collector.close()


class Exporter:
    """A peer exporter process; one collection = one scrape of its /metrics."""

    family = "peer"

    def __init__(self, kind: str, name: str, command: list[str], env: dict[str, str], error_metric: str):
        self.kind, self.name, self.error_metric = kind, name, error_metric
        self.port = free_port()
        self.log = tempfile.NamedTemporaryFile(prefix="dbintel-bench-exporter-", suffix=".log", delete=False)
        self.popen = subprocess.Popen(
            [*command, f"--web.listen-address=127.0.0.1:{self.port}"],
            env={**os.environ, **env},
            stdout=self.log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        self.process = psutil.Process(self.popen.pid)
        self.url = f"http://127.0.0.1:{self.port}/metrics"

    async def warm(self) -> None:
        deadline = time.monotonic() + 30
        while True:
            try:
                scrape(self.url, timeout=5)
                break
            except OSError as error:
                if self.popen.poll() is not None or time.monotonic() > deadline:
                    log_tail = Path(self.log.name).read_text()[-2000:]  # noqa: ASYNC240 - failing anyway
                    raise RuntimeError(f"{self.name} did not start: {log_tail}") from error
                await asyncio.sleep(0.1)
        scrape(self.url)

    async def window(self, n: int) -> Window:
        latencies, samples, database_samples, problems = [], 0, 0, []
        cpu_before = process_cpu_seconds(self.process.pid)
        for _ in range(n):
            start = time.perf_counter()
            text = scrape(self.url)
            latencies.append(time.perf_counter() - start)
            lines = sample_lines(text)
            samples += len(lines)
            database_samples += len(database_lines(lines))
            if metric_total(text, self.error_metric) != 0:
                problems.append(f"{self.error_metric} != 0")
        cpu = process_cpu_seconds(self.process.pid) - cpu_before
        return Window(
            n,
            cpu,
            samples / n,
            database_samples / n,
            latencies,
            problems=problems,
            scrape_cpu=cpu,
            scrape_latencies=latencies,
            last_exposition=text,
        )

    async def close(self) -> None:
        if self.popen.poll() is None:
            self.popen.terminate()
            try:
                self.popen.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait()
        os.unlink(self.log.name)


class AgentPath:
    """A `dbintel agent` polling one database every AGENT_INTERVAL, scraped once per interval."""

    family = "dbintel"

    def __init__(self, kind: str, database: dict, secrets: dict[str, str]):
        self.kind, self.name = kind, f"dbintel agent ({kind}, polls + 1 scrape/poll)"
        self.agent = AgentProcess([database], secrets, agent_id=f"bench-{kind}")
        self.slot_anchor = 0.0  # wall-clock start of one of its polls, set by warm()

    async def warm(self) -> None:
        await asyncio.to_thread(self.agent.start)
        polls = await asyncio.to_thread(self.agent.wait_for_polls, 2, 10 * AGENT_INTERVAL)
        if polls < 2:
            raise RuntimeError(f"{self.name}: no polls after start:\n{self.agent.log_tail()}")
        # The schedule is anchored (missed slots are skipped, the phase kept), so one poll's start time
        # before any pause fixes every later slot.
        self.slot_anchor = metric_total(
            await asyncio.to_thread(self.agent.scrape), "dbintel_agent_last_poll_timestamp_seconds"
        )
        self.agent.pause()

    def _mid_phase_after(self, moment: float) -> float:
        """The first wall-clock time ≥ moment halfway between two of the agent's poll slots."""
        middle = self.slot_anchor + AGENT_INTERVAL / 2
        return middle + math.ceil((moment - middle) / AGENT_INTERVAL) * AGENT_INTERVAL

    async def window(self, n: int, watch) -> Window:
        """Resumes the agent, scrapes it n + 1 times half an interval away from its polls (none in flight),
        and pauses it again; the n polls between the first and the last scrape are measured."""
        self.agent.resume()  # the slot missed while paused fires at once: let it finish before measuring
        try:
            start = self._mid_phase_after(time.time() + AGENT_INTERVAL / 2)
            await asyncio.sleep(start - time.time())
            first = await asyncio.to_thread(self.agent.scrape)
            cpu_before = self.agent.cpu_seconds()
            before = await watch.snapshot()
            samples = database_samples = 0
            scrape_cpu, scrape_latencies = 0.0, []
            text = first
            for i in range(1, n + 1):
                await asyncio.sleep(max(0.0, start + i * AGENT_INTERVAL - time.time()))
                # Half an interval away from the polls, the agent's CPU during a scrape is the scrape's.
                scrape_cpu -= self.agent.cpu_seconds()
                scrape_start = time.perf_counter()
                text = await asyncio.to_thread(self.agent.scrape)
                scrape_latencies.append(time.perf_counter() - scrape_start)
                scrape_cpu += self.agent.cpu_seconds()
                lines = sample_lines(text)
                samples += len(lines)
                database_samples += len(database_lines(lines))
            cpu = self.agent.cpu_seconds() - cpu_before
        finally:
            self.agent.pause()  # no poll in flight, and none can start while the server is read
        await watch.settle()
        counts = watch.minus_own(delta(before, await watch.snapshot()))
        polls = self.agent.polls(text) - self.agent.polls(first)
        duration_name = "dbintel_agent_poll_duration_seconds"
        label = f'type="{self.kind}"'
        seconds = metric_total(text, duration_name + "_sum", label) - metric_total(first, duration_name + "_sum", label)
        count = metric_total(text, duration_name + "_count", label) - metric_total(
            first, duration_name + "_count", label
        )
        problems = [] if polls == n else [f"{polls:g} polls in {n} intervals"]
        problems += [line for line in sample_lines(text) if line.startswith("dbintel_agent_poll_errors_total")]
        polls = max(polls, 1)
        return Window(
            int(polls),
            cpu,
            samples / n,
            database_samples / n,
            [seconds / max(count, 1)],
            server=counts,
            problems=problems,
            scrape_cpu=scrape_cpu,
            scrape_latencies=scrape_latencies,
            last_exposition=text,
        )

    async def profile(self, seconds: float) -> list[tuple[str, float]]:
        """Shares of the agent's on-CPU stack samples by layer (py-spy), scraped once per interval meanwhile."""
        if shutil.which("py-spy") is None:
            return [("py-spy not installed: no profile", 1.0)]
        output = self.agent.root / "py-spy.txt"
        self.agent.resume()
        try:
            spy = await asyncio.create_subprocess_exec(
                "py-spy",
                "record",
                "--pid",
                str(self.agent.process.pid),
                "--duration",
                f"{seconds:g}",
                "--rate",
                "1000",
                "--nonblocking",
                "--full-filenames",
                "--format",
                "raw",
                "--output",
                str(output),
                stdout=asyncio.subprocess.DEVNULL,
                stderr=asyncio.subprocess.DEVNULL,
            )
            while spy.returncode is None:
                await asyncio.to_thread(self.agent.scrape)
                try:
                    await asyncio.wait_for(spy.wait(), AGENT_INTERVAL)
                except TimeoutError:
                    pass
        finally:
            self.agent.pause()
        if spy.returncode != 0 or not output.exists():
            return [(f"py-spy failed (exit {spy.returncode})", 1.0)]
        return stack_shares(output.read_text())

    async def close(self) -> None:
        await asyncio.to_thread(self.agent.close)


# First marker found anywhere in a stack names its layer (most specific first).
PROFILE_LAYERS = (
    ("agent/exposition.py", "scrape: building metric families (dbintel AgentExposition.collect)"),
    ("prometheus_client/exposition.py", "scrape: text formatting (prometheus_client.generate_latest)"),
    ("prometheus_client/", "scrape: other prometheus_client"),
    ("http/server.py", "scrape: HTTP server thread"),
    ("socketserver.py", "scrape: HTTP server thread"),
    ("mapping.py", "poll: rows / INFO text -> samples (collector mapping)"),
    ("metric_table.py", "poll: Sample objects (metric_table)"),
    ("scheduler.py", "poll: scheduler (snapshot after a poll)"),
    ("asyncpg/", "poll: asyncpg driver"),
    ("aiomysql/", "poll: aiomysql/PyMySQL driver"),
    ("pymysql/", "poll: aiomysql/PyMySQL driver"),
    ("/redis/", "poll: redis-py driver"),
    ("collectors/", "poll: collector, other"),
    ("asyncio/", "event loop, idle wake-ups"),
)


MIN_PROFILE_SAMPLES = 50


def stack_shares(raw: str) -> list[tuple[str, float]]:
    """py-spy raw output ('frame;frame;... count' per line) -> [(layer, share of samples)], largest first,
    then ("samples", count)."""
    counts: Counter = Counter()
    for line in raw.splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        layer = next((name for marker, name in PROFILE_LAYERS if marker in stack), "other (interpreter, GC, threads)")
        counts[layer] += int(count)
    total = sum(counts.values())
    return [(layer, n / max(total, 1)) for layer, n in counts.most_common()] + [("samples", float(total))]


# --- the run -------------------------------------------------------------------------------------


@dataclass
class Tally:
    """All windows of one contender in one scenario."""

    contender: object
    windows: list[Window] = field(default_factory=list)

    def per_collection(self, value) -> float:
        return statistics.median(value(w) / w.collections for w in self.windows)

    @property
    def cpu_ms(self) -> float:
        return 1000 * self.per_collection(lambda w: w.cpu)

    @property
    def scrape_cpu_ms(self) -> float | None:
        if any(w.scrape_cpu is None for w in self.windows):
            return None
        return 1000 * self.per_collection(lambda w: w.scrape_cpu)

    @property
    def scrape_latency_ms(self) -> float | None:
        latencies = [x for w in self.windows for x in w.scrape_latencies]
        return 1000 * statistics.median(latencies) if latencies else None

    def lines_starting(self, prefix: str) -> int:
        return sum(1 for line in sample_lines(self.windows[-1].last_exposition) if line.startswith(prefix))

    @property
    def cpu_us_per_sample(self) -> float:
        return statistics.median(1e6 * w.cpu / w.collections / max(w.database_samples, 1) for w in self.windows)

    @property
    def samples(self) -> tuple[float, float]:
        return (
            statistics.median(w.database_samples for w in self.windows),
            statistics.median(w.samples for w in self.windows),
        )

    @property
    def statements(self) -> float:
        return self.per_collection(lambda w: w.server.statements)

    @property
    def connections(self) -> float:
        return self.per_collection(lambda w: w.server.connections)

    @property
    def latency_ms(self) -> float:
        return 1000 * statistics.median(x for w in self.windows for x in w.latencies)

    def commands(self) -> str:
        total = sum((w.server.by_command for w in self.windows), Counter())
        collections = sum(w.collections for w in self.windows)
        return ", ".join(f"{name} {calls / collections:g}" for name, calls in sorted(total.items()))

    def problems(self) -> list[str]:
        return sorted({p for w in self.windows for p in w.problems})


@dataclass
class Target:
    """One database under test: its agent config entry (password as ${env:…}), the password, the watch
    reading its server-side counts, and the peer exporters pointed at it."""

    kind: str
    database: dict
    password_env: str
    password: str
    watch: object
    exporters: list[Exporter] = field(default_factory=list)

    def direct(self) -> DirectCollector:
        return DirectCollector(self.kind, DatabaseConfig(**{**self.database, "password": None}), self.password)


def postgres_database(server: PostgresServer) -> dict:
    return {
        "name": "bench-pg",
        "type": "postgresql",
        "endpoint": server.address,
        "username": server.monitor_user,
        "password": f"${{env:{PG_PASSWORD_ENV}}}",
        "database": server.app_database,
        "interval": f"{AGENT_INTERVAL:g}s",
    }


def mariadb_database(server: MariaDBServer) -> dict:
    return {
        "name": "bench-mariadb",
        "type": "mysql",
        "endpoint": server.address,
        "username": server.monitor_user,
        "password": f"${{env:{MARIADB_PASSWORD_ENV}}}",
        "interval": f"{AGENT_INTERVAL:g}s",
    }


def redis_database(server: RedisServer) -> dict:
    return {
        "name": "bench-redis",
        "type": "redis",
        "endpoint": server.address,
        "password": f"${{env:{REDIS_PASSWORD_ENV}}}",
        "database": "0",
        "interval": f"{AGENT_INTERVAL:g}s",
    }


def table_queries_file(directory: Path) -> Path:
    """The table queries of the exporter's packaged example (its only stock way to table metrics)."""
    example = yaml.safe_load(EXAMPLE_QUERIES.read_text())
    path = directory / "table-queries.yaml"
    path.write_text(yaml.safe_dump({name: example[name] for name in TABLE_QUERIES}))
    return path


def mysqld_exporter_config(server: MariaDBServer, directory: Path) -> Path:
    """The my.cnf prometheus-mysqld-exporter 0.14 reads its credentials from (--config.my-cnf), mode 0600."""
    path = directory / "mysqld-exporter.cnf"
    path.touch(mode=0o600)
    path.write_text(
        f"[client]\nuser={server.monitor_user}\npassword={server.monitor_password}\n"
        f"host={server.host}\nport={server.port}\n"
    )
    return path


def grow_postgres(server: PostgresServer) -> None:
    server.execute(
        f"""
DO $$ BEGIN FOR i IN 1..{EXTRA_TABLES} LOOP
  EXECUTE format('CREATE TABLE bench_t%s (id int PRIMARY KEY, k int NOT NULL, v text)', i);
  EXECUTE format('CREATE INDEX bench_t%s_k_idx ON bench_t%s (k)', i, i);
  EXECUTE format('INSERT INTO bench_t%s SELECT g, g %% 10, ''x'' FROM generate_series(1, 20) g', i);
END LOOP; END $$;
VACUUM ANALYZE;
SELECT pg_stat_force_next_flush();
""",
        database=server.app_database,
    )


def grow_mariadb(server: MariaDBServer) -> None:
    """The same 200 tables × 2 indexes, each written and read through its index once, so that
    performance_schema has table and index I/O rows for them (as it would on a live server)."""
    server.execute(
        "\n".join(
            f"CREATE TABLE bench_t{i} (id INT PRIMARY KEY, k INT NOT NULL, v TEXT, KEY bench_t{i}_k_idx (k)) ENGINE=InnoDB;\n"
            f"INSERT INTO bench_t{i} SELECT seq, seq % 10, 'x' FROM seq_1_to_20;\n"
            f"SELECT count(*) FROM bench_t{i} WHERE k = 1;"
            for i in range(1, EXTRA_TABLES + 1)
        ),
        database=server.app_database,
    )


def add_postgres_databases(server: PostgresServer, total: int) -> None:
    """Extra databases bench_db2..bench_db<total>, TABLES_PER_EXTRA small tables each."""
    existing = {row[0] for row in server.execute("SELECT datname FROM pg_database")}
    tables = "\n".join(
        f"CREATE TABLE t{j} (id int PRIMARY KEY, k int NOT NULL);\n"
        f"CREATE INDEX t{j}_k_idx ON t{j} (k);\n"
        f"INSERT INTO t{j} SELECT g, g % 10 FROM generate_series(1, 20) g;"
        for j in range(TABLES_PER_EXTRA)
    )
    for i in range(2, total + 1):
        if f"bench_db{i}" not in existing:
            server.execute(f"CREATE DATABASE bench_db{i}")
            server.execute(tables, database=f"bench_db{i}")


def add_mariadb_schemas(server: MariaDBServer, total: int) -> None:
    """Extra schemas bench_s2..bench_s<total>, TABLES_PER_EXTRA tables each, written and read through their
    index once (so performance_schema has their table and index I/O rows, as on a live server)."""
    existing = {row[0] for row in server.execute("SHOW DATABASES")}
    for i in range(2, total + 1):
        if f"bench_s{i}" in existing:
            continue
        server.execute(
            f"CREATE DATABASE bench_s{i};\nUSE bench_s{i};\n"
            + "\n".join(
                f"CREATE TABLE bench_s{i}.t{j} (id INT PRIMARY KEY, k INT NOT NULL, KEY t{j}_k_idx (k)) ENGINE=InnoDB;\n"
                f"INSERT INTO bench_s{i}.t{j} SELECT seq, seq % 10 FROM seq_1_to_20;\n"
                f"SELECT count(*) FROM bench_s{i}.t{j} WHERE k = 1;"
                for j in range(TABLES_PER_EXTRA)
            )
        )


def drop_growth(pg: PostgresServer, maria: MariaDBServer) -> None:
    """Back to one database / schema, so the many-tables scenario measures what it always did."""
    for (name,) in pg.execute("SELECT datname FROM pg_database WHERE datname LIKE 'bench_db%'"):
        pg.execute(f"DROP DATABASE {name}")
    for (name,) in maria.execute("SHOW DATABASES LIKE 'bench\\_s%'"):
        maria.execute(f"DROP DATABASE {name}")


def fill_redis(server: RedisServer, databases: int, keys: int) -> None:
    for db in range(databases):
        client = server.client(db=db)
        pipe = client.pipeline(transaction=False)
        for i in range(keys):
            pipe.set(f"bench:{i}", "x" * 32, ex=3600 if i % 4 == 0 else None)
        pipe.execute()
        client.close()


async def run_scenario(
    args, targets: list[Target], scenario: str, profiles: dict[str, list[tuple[str, float]]]
) -> list[Tally]:
    direct = {t.kind: t.direct() for t in targets}
    secrets = {t.password_env: t.password for t in targets}
    agents = {t.kind: AgentPath(t.kind, t.database, secrets) for t in targets}
    watches = {t.kind: t.watch for t in targets}
    sequential = [c for t in targets for c in (direct[t.kind], *t.exporters)]
    tallies = {id(c): Tally(c) for c in [*sequential, *agents.values()]}
    try:
        for contender in sequential:
            await contender.warm()
        await asyncio.gather(*(agent.warm() for agent in agents.values()))
        for round_number in range(args.rounds):
            shift = round_number % len(sequential)  # rotate who goes first, so no one always runs on a cold cache
            for contender in sequential[shift:] + sequential[:shift]:
                counts, window = await measured(watches[contender.kind], lambda c=contender: c.window(args.collections))
                window.server = counts
                if window.own_statements is not None and window.own_statements != counts.statements:
                    window.problems.append(
                        f"the server saw {counts.statements} statements, the collector counted {window.own_statements}"
                    )
                tallies[id(contender)].windows.append(window)
            # One agent at a time (the others SIGSTOPped): two cores, and no agent's polls in another's window.
            for agent in agents.values():
                tallies[id(agent)].windows.append(await agent.window(args.agent_polls, watches[agent.kind]))
            print(f"  {scenario}: round {round_number + 1}/{args.rounds} done", file=sys.stderr)
        if not args.no_profile:
            for kind, agent in agents.items():  # "where does our time go", for each type a peer spent less on
                ours = tallies[id(agent)].cpu_us_per_sample
                if any(
                    tallies[id(e)].cpu_us_per_sample < ours for e in sequential if e.kind == kind and e.family == "peer"
                ):
                    profiles[kind] = await agent.profile(seconds=args.agent_polls + 2)
    finally:
        for contender in [*direct.values(), *agents.values()]:
            await contender.close()
    order = [c for t in targets for c in (direct[t.kind], agents[t.kind], *t.exporters)]
    return [tallies[id(c)] for c in order]


def row(tally: Tally) -> tuple[str, ...]:
    database_samples, samples = tally.samples
    scrape = tally.scrape_cpu_ms
    scrape_text = "—" if scrape is None else "all" if tally.contender.family == "peer" else f"{scrape:.2f}"
    return (
        tally.contender.name,
        f"{database_samples:.0f} / {samples:.0f}",
        f"{tally.cpu_ms:.2f}",
        scrape_text,
        f"{tally.cpu_us_per_sample:.1f}",
        f"{tally.statements:.1f}",
        f"{tally.connections:.2f}",
        f"{tally.latency_ms:.1f}",
    )


HEADER = (
    "contender",
    "database samples / all lines",
    "CPU ms / collection",
    "of which serving the scrape, ms",
    "CPU µs / database sample",
    "statements / collection",
    "new connections / collection",
    "latency ms (median)",
)


def table(tallies: list[Tally]) -> list[str]:
    lines = ["| " + " | ".join(HEADER) + " |", "|---" + "|---:" * (len(HEADER) - 1) + "|"]
    lines += ["| " + " | ".join(row(t)) + " |" for t in tallies]
    return lines


def verdicts(tallies: list[Tally]) -> list[str]:
    out = []
    for kind in KINDS:
        ours = [t for t in tallies if t.contender.kind == kind and t.contender.family == "dbintel"]
        peers = [t for t in tallies if t.contender.kind == kind and t.contender.family == "peer"]
        if not ours:
            continue
        limit = TARGET_STATEMENTS[kind]
        for t in ours:
            met = "met" if t.statements <= limit else "NOT met"
            out.append(
                f"{t.contender.name}: ≤ {limit} statements per collection: **{met}** ({t.statements:.1f}); "
                f"no new connection per collection: **{'met' if t.connections == 0 else 'NOT met'}** "
                f"({t.connections:.2f})."
            )
        agent = next(t for t in ours if isinstance(t.contender, AgentPath))
        direct = next(t for t in ours if isinstance(t.contender, DirectCollector))
        for peer in peers:
            met = agent.cpu_us_per_sample <= peer.cpu_us_per_sample
            out.append(
                f"agent CPU per database sample at or below that of {peer.contender.name}: "
                f"**{'met' if met else 'NOT met'}** ({agent.cpu_us_per_sample:.1f} vs "
                f"{peer.cpu_us_per_sample:.1f} µs; per collection {agent.cpu_ms:.2f} vs {peer.cpu_ms:.2f} ms)."
            )
        out.append(
            f"for comparison, the {kind} collector alone (in-process, no exposition): "
            f"{direct.cpu_us_per_sample:.1f} µs per sample, {direct.cpu_ms:.2f} ms per collection."
        )
    return out


def tally_data(results: dict[str, list[Tally]]) -> dict[str, list[dict]]:
    """scenario -> one record per contender, for docs/data/collection.json and bench/plots.py."""
    out = {}
    for scenario, tallies in results.items():
        out[scenario] = [
            {
                "name": t.contender.name,
                "kind": t.contender.kind,
                "family": t.contender.family,
                "path": type(t.contender).__name__,
                "cpu_ms": t.cpu_ms,
                "cpu_us_per_sample": t.cpu_us_per_sample,
                "samples": t.samples[0],
                "all_lines": t.samples[1],
                "statements": t.statements,
                "connections": t.connections,
                "latency_ms": t.latency_ms,
            }
            for t in tallies
        ]
    return out


def command_line(args) -> str:
    return "python bench/bench_collection.py" + "".join(
        f" --{k.replace('_', '-')} {getattr(args, k)}" for k in DEFAULTS if getattr(args, k) != DEFAULTS[k]
    )


async def main_async(args) -> int:
    with MachineLoad() as noise:
        results, profiles = await measure_all(args)
    text = render(args, results, profiles, noise)
    print(text)
    if not args.no_write:
        write_data(
            "collection",
            {
                "command": command_line(args),
                "machine": machine_line(),
                "noise": noise.as_dict(),
                "unit": {
                    "cpu_ms": "CPU ms per collection",
                    "cpu_us_per_sample": "CPU µs per database sample",
                    "statements": "statements per collection",
                    "samples": "database samples per collection",
                    "latency_ms": "ms",
                },
                "growth_sizes": list(GROWTH_SIZES),
                "series": tally_data(results),
            },
        )
        write_section(SECTION, text)
        print(f"wrote the '{SECTION}' section of {DOC}", file=sys.stderr)
    return 0


async def measure_all(args):
    pg, maria, rd = PostgresServer(), MariaDBServer(), RedisServer()
    targets: list[Target] = []
    work = Path(tempfile.mkdtemp(prefix="dbintel-bench-collection-"))
    results: dict[str, list[Tally]] = {}
    profiles: dict[str, dict[str, list[tuple[str, float]]]] = {"small": {}, "many": {}}
    try:
        await asyncio.gather(*(asyncio.to_thread(server.start) for server in (pg, maria, rd)))
        targets = [
            Target("postgresql", postgres_database(pg), PG_PASSWORD_ENV, pg.monitor_password, PostgresWatch(pg)),
            Target("mysql", mariadb_database(maria), MARIADB_PASSWORD_ENV, maria.monitor_password, MariaDBWatch(maria)),
            Target("redis", redis_database(rd), REDIS_PASSWORD_ENV, rd.password, RedisWatch(rd)),
        ]
        for target in targets:
            await target.watch.open()
        fill_redis(rd, 1, 100)
        dsn = {"DATA_SOURCE_NAME": pg.dsn(database=pg.app_database)}
        my_cnf = f"--config.my-cnf={mysqld_exporter_config(maria, work)}"
        targets[0].exporters = [
            Exporter(
                "postgresql",
                "postgres_exporter 0.11 (defaults)",
                ["prometheus-postgres-exporter"],
                dsn,
                "pg_exporter_last_scrape_error",
            ),
            Exporter(
                "postgresql",
                "postgres_exporter 0.11 + example table queries",
                ["prometheus-postgres-exporter", f"--extend.query-path={table_queries_file(work)}"],
                dsn,
                "pg_exporter_last_scrape_error",
            ),
        ]
        targets[1].exporters = [
            Exporter(
                "mysql",
                "mysqld_exporter 0.14 (defaults)",
                ["prometheus-mysqld-exporter", my_cnf],
                {},
                "mysql_exporter_last_scrape_error",
            ),
            Exporter(
                "mysql",
                "mysqld_exporter 0.14 + table/index I/O waits",
                [
                    "prometheus-mysqld-exporter",
                    my_cnf,
                    "--collect.perf_schema.tableiowaits",
                    "--collect.perf_schema.indexiowaits",
                ],
                {},
                "mysql_exporter_last_scrape_error",
            ),
        ]
        targets[2].exporters = [
            Exporter(
                "redis",
                "redis_exporter 1.45 (defaults)",
                ["prometheus-redis-exporter", f"--redis.addr=redis://{rd.address}"],
                {"REDIS_PASSWORD": rd.password},
                "redis_exporter_last_scrape_error",
            ),
        ]
        results["small"] = await run_scenario(args, targets, "small", profiles["small"])
        growth_args = argparse.Namespace(**{**vars(args), "rounds": args.growth_rounds, "no_profile": True})
        for size in GROWTH_SIZES[1:]:  # size 1 is the small scenario
            add_postgres_databases(pg, size)
            add_mariadb_schemas(maria, size)
            results[f"databases-{size}"] = await run_scenario(growth_args, targets[:2], f"{size} databases", {})
        drop_growth(pg, maria)
        grow_postgres(pg)
        grow_mariadb(maria)
        fill_redis(rd, EXTRA_REDIS_DBS, KEYS_PER_DB)
        results["many"] = await run_scenario(args, targets, "many", profiles["many"])
    finally:
        for target in targets:
            for exporter in target.exporters:
                await exporter.close()
            await target.watch.close()
        for server in (pg, maria, rd):
            server.close()
        shutil.rmtree(work, ignore_errors=True)
    return results, profiles


def growth_lines(results: dict[str, list[Tally]], rounds: int) -> list[str]:
    """The server-size growth table: each PostgreSQL / MariaDB contender at 1, 10 and 50 databases."""
    scenarios = ["small", *(f"databases-{n}" for n in GROWTH_SIZES[1:])]
    if not all(s in results for s in scenarios):
        return []
    sizes = " / ".join(str(n) for n in GROWTH_SIZES)
    lines = [
        f"### Many databases (PostgreSQL databases / MariaDB schemas on the server: {sizes})",
        "",
        f"The same contenders (Redis aside) with {sizes} databases on the PostgreSQL server and as many schemas "
        f"on the MariaDB server (the app's plus extra ones of {TABLES_PER_EXTRA} tables × 1 index each, every "
        f"table written and read once), {rounds} rounds each (the 1-database figures are the small-schema run's). Each cell reads {sizes}.",
        "",
        "| contender | database samples | CPU ms / collection | statements / collection | latency ms |",
        "|---|---:|---:|---:|---:|",
    ]
    by_name = {s: {t.contender.name: t for t in results[s]} for s in scenarios}
    for tally in results["databases-" + str(GROWTH_SIZES[-1])]:
        cells = [by_name[s].get(tally.contender.name) for s in scenarios]
        if any(c is None for c in cells):
            continue
        lines.append(
            f"| {tally.contender.name} | {' / '.join(f'{c.samples[0]:.0f}' for c in cells)} | "
            f"{' / '.join(f'{c.cpu_ms:.2f}' for c in cells)} | "
            f"{' / '.join(f'{c.statements:.0f}' for c in cells)} | "
            f"{' / '.join(f'{c.latency_ms:.1f}' for c in cells)} |"
        )
    lines.append("")
    for kind in ("postgresql", "mysql"):
        first = {t.contender.name: t for t in results["small"] if t.contender.kind == kind}
        last = {t.contender.name: t for t in results[scenarios[-1]] if t.contender.kind == kind}
        growth = [
            (name, last[name].cpu_ms / first[name].cpu_ms, last[name].statements - first[name].statements)
            for name in last
            if name in first and first[name].cpu_ms > 0
        ]
        lines.append(
            f"- {kind}, from 1 to {GROWTH_SIZES[-1]}: CPU per collection × "
            + "; ".join(f"{factor:.1f} {name}" for name, factor, _ in growth)
            + ". Statements per collection "
            + (
                "stay the same for every contender."
                if all(abs(d) < 0.5 for *_, d in growth)
                else "change: "
                + "; ".join(f"{name} {delta:+.0f}" for name, _, delta in growth if abs(delta) >= 0.5)
                + "."
            )
        )
    top = {t.contender.name: t for t in results[scenarios[-1]]}
    for kind in ("postgresql", "mysql"):
        agent = next((t for t in top.values() if t.contender.kind == kind and isinstance(t.contender, AgentPath)), None)
        if agent is None:
            continue
        for peer in (t for t in top.values() if t.contender.kind == kind and t.contender.family == "peer"):
            verdict = "we lose" if agent.cpu_ms > peer.cpu_ms else "we win"
            lines.append(
                f"- At {GROWTH_SIZES[-1]}, {agent.contender.name} vs {peer.contender.name}: "
                f"{agent.cpu_ms:.2f} vs {peer.cpu_ms:.2f} CPU ms per collection (**{verdict}**), "
                f"{agent.cpu_us_per_sample:.1f} vs {peer.cpu_us_per_sample:.1f} µs per database sample, "
                f"{agent.samples[0]:.0f} vs {peer.samples[0]:.0f} database samples."
            )
    lines.append("")
    return lines


def render(args, results, profiles, noise: MachineLoad | None = None) -> str:
    command = command_line(args)
    lines = [
        SECTION,
        "",
        machine_line(),
        f"Command: `{command}` (about 5 minutes). {noise.sentence() if noise else ''} PostgreSQL 15, MariaDB 10.11 "
        "and Redis 7.0 from tests/servers.py; PostgreSQL 15, MariaDB 10.11 and Redis 7.0 from tests/servers.py; "
        "every contender uses the same monitoring account on the same data, the exporters included, so all see "
        "the same tables: PostgreSQL role `dbintel_monitor` (in pg_monitor) on the app database `dbintel_app`; "
        "MariaDB user `dbintel_monitor` (PROCESS, REPLICATION CLIENT, SLAVE MONITOR, SELECT on *.*), given to "
        "mysqld_exporter in a my.cnf (`--config.my-cnf`).",
        "",
        f"Method: {args.rounds} rounds; in each, {args.collections} collections of each in-process collector and "
        f"{args.collections} scrapes of each exporter (order rotated per round), then one window of "
        f"{args.agent_polls} polls of each agent in turn (`dbintel agent`, ignore_assignments, interval "
        f"{AGENT_INTERVAL:g} s, scraped once per interval half an interval away from its polls, SIGSTOPped "
        "outside its windows so its polls never count against another contender). Figures are medians over the "
        "rounds, after warm-up (connect, first size/catalog round): steady state. dbintel fetches sizes and the "
        "MariaDB catalog (global variables) every 5 minutes and re-emits them in between, so the measured rounds "
        "run no such query.",
        "",
        "- CPU: the collecting process's CPU-time clock (clock_getcpuclockid; psutil's cpu_times ticks at 10 ms, "
        "too coarse): the exporter over its scrapes; this process around `collect()`; the agent process over the "
        'whole window (polls, scrapes, idle wake-ups). "of which serving the scrape" is the agent\'s CPU '
        "during the scrapes alone.",
        "- Database samples: exposition sample lines less the exporters' own `go_`/`process_`/`promhttp_`/"
        "`*_exporter_` lines and the agent's `dbintel_agent_*` lines; for the in-process collector, "
        "`len(result.samples)`. CPU per sample divides by these.",
        "- Statements: PostgreSQL `pg_stat_statements` calls of the monitoring role; MariaDB "
        "`performance_schema.events_statements_summary_by_user_by_event_name` of the monitoring user, every "
        "event counted (statement/sql/* and statement/com/*, so an exporter's Ping and Quit count: commands the "
        "server handled), read as root over the unix socket (not the monitoring user, so the probes count "
        "nowhere); Redis `INFO commandstats` delta less the bench's own INFO. New connections: `connection "
        "authorized` lines of the role in the PostgreSQL log (log_connections on for the run; a backend-pid set "
        "would miss a connection opened and closed within one scrape); MariaDB `Connections` status delta (the "
        "bench's own connection is persistent); Redis `total_connections_received`.",
        "- Latency: wall time of one `collect()` / one scrape; for the agent, its poll duration histogram.",
        "- Scrapes ask for plain text (no gzip) on both sides.",
        "",
    ]
    for scenario, title in (
        ("small", "Small schema (PostgreSQL 2 tables, 4 indexes; MariaDB 1 table, 2 indexes; 100 keys in Redis db 0)"),
        (
            "many",
            f"Many tables (+{EXTRA_TABLES} tables × 2 indexes in PostgreSQL and in MariaDB; "
            f"{KEYS_PER_DB} keys in each of {EXTRA_REDIS_DBS} Redis databases)",
        ),
    ):
        tallies = results[scenario]
        lines += [f"### {title}", "", *table(tallies), ""]
        lines += [f"- {v}" for v in verdicts(tallies)]
        for t in tallies:
            if t.problems():
                lines.append(f"- {t.contender.name} problems: {'; '.join(t.problems())}")
            if t.contender.kind in ("mysql", "redis"):
                lines.append(
                    f"- {t.contender.name} {'statements' if t.contender.kind == 'mysql' else 'commands'} "
                    f"per collection: {t.commands()}"
                )
            if isinstance(t.contender, AgentPath):
                lines.append(
                    f"- {t.contender.name}: serving the scrape is {t.scrape_cpu_ms / t.cpu_ms:.0%} of its "
                    f"CPU per collection (one scrape took {t.scrape_latency_ms:.1f} ms wall)."
                )
            prefix = SETTINGS_PREFIXES.get(t.contender.kind)
            if prefix and t.contender.family == "peer":
                lines.append(
                    f"- {t.contender.name}: {t.lines_starting(prefix)} of its database samples "
                    f"are {prefix}* (server settings, one statement)."
                )
        for kind, shares in profiles[scenario].items():
            *layers, (_, total) = shares
            if total < MIN_PROFILE_SAMPLES:
                lines.append(
                    f"- py-spy caught only {total:.0f} on-CPU stack samples of the {kind} agent: too few "
                    "to split; the scrape column above is the split."
                )
                continue
            lines.append(
                f"- where the {kind} agent's CPU goes (py-spy, {total:.0f} on-CPU stack samples): "
                + "; ".join(f"{layer} {share:.0%}" for layer, share in layers if share >= 0.01)
            )
        lines.append("")
    lines += growth_lines(results, args.growth_rounds)
    lines += [
        image_link(
            "collection_cost", "Collection cost: CPU per sample and statements per collection, us vs the exporters"
        ),
        "",
        image_link("collection_growth", "Collection cost as the monitored server grows"),
        "",
    ]
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=DEFAULTS["rounds"])
    parser.add_argument("--collections", type=int, default=DEFAULTS["collections"])
    parser.add_argument("--agent-polls", type=int, default=DEFAULTS["agent_polls"])
    parser.add_argument(
        "--growth-rounds",
        type=int,
        default=DEFAULTS["growth_rounds"],
        help="rounds at each size of the many-databases growth",
    )
    parser.add_argument("--no-profile", action="store_true", help="skip the py-spy profile of a losing agent")
    parser.add_argument("--no-write", action="store_true", help="print only; leave docs/benchmarks.md alone")
    return asyncio.run(main_async(parser.parse_args()))


if __name__ == "__main__":
    sys.exit(main())
