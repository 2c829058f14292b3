"""Agent density: how many databases ONE `dbintel agent` process on one core keeps on a 10 s schedule.

Run:  python bench/bench_agent_density.py [--interval S] [--intervals N] [--pg-steps 100,250,...]
                                          [--redis-steps ...] [--no-exporters] [--no-write]

Starts one PostgreSQL (max_connections raised to fit the largest step) and one Redis (tests/servers.py),
both pinned to CPU 1, and for each step a `dbintel agent` (ignore_assignments: it polls every configured
database, no coordinator; default `max_concurrent_polls`) pinned to CPU 0 (the CPU affinity `taskset -c 0`
sets), whose databases are N logical entries on the one real server of the type: PostgreSQL entries are
different names for the same server and database (one connection each), Redis entries use db numbers 0-15
in turn. After every database has been polled once and one more interval has passed, the agent is scraped
once per interval (as Prometheus would: the scrape's cost is the agent's) for `--intervals` intervals.

A missed poll = a slot in which a database was not polled: the anchored schedule has exactly one slot per
database per interval and skips slots it could not serve, so over n intervals a database polled fewer than
n times (its `dbintel_agent_polls_total` delta) missed the difference; a failed poll (a
`dbintel_agent_poll_errors_total` increment) counts as missed too. A step passes below 1% missed. Also
reported: the oldest poll at any scrape (now − `dbintel_agent_last_poll_timestamp_seconds`, in intervals),
the agent's CPU (share of its one core) and RSS per database over an idle agent. Steps go up per type until
one fails. The peers' density for comparison, as they are usually deployed (one exporter per database, as a
sidecar; both also have a multi-target mode, postgres_exporter's `/probe` in beta and redis_exporter's
`/scrape?target=`, where Prometheus drives one collection per scrape and nothing decides ownership): N
databases take N exporter processes; one of each is started and its RSS read after 3 scrapes.
Writes docs/data/agent_density.json and the "## Agent density" section of docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager

import psutil
from report import (
    DATA_DIR,
    DOC,
    MachineLoad,
    image_link,
    machine_line,
    noise_sentence,
    write_data,  # bench/
    write_section,
)  # report.py
from servers import AgentProcess, WidePostgresServer, process_cpu_seconds, sample_lines, scrape  # bench/servers.py

from tests.servers import RedisServer, free_port

SECTION = "## Agent density"
DEFAULTS = {
    "interval": 10.0,
    "intervals": 3,
    "pg_steps": "100,250,500,1000,1500,2000",
    "redis_steps": "100,250,500,1000,2000,4000,6000,8000",
    "retries": 1,
}
PG_PASSWORD_ENV, REDIS_PASSWORD_ENV = "BENCH_PG_PASSWORD", "BENCH_REDIS_PASSWORD"
REDIS_DATABASES = 16
AGENT_CPU, SERVER_CPU = 0, 1
MISSED_LIMIT = 0.01
MiB = 1024 * 1024
_LINE = re.compile(r'^([a-zA-Z_:][a-zA-Z0-9_:]*)\{[^}]*dbintel_resource="([^"]*)"[^}]*\}\s+(\S+)')
WATCHED = (
    "dbintel_agent_polls_total",
    "dbintel_agent_poll_errors_total",
    "dbintel_agent_last_poll_timestamp_seconds",
    "dbintel_database_up",
)


_REASON = re.compile(r'reason="([^"]*)"')


def errors_by_reason(exposition: str) -> dict[str, float]:
    """dbintel_agent_poll_errors_total summed over databases, by reason."""
    out: dict[str, float] = {}
    for line in sample_lines(exposition):
        if line.startswith("dbintel_agent_poll_errors_total{"):
            reason = _REASON.search(line)
            key = reason.group(1) if reason else "?"
            out[key] = out.get(key, 0.0) + float(line.rsplit(" ", 1)[1])
    return out


def per_resource(exposition: str) -> dict[str, dict[str, float]]:
    """metric -> resource -> value (summed over the other labels, e.g. the error reason)."""
    out: dict[str, dict[str, float]] = {name: {} for name in WATCHED}
    for line in sample_lines(exposition):
        if not line.startswith(("dbintel_agent_", "dbintel_database_up")):
            continue
        match = _LINE.match(line)
        if match and match.group(1) in out:
            values = out[match.group(1)]
            values[match.group(2)] = values.get(match.group(2), 0.0) + float(match.group(3))
    return out


def pin(pid: int, cpu: int) -> None:
    """Every thread of `pid` onto `cpu` (children forked later inherit it)."""
    subprocess.run(["taskset", "-a", "-p", "-c", str(cpu), str(pid)], check=True, capture_output=True)


@contextmanager
def spawning_on(cpu: int):
    """Processes started from this thread meanwhile inherit the affinity {cpu}."""
    before = os.sched_getaffinity(0)
    os.sched_setaffinity(0, {cpu})
    try:
        yield
    finally:
        os.sched_setaffinity(0, before)


def entries(kind: str, count: int, pg: WidePostgresServer, rd: RedisServer, interval: float) -> list[dict]:
    every = f"{interval:g}s"
    if kind == "postgresql":
        return [
            {
                "name": f"pg-{i:05d}",
                "type": "postgresql",
                "endpoint": pg.address,
                "username": pg.monitor_user,
                "password": f"${{env:{PG_PASSWORD_ENV}}}",
                "database": pg.app_database,
                "interval": every,
            }
            for i in range(count)
        ]
    return [
        {
            "name": f"redis-{i:05d}",
            "type": "redis",
            "endpoint": rd.address,
            "password": f"${{env:{REDIS_PASSWORD_ENV}}}",
            "database": str(i % REDIS_DATABASES),
            "interval": every,
        }
        for i in range(count)
    ]


def server_cpu(server) -> dict[int, float]:
    """CPU seconds of the server process and its children (PostgreSQL backends), by pid."""
    out = {}
    root = psutil.Process(server.pid)
    for process in [root, *root.children(recursive=True)]:
        try:
            times = process.cpu_times()
        except psutil.Error:
            continue
        out[process.pid] = times.user + times.system
    return out


def run_step(kind: str, count: int, pg, rd, args) -> dict:
    secrets = {PG_PASSWORD_ENV: pg.monitor_password, REDIS_PASSWORD_ENV: rd.password}
    interval = args.interval
    databases = entries(kind, count, pg, rd, interval)
    ids = [f"db:{kind}/{e['name']}" for e in databases]
    agent = AgentProcess(databases, secrets)
    try:
        with spawning_on(AGENT_CPU):
            agent.start(timeout=120)
        started = time.monotonic()
        # Warm-up: every database polled once (first polls are spread over an interval), then one interval more.
        while True:
            seen = per_resource(agent.scrape())["dbintel_agent_polls_total"]
            if (len(seen) == count and min(seen.values(), default=0) >= 1) or time.monotonic() - started > 4 * interval:
                break
            time.sleep(min(2.0, interval / 2))
        warm_seconds = time.monotonic() - started
        time.sleep(interval)
        text = agent.scrape()
        first, reasons_before = per_resource(text), errors_by_reason(text)
        server = pg if kind == "postgresql" else rd
        server_before = server_cpu(server)
        core_before = psutil.cpu_times(percpu=True)[AGENT_CPU]
        cpu_before, wall_before = process_cpu_seconds(agent.process.pid), time.monotonic()
        oldest, scrape_seconds = [], []
        last = first
        for _ in range(args.intervals):
            time.sleep(max(0.0, wall_before + (len(oldest) + 1) * interval - time.monotonic()))
            now = time.time()
            begin = time.perf_counter()
            text = agent.scrape()
            scrape_seconds.append(time.perf_counter() - begin)
            exposition_lines = text.count("\n")
            last = per_resource(text)
            reasons_after = errors_by_reason(text)
            stamps = last["dbintel_agent_last_poll_timestamp_seconds"]
            oldest.append(max(now - stamps.get(rid, 0.0) for rid in ids) / interval)
        elapsed = time.monotonic() - wall_before
        cpu = (process_cpu_seconds(agent.process.pid) - cpu_before) / elapsed
        core_after = psutil.cpu_times(percpu=True)[AGENT_CPU]
        core_busy = (
            (sum(core_after) - core_after.idle - getattr(core_after, "iowait", 0.0))
            - (sum(core_before) - core_before.idle - getattr(core_before, "iowait", 0.0))
        ) / elapsed
        server_after = server_cpu(server)
        server_share = sum(v - server_before.get(pid, 0.0) for pid, v in server_after.items()) / elapsed
        rss = agent.process.memory_info().rss
        affinity = sorted(agent.process.cpu_affinity())
        polls0, polls1 = first["dbintel_agent_polls_total"], last["dbintel_agent_polls_total"]
        errors0, errors1 = first["dbintel_agent_poll_errors_total"], last["dbintel_agent_poll_errors_total"]
        short = sum(max(0, args.intervals - (polls1.get(r, 0.0) - polls0.get(r, 0.0))) for r in ids)
        failed = sum(errors1.get(r, 0.0) - errors0.get(r, 0.0) for r in ids)
        expected = count * args.intervals
        down = sum(1 for r in ids if last["dbintel_database_up"].get(r, 0.0) != 1.0)
        reasons = {
            k: v - reasons_before.get(k, 0.0) for k, v in reasons_after.items() if v - reasons_before.get(k, 0.0) > 0
        }
        result = {
            "kind": kind,
            "databases": count,
            "expected_polls": expected,
            "missed": short,
            "failed": failed,
            "error_reasons": reasons,
            "server_cpu_share": server_share,
            "agent_core_busy_share": core_busy,  # the agent's core, whoever used it
            "exposition_lines": exposition_lines,
            "missed_share": (short + failed) / expected,
            "down_at_end": down,
            "oldest_poll_intervals": max(oldest),
            "agent_cpu_share": cpu,
            "rss": rss,
            "scrape_seconds": max(scrape_seconds),
            "warm_seconds": warm_seconds,
            "agent_cpus": affinity,
            "passed": (short + failed) / expected < MISSED_LIMIT,
        }
    finally:
        stopping = time.monotonic()
        agent.close()  # SIGTERM, then SIGKILL after 20 s
    result["stop_seconds"] = time.monotonic() - stopping
    return result


def idle_rss(pg, rd, args) -> int:
    agent = AgentProcess([], {})
    try:
        with spawning_on(AGENT_CPU):
            agent.start()
        time.sleep(args.interval)
        return agent.process.memory_info().rss
    finally:
        agent.close()


def exporter_rss(kind: str, pg, rd) -> dict:
    """One peer exporter process on one database: its RSS and USS after 3 scrapes."""
    port = free_port()
    if kind == "postgresql":
        command = ["prometheus-postgres-exporter"]
        env = {"DATA_SOURCE_NAME": pg.dsn(database=pg.app_database)}
        name = "postgres_exporter 0.11"
    else:
        command = ["prometheus-redis-exporter", f"--redis.addr=redis://{rd.address}"]
        env = {"REDIS_PASSWORD": rd.password}
        name = "redis_exporter 1.45"
    with tempfile.TemporaryFile() as log:
        popen = subprocess.Popen(
            [*command, f"--web.listen-address=127.0.0.1:{port}"],
            env={**os.environ, **env},
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        try:
            deadline = time.monotonic() + 30
            while True:
                try:
                    scrape(f"http://127.0.0.1:{port}/metrics", timeout=5)
                    break
                except OSError as error:
                    if popen.poll() is not None or time.monotonic() > deadline:
                        raise RuntimeError(f"{name} did not start") from error
                    time.sleep(0.1)
            for _ in range(3):
                scrape(f"http://127.0.0.1:{port}/metrics", timeout=10)
            info = psutil.Process(popen.pid).memory_full_info()
            return {"kind": kind, "name": name, "rss": info.rss, "uss": info.uss}
        finally:
            popen.terminate()
            popen.wait(timeout=10)


def render(args, command: str, results: list[dict], idle: int, exporters: list[dict], noise: str) -> str:
    lines = [
        SECTION,
        "",
        machine_line(),
        f"Command: `{command}`. {noise}",
        "",
        f"One `dbintel agent` process (ignore_assignments, no coordinator, default `max_concurrent_polls`, 32) pinned "
        f"to CPU {AGENT_CPU}; the database servers pinned to CPU {SERVER_CPU}. Every database polled each "
        f"{args.interval:g} s; after warm-up (each polled once, then one interval) the agent was scraped once per "
        f"interval for {args.intervals} intervals (the scrape's cost is the agent's, as with Prometheus). The "
        "databases are logical entries on one real server per type (PostgreSQL 15: N names for the same "
        "server and database `dbintel_app`, 2 tables, 4 indexes, one connection each; Redis 7.0: db numbers "
        f"0-{REDIS_DATABASES - 1} in turn), so a server with many tables would cost more per poll. "
        "*Missed* = slots without a poll (per database, intervals − polls counted by "
        "`dbintel_agent_polls_total`) plus failed polls (`dbintel_agent_poll_errors_total`), over all slots; a "
        f"step passes below {MISSED_LIMIT:.0%}. *Oldest poll* = the largest now − "
        "`dbintel_agent_last_poll_timestamp_seconds` at any scrape, in intervals (≤ 1 means no database "
        "waited longer than its interval). RSS per database = (RSS − idle agent RSS "
        f"{idle / MiB:.1f} MiB) ÷ N.",
        "",
        "| type | databases | attempt | missed % | skipped slots | failed polls (reasons) "
        "| oldest poll, intervals "
        "| agent CPU, % of its core | server CPU, % of its core "
        "| RSS MiB | RSS per database KiB | one scrape, s | passed |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for r in results:
        reasons = ", ".join(f"{k} {v:.0f}" for k, v in sorted(r.get("error_reasons", {}).items()))
        lines.append(
            f"| {r['kind']} | {r['databases']:,} | {r.get('attempt', 1)} | "
            f"{100 * r['missed_share']:.2f} | {r['missed']:.0f} | "
            f"{r['failed']:.0f}{f' ({reasons})' if reasons else ''} | "
            f"{r['oldest_poll_intervals']:.2f} | {100 * r['agent_cpu_share']:.0f} | "
            f"{100 * r.get('server_cpu_share', 0.0):.0f} | {r['rss'] / MiB:.0f} | "
            f"{(r['rss'] - idle) / r['databases'] / 1024:.0f} | {r['scrape_seconds']:.2f} | "
            f"{'yes' if r['passed'] else '**no**'} |"
        )
    lines.append("")
    for kind in ("postgresql", "redis"):
        mine = [r for r in results if r["kind"] == kind]
        if not mine:
            continue
        passing = {r["databases"] for r in mine if r["passed"]}
        failed = sorted({r["databases"] for r in mine} - passing)
        best = max(passing, default=0)
        text = f"- **{kind}: {best:,} databases** per agent process on one core"
        if failed:
            attempts = [r for r in mine if r["databases"] == failed[0]]
            text += (
                f" (the next step, {failed[0]:,}, missed "
                + " and ".join(f"{100 * r['missed_share']:.1f}%" for r in attempts)
                + f" in {len(attempts)} attempt{'s' if len(attempts) > 1 else ''}, with the agent at "
                + " / ".join(f"{100 * r['agent_cpu_share']:.0f}%" for r in attempts)
                + " of its core and the server at "
                + " / ".join(f"{100 * r['server_cpu_share']:.0f}%" for r in attempts)
                + " of its own)"
            )
        else:
            text += f" — every step passed; the largest tried was {mine[-1]['databases']:,}, so the limit is higher"
        retried = sorted({r["databases"] for r in mine if not r["passed"]} & passing)
        if retried:
            text += f"; {', '.join(f'{c:,}' for c in retried)} passed only on a second attempt"
        bound = [
            r
            for r in mine
            if r["databases"] in failed and r.get("server_cpu_share", 0) >= 0.8 and r["agent_cpu_share"] < 0.5
        ]
        if bound:
            best_run = max((r for r in mine if r["passed"]), key=lambda r: r["databases"], default=None)
            text += (
                f". That limit is the test server's, not the agent's: the single {kind} server (pinned to one "
                f"core, serving every logical database) ran at {100 * bound[0]['server_cpu_share']:.0f}% of its "
                f"core while the agent used {100 * bound[0]['agent_cpu_share']:.0f}% of its own, and polls queued "
                "for the server's answers"
            )
            if best_run is not None and best_run["agent_cpu_share"] > 0:
                per_thousand = best_run["agent_cpu_share"] / best_run["databases"] * 1000
                text += (
                    f". The agent spent {100 * per_thousand:.0f}% of a core per 1,000 such databases at "
                    f"{best_run['databases']:,}; a linear extrapolation (not a measurement) puts one core's "
                    f"worth at about {0.9 / per_thousand * 1000:,.0f} databases, given servers that keep up"
                )
        unclear = [
            r
            for r in mine
            if r["databases"] in failed and r.get("server_cpu_share", 0) < 0.8 and r["agent_cpu_share"] < 0.85
        ]
        if unclear:
            r = unclear[0]
            if "agent_core_busy_share" in r:
                text += (
                    f". At {r['databases']:,} the agent used {100 * r['agent_cpu_share']:.0f}% of its core while "
                    f"the core was busy {100 * r['agent_core_busy_share']:.0f}% in all (the rest: other jobs on "
                    "this shared machine) and the server was nearly idle"
                )
            else:
                text += (
                    f". At {r['databases']:,} the agent was not CPU-bound by its own clock "
                    f"({100 * r['agent_cpu_share']:.0f}% of its core) and the server was nearly idle "
                    f"({100 * r['server_cpu_share']:.0f}%): the rest of that core went to other jobs on this "
                    "shared machine, or the agent stalled — this run did not record which, so read the limit "
                    "as a lower bound"
                )
        exporter = next((e for e in exporters if e["kind"] == kind), None)
        if exporter and best:
            agent_rss = next(r["rss"] for r in mine if r["databases"] == best)
            text += (
                f". The peer, {exporter['name']}, deployed as usual, one process per database (its multi-target "
                f"mode would share one process, collecting on each scrape): {best:,} databases take "
                f"{best:,} processes of {exporter['rss'] / MiB:.1f} MiB RSS ({exporter['uss'] / MiB:.1f} MiB "
                f"USS) each, about {best * exporter['uss'] / 1024 / MiB:.1f} GiB of private memory, against "
                f"{agent_rss / MiB:.0f} MiB RSS for our one agent"
            )
        lines.append(text + ".")
        best_rows = [r for r in mine if r["databases"] == best and r["passed"]]
        if best_rows:
            r = best_rows[-1]
            lines.append(
                f"- {kind} at {best:,}: one scrape of the agent took up to {r['scrape_seconds']:.1f} s "
                f"(Prometheus' default scrape_timeout is 10 s)"
                + (f" for {r['exposition_lines']:,} lines" if "exposition_lines" in r else "")
                + ", and the oldest poll at a scrape was "
                + f"{r['oldest_poll_intervals']:.2f} intervals old (> 1: polls ran late, though none was "
                "skipped)."
            )
    slowest = max(results, key=lambda r: r["stop_seconds"], default=None)
    if slowest is not None:
        lines.append(
            f"- Stopping the agent (SIGTERM; the bench SIGKILLs after 20 s) took up to "
            f"{slowest['stop_seconds']:.1f} s, at {slowest['databases']:,} {slowest['kind']} databases."
        )
    lines += ["", image_link("agent_density", "Agent density: missed polls against monitored databases"), ""]
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--interval", type=float, default=DEFAULTS["interval"])
    parser.add_argument(
        "--intervals", type=int, default=DEFAULTS["intervals"], help="measured intervals per step (≥ 3)"
    )
    parser.add_argument("--pg-steps", default=DEFAULTS["pg_steps"])
    parser.add_argument("--redis-steps", default=DEFAULTS["redis_steps"])
    parser.add_argument("--retries", type=int, default=DEFAULTS["retries"], help="re-runs of a failing step")
    parser.add_argument("--no-exporters", action="store_true", help="skip the peer exporters' RSS")
    parser.add_argument("--no-write", action="store_true", help="print only; leave docs/ alone")
    parser.add_argument(
        "--render-only",
        action="store_true",
        help="rewrite the doc section from docs/data/agent_density.json; measure nothing",
    )
    args = parser.parse_args()
    if args.render_only:
        import json

        data = json.loads((DATA_DIR / "agent_density.json").read_text())
        args.interval, args.intervals = data["interval_s"], data.get("intervals", args.intervals)
        text = render(
            args, data["command"], data["series"], data["idle_rss"], data["exporters"], noise_sentence(data["noise"])
        )
        print(text)
        if not args.no_write:
            write_section(SECTION, text)
        return 0
    command = "python bench/bench_agent_density.py" + "".join(
        f" --{k.replace('_', '-')} {getattr(args, k):g}"
        if isinstance(DEFAULTS[k], float)
        else f" --{k.replace('_', '-')} {getattr(args, k)}"
        for k in DEFAULTS
        if getattr(args, k) != DEFAULTS[k]
    )
    steps = {
        "postgresql": [int(x) for x in args.pg_steps.split(",") if x],
        "redis": [int(x) for x in args.redis_steps.split(",") if x],
    }
    results, exporters = [], []
    with (
        MachineLoad() as noise,
        WidePostgresServer(max_connections=max(steps["postgresql"], default=0) + 50) as pg,
        RedisServer() as rd,
    ):
        pin(pg.pid, SERVER_CPU)
        for child in psutil.Process(pg.pid).children(recursive=True):
            pin(child.pid, SERVER_CPU)
        pin(rd.pid, SERVER_CPU)
        os.sched_setaffinity(0, {SERVER_CPU})  # this process's scrapes and parsing stay off the agent's core
        for db in range(REDIS_DATABASES):  # some keys in every db, so each entry's keyspace line exists
            client = rd.client(db=db)
            client.mset({f"bench:{i}": "x" * 32 for i in range(50)})
            client.close()
        idle = idle_rss(pg, rd, args)
        for kind in ("postgresql", "redis"):
            for count in steps[kind]:
                if kind == "postgresql" and psutil.virtual_memory().available < count * 4 * MiB + 2048 * MiB:
                    print(f"  {kind} {count}: skipped, not enough free memory for its backends", file=sys.stderr)
                    break
                # A failing step runs again (up to --retries times): on a shared machine one bad minute of
                # someone else's load should not set the limit. Every attempt is reported.
                for attempt in range(1 + args.retries):
                    result = run_step(kind, count, pg, rd, args)
                    result["attempt"] = attempt + 1
                    results.append(result)
                    print(
                        f"  {kind} {count} (attempt {attempt + 1}): missed {100 * result['missed_share']:.2f}% "
                        f"(skipped {result['missed']:.0f}, failed {result['failed']:.0f} "
                        f"{result['error_reasons']}), agent CPU {100 * result['agent_cpu_share']:.0f}%, server CPU "
                        f"{100 * result['server_cpu_share']:.0f}%, RSS {result['rss'] / MiB:.0f} MiB",
                        file=sys.stderr,
                    )
                    if result["passed"]:
                        break
                if not result["passed"]:
                    break
        if not args.no_exporters:
            exporters = [exporter_rss(kind, pg, rd) for kind in ("postgresql", "redis")]
    text = render(args, command, results, idle, exporters, noise.sentence())
    print(text)
    if not args.no_write:
        write_data(
            "agent_density",
            {
                "command": command,
                "machine": machine_line(),
                "noise": noise.as_dict(),
                "unit": {
                    "missed_share": "missed or failed polls / expected polls",
                    "rss": "bytes",
                    "agent_cpu_share": "CPU seconds / wall second",
                },
                "interval_s": args.interval,
                "intervals": args.intervals,
                "idle_rss": idle,
                "missed_limit": MISSED_LIMIT,
                "series": results,
                "exporters": exporters,
            },
        )
        write_section(SECTION, text)
        print(f"wrote the '{SECTION}' section of {DOC}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
