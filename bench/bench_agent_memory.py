"""Memory of a real `dbintel agent` process: idle, and polling 10 and 100 databases.

Run:  python bench/bench_agent_memory.py [--repeat N] [--interval S] [--no-write]

Starts one PostgreSQL (max_connections raised to 250) and one Redis (tests/servers.py), then, for
each scenario, a `dbintel agent` subprocess (ignore_assignments: it polls every configured database,
no coordinator) whose databases are logical entries on those two servers: PostgreSQL entries with
different names on the same server and database (one connection each), Redis entries on db numbers
0-15. The RSS and USS of the agent are read once every database has been polled at least 3 times
(3 intervals, scraped once per interval meanwhile, as Prometheus would) and again one interval
later; the later reading is reported, the median over `--repeat` runs (scenarios interleaved).
Prints the figures and rewrites the "## Agent memory" section of docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time

from report import DOC, image_link, machine_line, write_data, write_section  # bench/report.py
from servers import AgentProcess, WidePostgresServer, metric_by_resource  # bench/servers.py

from tests.servers import RedisServer

SECTION = "## Agent memory"
DEFAULTS = {"repeat": 2, "interval": 2.0}
PG_PASSWORD_ENV, REDIS_PASSWORD_ENV = "BENCH_PG_PASSWORD", "BENCH_REDIS_PASSWORD"
SETTLED_POLLS = 3
REDIS_DATABASES = 16
MiB = 1024 * 1024

# (label, PostgreSQL entries, Redis entries, the scenario the marginal cost per database is taken against).
# The first database of a type also loads its driver and collector modules (imported lazily), so the
# marginal cost is measured from a run that already has that type.
SCENARIOS = (
    ("idle (no databases)", 0, 0, None),
    ("1 PostgreSQL database", 1, 0, None),
    ("1 Redis database", 0, 1, None),
    ("10 databases", 5, 5, None),
    ("100 databases", 50, 50, "10 databases"),
    ("100 PostgreSQL databases", 100, 0, "1 PostgreSQL database"),
    ("100 Redis databases", 0, 100, "1 Redis database"),
)


def databases(pg: WidePostgresServer, rd: RedisServer, pg_count: int, redis_count: int, interval: float) -> list[dict]:
    every = f"{interval:g}s"
    entries = [
        {
            "name": f"pg-{i:03d}",
            "type": "postgresql",
            "endpoint": pg.address,
            "username": pg.monitor_user,
            "password": f"${{env:{PG_PASSWORD_ENV}}}",
            "database": pg.app_database,
            "interval": every,
        }
        for i in range(pg_count)
    ]
    entries += [
        {
            "name": f"redis-{i:03d}",
            "type": "redis",
            "endpoint": rd.address,
            "password": f"${{env:{REDIS_PASSWORD_ENV}}}",
            "database": str(i % REDIS_DATABASES),
            "interval": every,
        }
        for i in range(redis_count)
    ]
    return entries


def measure(pg: WidePostgresServer, rd: RedisServer, pg_count: int, redis_count: int, interval: float) -> dict:
    count = pg_count + redis_count
    secrets = {PG_PASSWORD_ENV: pg.monitor_password, REDIS_PASSWORD_ENV: rd.password}
    with AgentProcess(databases(pg, rd, pg_count, redis_count, interval), secrets) as agent:
        started = time.monotonic()
        deadline = started + interval * (SETTLED_POLLS + 8)
        polls: dict[str, float] = {}
        # Poll-driven: wait for every database's third poll, scraping once per interval like Prometheus.
        while True:
            text = agent.scrape()
            polls = metric_by_resource(text, "dbintel_agent_polls_total")
            settled = len(polls) == count and all(p >= SETTLED_POLLS for p in polls.values())
            if (settled and time.monotonic() - started >= SETTLED_POLLS * interval) or time.monotonic() > deadline:
                break
            time.sleep(interval)
        first = agent.process.memory_info().rss
        time.sleep(interval)
        text = agent.scrape()
        up = metric_by_resource(text, "dbintel_database_up")
        info = agent.process.memory_full_info()
        return {
            "rss": info.rss,
            "uss": info.uss,
            "rss_before": first,
            "settled": len(polls) == count and all(p >= SETTLED_POLLS for p in polls.values()),
            "down": sorted(r for r, v in up.items() if v != 1.0),
            "threads": agent.process.num_threads(),
            "seconds": time.monotonic() - started,
        }


def command_line(args) -> str:
    return "python bench/bench_agent_memory.py" + "".join(
        f" --{k} {getattr(args, k):g}" for k in DEFAULTS if getattr(args, k) != DEFAULTS[k]
    )


def render(args, rows: list[dict]) -> str:
    command = command_line(args)
    idle = rows[0]
    lines = [
        SECTION,
        "",
        machine_line(),
        f"Command: `{command}`. A real `dbintel agent` process (ignore_assignments, no coordinator), every "
        f"database polled each {args.interval:g} s and the agent scraped once per interval; memory read one "
        f"interval after every database had been polled {SETTLED_POLLS} times; median of {args.repeat} runs, "
        "scenarios interleaved.",
        "",
        "The databases are logical entries on one PostgreSQL 15 and one Redis 7.0: PostgreSQL entries are "
        "different names for the same server and database (`dbintel_app`, 2 tables, 4 indexes), each with its "
        f"own connection (the bench raises max_connections to 250); Redis entries use db numbers 0-"
        f"{REDIS_DATABASES - 1} in turn. So the figures are the agent's own cost per database (a connection, a "
        "collector, a snapshot of its samples); a database with many tables holds more samples.",
        "",
        "| scenario | PostgreSQL + Redis | RSS MiB | USS MiB | RSS over idle, per database KiB "
        "| marginal RSS per database KiB | threads | notes |",
        "|---|---:|---:|---:|---:|---:|---:|---|",
    ]
    by_label = {row["label"]: row for row in rows}
    for row in rows:
        count = row["pg"] + row["redis"]
        per = "—" if count == 0 else f"{(row['rss'] - idle['rss']) / count / 1024:.0f}"
        marginal = "—"
        if row["reference"] is not None:
            reference = by_label[row["reference"]]
            added = count - reference["pg"] - reference["redis"]
            marginal = f"{(row['rss'] - reference['rss']) / added / 1024:.0f} (vs {row['reference']})"
        notes = "; ".join(row["notes"]) or "all polled ≥ 3 times, all up"
        lines.append(
            f"| {row['label']} | {row['pg']} + {row['redis']} | {row['rss'] / MiB:.1f} | "
            f"{row['uss'] / MiB:.1f} | {per} | {marginal} | {row['threads']} | {notes} |"
        )
    lines += [
        "",
        "RSS counts shared library pages too; USS is the memory only this process holds (what would be "
        "freed if it exited). Per database over idle = (RSS with N databases − idle RSS) / N: it includes the "
        "one-time import of the drivers and collectors of the types in use. Marginal = the RSS difference to "
        "the reference run, per database added: what one more database of that kind costs.",
        "",
        image_link("agent_memory", "Agent memory by monitored databases"),
        "",
    ]
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=DEFAULTS["repeat"])
    parser.add_argument("--interval", type=float, default=DEFAULTS["interval"], help="poll interval, seconds (≥ 1)")
    parser.add_argument("--no-write", action="store_true", help="print only; leave docs/benchmarks.md alone")
    args = parser.parse_args()

    runs: dict[str, list[dict]] = {label: [] for label, *_ in SCENARIOS}
    with WidePostgresServer() as pg, RedisServer() as rd:
        for db in range(REDIS_DATABASES):  # some keys in every db, so each entry's keyspace line exists
            client = rd.client(db=db)
            client.mset({f"bench:{i}": "x" * 32 for i in range(50)})
            client.close()
        for repeat in range(args.repeat):
            for label, pg_count, redis_count, _ in SCENARIOS:
                result = measure(pg, rd, pg_count, redis_count, args.interval)
                runs[label].append(result)
                print(
                    f"  run {repeat + 1}/{args.repeat} {label}: RSS {result['rss'] / MiB:.1f} MiB "
                    f"({result['seconds']:.1f} s)",
                    file=sys.stderr,
                )

    rows = []
    for label, pg_count, redis_count, reference in SCENARIOS:
        results = runs[label]
        notes = []
        if not all(r["settled"] for r in results):
            notes.append("NOT every database reached 3 polls in time")
        down = sorted({d for r in results for d in r["down"]})
        if down:
            notes.append(f"down: {', '.join(down[:5])}{' …' if len(down) > 5 else ''}")
        growth = statistics.median(r["rss"] - r["rss_before"] for r in results)
        if abs(growth) >= MiB:
            notes.append(f"RSS moved {growth / MiB:+.1f} MiB over the last interval")
        rows.append(
            {
                "label": label,
                "pg": pg_count,
                "redis": redis_count,
                "reference": reference,
                "notes": notes,
                "rss": statistics.median(r["rss"] for r in results),
                "uss": statistics.median(r["uss"] for r in results),
                "threads": max(r["threads"] for r in results),
            }
        )
    text = render(args, rows)
    print(text)
    if not args.no_write:
        write_data(
            "agent_memory",
            {
                "command": command_line(args),
                "machine": machine_line(),
                "unit": {"rss": "bytes", "uss": "bytes"},
                "interval_s": args.interval,
                "series": rows,
            },
        )
        write_section(SECTION, text)
        print(f"wrote the '{SECTION}' section of {DOC}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
