"""Query-intelligence cost of dbintel's PostgreSQL source, side by side with postgres_exporter's pg_stat_statements query.

Run:  python bench/bench_query_intelligence_postgresql.py [--statements 5000] [--intervals 10] [--no-write]

Starts a real PostgreSQL 15 (tests/servers.py, pg_stat_statements preloaded, pg_stat_statements.max
raised to 10000), fills pg_stat_statements with `--statements` distinct statements (`SELECT cK FROM tN
WHERE cK = ?` over 100-column tables: one queryid each), and measures in one run, interval by interval:

- top queries (dbintel): `read_statement_stats(1000)` (the default max_rows_per_query) — the steady
  state — and `read_statement_stats(100)`; the first interval with a report adds one `fetch_statement_texts` for the top 10 ids
  (top_n_query's default), measured on its own and once for 1000 new ids (every row new at once);
- samples (dbintel): `read_query_samples(100)` with 30 other sessions (10 running pg_sleep, 10 idle in
  transaction, 10 blocked on a row lock);
- postgres_exporter 0.11 (Debian): it has no stat_statements collector (that came in 0.13); its
  documented way is the `pg_stat_statements` query of the package's examples/queries.yaml, run here with
  the PG 13+ column names (total_exec_time, ...) and the exporter's other collectors off, one scrape
  per interval.

Figures per interval (medians over `--intervals` after one warm-up interval, with a light workload of
200 of the statements between intervals so counters move):
- agent CPU: process time of this process around the read and its mapping (asyncpg decoding
  included; no Prometheus rendering); the exporter: its process CPU per scrape (query, decoding and
  its /metrics rendering);
- database time: the statement's own execution time as pg_stat_statements records it (total_exec_time
  delta / calls delta of that statement; track_planning off, so planning is not in it);
- bytes from the server: counted by a TCP relay between client and server (a separate process, so not in
  the CPU figures): every byte the server sent for the statement, protocol framing included.
Prints the figures and rewrites the "## Query intelligence cost: PostgreSQL" section of docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import os
import secrets
import socket
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

import asyncpg
from pydantic import SecretStr
from report import MachineLoad, machine_line, write_section  # bench/report.py
from servers import process_cpu_seconds, scrape  # bench/servers.py; puts the repo root on sys.path

from dbintel.agent.collectors.postgresql import TABLE, PostgresqlCollector
from dbintel.common.config import DatabaseConfig
from tests.servers import PostgresServer, free_port

SECTION = "## Query intelligence cost: PostgreSQL"
COLUMNS_PER_TABLE = 100
TOP_N = 10
MAX_ROWS = 1000
SMALL_ROWS = 100  # a smaller max_rows_per_query, for how the read scales with it
SAMPLE_ROWS = 100
PASSWORD_ENV = "BENCH_QI_PG_PASSWORD"
EXPORTER_ROLE = "bench_exporter"  # a role of its own, so its statements are told apart from dbintel's
EXPORTER_QUERY = (
    "SELECT t2.rolname, t3.datname, queryid, calls, total_exec_time / 1000 as total_time_seconds, "
    "min_exec_time / 1000 as min_time_seconds, max_exec_time / 1000 as max_time_seconds, "
    "mean_exec_time / 1000 as mean_time_seconds, stddev_exec_time / 1000 as stddev_time_seconds, rows, "
    "shared_blks_hit, shared_blks_read, shared_blks_dirtied, shared_blks_written, local_blks_hit, "
    "local_blks_read, local_blks_dirtied, local_blks_written, temp_blks_read, temp_blks_written, "
    "blk_read_time / 1000 as blk_read_time_seconds, blk_write_time / 1000 as blk_write_time_seconds "
    "FROM pg_stat_statements t1 JOIN pg_roles t2 ON (t1.userid=t2.oid) JOIN pg_database t3 ON (t1.dbid=t3.oid) "
    "WHERE t2.rolname != 'rdsadmin'"
)
EXPORTER_COUNTERS = ["calls", "total_time_seconds", "rows", "shared_blks_hit", "shared_blks_read"]
EXPORTER_COUNTERS += ["shared_blks_dirtied", "shared_blks_written", "local_blks_hit", "local_blks_read"]
EXPORTER_COUNTERS += ["local_blks_dirtied", "local_blks_written", "temp_blks_read", "temp_blks_written"]
EXPORTER_COUNTERS += ["blk_read_time_seconds", "blk_write_time_seconds"]
EXPORTER_GAUGES = ["min_time_seconds", "max_time_seconds", "mean_time_seconds", "stddev_time_seconds"]


class StatementsServer(PostgresServer):
    """The test PostgreSQL with room for more than pg_stat_statements' default 5000 entries."""

    def _command(self) -> list[str]:
        return [*super()._command(), "-c", "pg_stat_statements.max=10000"]


# --- a byte-counting TCP relay, in its own process --------------------------------------------------


def _relay(listen: socket.socket, target: tuple[str, int], counter) -> None:
    async def pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, count: bool) -> None:
        try:
            while data := await reader.read(65536):
                if count:
                    with counter.get_lock():
                        counter.value += len(data)
                writer.write(data)
                await writer.drain()
        except OSError:
            pass
        finally:
            writer.close()

    async def handle(client_reader: asyncio.StreamReader, client_writer: asyncio.StreamWriter) -> None:
        server_reader, server_writer = await asyncio.open_connection(*target)
        await asyncio.gather(pipe(client_reader, server_writer, False), pipe(server_reader, client_writer, True))

    async def main() -> None:
        server = await asyncio.start_server(handle, sock=listen)
        async with server:
            await server.serve_forever()

    asyncio.run(main())


class Relay:
    """Counts the bytes the server sends through it (server -> client)."""

    def __init__(self, target: tuple[str, int]):
        self.counter = multiprocessing.Value("q", 0)
        listen = socket.socket()
        listen.bind(("127.0.0.1", 0))
        listen.listen(16)
        self.port = listen.getsockname()[1]
        self.process = multiprocessing.get_context("fork").Process(
            target=_relay, args=(listen, target, self.counter), daemon=True
        )
        self.process.start()
        listen.close()

    @property
    def bytes(self) -> int:
        with self.counter.get_lock():
            return int(self.counter.value)

    def close(self) -> None:
        self.process.kill()
        self.process.join()


# --- workload ---------------------------------------------------------------------------------------


def statement(i: int) -> str:
    table, column = divmod(i, COLUMNS_PER_TABLE)
    return f"SELECT c{column} FROM qi_t{table} WHERE c{column} = {i}"


async def fill(pg: PostgresServer, statements: int) -> None:
    conn = await asyncpg.connect(pg.dsn(pg.superuser, pg.superuser_password, pg.app_database))
    try:
        columns = ", ".join(f"c{c} int" for c in range(COLUMNS_PER_TABLE))
        for table in range((statements + COLUMNS_PER_TABLE - 1) // COLUMNS_PER_TABLE):
            await conn.execute(f"CREATE TABLE qi_t{table} ({columns})")
        await conn.execute("SELECT pg_stat_statements_reset()")
        for i in range(statements):
            await conn.execute(statement(i))
    finally:
        await conn.close()


async def light_workload(conn: asyncpg.Connection, statements: int, round_: int) -> None:
    for i in range(200):
        await conn.execute(statement((round_ * 200 + i * 7) % statements))


def entries(pg: PostgresServer) -> int:
    return int(pg.execute("SELECT count(*) FROM pg_stat_statements")[0][0])


def own_statement(pg: PostgresServer, pattern: str, role: str | None = None) -> tuple[float, float]:
    """(calls, total_exec_time ms) of the statements of `role` (dbintel's monitoring role by default)
    whose text matches `pattern`."""
    row = pg.execute(
        "SELECT coalesce(sum(s.calls), 0), coalesce(sum(s.total_exec_time), 0) FROM pg_stat_statements s "
        f"JOIN pg_roles r ON r.oid = s.userid WHERE r.rolname = '{role or pg.monitor_user}' "
        f"AND s.query LIKE '{pattern}'"
    )[0]
    return float(row[0]), float(row[1])


class Measure:
    """Per-interval figures of one contender: agent CPU, server time, bytes."""

    def __init__(self, name: str):
        self.name = name
        self.cpu: list[float] = []
        self.server_ms: list[float] = []
        self.bytes: list[int] = []
        self.rows: list[int] = []

    def row(self) -> str:
        return (
            f"| {self.name} | {statistics.median(self.cpu) * 1000:.2f} | {statistics.median(self.server_ms):.2f} "
            f"| {statistics.median(self.bytes) / 1024:.1f} | {statistics.median(self.rows):.0f} |"
        )


async def measured(
    pg: PostgresServer, relay: Relay, pattern: str, measure: Measure, call, cpu_of=None, rows_of=len, role=None
) -> object:
    calls0, ms0 = own_statement(pg, pattern, role)
    bytes0, cpu0 = relay.bytes, (cpu_of() if cpu_of else time.process_time())
    value = await call()
    cpu = (cpu_of() if cpu_of else time.process_time()) - cpu0
    sent = relay.bytes - bytes0
    calls1, ms1 = own_statement(pg, pattern, role)
    measure.cpu.append(cpu)
    measure.bytes.append(sent)
    measure.server_ms.append((ms1 - ms0) / max(1.0, calls1 - calls0))
    measure.rows.append(rows_of(value))
    return value


def exporter_queries(work: Path) -> Path:
    lines = ["pg_stat_statements:", f'  query: "{EXPORTER_QUERY}"', "  master: true", "  metrics:"]
    for label in ("rolname", "datname", "queryid"):
        lines += [f"    - {label}:", '        usage: "LABEL"', f'        description: "{label}"']
    for name in EXPORTER_COUNTERS + EXPORTER_GAUGES:
        usage = "COUNTER" if name in EXPORTER_COUNTERS else "GAUGE"
        lines += [f"    - {name}:", f'        usage: "{usage}"', f'        description: "{name}"']
    path = work / "queries.yaml"
    path.write_text("\n".join(lines) + "\n")
    return path


async def sessions(pg: PostgresServer, count: int) -> tuple[list[asyncpg.Connection], list[asyncio.Task]]:
    """`count` running pg_sleep, `count` idle in transaction (one holding a row lock), `count` blocked on it."""
    dsn = pg.dsn(pg.superuser, pg.superuser_password, pg.app_database)
    conns = [await asyncpg.connect(dsn) for _ in range(3 * count)]
    tasks = [asyncio.create_task(c.execute("SELECT pg_sleep(600)")) for c in conns[:count]]
    for i, c in enumerate(conns[count : 2 * count]):
        await c.execute("BEGIN")
        await c.execute(f"UPDATE customers SET name = name WHERE id = {1 if i == 0 else 10 + i}")
    tasks += [
        asyncio.create_task(c.execute("UPDATE customers SET name = name WHERE id = 1")) for c in conns[2 * count :]
    ]
    while int(pg.execute("SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock'")[0][0]) < count:
        await asyncio.sleep(0.05)
    return conns, tasks


async def run(args) -> str:
    work = Path(tempfile.mkdtemp(prefix="dbintel-bench-qi-pg-"))
    with StatementsServer() as pg:
        started = time.perf_counter()
        await fill(pg, args.statements)
        filled = entries(pg)
        print(f"pg_stat_statements: {filled} entries ({time.perf_counter() - started:.1f}s to fill)")
        exporter_password = secrets.token_hex(12)
        pg.execute(f"CREATE ROLE {EXPORTER_ROLE} LOGIN PASSWORD '{exporter_password}' IN ROLE pg_monitor")
        agent_relay, exporter_relay = Relay((pg.host, pg.port)), Relay((pg.host, pg.port))
        os.environ[PASSWORD_ENV] = pg.monitor_password
        config = DatabaseConfig(
            name="bench",
            type="postgresql",
            endpoint=f"127.0.0.1:{agent_relay.port}",
            username=pg.monitor_user,
            password=f"${{env:{PASSWORD_ENV}}}",
            database=pg.app_database,
        )
        collector = PostgresqlCollector(config, password=SecretStr(pg.monitor_password), enabled=TABLE.enabled())
        port = free_port()
        exporter_log = (work / "exporter.log").open("w")
        exporter = subprocess.Popen(  # noqa: ASYNC220 - started once, before any measurement
            [
                "prometheus-postgres-exporter",
                f"--extend.query-path={exporter_queries(work)}",
                "--disable-default-metrics",
                "--disable-settings-metrics",
                "--no-collector.database",
                "--no-collector.bgwriter",
                f"--web.listen-address=127.0.0.1:{port}",
            ],
            env={
                **os.environ,
                "DATA_SOURCE_NAME": pg.dsn(EXPORTER_ROLE, exporter_password, pg.app_database).replace(
                    f"@{pg.host}:{pg.port}/", f"@127.0.0.1:{exporter_relay.port}/"
                ),
            },
            stdout=exporter_log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        url = f"http://127.0.0.1:{port}/metrics"
        workload = await asyncpg.connect(pg.dsn(pg.superuser, pg.superuser_password, pg.app_database))
        try:
            deadline = time.monotonic() + 30
            while True:
                try:
                    first_scrape = scrape(url, timeout=30)
                    break
                except OSError:
                    if exporter.poll() is not None or time.monotonic() > deadline:
                        raise RuntimeError(
                            f"exporter did not start: {(work / 'exporter.log').read_text()[-2000:]}"
                        ) from None
                    await asyncio.sleep(0.2)
            exporter_series = sum(1 for line in first_scrape.splitlines() if line.startswith("pg_stat_statements_"))
            top = Measure(f"dbintel read_statement_stats({MAX_ROWS}), steady state")
            top_small = Measure(f"dbintel read_statement_stats({SMALL_ROWS}), steady state")
            texts_top = Measure(f"dbintel fetch_statement_texts({TOP_N} new ids), first interval only")
            texts_all = Measure(f"dbintel fetch_statement_texts({MAX_ROWS} new ids), worst case")
            peer = Measure("postgres_exporter 0.11 pg_stat_statements query, per scrape")
            samples = Measure(f"dbintel read_query_samples({SAMPLE_ROWS}), 30 sessions")
            exporter_cpu = lambda: process_cpu_seconds(exporter.pid)  # noqa: E731
            read = await collector.read_statement_stats(MAX_ROWS, None)  # warm-up: connects, prepares
            assert not read.errors, read.errors
            await collector.fetch_statement_texts([c.query_id for c in read.counters[:TOP_N]])
            for round_ in range(args.intervals):
                await light_workload(workload, args.statements, round_)
                read = await measured(
                    pg,
                    agent_relay,
                    "%GROUP BY queryid%",
                    top,
                    lambda: collector.read_statement_stats(MAX_ROWS, None),
                    rows_of=lambda r: len(r.counters),
                )
                await measured(
                    pg,
                    agent_relay,
                    "%GROUP BY queryid%",
                    top_small,
                    lambda: collector.read_statement_stats(SMALL_ROWS, None),
                    rows_of=lambda r: len(r.counters),
                )
                ids = [c.query_id for c in read.counters]
                offset = (round_ * TOP_N) % (len(ids) - TOP_N)
                await measured(
                    pg,
                    agent_relay,
                    "%DISTINCT ON (queryid)%",
                    texts_top,
                    lambda ids=ids, offset=offset: collector.fetch_statement_texts(ids[offset : offset + TOP_N]),
                )
                if round_ < 3:  # the worst case is the same every time: three are enough
                    await measured(
                        pg,
                        agent_relay,
                        "%DISTINCT ON (queryid)%",
                        texts_all,
                        lambda ids=ids: collector.fetch_statement_texts(ids),
                    )
                await measured(
                    pg,
                    exporter_relay,
                    "%t2.rolname != %",
                    peer,
                    lambda: asyncio.to_thread(scrape, url, 30),
                    cpu_of=exporter_cpu,
                    role=EXPORTER_ROLE,
                    rows_of=lambda text: sum(
                        1 for line in text.splitlines() if line.startswith("pg_stat_statements_calls")
                    ),
                )
            conns, tasks = await sessions(pg, 10)
            try:
                for _ in range(args.intervals):
                    await measured(
                        pg,
                        agent_relay,
                        "%FROM pg_stat_activity a%",
                        samples,
                        lambda: collector.read_query_samples(SAMPLE_ROWS),
                        rows_of=lambda r: len(r.sessions),
                    )
            finally:
                for c in conns:
                    c.terminate()
                for t in tasks:
                    t.cancel()
                await asyncio.gather(*tasks, return_exceptions=True)
            statements_per_read = collector.client.statements
            monitor_calls = int(own_statement(pg, "%")[0])  # every statement the server ran for dbintel's role
        finally:
            await workload.close()
            await collector.close()
            exporter.terminate()
            exporter.wait(10)
            agent_relay.close()
            exporter_relay.close()

    header = "| per interval | agent / exporter CPU (ms) | database time (ms) | bytes from server (KiB) | rows |"
    table = "\n".join(
        [
            header,
            "|---|---:|---:|---:|---:|",
            top.row(),
            top_small.row(),
            texts_top.row(),
            texts_all.row(),
            peer.row(),
            samples.row(),
        ]
    )
    reads = 2 + sum(
        len(m.cpu) for m in (top, top_small, texts_top, texts_all, samples)
    )  # 2: the warm-up read and texts
    first = statistics.median(top.cpu) + statistics.median(texts_top.cpu)
    ratio_server = statistics.median(peer.server_ms) / statistics.median(top.server_ms)
    ratio_bytes = statistics.median(peer.bytes) / statistics.median(top.bytes)
    ratio_cpu = statistics.median(peer.cpu) / statistics.median(top.cpu)
    summary = (
        f"First top-query interval (read + texts of {TOP_N} new ids): {first * 1000:.2f} ms agent CPU, "
        f"{(statistics.median(top.bytes) + statistics.median(texts_top.bytes)) / 1024:.1f} KiB; steady state: "
        f"the read alone. Against the exporter's pg_stat_statements query, per interval: "
        f"{ratio_server:.1f}x less database time, {ratio_bytes:.1f}x fewer bytes, {ratio_cpu:.1f}x less CPU "
        f"(the exporter exports all {filled}+ entries, {exporter_series} series; dbintel reads the top {MAX_ROWS} "
        f"and exports the top {TOP_N}). dbintel sent {statements_per_read} statements for {reads} reads; "
        f"the server ran {monitor_calls} for its role (pg_stat_statements)."
    )
    print(table)
    print(summary)
    return f"""{SECTION}

Command: `python bench/bench_query_intelligence_postgresql.py --statements {args.statements} --intervals {args.intervals}`

{machine_line()} PostgreSQL 15, pg_stat_statements with {filled} entries ({args.statements} distinct
`SELECT cK FROM tN WHERE cK = ?` statements), pg_stat_statements.max = 10000. Medians over {args.intervals}
intervals, with 200 of the statements re-run between intervals.

{table}

{summary}

How measured: CPU is this process's process time around the read and its mapping (asyncpg decoding
included), and the exporter's process CPU per scrape (its query, decoding and /metrics rendering; the
Debian postgres_exporter 0.11.1 has no stat_statements collector, so it runs its packaged
examples/queries.yaml `pg_stat_statements` query with the PG 13+ column names, its other collectors
off). Database time is each statement's own total_exec_time per call in pg_stat_statements (planning
not tracked). Bytes are what the server sent, counted by a TCP relay process between client and server
(protocol framing included). The exporter reads the `pg_stat_statements` view, which loads the server's
query-text file on every call even though it selects no text; dbintel's read calls
pg_stat_statements(false) and aggregates server-side, and only the once-per-new-id text fetch reads
that file. Samples: pg_stat_activity with 10 sessions in pg_sleep, 10 idle in transaction and 10
blocked on a row lock (pg_blocking_pids() called for those 10 only).
"""


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--statements", type=int, default=5000)
    parser.add_argument("--intervals", type=int, default=10)
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args()
    with MachineLoad() as load:
        section = asyncio.run(run(args))
    print(load.sentence())
    section = section.rstrip("\n") + "\n\n" + load.sentence() + "\n"
    if not args.no_write:
        write_section(SECTION, section)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
