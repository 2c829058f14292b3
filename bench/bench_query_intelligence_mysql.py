"""Cost of MySQL/MariaDB query intelligence, side by side with prometheus-mysqld-exporter's statement collectors.

Run:  python bench/bench_query_intelligence_mysql.py [--rounds N] [--intervals N] [--digests N] [--no-write]

Starts a real MariaDB (tests/servers.py), runs `--digests` distinct statement shapes in a schema (so
events_statements_summary_by_digest holds that many digests plus the server's own), and measures, in
one run, round by round, interleaved (never two contenders at once; all as the same monitoring user):

- dbintel top queries: MysqlCollector.read_statement_stats(1000) — the agent's default
  max_rows_per_query — plus fetch_statement_texts for digests not seen before. "First interval": a
  fresh seen-set, so every digest's text is fetched; "steady": the seen-set kept, numbers only.
- dbintel samples: read_query_samples(100) with 10 sessions in SELECT SLEEP and one blocked on a row lock.
- mysqld_exporter (Debian 0.14), its default collectors switched off, once with
  --collect.perf_schema.eventsstatements (per digest, with DIGEST_TEXT, every scrape), once with
  --collect.perf_schema.eventsstatementssum (one row over all digests), once with
  --collect.info_schema.processlist (its analog of samples); one interval = one /metrics scrape.

Per interval: CPU seconds of the collecting process (this process's CPU clock around the reads; the
exporter's /proc CPU around its scrapes), server time of the monitoring user's statements
(performance_schema.events_statements_summary_by_user_by_event_name SUM_TIMER_WAIT, closed sessions
included), statements, and bytes the server sent (global Bytes_sent, less the probes' own, measured by
back-to-back probes). Prints the figures and rewrites the "## Query intelligence cost (MySQL/MariaDB)"
section of docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import statistics
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import pymysql
from pydantic import SecretStr
from report import machine_line, write_section  # bench/report.py
from servers import process_cpu_seconds, scrape  # bench/servers.py, which also puts the repo root on sys.path

from dbintel.agent.collectors.mysql import TABLE, MysqlCollector
from dbintel.common.config import DatabaseConfig
from tests.servers import MariaDBServer, free_port

SECTION = "## Query intelligence cost (MySQL/MariaDB)"
SCHEMA = "bench_qi"
EXPORTER = shutil.which("prometheus-mysqld-exporter") or "/usr/bin/prometheus-mysqld-exporter"
# mysqld_exporter 0.14's default collectors, off so a scrape is the collector under test only
EXPORTER_DEFAULTS_OFF = [
    "--no-collect.global_status",
    "--no-collect.global_variables",
    "--no-collect.slave_status",
    "--no-collect.info_schema.innodb_cmp",
    "--no-collect.info_schema.innodb_cmpmem",
    "--no-collect.info_schema.query_response_time",
]
SLEEPERS = 10
TOP_LIMIT, SAMPLE_LIMIT = 1000, 100


@dataclass
class Counts:
    server_ps: int  # SUM_TIMER_WAIT of the monitoring user's statements, picoseconds
    statements: int
    bytes_sent: int  # global Bytes_sent


@dataclass
class Figures:
    cpu_s: list[float]
    server_s: list[float]
    statements: list[float]
    bytes: list[float]

    @classmethod
    def empty(cls) -> Figures:
        return cls([], [], [], [])

    def add(self, n: int, cpu: float, before: Counts, after: Counts, probe_bytes: float) -> None:
        self.cpu_s.append(cpu / n)
        self.server_s.append((after.server_ps - before.server_ps) / 1e12 / n)
        self.statements.append((after.statements - before.statements) / n)
        self.bytes.append(max(0.0, after.bytes_sent - before.bytes_sent - probe_bytes) / n)


class Watch:
    """The superuser's view over one unix-socket connection (not the monitoring user, not counted)."""

    def __init__(self, server: MariaDBServer):
        self.conn = pymysql.connect(unix_socket=str(server.socket_path), user=server.superuser, autocommit=True)
        self.user = server.monitor_user
        self.probe_bytes = 0.0

    def counts(self) -> Counts:
        with self.conn.cursor() as cursor:
            cursor.execute(
                "SELECT COALESCE(SUM(SUM_TIMER_WAIT), 0), COALESCE(SUM(COUNT_STAR), 0) FROM performance_schema."
                "events_statements_summary_by_user_by_event_name WHERE USER = %s",
                (self.user,),
            )
            server_ps, statements = cursor.fetchone()
            cursor.execute("SHOW GLOBAL STATUS LIKE 'Bytes_sent'")
            bytes_sent = int(cursor.fetchone()[1])
        return Counts(int(server_ps), int(statements), bytes_sent)

    def calibrate(self) -> None:
        """Bytes one probe adds to Bytes_sent (its replies), from probes back to back."""
        first = self.counts()
        for _ in range(9):
            self.counts()
        self.probe_bytes = (self.counts().bytes_sent - first.bytes_sent) / 10

    def execute(self, sql: str) -> None:
        with self.conn.cursor() as cursor:
            cursor.execute(sql)


def make_digests(server: MariaDBServer, count: int) -> None:
    shapes = [f"SELECT id AS c{i}, owner FROM items WHERE id = {i % 50 + 1} AND owner <> 'x{i}'" for i in range(count)]
    server.execute(
        f"CREATE DATABASE IF NOT EXISTS {SCHEMA};\nUSE {SCHEMA};\n"
        "CREATE TABLE items (id INT PRIMARY KEY, owner VARCHAR(64)) ENGINE=InnoDB;\n"
        "INSERT INTO items SELECT seq, CONCAT('owner', seq) FROM seq_1_to_50;\n"
        "TRUNCATE performance_schema.events_statements_summary_by_digest;\n" + ";\n".join(shapes * 3) + ";\n",
    )


class Exporter:
    def __init__(self, server: MariaDBServer, name: str, flags: list[str]):
        self.name = name
        self.port = free_port()
        self.log = tempfile.NamedTemporaryFile(prefix="dbintel-bench-qi-exporter-", suffix=".log", delete=False)
        dsn = f"{server.monitor_user}:{server.monitor_password}@(127.0.0.1:{server.port})/"
        self.popen = subprocess.Popen(
            [EXPORTER, *EXPORTER_DEFAULTS_OFF, *flags, f"--web.listen-address=127.0.0.1:{self.port}"],
            env={**os.environ, "DATA_SOURCE_NAME": dsn},
            stdout=self.log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        self.url = f"http://127.0.0.1:{self.port}/metrics"
        deadline = time.monotonic() + 30
        while True:
            try:
                scrape(self.url, timeout=5)
                break
            except OSError:
                if self.popen.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"{name} did not start: {Path(self.log.name).read_text()[-2000:]}") from None
                time.sleep(0.1)
        self.up_line = next((line for line in scrape(self.url).splitlines() if line.startswith("mysql_up ")), "")

    def window(self, watch: Watch, n: int, figures: Figures) -> None:
        before, cpu = watch.counts(), process_cpu_seconds(self.popen.pid)
        for _ in range(n):
            scrape(self.url)
        time.sleep(0.15)  # its COM_QUIT may reach the server after the scrape was answered
        cpu = process_cpu_seconds(self.popen.pid) - cpu
        figures.add(n, cpu, before, watch.counts(), watch.probe_bytes)

    def close(self) -> None:
        if self.popen.poll() is None:
            self.popen.terminate()
            try:
                self.popen.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait()
        os.unlink(self.log.name)


async def top_interval(collector: MysqlCollector, seen: set[str]) -> tuple[int, int]:
    """One top-query interval as the agent runs it: the numbers, then texts of new digests only."""
    read = await collector.read_statement_stats(TOP_LIMIT, None)
    if read.errors:
        raise RuntimeError(f"read_statement_stats: {read.errors}")
    new = [counters.query_id for counters in read.counters if counters.query_id not in seen]
    if new:
        seen.update((await collector.fetch_statement_texts(new)).keys())
    return len(read.counters), len(new)


async def dbintel_window(watch: Watch, n: int, figures: Figures, body) -> None:
    before, cpu = watch.counts(), time.process_time()
    for _ in range(n):
        await body()
    cpu = time.process_time() - cpu
    figures.add(n, cpu, before, watch.counts(), watch.probe_bytes)


def start_sessions(server: MariaDBServer) -> list[subprocess.Popen]:
    """SLEEPERS sessions in SELECT SLEEP, and a row-lock holder with one waiter (mariadb clients, as root)."""
    client = [server.client_binary, "--no-defaults", f"--socket={server.socket_path}", f"--user={server.superuser}"]
    sessions = [
        subprocess.Popen([*client, "-e", f"SELECT SLEEP(600) AS s{i}"], stdout=subprocess.DEVNULL)
        for i in range(SLEEPERS)
    ]
    holder = subprocess.Popen([*client, SCHEMA], stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True)
    assert holder.stdin is not None
    holder.stdin.write("BEGIN; SELECT * FROM items WHERE id = 1 FOR UPDATE;\n")
    holder.stdin.flush()
    sessions.append(holder)
    time.sleep(0.5)  # the holder's lock before the waiter asks for it
    waiter = [*client, SCHEMA, "-e", "SET innodb_lock_wait_timeout = 600; UPDATE items SET owner = 'w' WHERE id = 1"]
    sessions.append(subprocess.Popen(waiter, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
    return sessions


def stop_sessions(sessions: list[subprocess.Popen]) -> None:
    for process in sessions:
        process.kill()
        process.wait()


def mean(values: list[float]) -> float:
    return statistics.fmean(values) if values else float("nan")


def row(name: str, figures: Figures) -> str:
    return (
        f"| {name} | {mean(figures.cpu_s) * 1e3:.2f} | {mean(figures.server_s) * 1e3:.3f} | "
        f"{mean(figures.statements):.1f} | {mean(figures.bytes) / 1024:.1f} |"
    )


HEADER = (
    "| contender (per interval) | agent/exporter CPU ms | server time ms | statements | KiB from server |\n"
    "|---|---:|---:|---:|---:|"
)


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--intervals", type=int, default=20, help="intervals (scrapes) per window")
    parser.add_argument("--digests", type=int, default=200)
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args()
    command = "python bench/bench_query_intelligence_mysql.py" + "".join(
        f" --{name} {getattr(args, name)}" for name in ("rounds", "intervals", "digests")
    )
    server = MariaDBServer()
    server.start()
    exporters: list[Exporter] = []
    collector = None
    sessions: list[subprocess.Popen] = []
    try:
        make_digests(server, args.digests)
        os.environ["BENCH_QI_PASSWORD"] = server.monitor_password
        config = DatabaseConfig(
            name="bench",
            type="mysql",
            endpoint=server.address,
            username=server.monitor_user,
            password="${env:BENCH_QI_PASSWORD}",
        )
        collector = MysqlCollector(config, password=SecretStr(server.monitor_password), enabled=TABLE.enabled())
        await collector.collect()  # connected, as the agent's collector is
        watch = Watch(server)
        watch.calibrate()
        exporters = [
            Exporter(
                server,
                "mysqld_exporter --collect.perf_schema.eventsstatements",
                ["--collect.perf_schema.eventsstatements"],
            ),
            Exporter(
                server,
                "mysqld_exporter --collect.perf_schema.eventsstatementssum",
                ["--collect.perf_schema.eventsstatementssum"],
            ),
            Exporter(
                server, "mysqld_exporter --collect.info_schema.processlist", ["--collect.info_schema.processlist"]
            ),
        ]
        first, steady, samples = Figures.empty(), Figures.empty(), Figures.empty()
        peers = {exporter.name: Figures.empty() for exporter in exporters}
        rows_read = texts_first = steady_new = 0
        seen: set[str] = set()
        for exporter in exporters:  # every contender's own statements have their digests before measuring
            scrape(exporter.url)
        await collector.read_query_samples(SAMPLE_LIMIT)
        watch.counts()
        for _ in range(args.rounds):
            fresh: set[str] = set()
            await dbintel_window(watch, 1, first, lambda fresh=fresh: top_interval(collector, fresh))  # all texts
            texts_first = len(fresh)
            seen |= fresh

            async def steady_interval() -> None:
                nonlocal rows_read, steady_new
                rows_read, new = await top_interval(collector, seen)  # noqa: B023 - called within the round
                steady_new += new  # the exporters' and probes' own first statements, if any

            await dbintel_window(watch, args.intervals, steady, steady_interval)
            for exporter in exporters[:2]:
                exporter.window(watch, args.intervals, peers[exporter.name])
        sessions = start_sessions(server)
        await asyncio.sleep(1.0)  # the clients connect and send their statements
        check = await collector.read_query_samples(SAMPLE_LIMIT)
        blocked = [session for session in check.sessions if session.blocked_by]
        seen_sessions = len(check.sessions)

        async def sample_interval() -> None:
            read = await collector.read_query_samples(SAMPLE_LIMIT)
            if read.errors:
                raise RuntimeError(f"read_query_samples: {read.errors}")

        for _ in range(args.rounds):
            await dbintel_window(watch, args.intervals, samples, sample_interval)
            exporters[2].window(watch, args.intervals, peers[exporters[2].name])
    finally:
        stop_sessions(sessions)
        for exporter in exporters:
            exporter.close()
        if collector is not None:
            await collector.close()
        server.close()

    digest_rows = rows_read
    lines = [
        SECTION,
        "",
        f"Command: `{command}`. {machine_line()} MariaDB {'.'.join(map(str, collector.client.version.number))} "
        f"(tests/servers.py), {args.digests} distinct digests in `{SCHEMA}` "
        f"({digest_rows} rows in events_statements_summary_by_digest with the server's own); mysqld_exporter "
        f"0.14 (Debian) with its default collectors off, same server and monitoring user. Means over "
        f"{args.rounds} rounds of {args.intervals} intervals (the first interval: one per round), contenders "
        "interleaved, never at the same time. Server time: SUM_TIMER_WAIT of the monitoring user's statements "
        "(events_statements_summary_by_user_by_event_name); KiB: the server's Bytes_sent less our probes'.",
        "",
        "### Top queries",
        "",
        HEADER,
        row(f"dbintel, first interval (numbers + {texts_first} texts, 2 statements)", first),
        row(f"dbintel, steady state (numbers; {steady_new} new texts in all its intervals)", steady),
        *(row(name, peers[name]) for name in list(peers)[:2]),
        "",
        "### Query samples",
        "",
        f"{SLEEPERS} sessions in `SELECT SLEEP`, one holding a row lock and one waiting for it "
        f"(dbintel saw {seen_sessions} sessions, {len(blocked)} blocked with its blocker).",
        "",
        HEADER,
        row("dbintel read_query_samples(100)", samples),
        row(list(peers)[2], peers[list(peers)[2]]),
        "",
        "Notes. dbintel's steady interval is one statement of numbers (~25 counters per digest, no text); a "
        "digest's text crosses once, in the interval it first appears (the first interval's CPU is mostly "
        "obfuscating those texts). The steady state's new texts are dbintel's own two statements (the digest "
        "read and the text fetch), whose digests exist only after their first run. mysqld_exporter's eventsstatements re-reads DIGEST_TEXT (120 characters) of up to 250 "
        "digests every scrape; eventsstatementssum is one row summed over all digests (no per-query figures); "
        "info_schema.processlist counts threads by state (no statement, wait, blocker). Its 5 statements per "
        "scrape include its connection setup (it connects per scrape). dbintel's sample statement joins "
        "threads, current statements and waits, INNODB_TRX, INNODB_LOCK_WAITS and metadata_locks (both blocker kinds).",
        "",
    ]
    text = "\n".join(lines)
    print(text)
    if not args.no_write:
        write_section(SECTION, text)


if __name__ == "__main__":
    asyncio.run(main())
