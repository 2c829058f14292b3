"""Draw the benchmark plots (PNG) from the raw figures in docs/data/*.json, without rerunning any bench.

Run:  python bench/plots.py [--only NAME ...]

Reads docs/data/<bench>.json (each has at least `series`, `unit`, `command`) and writes docs/img/<plot>.png,
the images docs/benchmarks.md links. A bench whose data file is missing is reported and skipped; the others
are still drawn. The coordinator benches write docs/data/bench_heartbeats.json and bench_failover.json (series
name -> list of records); any other data file is drawn generically: its `series` may be a list of records (flat
dicts: one text field names the bar, numeric fields are plotted) or a mapping of series name -> list of numbers
or of [x, y] pairs (plotted as lines).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only, no display
import matplotlib.pyplot as plt
from report import DATA_DIR, IMG_DIR

COLORS = {"engine": "#1f77b4", "rendezvous": "#ff7f0e", "ch-bl": "#d62728", "dbintel": "#1f77b4", "peer": "#7f7f7f"}


def load(bench: str) -> dict | None:
    path = DATA_DIR / f"{bench}.json"
    if not path.exists():
        return None
    return json.loads(path.read_text())


def save(fig, name: str, command: str) -> Path:
    fig.text(0.01, 0.005, f"data: docs/data; bench: {command}", fontsize=7, color="#555555")
    IMG_DIR.mkdir(parents=True, exist_ok=True)
    path = IMG_DIR / f"{name}.png"
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)
    return path


def grouped_bars(ax, groups: list[str], series: dict[str, list[float]], colors: dict[str, str], labels: dict[str, str]):
    width = 0.8 / max(len(series), 1)
    for i, (key, values) in enumerate(series.items()):
        xs = [g + (i - (len(series) - 1) / 2) * width for g in range(len(groups))]
        ax.bar(xs, values, width, label=labels.get(key, key), color=colors.get(key))
    ax.set_xticks(range(len(groups)))
    ax.set_xticklabels(groups, rotation=25, ha="right", fontsize=8)


def plot_assignment_quality(data: dict) -> list[Path]:
    rows = data["series"]
    size = max({r["size"] for r in rows}, key=lambda s: int(s.split("x")[0]))
    rows = [r for r in rows if r["size"] == size]
    algorithms = [a for a in ("engine", "rendezvous", "ch-bl") if a in data["labels"]]
    events = list(dict.fromkeys(r["event"] for r in rows))
    moving = [e for e in events if next(r for r in rows if r["event"] == e)["kind"] not in ("initial", "periodic")]
    fig, axes = plt.subplots(2, 2, figsize=(13, 8.5))
    for col, costs in enumerate(("equal", "lognormal")):

        def values(field, evs, costs=costs):
            return {
                a: [
                    next(r[field] for r in rows if r["event"] == e and r["algorithm"] == a and r["costs"] == costs)
                    for e in evs
                ]
                for a in algorithms
            }

        ax = axes[0][col]
        grouped_bars(ax, moving, values("ratio", moving), COLORS, data["labels"])
        ax.axhline(1.0, color="black", linewidth=0.8, linestyle="--")
        ax.set_ylabel("movement / theoretical minimum")
        ax.set_title(f"Movement, {'equal' if costs == 'equal' else 'skewed (lognormal)'} costs")
        ax = axes[1][col]
        grouped_bars(ax, events, values("worst_over_ideal", events), COLORS, data["labels"])
        ax.axhline(1.0, color="black", linewidth=0.8, linestyle="--")
        ax.set_ylabel("worst agent load / ideal")
        ax.set_title(f"Worst load, {'equal' if costs == 'equal' else 'skewed (lognormal)'} costs")
    axes[0][0].legend(fontsize=8)
    resources, agents = size.split("x")
    fig.suptitle(f"Assignment quality on one churn trace: {int(resources):,} databases × {int(agents):,} agents")
    fig.tight_layout()
    return [save(fig, "assignment_quality", data["command"])]


def _short(name: str) -> str:
    return name.replace(" (in-process)", " (in-proc.)").replace(", polls + 1 scrape/poll", "")


def plot_collection(data: dict) -> list[Path]:
    series = data["series"]
    scenarios = [s for s in ("small", "many") if s in series]
    fig, axes = plt.subplots(2, len(scenarios), figsize=(7 * len(scenarios), 10), squeeze=False)
    titles = {"small": "small schema", "many": "+200 tables / 16 Redis dbs"}
    for col, scenario in enumerate(scenarios):
        rows = series[scenario]
        names = [_short(r["name"]) for r in rows]
        colors = [COLORS["dbintel"] if r["family"] == "dbintel" else COLORS["peer"] for r in rows]
        for row_index, (field, label) in enumerate(
            (
                ("cpu_us_per_sample", "CPU µs per database sample"),
                ("statements", "statements (commands) per collection"),
            )
        ):
            ax = axes[row_index][col]
            ax.barh(range(len(rows)), [r[field] for r in rows], color=colors)
            ax.set_yticks(range(len(rows)))
            ax.set_yticklabels(names, fontsize=8)
            ax.invert_yaxis()
            ax.set_xlabel(label)
            ax.set_title(f"{label} — {titles[scenario]}", fontsize=10)
    fig.suptitle("Collection cost: dbintel (blue) vs the peer exporters (grey)")
    fig.tight_layout()
    paths = [save(fig, "collection_cost", data["command"])]

    sizes = data.get("growth_sizes", [])
    steps = ["small", *(f"databases-{n}" for n in sizes[1:])]
    if sizes and all(s in series for s in steps):
        fig, axes = plt.subplots(1, 2, figsize=(13, 5))
        for ax, kind, title in (
            (axes[0], "postgresql", "PostgreSQL: databases on the server"),
            (axes[1], "mysql", "MariaDB: schemas on the server"),
        ):
            peer_colors = iter(["#7f7f7f", "#ff7f0e", "#2ca02c"])
            for record in series[steps[-1]]:
                if record["kind"] != kind:
                    continue
                ys = [
                    next((r["cpu_ms"] for r in series[s] if r["name"] == record["name"]), float("nan")) for s in steps
                ]
                if record["family"] == "dbintel":  # the agent dark, the in-process collector light
                    color, style = ("#1f77b4", "-") if record["path"] == "AgentPath" else ("#9ecae1", "-")
                else:
                    color, style = next(peer_colors), "--"
                ax.plot(sizes, ys, marker="o", label=_short(record["name"]), color=color, linestyle=style)
            ax.set_xlabel(title)
            ax.set_ylabel("CPU ms per collection")
            ax.set_xticks(sizes)
            ax.legend(fontsize=7)
            ax.set_title(title)
        fig.suptitle("Collection cost as the monitored server grows")
        fig.tight_layout()
        paths.append(save(fig, "collection_growth", data["command"]))
    else:
        print(
            "collection: no many-databases growth in docs/data/collection.json; collection_growth.png not drawn",
            file=sys.stderr,
        )
    return paths


def plot_agent_density(data: dict) -> list[Path]:
    rows = data["series"]
    fig, axes = plt.subplots(1, 2, figsize=(13, 5))
    for kind, color in (("postgresql", "#1f77b4"), ("redis", "#d62728")):
        mine = [r for r in rows if r["kind"] == kind]
        if not mine:
            continue
        last = {r["databases"]: r for r in mine}  # the last attempt of each step draws the line
        earlier = [r for r in mine if last[r["databases"]] is not r]
        xs = sorted(last)
        axes[0].plot(xs, [100 * last[x]["missed_share"] for x in xs], marker="o", color=color, label=kind)
        axes[0].scatter(
            [r["databases"] for r in earlier],
            [100 * r["missed_share"] for r in earlier],
            facecolors="none",
            edgecolors=color,
            label=f"{kind}: earlier attempt" if earlier else None,
        )
        axes[1].plot(
            xs, [100 * last[x]["agent_cpu_share"] for x in xs], marker="o", color=color, label=f"{kind}: agent"
        )
        axes[1].plot(
            xs,
            [100 * last[x].get("server_cpu_share", float("nan")) for x in xs],
            marker="x",
            linestyle=":",
            color=color,
            label=f"{kind}: its server",
        )
    axes[0].axhline(100 * data["missed_limit"], color="black", linestyle="--", linewidth=0.8, label="1% limit")
    axes[0].set_ylabel("missed polls, %")
    axes[1].set_ylabel("CPU, % of one core (agent and server pinned to one each)")
    for ax in axes:
        ax.set_xlabel(f"databases on one agent ({data['interval_s']:g} s interval)")
        ax.set_xscale("log")
        ax.legend(fontsize=8)
    fig.suptitle("Agent density: one agent process pinned to one core")
    fig.tight_layout()
    return [save(fig, "agent_density", data["command"])]


def plot_agent_memory(data: dict) -> list[Path]:
    rows = data["series"]
    fig, ax = plt.subplots(figsize=(10, 4.8))
    labels = [r["label"] for r in rows]
    xs = range(len(rows))
    ax.bar([x - 0.2 for x in xs], [r["rss"] / 2**20 for r in rows], 0.4, label="RSS MiB", color="#1f77b4")
    ax.bar([x + 0.2 for x in xs], [r["uss"] / 2**20 for r in rows], 0.4, label="USS MiB", color="#aec7e8")
    ax.set_xticks(list(xs))
    ax.set_xticklabels(labels, rotation=20, ha="right", fontsize=8)
    ax.set_ylabel("MiB")
    ax.legend()
    ax.set_title("Agent memory by monitored databases")
    fig.tight_layout()
    return [save(fig, "agent_memory", data["command"])]


def plot_heartbeats(data: dict) -> list[Path]:
    """bench/bench_heartbeats.py (Helper D's): series name -> records per fleet size."""
    fig, axes = plt.subplots(1, 3, figsize=(16, 4.8))
    panels = (
        ("heartbeats_per_s", "heartbeats/s one coordinator sustains (saturated)", False),
        ("paced_p99_ms", "p99 latency ms at 50% of saturation", True),
        ("agents_per_replica_model", "agents per replica at 50% of a core (model)", False),
    )
    for name, records in data["series"].items():
        xs = [r["agents"] for r in records]
        style = "--" if "before" in name else "-"
        color = "#d62728" if name.startswith("redis") else "#1f77b4" if name.startswith("memory") else None
        for ax, (field, label, log) in zip(axes, panels, strict=False):
            ax.plot(xs, [r.get(field, float("nan")) for r in records], style, marker="o", label=name, color=color)
            ax.set_title(label, fontsize=10)
            ax.set_xlabel("agents (simulated)")
            if log:
                ax.set_yscale("log")
    axes[0].legend(fontsize=7)
    fig.suptitle("Coordinator heartbeat throughput and latency")
    fig.tight_layout()
    return [save(fig, "coordinator_heartbeats", data["command"])]


def plot_failover(data: dict) -> list[Path]:
    """bench/bench_failover.py (Helper D's): scenario -> runs; the peer's documented range as a band."""
    fig, ax = plt.subplots(figsize=(9, 4.8))
    scenarios = list(data["series"])
    for i, scenario in enumerate(scenarios):
        runs = data["series"][scenario]
        for offset, (field, label, color) in enumerate(
            (
                ("first_moved_s", "first database polled by its new owner", "#aec7e8"),
                ("all_moved_s", "all databases moved", "#1f77b4"),
                ("largest_gap_s", "largest gap in a series", "#ff7f0e"),
            )
        ):
            ys = [r[field] for r in runs if field in r]
            ax.scatter([i + (offset - 1) * 0.2] * len(ys), ys, color=color, label=label if i == 0 else None, s=18)
    peer = data.get("peer")
    if peer:
        ax.axhspan(
            peer["min_s"], peer["max_s"], color="#dddddd", label=f"{peer['name']}: {peer['min_s']}–{peer['max_s']} s"
        )
    settings = data.get("settings", {})
    ax.set_xticks(range(len(scenarios)))
    ax.set_xticklabels([f"agent {s}" for s in scenarios])
    ax.set_ylabel("seconds after the agent was stopped")
    ax.set_title("Failover: " + ", ".join(f"{k} {v:g}" for k, v in settings.items()), fontsize=9)
    ax.legend(fontsize=7)
    fig.tight_layout()
    return [save(fig, "failover", data["command"])]


def plot_generic(name: str, data: dict) -> list[Path]:
    """Another helper's bench: records as grouped bars, or named point lists as lines."""
    series, unit = data["series"], data["unit"]
    fig, ax = plt.subplots(figsize=(11, 5))
    if isinstance(series, dict):
        for key, points in series.items():
            if not isinstance(points, list) or not points:
                continue
            if isinstance(points[0], (list, tuple)):
                ax.plot([p[0] for p in points], [p[1] for p in points], marker="o", label=str(key))
            elif isinstance(points[0], (int, float)):
                ax.plot(range(len(points)), points, marker="o", label=str(key))
    elif isinstance(series, list) and series and isinstance(series[0], dict):
        label_key = next((k for k, v in series[0].items() if isinstance(v, str)), None)
        numeric = [k for k, v in series[0].items() if isinstance(v, (int, float)) and not isinstance(v, bool)]
        groups = (
            [
                " ".join(str(r.get(k)) for k in series[0] if isinstance(series[0][k], str)) or str(i)
                for i, r in enumerate(series)
            ]
            if label_key
            else [str(i) for i in range(len(series))]
        )
        grouped_bars(ax, groups, {k: [float(r.get(k) or 0) for r in series] for k in numeric}, {}, {})
        ax.set_yscale("symlog")
    else:
        plt.close(fig)
        print(f"{name}: `series` has a shape plots.py does not know; not drawn", file=sys.stderr)
        return []
    ax.set_ylabel(
        unit if isinstance(unit, str) else ", ".join(f"{k}: {v}" for k, v in dict(unit).items())[:120], fontsize=8
    )
    ax.legend(fontsize=7)
    ax.set_title(name.replace("_", " "))
    fig.tight_layout()
    return [save(fig, name, data["command"])]


PLOTS = {
    "assignment_quality": plot_assignment_quality,
    "collection": plot_collection,
    "agent_density": plot_agent_density,
    "agent_memory": plot_agent_memory,
    "bench_heartbeats": plot_heartbeats,
    "bench_failover": plot_failover,
}
PRODUCER = {
    "assignment_quality": "bench/bench_assignment_quality.py",
    "collection": "bench/bench_collection.py",
    "agent_density": "bench/bench_agent_density.py",
    "agent_memory": "bench/bench_agent_memory.py",
    "bench_heartbeats": "bench/bench_heartbeats.py",
    "bench_failover": "bench/bench_failover.py",
}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", nargs="*", help="draw only these (data file stems, e.g. agent_density)")
    args = parser.parse_args()
    for bench, draw in PLOTS.items():
        if args.only and bench not in args.only:
            continue
        data = load(bench)
        if data is None:
            print(
                f"{bench}: docs/data/{bench}.json is missing — run `python {PRODUCER[bench]}` to produce it; "
                "its plot is not drawn",
                file=sys.stderr,
            )
            continue
        for path in draw(data):
            print(f"{bench}: wrote {path}")
    # Data files of benches this module does not know by name: drawn generically, under their own name.
    for path in sorted(DATA_DIR.glob("*.json")) if DATA_DIR.exists() else []:
        if path.stem in PLOTS or (args.only and path.stem not in args.only):
            continue
        data = json.loads(path.read_text())
        if not {"series", "unit", "command"} <= data.keys():
            print(f"{path.stem}: {path} lacks `series`, `unit` or `command`; not drawn", file=sys.stderr)
            continue
        for image in plot_generic(path.stem, data):
            print(f"{path.stem}: wrote {image}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
