"""Render the figures of the hand-off series scenario into docs/reliability.md (its own `## ` section).

    python -m pytest tests/deploy/test_deploy_runtime.py -q     # writes .ci/work/series-identity.json
    python tests/deploy/write_series_doc.py                     # [FIGURES_JSON] [DOC]

The scenario is tests/deploy/test_deploy_runtime.py::test_a_moved_database_keeps_one_series_without_a_hole.
Only the section under HEADING is replaced (or appended); the rest of the file is left as it is.
"""

from __future__ import annotations

import sys
from collections import Counter
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from tests.deploy.test_deploy_runtime import COUNTERS, FIGURES, RATE_WINDOW  # noqa: E402
from tests.e2e.write_reliability_doc import read_inputs, write_section  # noqa: E402

HEADING = "## One series per database across a hand-off (issue 13, property 8)"
COMMAND = "python -m pytest tests/deploy/test_deploy_runtime.py -q"
E2E_SETUP = "## E2E setup:"

INTRO = f"""{HEADING}

A database moved to another agent must stay one series on a dashboard: one line, no hole in an
instant query, a `rate()` and an `increase()` that go on across the move. The shipped agent PodMonitor
removes the target's `pod` and `instance` from a database's series (keeping them on the agent's own
`dbintel_agent_*` series) and scrapes `/metrics?timestamps=poll`, so every database sample carries its
poll's start time (docs/architecture.md, "A database's series across the hand-off";
`deploy/kubernetes/base/podmonitor.yaml`).

**Scenario.** `tests/deploy` runs the base manifests on loopback (2 coordinators, 3 agents, real
PostgreSQL, MariaDB, SecantusDB and Redis; polls every 3 s, scrapes every 1 s; see the header of
`tests/deploy/local_cluster.py`). Two real Prometheus servers scrape the same pods: *now*, with the
jobs the Prometheus Operator generates from the shipped PodMonitors, and *before*, with the agent
PodMonitor as shipped before issue 13 (no `params`, `honorTimestamps` or `metricRelabelings`; the agent
then exposes no timestamps, as before). The test drains the agent holding the most databases
(`DrainAgent`, `apply: true`), waits until their new owners have polled them twice and both Prometheus
have that, then SIGTERMs the agent now holding the most, waits again, and queries both over the whole
window at 1 s steps. The counter of each type is one the dashboard plots as a rate:
{", ".join(f"`{c}`" for c in COUNTERS.values())}. It asserts, on *now*: no database series with `pod` or
`instance`, no identity twice and every identity the old manifests split over agents, one `dbintel_database_up` series per database,
`sum(dbintel_database_up)` at every step equal to the number of databases, a `rate(…[{RATE_WINDOW}])` for
every moved database at every step, no counter reset, no sample refused, and no missing step in any
dashboard query of the moved databases' series; on *before* only that each moved database had one more
series per move (what the figures compare against).
"""

NOTE = """The hole *before* lasts from the old owner's first scrape without the database (Prometheus writes
its staleness marker) to the new owner's first scrape after its first poll, so it grows with the poll
plus the scrape interval: here (3 s polls, 1 s scrapes) a few steps, and the 15 s rate window still
holds the old series' last samples; issue 13 measured `sum(dbintel_database_up)` 12 → 8 → 12 over 13 s
and a summed `rate()[30s]` at 0 for 8–18 s at 15 s polls and 5 s scrapes. *Now* has no such interval:
the series goes on from the old owner's last poll to the new owner's first, one interval later. The
figures vary between runs (the old manifests' holes were 1–3 steps per hand-off in the runs looked at
while this was built); the assertions on *now* held in each of 9 consecutive runs of the module after
the test's last change, one of them beside two CPU-burning loops.
"""

TRADE_OFFS = """**What it costs, and what to keep.**
- A stamped series that ends is not marked stale (Prometheus tracks staleness only for samples without
  a timestamp): when a database is removed from the inventory, or stops reporting a metric, or is down
  (its metric series are absent; `dbintel_database_up` says 0 at its next poll), instant queries keep
  showing the last sample for the lookback delta (5 m by default, `--query.lookback-delta`), and
  `count(dbintel_database_up)` counts a removed database that long. The agent's own series
  (`dbintel_agent_*`, not stamped) vanish at once, as before.
- Samples sit at their poll's time, not the scrape's: an instant query sees the last finished poll, and
  a `rate()` needs two polls in its range (give it at least twice the longest poll interval). Scrapes
  faster than polls store one sample per poll (a re-scraped one is an exact duplicate, dropped silently).
- Prometheus must honour the timestamps: `honorTimestamps: true` in the PodMonitor, and the Prometheus
  resource's `overrideHonorTimestamps` off. Leave `trackTimestampsStaleness` (Prometheus 2.48+) off: it
  would write the old owner's staleness marker after its last sample, which is the hole again.
- The old owner stops exposing a database when it releases it (on revocation at once; on SIGTERM
  before its final report and Leave), so it never writes a sample older than the new owner's
  (the refused samples above). Two agents that do poll one database at once (`on_coordinator_loss: keep` across a
  partition) write their real measurements into one series in time order; one that arrives older than
  the series' newest is dropped and counted in `prometheus_target_scrapes_sample_out_of_order_total`.
  Agents' clocks must agree (NTP) to well under a poll interval.
- Another scrape config that keeps `instance` and asks for no timestamps gets the old behaviour: one
  series per database per agent, with the hole at each move. Copy the PodMonitor's `params` and
  `metricRelabelings` to fold them.
- OTLP: each database's points carry the database's own resource (`service.instance.id` = its resource
  id), the same on every agent (`tests/integration/test_agent_otlp.py` moves one with a real
  coordinator); a backend that keys series on the resource keeps one series.
"""


def _join(mapping: dict, default: str = "0") -> str:
    if not mapping:
        return default
    return ", ".join(f"{key.split(':', 1)[-1]} {value}" for key, value in sorted(mapping.items()))


def _gaps(gaps: list) -> str:
    if not gaps:
        return "0"
    panels = Counter(title for title, *_ in gaps)
    worst = max(missing for *_, missing in gaps)
    return f"{len(gaps)} (" + ", ".join(f"{t} ×{n}" for t, n in panels.items()) + f"; up to {worst} steps each)"


def render(figures: dict) -> str:
    before, now = figures["before"], figures["now"]
    events = "; ".join(
        f"{e['event']}: {len(e['databases'])} database(s) moved, polled twice by their new owners and scraped "
        f"after {e['settled_s']} s"
        for e in figures["events"]
    )
    rows = [
        (
            "series of the moved databases' metrics over the window "
            f"(their identities without pod and instance: {before['identities_of_moved_databases']})",
            before["series_of_moved_databases"],
            now["series_of_moved_databases"],
        ),
        (
            "`dbintel_database_up` series per database over the window",
            _join(before["series_per_database"]),
            _join(now["series_per_database"]),
        ),
        (
            "1 s steps at which `sum(dbintel_database_up)` is below the number of databases, by hand-off",
            _join(before["up_below_all_steps"]),
            _join(now["up_below_all_steps"]),
        ),
        (
            f"steps at which a moved database's `sum by (dbintel_resource) (rate(counter[{RATE_WINDOW}]))` has no value",
            _join(before["rate_missing_steps"]),
            _join(now["rate_missing_steps"]),
        ),
        (
            "dashboard lines (queries of the moved databases' series) with a missing step",
            _gaps(before["dashboard_gaps"]),
            _gaps(now["dashboard_gaps"]),
        ),
        (
            "`increase(counter[window])` ÷ the counter's change over the window (its poll-stamped values at "
            "the two ends; above 1 is increase()'s extrapolation to the window's edges from 3 s samples)",
            _join(before["increase_share"]),
            _join(now["increase_share"]),
        ),
        ("counter resets in the moved databases' series", before["counter_resets"], now["counter_resets"]),
        (
            "samples Prometheus refused (out of order, duplicate timestamp, out of bounds)",
            sum(before["refused_samples"].values()),
            sum(now["refused_samples"].values()),
        ),
    ]
    table = "\n".join(f"| {name} | {_number(b)} | {_number(n)} |" for name, b, n in rows)
    return (
        INTRO + f"\nMeasured {figures['measured_at']} (load average {figures['load_average_1m']}), `{COMMAND}`, "
        f"then `python tests/deploy/write_series_doc.py`. Window {figures['window_s']} s ({now['steps']} steps); "
        f"{events}.\n\n"
        "| figure | before | now |\n|---|---|---|\n" + table + "\n\n" + NOTE + "\n" + TRADE_OFFS
    )


def _number(value: object) -> str:
    return str(int(value)) if isinstance(value, float) and value == int(value) else str(value)


def main(argv: list[str]) -> int:
    inputs = read_inputs(argv, FIGURES, COMMAND)
    if inputs is None:
        return 1
    figures, doc, document = inputs
    section = render(figures)
    if HEADING not in document and E2E_SETUP in document:  # new: above the E2E scenarios
        document = document.replace(E2E_SETUP, section.rstrip("\n") + "\n\n" + E2E_SETUP, 1)
    doc.write_text(write_section(section, HEADING, document))
    print(f"wrote {HEADING!r} to {doc}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
