"""Shared by the bench/ scripts: the machine line and rewriting one section of docs/benchmarks.md."""

from __future__ import annotations

import os
import platform
import re
from pathlib import Path

DOC = Path(__file__).resolve().parent.parent / "docs" / "benchmarks.md"


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def machine_line() -> str:
    return (
        f"Machine: {os.cpu_count()} CPUs ({cpu_model()}), Python {platform.python_version()} "
        f"({platform.python_implementation()}), {platform.system()} {platform.release()}."
    )


def write_section(section: str, text: str) -> None:
    """Replace the `section` heading's block (up to the next '## ') in docs/benchmarks.md, or append it."""
    existing = DOC.read_text() if DOC.exists() else "# Benchmarks\n\n"
    pattern = re.compile(rf"^{re.escape(section)}\n.*?(?=^## |\Z)", re.S | re.M)
    if pattern.search(existing):
        updated = pattern.sub(lambda _: text.rstrip("\n") + "\n\n", existing, count=1)
    else:
        updated = existing.rstrip("\n") + "\n\n" + text.rstrip("\n") + "\n"
    DOC.parent.mkdir(parents=True, exist_ok=True)
    DOC.write_text(updated)


DATA_DIR = DOC.parent / "data"
IMG_DIR = DOC.parent / "img"


def write_data(bench: str, payload: dict) -> Path:
    """Raw figures of one bench as docs/data/<bench>.json (keys at least `series`, `unit`, `command`), so
    bench/plots.py can redraw the plots without rerunning the bench."""
    missing = {"series", "unit", "command"} - payload.keys()
    if missing:
        raise ValueError(f"bench data for {bench} lacks {sorted(missing)}")
    import json

    DATA_DIR.mkdir(parents=True, exist_ok=True)
    path = DATA_DIR / f"{bench}.json"
    path.write_text(json.dumps(payload, indent=1, sort_keys=True) + "\n")
    return path


def image_link(name: str, caption: str) -> str:
    """Markdown for docs/img/<name>.png as seen from docs/benchmarks.md (drawn by bench/plots.py)."""
    return f"![{caption}](img/{name}.png)\n\n*Plot: `docs/img/{name}.png`, drawn by `python bench/plots.py` from `docs/data/`.*"


class MachineLoad:
    """How busy the rest of the machine was while a bench ran: machine-wide CPU use less that of this
    process and its descendants (sampled each second, so short-lived children count until they exit)."""

    def __init__(self, interval: float = 1.0):
        import threading

        import psutil

        self._psutil, self._interval = psutil, interval
        self._own: dict[int, float] = {}  # pid -> CPU seconds seen so far
        self._base: dict[int, float] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self.others_cores = self.own_cores = self.busy_cores = 0.0
        self.seconds = 0.0

    def _tree_cpu(self) -> None:
        me = self._psutil.Process()
        for process in [me, *me.children(recursive=True)]:
            try:
                times = process.cpu_times()
            except self._psutil.Error:
                continue
            self._base.setdefault(process.pid, 0.0)  # born during the run: all its CPU counts
            self._own[process.pid] = times.user + times.system

    def _sample(self) -> None:
        while not self._stop.wait(self._interval):
            self._tree_cpu()

    def __enter__(self) -> MachineLoad:
        import time

        self._tree_cpu()
        self._base = dict(self._own)  # what already ran before the bench started does not count
        self._start_all = self._psutil.cpu_times()
        self._start_wall = time.monotonic()
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        import time

        self._stop.set()
        self._thread.join()
        self._tree_cpu()
        end = self._psutil.cpu_times()
        self.seconds = max(time.monotonic() - self._start_wall, 1e-9)
        idle = lambda t: t.idle + getattr(t, "iowait", 0.0)  # noqa: E731
        total = lambda t: sum(t)  # noqa: E731
        busy = (total(end) - idle(end)) - (total(self._start_all) - idle(self._start_all))
        own = sum(self._own[pid] - self._base.get(pid, 0.0) for pid in self._own)
        self.busy_cores = busy / self.seconds
        self.own_cores = own / self.seconds
        self.others_cores = max(0.0, busy - own) / self.seconds

    def sentence(self) -> str:
        return noise_sentence(self.as_dict())

    def as_dict(self) -> dict:
        return {
            "seconds": round(self.seconds, 1),
            "busy_cores": round(self.busy_cores, 3),
            "own_cores": round(self.own_cores, 3),
            "others_cores": round(self.others_cores, 3),
            "cpus": os.cpu_count(),
        }


def noise_sentence(noise: dict) -> str:
    """The MachineLoad figures (as stored in docs/data/*.json) as one sentence for the doc."""
    return (
        f"Noise: over the {noise['seconds']:.0f} s run the machine's {noise['cpus']} cores were busy "
        f"{noise['busy_cores']:.2f} cores on average, of which this bench and its processes "
        f"{noise['own_cores']:.2f} and everything else (other jobs on this shared machine) "
        f"{noise['others_cores']:.2f}."
    )
