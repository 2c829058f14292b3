"""Benchmark of the pure assignment engine and of one leader step: 100,000 databases on 1,000 agents.

Run:  python bench/bench_assignment.py [--resources N] [--agents N] [--repeat N] [--no-write]

Prints the figures and rewrites the "## Assignment engine" section of docs/benchmarks.md (other
sections are kept). Scenarios, each with equal costs and with skewed (lognormal, seeded) costs:
full assignment from nothing; one agent leaves (balance=False, what the leader runs on expiry or
Leave) and the periodic rebalance that may follow; one agent joins (balance=True). A leave and a join
are timed twice: a fresh `place` (reads every input) and a kept `Fleet` (`set_agents` + `plan`: pays
for what moves). Then: per-event time at 10,000 × 10; a heavy database (3× the fair share) with a
join; zones (one loses its agents and gets one back); and one whole leader step (`planning.plan_step`
from the store's records, including input construction and the hand-off) at the main size.
"""

from __future__ import annotations

import argparse
import math
import random
import statistics
import sys
import time
from collections import Counter

from report import DOC, machine_line, write_section  # bench/report.py

from dbintel.coordinator.engine.assignment import (
    AgentSlot,
    Fleet,
    ResourceDemand,
    imbalance,
    place,
    plan_cost_rebalance,
)
from dbintel.coordinator.model import AgentRecord, PollStatus, Registration
from dbintel.coordinator.planning import InventoryItem, StepInput, plan_step

SECTION = "## Assignment engine"


def timed(repeat: int, call):
    """Median wall time of `repeat` runs and the last result."""
    times, result = [], None
    for _ in range(repeat):
        start = time.perf_counter()
        result = call()
        times.append(time.perf_counter() - start)
    return statistics.median(times), result


def timed_fleet(repeat: int, build, event):
    """Median wall time of `event(fleet)` on a fresh copy of a kept fleet (the build is not timed)."""
    times, result = [], None
    for _ in range(repeat):
        fleet = build()
        start = time.perf_counter()
        result = event(fleet)
        times.append(time.perf_counter() - start)
    return statistics.median(times), result


def equal_cost_minimum(previous, resource_count: int, agents: list[str]) -> int:
    """Fewest moves that leave counts within 1 of each other: each agent sheds what exceeds its target."""
    kept = Counter(previous[a] for a in previous if previous[a] in set(agents))
    q, r = divmod(resource_count, len(agents))
    by_size = sorted((kept[a] for a in agents), reverse=True)
    return resource_count - sum(kept.values()) + sum(max(0, s - (q + 1 if i < r else q)) for i, s in enumerate(by_size))


def costs_for(distribution: str, count: int) -> list[float]:
    if distribution == "equal":
        return [1.0] * count
    rng = random.Random(20240601)
    return [rng.lognormvariate(0.0, 1.0) for _ in range(count)]


def row(name, seconds, moves, placement) -> tuple[str, str, str, str, str]:
    cost_worst, count_worst = imbalance(placement)
    return (name, f"{seconds * 1000:.1f}", moves, f"{cost_worst:.4f}", f"{count_worst:.3f}")


def kept_fleet(demands, agents, owners):
    def build():
        fleet = Fleet(demands, agents)
        fleet.settle(owners)
        fleet.plan(balance=False)
        return fleet

    return build


def on_event(slots, balance):
    def event(fleet):
        if not fleet.set_agents(slots):
            raise RuntimeError("not a pure join/leave")
        return fleet.plan(balance=balance)

    return event


def run(distribution: str, resource_count: int, agent_count: int, repeat: int) -> list[tuple]:
    costs = costs_for(distribution, resource_count)
    demands = [ResourceDemand(f"db:postgresql/db{i:06d}", cost) for i, cost in enumerate(costs)]
    agents = [AgentSlot(f"agent-{i:04d}") for i in range(agent_count)]
    rows = []

    seconds, full = timed(repeat, lambda: place(demands, agents, {}, balance=True))
    rows.append(row("full assignment", seconds, f"{len(full.moved):,} (min {resource_count:,})", full))
    owners = dict(full.owners)

    stayers = agents[1:]
    held = sum(1 for owner in owners.values() if owner == agents[0].agent_id)
    seconds, left = timed(repeat, lambda: place(demands, stayers, owners, balance=False))
    rows.append(row("one agent leaves: fresh `place`", seconds, f"{len(left.moved)} (min {held})", left))
    seconds, kept = timed_fleet(repeat, kept_fleet(demands, agents, owners), on_event(stayers, False))
    assert dict(kept.owners) == dict(left.owners)
    rows.append(row("one agent leaves: kept `Fleet`", seconds, f"{len(kept.moved)} (min {held})", kept))

    seconds, (plan, accepted) = timed(repeat, lambda: plan_cost_rebalance(demands, stayers, dict(left.owners)))
    verdict = "accepted" if accepted else "not needed"
    rows.append(row(f"then the periodic rebalance: {verdict}", seconds, f"{len(plan.moved)}", plan))

    joiners = [*agents, AgentSlot("agent-new")]
    minimum = equal_cost_minimum(owners, resource_count, [a.agent_id for a in joiners])
    seconds, joined = timed(repeat, lambda: place(demands, joiners, owners, balance=True))
    if distribution == "equal":
        reference = f"min {minimum}"
    else:  # no exact minimum with costs: the newcomer's fair share of the cost, moved
        moved_cost = math.fsum(costs[int(r[-6:])] for r in joined.moved)
        reference = f"cost moved / fair share {moved_cost / (math.fsum(costs) / len(joiners)):.3f}"
    newcomer = joined.loads["agent-new"] / (math.fsum(joined.loads.values()) / len(joined.loads))
    rows.append(
        row(
            f"one agent joins: fresh `place`; newcomer at {newcomer:.3f} of the mean load, "
            f"{joined.counts['agent-new']} databases",
            seconds,
            f"{len(joined.moved)} ({reference})",
            joined,
        )
    )
    seconds, kept = timed_fleet(repeat, kept_fleet(demands, agents, owners), on_event(joiners, True))
    assert dict(kept.owners) == dict(joined.owners)
    rows.append(row("one agent joins: kept `Fleet`", seconds, f"{len(kept.moved)}", kept))
    return rows


def per_event(resources: int, agent_count: int, repeat: int) -> list[tuple]:
    """A leave then a join at a smaller size, fresh and kept, skewed costs."""
    costs = costs_for("lognormal", resources)
    demands = [ResourceDemand(f"db:postgresql/db{i:06d}", cost) for i, cost in enumerate(costs)]
    agents = [AgentSlot(f"agent-{i:04d}") for i in range(agent_count)]
    owners = dict(place(demands, agents, {}, balance=True).owners)
    rows = []
    for name, slots, balance in (("leave", agents[1:], False), ("join", [*agents, AgentSlot("agent-new")], True)):
        seconds, fresh = timed(repeat, lambda s=slots, b=balance: place(demands, s, owners, balance=b))
        rows.append(
            row(
                f"{resources:,} × {agent_count}: one agent {name}s, fresh `place`",
                seconds,
                str(len(fresh.moved)),
                fresh,
            )
        )
        seconds, kept = timed_fleet(repeat, kept_fleet(demands, agents, owners), on_event(slots, balance))
        rows.append(
            row(f"{resources:,} × {agent_count}: one agent {name}s, kept `Fleet`", seconds, str(len(kept.moved)), kept)
        )
    return rows


def heavy(resources: int, agent_count: int, repeat: int) -> list[tuple]:
    """One database at 3× an agent's fair share among skewed ones; then an agent joins."""
    costs = costs_for("lognormal", resources)
    fair = math.fsum(costs) / agent_count
    demands = [ResourceDemand(f"db:postgresql/db{i:06d}", cost) for i, cost in enumerate(costs)]
    demands.append(ResourceDemand("db:postgresql/huge", 3 * fair))
    agents = [AgentSlot(f"agent-{i:04d}") for i in range(agent_count)]
    start = place(demands, agents, {}, balance=True)
    joiners = [*agents, AgentSlot("agent-new")]
    seconds, joined = timed(repeat, lambda: place(demands, joiners, dict(start.owners), balance=True))
    home = joined.owners["db:postgresql/huge"]
    rest = {a: v for a, v in joined.loads.items() if a != home}
    rest_mean = math.fsum(rest.values()) / len(rest)
    counts = {a: c for a, c in joined.counts.items() if a != home}
    return [
        (
            f"heavy database (3× the fair share): after a join it sits with {joined.counts[home] - 1} others; "
            f"the newcomer carries {joined.loads['agent-new'] / rest_mean:.3f} of the others' mean "
            f"({joined.counts['agent-new']} databases)",
            f"{seconds * 1000:.1f}",
            str(len(joined.moved)),
            f"{max(rest.values()) / rest_mean:.4f} (others)",
            f"{max(counts.values()) / (sum(counts.values()) / len(counts)):.3f} (others)",
        )
    ]


def zones(resources: int, agent_count: int, repeat: int) -> list[tuple]:
    """Three zones; zone-c loses all its agents (its databases fall back), then one comes back."""
    costs = costs_for("lognormal", resources)
    names = ("zone-a", "zone-b", "zone-c")
    demands = [ResourceDemand(f"db:postgresql/db{i:06d}", c, zone=names[i % 3]) for i, c in enumerate(costs)]
    agents = [AgentSlot(f"agent-{i:04d}", zone=names[i % 3]) for i in range(agent_count)]
    zone_of = {a.agent_id: a.zone for a in agents}
    start = place(demands, agents, {}, balance=True)
    same = sum(1 for d in demands if zone_of[start.owners[d.resource_id]] == d.zone)
    rows = [row(f"zones: first placement, {same / len(demands):.0%} same-zone", 0.0, f"{len(start.moved):,}", start)]
    without_c = [a for a in agents if a.zone != "zone-c"]
    seconds, away = timed(repeat, lambda: place(demands, without_c, dict(start.owners), balance=False))
    rows.append(row("zones: zone-c loses every agent (its databases fall back)", seconds, f"{len(away.moved):,}", away))
    back = [*without_c, AgentSlot("agent-c-back", zone="zone-c")]
    seconds, home = timed(repeat, lambda: place(demands, back, dict(away.owners), balance=True))
    zone_of["agent-c-back"] = "zone-c"
    same = sum(1 for d in demands if zone_of[home.owners[d.resource_id]] == d.zone)
    rows.append(
        row(
            f"zones: one zone-c agent returns, {same / len(demands):.0%} same-zone again",
            seconds,
            f"{len(home.moved):,}",
            home,
        )
    )
    return rows


def leader_step(resources: int, agent_count: int, repeat: int) -> list[tuple]:
    """One `plan_step` from the records the store returns: every agent reports what it polls with a
    measured duration, the target is balanced; one agent has just expired (its databases move)."""
    costs = costs_for("lognormal", resources)
    inventory = {
        f"db:postgresql/db{i:06d}": InventoryItem(f"db:postgresql/db{i:06d}", "postgresql", 30.0)
        for i in range(resources)
    }
    demands = [ResourceDemand(rid, c) for rid, c in zip(inventory, costs, strict=True)]
    ids = [f"agent-{i:04d}" for i in range(agent_count)]
    owners = place(demands, [AgentSlot(a) for a in ids], {}, balance=True).owners
    now = 10_000_000
    polled: dict[str, dict[str, PollStatus]] = {a: {} for a in ids}
    cost_of = dict(zip(inventory, costs, strict=True))
    for rid, agent in owners.items():
        polled[agent][rid] = PollStatus(last_poll_ms=now - 1000, duration_ms=cost_of[rid] * 30_000.0, polls=3, up=True)
    records = {
        a: AgentRecord(
            agent_id=a,
            registration=Registration(pod_name=a, instance_id=a),
            state="active",
            last_heartbeat_ms=now - (200_000 if a == ids[0] else 1000),
            applied_epoch=1,
            current=polled[a],
        )
        for a in ids
    }
    assigned = {a: frozenset(polled[a]) for a in ids}
    step = StepInput(inventory, records, dict(owners), assigned, now_ms=now, node_timeout_ms=90_000)
    seconds, plan = timed(repeat, lambda: plan_step(step, reason="agent_expired"))
    started = time.perf_counter()
    engine_only = place(demands, [AgentSlot(a) for a in ids[1:]], dict(owners), balance=False)
    engine_seconds = time.perf_counter() - started
    return [
        row(
            f"leader step (`plan_step`: liveness, costs from reports, engine, hand-off) with one agent expired; "
            f"the engine call alone took {engine_seconds * 1000:.0f} ms",
            seconds,
            str(plan.write.moves),
            plan.placement,
        ),
        row(
            "same with the engine call alone (fresh `place`)", engine_seconds, str(len(engine_only.moved)), engine_only
        ),
    ]


def render(args, results) -> str:
    command = "python bench/bench_assignment.py" + "".join(
        f" --{k} {v}"
        for k, v in (("resources", args.resources), ("agents", args.agents), ("repeat", args.repeat))
        if v != DEFAULTS[k]
    )
    lines = [
        SECTION,
        "",
        machine_line(),
        f"Command: `{command}`. {args.resources:,} resources on {args.agents:,} agents; times are the median "
        f"of {args.repeat} runs (time.perf_counter), single-threaded, in milliseconds. The machine is shared: "
        "compare rows of one run, not runs.",
        "",
        "Cost worst/mean = max agent load ÷ mean load of its zone (1.000 = perfect); count worst/mean the same "
        "for the number of databases. Skewed costs are lognormal(0, 1), seeded; the largest single cost is "
        f"{results['skewed-max']:.1f}× the mean cost.",
        "",
    ]
    header = ["| scenario | ms | moves | cost worst/mean | count worst/mean |", "|---|---:|---:|---:|---:|"]
    for name, rows in results["tables"]:
        lines += [f"### {name}", "", *header]
        lines += [f"| {a} | {b} | {c} | {d} | {e} |" for a, b, c, d, e in rows]
        lines.append("")
    lines += [
        "Reading the figures: a leave moves exactly the departed agent's databases, best fit largest first; "
        "with skewed costs an agent that takes one of its largest databases can end above 1.03× the mean "
        "(no placement of that database avoids it without moving others), and the periodic rebalance, "
        "triggered by the absolute bound (`rebalance_max_spread`, 1.03), brings it back with the moves shown. "
        "A kept `Fleet` (what a caller that keeps the engine's state between steps pays) costs what moves plus "
        "O(agents); a fresh `place` reads all inputs. The bounds (counts under the cap, equal costs within one "
        "database at the minimum movement, a heavy database alone) are stated and proved in "
        "`services/coordinator/engine/assignment.py`.",
        "",
    ]
    return "\n".join(lines)


DEFAULTS = {"resources": 100_000, "agents": 1_000, "repeat": 3}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--resources", type=int, default=DEFAULTS["resources"])
    parser.add_argument("--agents", type=int, default=DEFAULTS["agents"])
    parser.add_argument("--repeat", type=int, default=DEFAULTS["repeat"])
    parser.add_argument("--no-write", action="store_true", help="print only; leave docs/benchmarks.md alone")
    args = parser.parse_args()

    n, a, repeat = args.resources, args.agents, args.repeat
    tables = []
    for name, distribution in (("Equal costs (1.0 each)", "equal"), ("Skewed costs (lognormal μ=0, σ=1)", "lognormal")):
        tables.append((name, run(distribution, n, a, repeat)))
        print(f"  {name}: done", file=sys.stderr)
    small = (n // 10, max(2, a // 100))
    tables.append((f"Per event at {small[0]:,} × {small[1]} (skewed)", per_event(*small, repeat)))
    tables.append(("Heavy database, zones (skewed)", heavy(n, a, repeat) + zones(n, a, repeat)))
    tables.append((f"Leader step at {n:,} × {a:,} (skewed)", leader_step(n, a, repeat)))
    skewed = costs_for("lognormal", n)
    text = render(args, {"tables": tables, "skewed-max": max(skewed) / (math.fsum(skewed) / len(skewed))})
    print(text)
    if not args.no_write:
        write_section(SECTION, text)
        print(f"wrote the '{SECTION}' section of {DOC}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
