"""docs/metrics.md is generated from the metric declarations and must never be stale.

The stale check runs the real script (`scripts/generate_metrics_doc.py --check`); the rendering is
also driven directly with small tables, so coverage counting, the "not yet implemented" rows,
escaping and determinism are tested without depending on what the collectors declare today.
"""

from __future__ import annotations

import importlib.util
import random
import subprocess
import sys
from pathlib import Path

from dbintel.agent.collectors.metric_table import MetricSpec

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "scripts" / "generate_metrics_doc.py"
DOC = ROOT / "docs" / "metrics.md"


def _load_generator():
    spec = importlib.util.spec_from_file_location("generate_metrics_doc", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    assert spec.loader is not None
    sys.modules[spec.name] = module  # dataclasses look their module up while the class is built
    spec.loader.exec_module(module)
    return module


generator = _load_generator()


def run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True, cwd=ROOT, timeout=60)


def test_docs_metrics_md_is_up_to_date() -> None:
    done = run("--check")
    assert done.returncode == 0, (
        f"docs/metrics.md is stale: run `python scripts/generate_metrics_doc.py`\n{done.stderr}"
    )


def test_check_fails_on_a_stale_file_and_writing_fixes_it(tmp_path: Path) -> None:
    target, again = tmp_path / "metrics.md", tmp_path / "again.md"
    assert generator.main(["--output", str(target)]) == 0  # in process: the script's own main()
    assert generator.main(["--check", "--output", str(target)]) == 0
    assert generator.main(["--output", str(again)]) == 0
    assert again.read_bytes() == target.read_bytes()  # the same bytes every time
    target.write_text(target.read_text().replace("| on |", "| off |", 1))  # one hand edit
    assert generator.main(["--check", "--output", str(tmp_path / "missing.md")]) == 1
    stale = run("--check", "--output", str(target))  # and as CI runs it: exit status 1
    assert (
        stale.returncode == 1 and "stale" in stale.stderr and "python scripts/generate_metrics_doc.py" in stale.stderr
    )


# --- rendering, with tables made up here --------------------------------------------------------
def spec(
    name: str,
    *,
    default: bool = True,
    tier: str = "reference",
    source: str = "SELECT 1",
    verified: tuple[str, ...] = ("Server 1.0",),
    **kw,
) -> MetricSpec:
    return MetricSpec(
        name,
        kw.pop("type", "gauge"),
        kw.pop("unit", "1"),
        f"about {name}",
        source,
        enabled_by_default=default,
        tier=tier,
        verified_on=verified,
        **kw,
    )


REFERENCE = [
    {"metric_name": "db.a", "enabled_by_default": "true"},
    {"metric_name": "db.b", "enabled_by_default": "true"},
    {"metric_name": "db.c", "enabled_by_default": "false"},
    {"metric_name": "db.d", "enabled_by_default": "false"},
    {"metric_name": "db.e", "enabled_by_default": "false"},
]
SPECS = (
    spec("db.a", type="sum", monotonic=True, unit="By", attributes=("db.namespace", "state")),
    spec("db.c", default=False, source="INFO stats a|b"),
    spec("db.extra", tier="beyond", unit="s", verified=("Server 1.0", "Server 0.9 (documented shape)")),
)


def test_coverage_counts_default_optional_and_beyond_against_the_reference() -> None:
    coverage = generator.coverage(SPECS, REFERENCE)
    assert (coverage.default_covered, coverage.default_total) == (1, 2)
    assert (coverage.optional_covered, coverage.optional_total) == (1, 3)
    assert coverage.beyond == 1
    assert coverage.missing_default == ("db.b",) and coverage.missing_optional == ("db.d", "db.e")
    nothing = generator.coverage(None, REFERENCE)
    assert (nothing.default_covered, nothing.optional_covered, nothing.beyond) == (0, 0, 0)


def test_render_lists_every_metric_and_says_what_is_not_implemented() -> None:
    text = generator.render({"db": SPECS, "other": None}, {"db": REFERENCE, "other": REFERENCE})
    header = "\n".join(text.splitlines()[:6])
    assert "generated" in header.lower() and "python scripts/generate_metrics_doc.py" in header
    assert "| db (`db`) | implemented | 3 | 1 of 2 | 1 of 3 | 1 |" in text
    assert "| other (`other`) | not yet implemented | 0 | 0 of 2 | 0 of 3 | 0 |" in text
    row = next(line for line in text.splitlines() if line.startswith("| `db.a`"))
    assert row == (
        "| `db.a` | `db_a_bytes_total` | counter | sum (monotonic) | `By` | `db_namespace`, `state` | on "
        "| reference | about db.a | SELECT 1 | Server 1.0 |"
    )
    assert "INFO stats a\\|b" in text  # a pipe in a cell would split the table
    assert "Server 1.0; Server 0.9 (documented shape)" in text
    assert "Default reference rows not declared: `db.b`." in text


def test_render_is_deterministic_whatever_the_declaration_order() -> None:
    first = generator.render({"db": SPECS, "other": None}, {"db": REFERENCE, "other": REFERENCE})
    shuffled = list(SPECS)
    random.Random(7).shuffle(shuffled)
    again = generator.render({"db": tuple(shuffled), "other": None}, {"db": REFERENCE[::-1], "other": REFERENCE})
    assert first == again


def test_every_declared_metric_is_in_the_generated_doc() -> None:
    text = DOC.read_text()
    from dbintel.common.config import DATABASE_TYPES

    tables = generator.load_tables(DATABASE_TYPES)
    assert any(table is not None for table in tables.values())
    for _db_type, table in tables.items():
        if table is None:
            assert "not yet implemented" in text
            continue
        for declared in table:
            assert f"| `{declared.name}` | `{declared.prometheus_name}` |" in text, declared.name
