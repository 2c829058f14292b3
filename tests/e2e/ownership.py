"""The ownership checker: who polled which database, when — from the agents' own /metrics.

Every agent exports, per database it holds, `dbintel_agent_polls_total{dbintel_resource=…}` (polls
since it took the database) and `dbintel_agent_last_poll_timestamp_seconds{dbintel_resource=…}`
(wall-clock start of its last poll). `Sampler` scrapes every agent at a fixed period in a thread and
keeps `Observation`s; the analysis below is pure (no I/O, no clock) and rebuilds from them the poll
timeline of every database across agents:

- each new last-poll timestamp is a poll by that agent at that instant; when the counter advanced by
  more than one between two samples (a sample came late), the polls in between are inferred, evenly
  spaced; a counter that went down means the agent took the database again (a new tenure);
- a *duplicate* is two polls of one database by different agents at most half an interval apart.
  Two agents polling the same database on the same interval, whatever their phases, always produce
  such a pair within every interval, so concurrent ownership cannot hide; a clean hand-off puts the
  new owner's first poll one interval after the old owner's last, which is not one;
- a *gap* is the time between consecutive polls of a database, whoever made them;
- an *orphan* is a database nobody polled during the last `orphan_after` intervals of the window.

The sampling period must stay well below the poll interval (4 samples per interval here), so every
poll's timestamp is seen; the counters cover the rare late sample.
"""

from __future__ import annotations

import bisect
import itertools
import math
import re
import threading
import time
import urllib.error
import urllib.request
from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field

_SERIES = re.compile(
    r'^(dbintel_agent_polls_total|dbintel_agent_last_poll_timestamp_seconds)\{dbintel_resource="([^"]+)"\} (\S+)$', re.M
)


@dataclass(frozen=True)
class Observation:
    """One agent's counters for one database, as one scrape saw them."""

    at: float  # when the scrape was taken (wall clock)
    agent: str
    resource: str
    polls_total: int
    last_poll: float | None


@dataclass(frozen=True, order=True)
class Poll:
    at: float
    agent: str
    inferred: bool = False  # reconstructed from a counter jump, not seen as a timestamp


@dataclass(frozen=True)
class Duplicate:
    resource: str
    first: Poll
    second: Poll


@dataclass(frozen=True)
class Gap:
    resource: str
    start: float
    end: float
    from_agent: str
    to_agent: str

    @property
    def length(self) -> float:
        return self.end - self.start


@dataclass
class OwnershipReport:
    duplicates: list[Duplicate] = field(default_factory=list)
    gaps: list[Gap] = field(default_factory=list)
    orphans: set[str] = field(default_factory=set)
    polls: dict[str, list[Poll]] = field(default_factory=dict)

    def max_gap(self, resources: Iterable[str] | None = None) -> float:
        chosen = None if resources is None else set(resources)
        lengths = [g.length for g in self.gaps if chosen is None or g.resource in chosen]
        return max(lengths, default=0.0)

    def longest(self, count: int = 5) -> list[Gap]:
        return sorted(self.gaps, key=lambda g: g.length, reverse=True)[:count]

    def pollers(self, resource: str, start: float, end: float) -> set[str]:
        return {p.agent for p in self.polls.get(resource, []) if start <= p.at <= end}


def parse_poll_counters(text: str) -> dict[str, tuple[int, float | None]]:
    """resource -> (polls_total, last poll timestamp or None) from an agent's /metrics text."""
    counts: dict[str, int] = {}
    lasts: dict[str, float] = {}
    for name, resource, value in _SERIES.findall(text):
        if name == "dbintel_agent_polls_total":
            counts[resource] = int(float(value))
        else:
            lasts[resource] = float(value)
    return {resource: (count, lasts.get(resource)) for resource, count in counts.items()}


def polls_from_observations(
    observations: Iterable[Observation],
    intervals: Mapping[str, float],
    scrapes: Mapping[str, list[float]] | None = None,
) -> dict[str, list[Poll]]:
    """Every database's polls, in time order, from the agents' samples (see the module docstring).

    `scrapes` (agent -> times it was scraped, a failed scrape included) lets the hand-off blind spot
    be closed: a database's series vanishes from an agent's /metrics the moment it is revoked (or the
    agent ends), so a last poll that started after the previous scrape is never seen. The agent polls
    on an anchored schedule, so when the series was still there at a scrape `seen` with last poll L
    and gone at the next scrape `gone`, the agent polled at each slot L + k * interval that fell
    before the revocation, i.e. possibly at every slot with seen - interval < slot < gone (a poll
    still in flight at `seen` is not on show; several slots when the sampler itself stalled). Such a slot is counted as an (inferred) poll unless another agent polled
    within half an interval of it: the new owner continues the old owner's schedule, so its polls
    take the slots after the revocation."""
    by_series: dict[tuple[str, str], list[Observation]] = defaultdict(list)
    for observation in observations:
        by_series[(observation.agent, observation.resource)].append(observation)
    polls: dict[str, set[Poll]] = defaultdict(set)
    tenure_ends: list[tuple[str, str, float, float]] = []  # (agent, resource, slot, seen)
    for (agent, resource), series in by_series.items():
        series.sort(key=lambda o: o.at)
        interval = intervals.get(resource, 1.0)
        agent_scrapes = sorted((scrapes or {}).get(agent, []))
        previous: Observation | None = None
        for current in series:
            if current.last_poll is None:
                continue
            if previous is not None and scrapes is not None and previous.last_poll is not None:
                _note_tenure_end(tenure_ends, agent_scrapes, agent, resource, previous, current.at, interval)
            if previous is None or current.polls_total < previous.polls_total:
                # First sight, or a new tenure: the polls before this one happened before we looked
                # (first sight) or, after a retake, one interval apart back to the retake.
                missed = 0 if previous is None else current.polls_total - 1
                earliest = previous.at if previous is not None else current.last_poll
                for k in range(missed, 0, -1):
                    at = current.last_poll - k * interval
                    if at > earliest:
                        polls[resource].add(Poll(at, agent, inferred=True))
                polls[resource].add(Poll(current.last_poll, agent))
            elif current.last_poll != previous.last_poll and current.polls_total > previous.polls_total:
                assert previous.last_poll is not None
                advanced = current.polls_total - previous.polls_total
                step = (current.last_poll - previous.last_poll) / advanced
                for k in range(1, advanced):
                    polls[resource].add(Poll(previous.last_poll + k * step, agent, inferred=True))
                polls[resource].add(Poll(current.last_poll, agent))
            previous = current
        if previous is not None and scrapes is not None and previous.last_poll is not None:
            _note_tenure_end(tenure_ends, agent_scrapes, agent, resource, previous, math.inf, interval)
    for agent, resource, slot, _ in tenure_ends:
        interval = intervals.get(resource, 1.0)
        if not any(p.agent != agent and abs(p.at - slot) <= interval / 2 for p in polls[resource]):
            polls[resource].add(Poll(slot, agent, inferred=True))
    return {resource: sorted(found) for resource, found in polls.items()}


def _note_tenure_end(
    tenure_ends: list,
    agent_scrapes: list[float],
    agent: str,
    resource: str,
    last_seen: Observation,
    next_seen_at: float,
    interval: float,
) -> None:
    """If a scrape of `agent` between `last_seen` and its next sighting of `resource` lacked the
    resource (the tenure ended there), note the slots after the last seen poll that fell in between."""
    position = bisect.bisect_right(agent_scrapes, last_seen.at)
    if position >= len(agent_scrapes) or agent_scrapes[position] >= next_seen_at:
        return  # no scrape without the resource in between: the tenure went on (or the agent died)
    gone = agent_scrapes[position]
    assert last_seen.last_poll is not None
    slot = last_seen.last_poll + interval
    while slot < gone:
        # A poll in flight at `last_seen` is not on show yet; it started at most one poll timeout
        # (which the config keeps within the interval) before.
        if slot > last_seen.at - interval:
            tenure_ends.append((agent, resource, slot, last_seen.at))
        slot += interval


def analyse(
    polls: Mapping[str, list[Poll]],
    intervals: Mapping[str, float],
    expected: Iterable[str],
    start: float,
    end: float,
    *,
    orphan_after: float = 2.5,
) -> OwnershipReport:
    """Duplicates, gaps and orphans of the databases `expected`, for polls within [start, end].

    A gap counts when its later poll lies in the window; its earlier poll may precede the window, so a
    database that was silent across `start` shows that silence. Orphans: no poll in the last
    `orphan_after` intervals before `end` (the trailing silence is also reported as a gap)."""
    report = OwnershipReport()
    for resource in sorted(set(expected)):
        interval = intervals.get(resource, 1.0)
        timeline = [p for p in polls.get(resource, []) if p.at <= end]
        report.polls[resource] = [p for p in timeline if p.at >= start]
        for before, after in itertools.pairwise(timeline):
            if after.at < start:
                continue
            if before.agent != after.agent and after.at - before.at <= interval / 2:
                report.duplicates.append(Duplicate(resource, before, after))
            report.gaps.append(Gap(resource, before.at, after.at, before.agent, after.agent))
        last = timeline[-1] if timeline else None
        if last is None or end - last.at > orphan_after * interval:
            report.orphans.add(resource)
            if last is not None:
                report.gaps.append(Gap(resource, last.at, end, last.agent, ""))
    return report


# -- the sampler (I/O) -------------------------------------------------------------------------------


def _scrape(url: str, timeout: float) -> str | None:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return response.read().decode()
    except (urllib.error.URLError, ConnectionError, TimeoutError, OSError):
        return None


class Sampler:
    """Scrapes every agent's /metrics each `period` seconds in a daemon thread.

    `targets()` says which agents exist now (name -> metrics URL); a dead agent's scrape fails and is
    skipped. `report(start, end, …)` analyses what was seen."""

    def __init__(self, targets: Callable[[], Mapping[str, str]], period: float = 0.25) -> None:
        self._targets = targets
        self.period = period
        self._observations: list[Observation] = []
        self._scrapes: dict[str, list[float]] = defaultdict(list)  # agent -> its scrapes' times (failed too)
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="ownership sampler", daemon=True)
        self.rounds = 0
        self.late_rounds = 0  # rounds that started later than one period after the previous one

    def start(self) -> Sampler:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=10)

    def _run(self) -> None:
        next_round = time.monotonic()
        while not self._stop.is_set():
            if time.monotonic() > next_round + self.period:
                self.late_rounds += 1
            self.sample_once()
            next_round = max(next_round + self.period, time.monotonic())
            self._stop.wait(max(0.0, next_round - time.monotonic()))

    def sample_once(self) -> None:
        found: list[Observation] = []
        scraped: list[tuple[str, float]] = []
        for agent, url in list(self._targets().items()):
            text = _scrape(url, timeout=max(1.0, self.period * 4))
            at = time.time()
            scraped.append((agent, at))  # a failed scrape also says: nothing polled is on show here now
            if text is None:
                continue
            found += [
                Observation(at, agent, resource, count, last)
                for resource, (count, last) in parse_poll_counters(text).items()
            ]
        with self._lock:
            self._observations += found
            for agent, at in scraped:
                self._scrapes[agent].append(at)
            self.rounds += 1

    def observations(self) -> list[Observation]:
        with self._lock:
            return list(self._observations)

    def scrapes(self) -> dict[str, list[float]]:
        with self._lock:
            return {agent: list(times) for agent, times in self._scrapes.items()}

    def wait_rounds(self, rounds: int = 2, timeout: float = 10.0) -> None:
        """Until `rounds` more complete sampling rounds have run (so the latest state is seen)."""
        target = self.rounds + rounds
        deadline = time.monotonic() + timeout
        while self.rounds < target and time.monotonic() < deadline:
            time.sleep(self.period / 4)

    def report(
        self, start: float, end: float, intervals: Mapping[str, float], expected: Iterable[str], **options: float
    ) -> OwnershipReport:
        wanted = set(expected)
        observations = [o for o in self.observations() if o.resource in wanted]  # less work, less GIL
        polls = polls_from_observations(observations, intervals, self.scrapes())
        return analyse(polls, intervals, wanted, start, end, **options)
