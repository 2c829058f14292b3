"""Measured figures of the end-to-end scenarios, collected into one JSON file.

Each scenario calls `record(...)` with its stated bound and what it measured, before it asserts, so a
failing run still leaves its numbers. `tests/e2e/write_reliability_doc.py` renders the file into
docs/reliability.md. Recording never fails a test: the figures are a by-product, not the verdict.
"""

from __future__ import annotations

import json
import os
import time
import warnings
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
FIGURES_PATH = Path(os.environ.get("DBINTEL_E2E_FIGURES", REPO / ".ci" / "work" / "e2e-figures.json"))


def record(scenario: str, *, title: str, bound: str, figures: dict[str, Any], order: int) -> None:
    """Merge one scenario's figures into FIGURES_PATH (the latest run of a scenario wins)."""
    try:
        FIGURES_PATH.parent.mkdir(parents=True, exist_ok=True)
        try:
            everything = json.loads(FIGURES_PATH.read_text())
        except (OSError, ValueError):
            everything = {}
        everything[scenario] = {
            "title": title,
            "bound": bound,
            "order": order,
            "figures": {k: round(v, 3) if isinstance(v, float) else v for k, v in figures.items()},
            "measured_at": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()),
            "load_average_1m": round(os.getloadavg()[0], 2),
        }
        temporary = FIGURES_PATH.with_suffix(".tmp")
        temporary.write_text(json.dumps(everything, indent=2, sort_keys=True) + "\n")
        temporary.replace(FIGURES_PATH)
    except OSError as exc:  # never the verdict
        warnings.warn(f"could not record e2e figures in {FIGURES_PATH}: {exc}", stacklevel=2)
