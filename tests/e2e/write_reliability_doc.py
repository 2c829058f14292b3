"""Render the e2e scenarios' measured figures into docs/reliability.md, one `## ` section each.

    python -m pytest tests/e2e -q                 # writes .ci/work/e2e-figures.json
    python tests/e2e/write_reliability_doc.py     # [FIGURES_JSON] [DOC]

Only this script's own sections (headings starting with "E2E") are replaced or appended; every
other section of the file (another author's) is left as it is.
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from tests.e2e.cluster import Timing  # noqa: E402
from tests.e2e.figures import FIGURES_PATH  # noqa: E402

T = Timing()

DOC = REPO / "docs" / "reliability.md"
COMMAND = "python -m pytest tests/e2e -q"

SETUP = f"""## E2E setup: a real cluster under faults

`tests/e2e/` starts on loopback a real Redis for the coordinators' state, 3 `dbintel coordinator`
processes (redis mode) and 3 `dbintel agent` processes (up to 10 in the scaling scenario), each
its own process group with its log in the test's temp dir, monitoring 53 databases: 12 PostgreSQL
databases, 12 MariaDB schemas, 12 MongoDB (SecantusDB) entries, Redis db 0-15, and `pg-faulty`,
a PostgreSQL database behind a TCP fault proxy. Timings are scaled down: heartbeat {T.heartbeat:g} s,
node_timeout {T.node_timeout:g} s, disconnect_grace {T.disconnect_grace:g} s, leader_ttl {T.leader_ttl:g} s,
every database polled every {T.interval:g} s
(poll timeout {T.interval * 0.7:g} s). Agents get all three
replicas as one gRPC target (`ipv4:a,b,c`; each agent dials one at random and another when its
stream fails); one coordinator reaches Redis through a
fault proxy.

The **ownership checker** (`tests/e2e/ownership.py`) scrapes every agent's `/metrics` 4 times an
interval and rebuilds, from `dbintel_agent_polls_total` and `dbintel_agent_last_poll_timestamp_seconds`
per `dbintel_resource`, every poll of every database and who made it. A *duplicate* is two polls
of one database by different agents at most half an interval apart (two agents polling one
database always make such a pair, whatever their phases); a *gap* is the time between consecutive
polls of a database, whoever made them; an *orphan* is a database nobody polled for 2.5 intervals.
Gap bounds allow interval + (interval - 0.1 s): a poll started late by a busy shared CPU lengthens
one gap by its delay, while a missed poll makes a gap of two intervals. Failover bounds get 1 s of
scheduling slack. A last poll made just before a database's series vanished (revoked, or the agent
ended) between two scrapes is inferred from the anchored schedule (see the module); tests/integration/
test_agent_resilience.py checks hand-off continuity at the collector itself, where nothing is sampled.
The machine is 2 cores shared with other work; the 1-minute load average at each measurement is
given. Command: `{COMMAND}`; then `python tests/e2e/write_reliability_doc.py`.
"""


def _value(value: object) -> str:
    if isinstance(value, float):
        return f"{value:.3f}".rstrip("0").rstrip(".") if value != int(value) else f"{int(value)}"
    if isinstance(value, list):
        return ", ".join(
            "(" + ", ".join(_value(v) for v in item) + ")" if isinstance(item, list) else _value(item) for item in value
        )
    return str(value)


def render_section(entry: dict) -> str:
    rows = "\n".join(f"| {name} | {_value(value)} |" for name, value in sorted(entry["figures"].items()))
    return (
        f"## E2E: {entry['title']}\n\n"
        f"**Bound asserted:** {entry['bound']}.\n\n"
        f"Measured {entry['measured_at']} (load average {entry['load_average_1m']}), `{COMMAND}`:\n\n"
        f"| figure | measured |\n|---|---|\n{rows}\n"
    )


def write_section(text: str, heading: str, document: str) -> str:
    """Replace the block under `heading` (up to the next '## ') or append it."""
    pattern = re.compile(rf"^{re.escape(heading)}\n.*?(?=^## |\Z)", re.S | re.M)
    if pattern.search(document):
        return pattern.sub(lambda _: text.rstrip("\n") + "\n\n", document, count=1)
    return document.rstrip("\n") + "\n\n" + text.rstrip("\n") + "\n"


def read_inputs(argv: list[str], figures_path: Path, command: str) -> tuple[dict, Path, str] | None:
    """(figures, the doc's path, its text) from `[FIGURES_JSON] [DOC]` in argv; None (said why) if
    there are no figures yet."""
    figures_path = Path(argv[1]) if len(argv) > 1 else figures_path
    doc = Path(argv[2]) if len(argv) > 2 else DOC
    try:
        figures = json.loads(figures_path.read_text())
    except (OSError, ValueError) as exc:
        print(f"no figures at {figures_path} ({exc}); run `{command}` first", file=sys.stderr)
        return None
    return figures, doc, doc.read_text() if doc.exists() else "# Reliability\n"


def main(argv: list[str]) -> int:
    inputs = read_inputs(argv, FIGURES_PATH, COMMAND)
    if inputs is None:
        return 1
    figures, doc, document = inputs
    document = write_section(SETUP, SETUP.splitlines()[0], document)
    for entry in sorted(figures.values(), key=lambda e: e["order"]):
        section = render_section(entry)
        document = write_section(section, section.splitlines()[0], document)
    doc.parent.mkdir(parents=True, exist_ok=True)
    doc.write_text(document)
    print(f"wrote {len(figures)} scenario(s) to {doc}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
