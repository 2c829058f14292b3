"""Assignment quality on the same churn traces: the project's engine, rendezvous hashing, and consistent
hashing with bounded loads as the OpenTelemetry target allocator does it by default.

Run:  python bench/bench_assignment_quality.py [--sizes 10000x100,100000x1000] [--no-write]

Each trace starts from nothing and applies, in order: initial placement; one agent leaves; one agent
joins; several agents leave at once; several join at once; 1% more databases; 1% of the databases
removed; the periodic cost rebalance (the leader's, every 5 minutes). Every algorithm sees the same
trace, with equal costs and with skewed (lognormal μ=0 σ=1, seeded) costs. The engine is called the
way the leader calls it (services/coordinator/planning.py): demands sorted by id, one slot per live
agent, the previous target restricted to live agents as `previous`, `balance=True` only after joins
(and the first placement), `plan_cost_rebalance(min_improvement=0.10, max_spread=1.03)` for the
periodic step. The
peers are in bench/peers/assigners.py. Prints the figures, writes docs/data/assignment_quality.json
and rewrites the "## Assignment quality vs the peers" section of docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import math
import random
import sys
import time
from dataclasses import dataclass

from peers.assigners import ConsistentHashingBoundedLoads, loads_of, rendezvous_owners  # bench/peers
from report import DOC, MachineLoad, image_link, machine_line, write_data, write_section  # bench/report.py

from dbintel.coordinator.engine.assignment import AgentSlot, ResourceDemand, place, plan_cost_rebalance

SECTION = "## Assignment quality vs the peers"
DEFAULT_SIZES = "10000x100,100000x1000"
ALGORITHMS = ("engine", "rendezvous", "ch-bl")
LABELS = {"engine": "dbintel engine", "rendezvous": "rendezvous (HRW)", "ch-bl": "CH bounded loads (OTel TA default)"}
REBALANCE_IMPROVEMENT = 0.10  # the config default of scaling.coordinator.rebalance_improvement


@dataclass(frozen=True)
class Event:
    name: str
    kind: str  # initial | leave | join | add | remove | periodic
    agents: tuple[str, ...]
    databases: tuple[str, ...]
    changed_agents: tuple[str, ...] = ()
    changed_databases: tuple[str, ...] = ()


def churn_trace(resources: int, agent_count: int, seed: int = 7) -> list[Event]:
    rng = random.Random(seed)
    several = max(5, agent_count // 100)
    agents = [f"agent-{i:04d}" for i in range(agent_count)]
    dbs = [f"db:postgresql/db{i:06d}" for i in range(resources)]
    events = [Event("initial placement", "initial", tuple(agents), tuple(dbs))]

    def leave(name: str, count: int) -> None:
        nonlocal agents
        gone = rng.sample(agents, count)
        agents = [a for a in agents if a not in set(gone)]
        events.append(Event(name, "leave", tuple(agents), tuple(dbs), tuple(gone)))

    def join(name: str, names: list[str]) -> None:
        nonlocal agents
        agents = sorted(agents + names)
        events.append(Event(name, "join", tuple(agents), tuple(dbs), tuple(names)))

    leave("1 agent leaves", 1)
    join("1 agent joins", ["agent-new-00"])
    leave(f"{several} agents leave at once", several)
    join(f"{several} agents join at once", [f"agent-new-{i + 1:02d}" for i in range(several)])
    added = [f"db:postgresql/db{resources + i:06d}" for i in range(resources // 100)]
    dbs = dbs + added
    events.append(Event("1% databases added", "add", tuple(agents), tuple(dbs), changed_databases=tuple(added)))
    removed = rng.sample(dbs, resources // 100)
    dbs = [d for d in dbs if d not in set(removed)]
    events.append(Event("1% databases removed", "remove", tuple(agents), tuple(dbs), changed_databases=tuple(removed)))
    events.append(Event("periodic cost rebalance", "periodic", tuple(agents), tuple(dbs)))
    return events


def cost_table(distribution: str, ids: list[str]) -> dict[str, float]:
    if distribution == "equal":
        return dict.fromkeys(ids, 1.0)
    rng = random.Random(20240601)
    return {rid: rng.lognormvariate(0.0, 1.0) for rid in ids}


class EngineRunner:
    """The leader's calls, as in planning.plan_step (no pins, capacities or draining in these traces)."""

    def __init__(self, costs: dict[str, float]):
        self.costs = costs
        self.target: dict[str, str] = {}

    def step(self, event: Event) -> dict[str, str]:
        live = set(event.agents)
        inventory = set(event.databases)
        previous = {r: a for r, a in self.target.items() if r in inventory and a in live}
        slots = [AgentSlot(agent_id=a) for a in sorted(live)]
        demands = [ResourceDemand(resource_id=rid, cost=self.costs[rid]) for rid in sorted(inventory)]
        if event.kind == "periodic":
            placement, _accepted = plan_cost_rebalance(demands, slots, previous, min_improvement=REBALANCE_IMPROVEMENT)
        else:
            placement = place(demands, slots, previous, balance=event.kind in ("initial", "join"))
        self.target = dict(placement.owners)
        return self.target


class RingRunner:
    """The OTel target allocator: ring rebuilt on a collector change; new targets located on a target change."""

    def __init__(self):
        self.ring: ConsistentHashingBoundedLoads | None = None
        self.owners: dict[str, str] = {}

    def step(self, event: Event) -> dict[str, str]:
        if self.ring is None or event.kind in ("initial", "leave", "join"):
            self.ring = ConsistentHashingBoundedLoads(event.agents)
            self.owners = self.ring.owners(event.databases)
        elif event.kind in ("add", "remove"):
            keep = set(event.databases)
            owners = {r: a for r, a in self.owners.items() if r in keep}
            owners.update(self.ring.owners(r for r in event.databases if r not in owners))
            self.owners = owners
        return self.owners


class RendezvousRunner:
    """Stateless HRW: every key recomputed when agents change; only new keys when databases change."""

    def __init__(self):
        self.owners: dict[str, str] = {}

    def step(self, event: Event) -> dict[str, str]:
        if event.kind in ("initial", "leave", "join"):
            self.owners = rendezvous_owners(event.databases, event.agents)
        elif event.kind in ("add", "remove"):
            keep = set(event.databases)
            owners = {r: a for r, a in self.owners.items() if r in keep}
            owners.update(rendezvous_owners([r for r in event.databases if r not in owners], event.agents))
            self.owners = owners
        return self.owners


def movement(event: Event, before: dict[str, str], after: dict[str, str], costs: dict[str, float]) -> dict:
    """Databases whose assignment changed (placed, dropped or moved) against the theoretical minimum.

    Minimum, in cost (equal costs: in databases): a leave, the databases the leavers held under this
    algorithm's own previous placement; a join of j agents to k, the newcomers' fair share j × total / (k + j)
    (less and they stay under-loaded); adding or removing databases, those databases; the initial
    placement, every database; the periodic rebalance has no minimum (0: nothing must move)."""
    changed = [r for r, a in after.items() if before.get(r) != a] + [r for r in before if r not in after]
    moved_cost = math.fsum(costs[r] for r in changed)
    if event.kind == "initial":
        minimum = math.fsum(costs[r] for r in event.databases)
    elif event.kind == "leave":
        gone = set(event.changed_agents)
        minimum = math.fsum(costs[r] for r, a in before.items() if a in gone)
    elif event.kind == "join":
        total = math.fsum(costs[r] for r in event.databases)
        minimum = total * len(event.changed_agents) / len(event.agents)
    elif event.kind in ("add", "remove"):
        minimum = math.fsum(costs[r] for r in event.changed_databases)
    else:
        minimum = 0.0
    forced = set(event.changed_databases)
    if event.kind == "leave":
        forced |= {r for r, a in before.items() if a in set(event.changed_agents)}
    extra = sum(1 for r, a in after.items() if r not in forced and r in before and before[r] != a)
    return {
        "moved": len(changed),
        "moved_cost": moved_cost,
        "minimum_cost": minimum,
        "ratio": moved_cost / minimum if minimum > 0 else None,
        "moved_existing": extra,
    }


def worst_over_ideal(loads: dict[str, float]) -> float:
    total = math.fsum(loads.values())
    return max(loads.values()) / (total / len(loads)) if total > 0 else 1.0


def run_size(resources: int, agent_count: int) -> list[dict]:
    events = churn_trace(resources, agent_count)
    all_ids = sorted({r for e in events for r in e.databases})
    rows = []
    costs_by = {dist: cost_table(dist, all_ids) for dist in ("equal", "lognormal")}
    ones = costs_by["equal"]  # counts: every database weighs 1
    # The peers ignore costs, so one run of each serves both cost tables; the engine runs per table.
    runners = {
        ("rendezvous", None): RendezvousRunner(),
        ("ch-bl", None): RingRunner(),
        ("engine", "equal"): EngineRunner(costs_by["equal"]),
        ("engine", "lognormal"): EngineRunner(costs_by["lognormal"]),
    }
    previous: dict[tuple, dict[str, str]] = {key: {} for key in runners}
    for event in events:
        for (algorithm, dist), runner in runners.items():
            started = time.perf_counter()
            owners = runner.step(event)
            seconds = time.perf_counter() - started
            assert set(owners) == set(event.databases) and set(owners.values()) <= set(event.agents)
            for distribution in [dist] if dist else ["equal", "lognormal"]:
                costs = costs_by[distribution]
                loads = loads_of(owners, costs, event.agents)
                rows.append(
                    {
                        "size": f"{resources}x{agent_count}",
                        "resources": len(event.databases),
                        "agents": len(event.agents),
                        "costs": distribution,
                        "algorithm": algorithm,
                        "event": event.name,
                        "kind": event.kind,
                        "seconds": seconds,
                        "worst_over_ideal": worst_over_ideal(loads),
                        "count_worst_over_ideal": worst_over_ideal(loads_of(owners, ones, event.agents)),
                        "idle_agents": sum(1 for v in loads.values() if v == 0),
                        **movement(event, previous[(algorithm, dist)], owners, costs),
                    }
                )
            previous[(algorithm, dist)] = dict(owners)
        print(f"  {resources}x{agent_count} {event.name}: done", file=sys.stderr)
    return rows


def fmt_ratio(row: dict) -> str:
    return "—" if row["ratio"] is None else f"{row['ratio']:.2f}"


def command_line(args) -> str:
    return "python bench/bench_assignment_quality.py" + (
        f" --sizes {args.sizes}" if args.sizes != DEFAULT_SIZES else ""
    )


def render(args, rows: list[dict], noise: MachineLoad) -> str:
    command = command_line(args)
    lines = [
        SECTION,
        "",
        machine_line(),
        f"Command: `{command}`. {noise.sentence()}",
        "",
        "Every algorithm sees the same churn trace (initial placement; 1 agent leaves; 1 joins; several leave "
        "at once; several join; 1% more databases; 1% removed; the periodic cost rebalance) with equal costs "
        "and with skewed costs (lognormal μ=0 σ=1, seeded: the largest database costs about 50× the mean). "
        "The engine is called as the leader calls it (`planning.plan_step`: `place(balance=True)` after joins, "
        "`balance=False` after leaves and inventory changes, `plan_cost_rebalance(min_improvement=0.10, "
        "max_spread=1.03)` periodically: triggered by the absolute bound as well as by a 10 % gain). The peers, re-implemented in `bench/peers/assigners.py`:",
        "",
        "- **CH bounded loads**: the OpenTelemetry target allocator's default `consistent-hashing` strategy "
        "(`open-telemetry/opentelemetry-operator` `cmd/otel-allocator/internal/allocation/consistent_hashing.go`: "
        "`buraksezer/consistent` with PartitionCount 1061, ReplicationFactor 5, Load 1.1, xxhash64; "
        "the ring is rebuilt from the member set on every collector change). Library v0.10.0's `consistent.go`: "
        "members replicated on a ring (`name+i`), partition p goes to the first member clockwise owning fewer "
        "than ceil(⌊1061 / members⌋ × 1.1) partitions, a target goes to partition xxhash64(target) mod 1061. "
        "Costs are not considered.",
        "- **Rendezvous (HRW)**: each database to the agent with the highest hash of (database, agent). "
        "Costs are not considered.",
        "",
        "**Movement / minimum** = cost of the databases whose assignment changed ÷ the least that must change "
        "(with equal costs: databases). Minimum: a leave, what the leavers held (under that algorithm's own "
        "placement); a join of j agents to k, the newcomers' fair share j × total ÷ (k + j), so a value a "
        "little under 1 means the newcomer ended slightly under its fair share; adding or removing databases, "
        "those databases. **Worst/ideal** = max agent load ÷ (total load ÷ agents). *Existing moved* = "
        "databases that were neither added, removed nor held by a leaver and still changed owner. **Count "
        "worst/ideal** = the most databases on one agent ÷ the mean number (with equal costs it equals the cost "
        "column).",
        "",
    ]
    for size in sorted({r["size"] for r in rows}, key=lambda s: int(s.split("x")[0])):
        resources, agents = size.split("x")
        lines += [
            f"### {int(resources):,} databases × {int(agents):,} agents",
            "",
            "| event | algorithm | movement / minimum (equal) | existing moved (equal) | worst/ideal (equal) "
            "| movement / minimum (skewed) | cost worst/ideal (skewed) | count worst/ideal (skewed) "
            "| seconds (skewed) |",
            "|---|---|---:|---:|---:|---:|---:|---:|---:|",
        ]
        events = list(dict.fromkeys(r["event"] for r in rows if r["size"] == size))
        for event in events:
            for algorithm in ALGORITHMS:
                eq, sk = (
                    next(
                        r
                        for r in rows
                        if (r["size"], r["event"], r["algorithm"], r["costs"]) == (size, event, algorithm, costs)
                    )
                    for costs in ("equal", "lognormal")
                )
                lines.append(
                    f"| {event} | {LABELS[algorithm]} | {fmt_ratio(eq)} | {eq['moved_existing']:,} | "
                    f"{eq['worst_over_ideal']:.3f} | {fmt_ratio(sk)} | {sk['worst_over_ideal']:.3f} | "
                    f"{sk['count_worst_over_ideal']:.3f} | {sk['seconds']:.3f} |"
                )
        lines.append("")
    lines += [
        image_link("assignment_quality", "Assignment quality: movement over minimum and worst load over ideal"),
        "",
        *reading(rows),
        "",
    ]
    return "\n".join(lines)


def reading(rows: list[dict]) -> list[str]:
    """Sentences computed from the figures of the largest size (no claim that the data does not carry)."""
    big = max({r["size"] for r in rows}, key=lambda s: int(s.split("x")[0]))
    mine = [r for r in rows if r["size"] == big]

    def span(algorithm, kinds, field="ratio", costs=("equal", "lognormal")):
        values = [
            r[field]
            for r in mine
            if r["algorithm"] == algorithm and r["kind"] in kinds and r["costs"] in costs and r[field] is not None
        ]
        return min(values), max(values)

    def fmt(pair, digits=2):
        low, high = pair
        low_text, high_text = f"{low:.{digits}f}", f"{high:.{digits}f}"
        return low_text if low_text == high_text else f"{low_text}–{high_text}"

    out = [f"Reading ({big.replace('x', ' databases × ')} agents):", ""]
    out.append(
        "- Movement / minimum on leaves: "
        + "; ".join(f"{LABELS[a]} {fmt(span(a, ('leave',)))}" for a in ALGORITHMS)
        + ". On joins: "
        + "; ".join(f"{LABELS[a]} {fmt(span(a, ('join',)))}" for a in ALGORITHMS)
        + " (under 1: the newcomers took less than "
        "their fair share and stay under-loaded, which the worst/ideal column pays for)."
    )
    out.append(
        "- Worst/ideal over the whole trace, equal costs: "
        + "; ".join(
            f"{LABELS[a]} up to {span(a, KINDS_ALL, 'worst_over_ideal', ('equal',))[1]:.2f}" for a in ALGORITHMS
        )
        + "; skewed costs: "
        + "; ".join(
            f"{LABELS[a]} up to {span(a, KINDS_ALL, 'worst_over_ideal', ('lognormal',))[1]:.2f}" for a in ALGORITHMS
        )
        + "; count worst/ideal with skewed costs: "
        + "; ".join(
            f"{LABELS[a]} up to {span(a, KINDS_ALL, 'count_worst_over_ideal', ('lognormal',))[1]:.2f}"
            for a in ALGORITHMS
        )
        + "."
    )
    ring = [r for r in mine if r["algorithm"] == "ch-bl" and r["costs"] == "equal"]
    agents = ring[0]["agents"]
    bound = math.ceil((1061 // agents) * 1.1)  # as the library computes it
    idle = max(r["idle_agents"] for r in ring)
    share = bound * ring[0]["resources"] / 1061
    out.append(
        f"- The ring: with 1,061 partitions on ~{agents:,} agents the load bound is {bound} partitions per "
        f"member (~{share:,.0f} databases against an ideal of {ring[0]['resources'] / agents:,.0f})"
        + (f", and up to {idle:,} agents own no partition at all" if idle else "")
        + "; a collector change rebuilds the ring, so partitions of agents that stayed move too "
        "(existing moved)."
    )
    engine_skew_leave = span("engine", ("leave",), "worst_over_ideal", ("lognormal",))[1]
    periodic = next(
        r for r in mine if r["algorithm"] == "engine" and r["kind"] == "periodic" and r["costs"] == "lognormal"
    )
    refused = periodic["moved"] == 0
    engine_seconds = span("engine", KINDS_ALL, "seconds")[1]
    peer_seconds = max(span(a, KINDS_ALL, "seconds")[1] for a in ("rendezvous", "ch-bl"))
    out.append(
        f"- Where we lose: after leaves with skewed costs the engine moves only the leavers' databases (best fit, "
        f"largest first), so the "
        f"agent that receives a large one runs up to {engine_skew_leave:.2f}× the ideal; the periodic cost "
        + (
            "rebalance at the end of the trace found the engine at "
            f"{periodic['worst_over_ideal']:.2f}× and moved nothing (inside the 1.03 bound, and no 10% gain)."
            if refused
            else f"rebalance brought it to {periodic['worst_over_ideal']:.2f}×."
        )
        + f" The engine recomputes every database on every step (up to {engine_seconds:.2f} s here, pure "
        f"Python); a hash peer only recomputes on membership changes and locates new keys otherwise (up to "
        f"{peer_seconds:.2f} s for our Python re-implementations — pure-Python xxhash64, numpy-vectorised "
        "HRW — their Go originals are faster)."
    )
    return out


KINDS_ALL = ("initial", "leave", "join", "add", "remove", "periodic")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default=DEFAULT_SIZES, help="comma-separated DATABASESxAGENTS")
    parser.add_argument("--no-write", action="store_true", help="print only; leave docs/ alone")
    args = parser.parse_args()
    rows = []
    with MachineLoad() as noise:
        for size in args.sizes.split(","):
            resources, agents = (int(x) for x in size.lower().split("x"))
            rows += run_size(resources, agents)
    text = render(args, rows, noise)
    print(text)
    if not args.no_write:
        write_data(
            "assignment_quality",
            {
                "command": command_line(args),
                "machine": machine_line(),
                "noise": noise.as_dict(),
                "unit": {
                    "ratio": "moved cost / minimum cost",
                    "worst_over_ideal": "max agent load / mean agent load",
                    "seconds": "wall seconds of one step",
                },
                "labels": LABELS,
                "series": rows,
            },
        )
        write_section(SECTION, text)
        print(f"wrote the '{SECTION}' section of {DOC}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
