"""Cost of the Redis and MongoDB query-intelligence reads, per interval.

Run:  python bench/bench_query_intelligence_redis_mongodb.py [--intervals N] [--no-write]

Starts a real Redis and a real SecantusDB (tests/servers.py) and, per interval, runs a workload then
calls the collector's reads, as the agent's loops do:

- Redis: slowlog-log-slower-than 0 and slowlog-max-len 128 (every command logged; the log full), 120
  commands of 24 key patterns per interval (over the 128 kept, so the id gap shows), 200 idle clients and
  10 clients blocked in BLPOP. Top queries: SLOWLOG GET; samples: CLIENT LIST. Server time from INFO
  commandstats (usec of slowlog|get, client|list), bytes sent by the server from INFO stats
  total_net_output_bytes (less the INFO replies themselves, measured by two INFOs back to back).
- MongoDB (SecantusDB): the profiler on (slowms 0) for the database, 100 operations of 10 shapes per
  interval, 50 idle connections. Top queries: a find on system.profile after the cursor; samples:
  currentOp. Bytes are the BSON size of the replies (SecantusDB counts no network bytes).

Agent CPU is this process's CPU time around each read (time.process_time), latency the wall time.
Prints the figures and rewrites the "## Query intelligence: Redis and MongoDB" section of docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import bson
import redis
import redis.asyncio as aredis
from pydantic import SecretStr
from report import machine_line, write_section
from servers import REPO_ROOT  # noqa: F401  (puts the repo root on sys.path)

from dbintel.agent.collectors.mongodb import TABLE, MongodbCollector
from dbintel.agent.collectors.mongodb.activity import parse_cursor
from dbintel.agent.collectors.redis import REDIS_METRICS, RedisCollector
from dbintel.common.config import DatabaseConfig
from tests.servers import RedisServer, SecantusServer

SECTION = "## Query intelligence: Redis and MongoDB"
COMMAND = "python bench/bench_query_intelligence_redis_mongodb.py"


def median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


async def timed(call):
    cpu, wall = time.process_time(), time.perf_counter()
    result = await call()
    return result, time.process_time() - cpu, time.perf_counter() - wall


# --- Redis ---------------------------------------------------------------------------------------


def commandstats_usec(admin: redis.Redis) -> dict[str, int]:
    return {name.removeprefix("cmdstat_"): stats["usec"] for name, stats in admin.info("commandstats").items()}


def output_bytes(admin: redis.Redis) -> int:
    return int(admin.info("stats")["total_net_output_bytes"])


async def bench_redis(intervals: int) -> dict:
    server = RedisServer().start()
    idle, blocked = [], []
    try:
        admin = server.client()
        admin.config_set("slowlog-max-len", 128)
        admin.config_set("slowlog-log-slower-than", 0)
        for _ in range(200):
            client = server.client()
            client.ping()
            idle.append(client)
        blockers = [aredis.Redis(host=server.host, port=server.port, password=server.password) for _ in range(10)]
        blocked = [asyncio.create_task(b.blpop([f"queue:{i}"], timeout=0)) for i, b in enumerate(blockers)]
        os.environ["BENCH_QI_REDIS_PASSWORD"] = server.password
        database = DatabaseConfig(
            name="cache", type="redis", endpoint=server.address, password="${env:BENCH_QI_REDIS_PASSWORD}"
        )
        collector = RedisCollector(database, password=SecretStr(server.password), enabled=REDIS_METRICS.enabled())
        cursor = (await collector.read_statement_stats(1000, None)).cursor
        await collector.read_query_samples(100)
        base = output_bytes(admin)
        info_bytes = output_bytes(admin) - base  # one INFO stats reply
        rows: dict[str, list[float]] = {k: [] for k in ("top_cpu", "top_wall", "top_us", "top_bytes", "top_rows")}
        rows |= {k: [] for k in ("sample_cpu", "sample_wall", "sample_us", "sample_bytes", "sessions", "lost")}
        rows["top_statements"], rows["sample_statements"] = [], []
        for interval in range(intervals):
            with admin.pipeline(transaction=False) as pipe:
                for i in range(120):
                    pipe.set(f"pattern{chr(97 + i % 24)}:user:{interval * 1000 + i}:email", f"user{i}@example.com")
                pipe.execute()
            lost_before = collector.slowlog_lost
            usec, out = commandstats_usec(admin), output_bytes(admin)
            read, cpu, wall = await timed(lambda c=cursor: collector.read_statement_stats(1000, c))
            out2 = output_bytes(admin)  # before INFO commandstats: out2 - out = one INFO stats reply + the read
            usec2 = commandstats_usec(admin)
            cursor = read.cursor
            rows["top_cpu"].append(cpu)
            rows["top_wall"].append(wall)
            rows["top_us"].append(usec2.get("slowlog|get", 0) - usec.get("slowlog|get", 0))
            rows["top_bytes"].append(out2 - out - info_bytes)
            rows["top_rows"].append(len(read.counters))
            rows["top_statements"].append(read.statements)
            rows["lost"].append(collector.slowlog_lost - lost_before)
            usec, out = commandstats_usec(admin), output_bytes(admin)
            samples, cpu, wall = await timed(lambda: collector.read_query_samples(100))
            out2 = output_bytes(admin)
            usec2 = commandstats_usec(admin)
            rows["sample_cpu"].append(cpu)
            rows["sample_wall"].append(wall)
            rows["sample_us"].append(usec2.get("client|list", 0) - usec.get("client|list", 0))
            rows["sample_bytes"].append(out2 - out - info_bytes)
            rows["sessions"].append(len(samples.sessions))
            rows["sample_statements"].append(samples.statements)
        await collector.close()
        for task in blocked:
            task.cancel()
        await asyncio.gather(*blocked, return_exceptions=True)
        for b in blockers:
            await b.aclose()
        return {k: median(v) for k, v in rows.items()}
    finally:
        for task in blocked:
            task.cancel()
        for client in idle:
            client.close()
        server.close()


# --- MongoDB -------------------------------------------------------------------------------------


async def bench_mongodb(intervals: int) -> dict:
    server = SecantusServer().start()
    idle = []
    try:
        app = server.client(appname="bench-app")
        db = app["bench"]
        db.orders.insert_many([{"email": f"user{i}@example.com", "n": i, "tag": f"t{i % 10}"} for i in range(2000)])
        db.command({"profile": 1, "slowms": 0})
        for _ in range(50):
            client = server.client()
            client.admin.command("ping")
            idle.append(client)
        database = DatabaseConfig(name="docs", type="mongodb", endpoint=server.address, database="bench")
        collector = MongodbCollector(database, password=None, enabled=TABLE.enabled())
        cursor = (await collector.read_statement_stats(1000, None)).cursor
        await collector.read_query_samples(100)
        rows: dict[str, list[float]] = {
            k: [] for k in ("top_cpu", "top_wall", "top_bytes", "top_rows", "top_statements")
        }
        rows |= {k: [] for k in ("sample_cpu", "sample_wall", "sample_bytes", "sessions", "sample_statements")}
        for interval in range(intervals):
            for i in range(100):
                field = ["email", "n", "tag", "missing", "x"][i % 5]
                op = {"$eq": 1} if i % 2 else {"$gt": interval}
                list(db.orders.find({field: op}).limit(5))
            after = parse_cursor(cursor)
            entries = await collector.client.fetch_profile("bench", after, 1000)  # the same reply, for its size
            rows["top_bytes"].append(len(bson.encode({"b": entries})))
            read, cpu, wall = await timed(lambda c=cursor: collector.read_statement_stats(1000, c))
            cursor = read.cursor
            rows["top_cpu"].append(cpu)
            rows["top_wall"].append(wall)
            rows["top_rows"].append(len(read.counters))
            rows["top_statements"].append(read.statements)
            reply = await collector.client.fetch_current_op()
            rows["sample_bytes"].append(len(bson.encode(reply)))
            samples, cpu, wall = await timed(lambda: collector.read_query_samples(100))
            rows["sample_cpu"].append(cpu)
            rows["sample_wall"].append(wall)
            rows["sessions"].append(len(samples.sessions))
            rows["sample_statements"].append(samples.statements)
        await collector.close()
        return {k: median(v) for k, v in rows.items()}
    finally:
        for client in idle:
            client.close()
        server.close()


def report(redis_figures: dict, mongo_figures: dict, intervals: int) -> str:
    r, m = redis_figures, mongo_figures
    return f"""{SECTION}

Command: `{COMMAND} --intervals {intervals}`. {machine_line()} Medians over {intervals} intervals.

| source | read | statements | agent CPU | latency | server time | bytes from server | rows |
|---|---|---|---|---|---|---|---|
| Redis | top queries (SLOWLOG GET 1000, 128 kept) | {r["top_statements"]:.0f} | {r["top_cpu"] * 1e3:.2f} ms | {r["top_wall"] * 1e3:.2f} ms | {r["top_us"]:.0f} µs | {r["top_bytes"]:.0f} | {r["top_rows"]:.0f} patterns |
| Redis | samples (CLIENT LIST, 212 clients) | {r["sample_statements"]:.0f} | {r["sample_cpu"] * 1e3:.2f} ms | {r["sample_wall"] * 1e3:.2f} ms | {r["sample_us"]:.0f} µs | {r["sample_bytes"]:.0f} | {r["sessions"]:.0f} sessions |
| MongoDB (SecantusDB) | top queries (system.profile after the cursor) | {m["top_statements"]:.0f} | {m["top_cpu"] * 1e3:.2f} ms | {m["top_wall"] * 1e3:.2f} ms | n/a | {m["top_bytes"]:.0f} (BSON) | {m["top_rows"]:.0f} shapes |
| MongoDB (SecantusDB) | samples (currentOp, 50 idle connections) | {m["sample_statements"]:.0f} | {m["sample_cpu"] * 1e3:.2f} ms | {m["sample_wall"] * 1e3:.2f} ms | n/a | {m["sample_bytes"]:.0f} (BSON) | {m["sessions"]:.0f} sessions |

Redis: 120 commands per interval, every one logged (slowlog-log-slower-than 0) into a slowlog of 128, so
each read gets the interval's newest entries; median entries lost per interval (the id gap) =
{r["lost"]:.0f}. The slowlog's size bounds the read, whatever the traffic: at most 128 entries of at most
32 arguments × 128 bytes. CLIENT LIST is O(clients): one line (~300 bytes) per client.
MongoDB: 100 operations per interval, all profiled (slowms 0); the read fetches only the entries after the
cursor, projected to the mapped fields. SecantusDB's currentOp lists every connection (it ignores the
`active` filter a MongoDB server applies), so its sample bytes are an upper bound. SecantusDB has no
per-command server timing: n/a.
"""


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--intervals", type=int, default=20)
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args()
    redis_figures = asyncio.run(bench_redis(args.intervals))
    mongo_figures = asyncio.run(bench_mongodb(args.intervals))
    text = report(redis_figures, mongo_figures, args.intervals)
    print(text)
    if not args.no_write:
        write_section(SECTION, text)


if __name__ == "__main__":
    main()
