"""The coordinator's domain: the records its store keeps, what a leader step writes, and the
membership rule, as plain frozen dataclasses and pure functions (no I/O here).

The store, the planning and the RPC checks all depend on this module; it depends on none of them.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field


class FencedError(Exception):
    """A leader write was refused because the writer no longer holds the lease at its epoch."""


class StoreUnavailable(Exception):
    """The store cannot be reached (network, timeout). Callers degrade; nothing is lost."""


class AgentIdConflict(Exception):
    """A live agent of another pod already uses this agent id."""


class AgentAlreadyLeft(Exception):
    """A heartbeat from the very process that called Leave: it is shutting down, not rejoining."""


class SessionMismatch(Exception):
    """A request names an agent's registration without its session secret: refused, nothing changes."""


class StaleRead(Exception):
    """A leader write was refused because an agent it expires was heard from since the leader read
    the store: nothing was written; the leader steps again on a fresh read."""


def session_digest(secret: str) -> str:
    """What the store keeps of a registration's session secret (never the secret itself)."""
    return hashlib.sha256(secret.encode()).hexdigest()[:32] if secret else ""


@dataclass(frozen=True)
class Lease:
    """A held leadership lease. `value` is what the store holds; every fenced write checks it."""

    holder: str
    epoch: int
    token: str

    @property
    def value(self) -> str:
        return f"{self.epoch}:{self.token}:{self.holder}"


@dataclass(frozen=True)
class LeaderInfo:
    holder: str
    epoch: int
    address: str = ""


@dataclass(frozen=True)
class PollStatus:
    """What an agent reports about one database it polls."""

    last_poll_ms: int = 0
    duration_ms: float = 0.0
    polls: int = 0
    errors: int = 0
    up: bool = False

    def to_list(self) -> list:
        return [self.last_poll_ms, self.duration_ms, self.polls, self.errors, 1 if self.up else 0]

    @classmethod
    def from_list(cls, raw: list) -> PollStatus:
        return cls(int(raw[0]), float(raw[1]), int(raw[2]), int(raw[3]), bool(raw[4]))


@dataclass(frozen=True)
class Registration:
    pod_name: str = ""
    zone: str = ""
    version: str = ""
    capacity: int = 0
    instance_id: str = ""
    session: str = ""  # session_digest of the registration's secret
    http_address: str = ""  # host:port of the agent's /metrics and /queries (dbintel top); "" from old agents


@dataclass(frozen=True)
class HeartbeatReport:
    """One heartbeat as a replica records it."""

    agent_id: str
    registration: Registration
    applied_epoch: int
    current: Mapping[str, PollStatus]
    coordinator_id: str = ""
    released: Mapping[str, PollStatus] = field(default_factory=dict)
    # The session has been heard from after its registration (a second heartbeat): only a proven
    # agent is given databases, so a registrant that goes silent at once absorbs none.
    proven: bool = True
    sequence: int = 0  # the request's sequence number (0 from agents before sequence numbers)
    # resource -> top-query baseline it was released with (opaque bytes; only entries of `released`).
    # Stored apart from the agent record (see QueryBaseline), in the same atomic write.
    baselines: Mapping[str, bytes] = field(default_factory=dict)


@dataclass(frozen=True)
class HeartbeatOutcome:
    """`changed`: the heartbeat changed what a leader step reads (see `membership_digest`), so the
    leader should look now; `rejoined`: the agent was unknown, left or expired before (also changed)."""

    changed: bool
    rejoined: bool


def membership_digest(
    registration: Registration, applied_epoch: int, current: Iterable[str], proven: bool = True
) -> str:
    """The membership rule, for both stores: a heartbeat from an agent that stays a member *changed*
    the membership exactly when this digest differs from the one of the record it replaces.
    Proving its session (see HeartbeatReport.proven) makes an agent eligible for databases: a change.

    It covers what a leader step reads from a heartbeat: the instance (a restarted process holds
    nothing it was sent), the zone and capacity (the engine's slot), the applied assignment epoch
    (a revocation landed) and which databases it polls (the hand-off). Left out: pod name and
    version (shown to operators, they decide nothing), poll statistics (the periodic rebalance reads
    them; every heartbeat moves them) and released poll times (they come with a change of the set)."""
    fields: list[object] = [registration.instance_id, registration.zone, registration.capacity, applied_epoch]
    fields.append(sorted(current))
    if not proven:
        fields.append("unproven")
    return hashlib.sha1(json.dumps(fields, separators=(",", ":")).encode()).hexdigest()[:16]


AGENT_STATES = ("active", "draining", "left", "expired")


@dataclass(frozen=True)
class AgentRecord:
    agent_id: str
    registration: Registration
    state: str  # one of AGENT_STATES
    last_heartbeat_ms: int
    applied_epoch: int
    current: Mapping[str, PollStatus]
    coordinator_id: str = ""
    released: Mapping[str, int] = field(default_factory=dict)  # resource -> last poll ms when given up
    proven: bool = True  # see HeartbeatReport.proven; once proven, a registration stays proven
    sequence: int = 0  # the newest heartbeat sequence recorded for this instance
    # Store time at which a replica saw this agent's stream end without a Leave (0: not suspect).
    # A heartbeat clears it; the leader expires a suspect after disconnect_grace.
    disconnected_ms: int = 0

    @property
    def is_member(self) -> bool:
        return self.state in ("active", "draining")

    @property
    def suspect(self) -> bool:
        return self.is_member and self.disconnected_ms > 0


# How long a store keeps a released database's top-query baseline for its next owner's grant. A grant
# follows the release within a leader step; this covers a database left unassigned for a while (no
# eligible agent) and bounds the store's memory to what was released in the last 15 minutes.
QUERY_BASELINE_TTL_MS = 15 * 60 * 1000


@dataclass(frozen=True)
class QueryBaseline:
    """A released database's top-query baseline, as the store keeps it for the next owner's grant.
    `released_poll_ms` is the final poll time it was released with: a grant carries the baseline only
    if it carries exactly that poll time (see `baselines_to_attach`)."""

    released_poll_ms: int
    state: bytes


def baseline_candidates(grants: Mapping[str, int], polling: Iterable[str] = ()) -> list[str]:
    """The grants whose stored baseline a replica must look up: those with a previous owner's poll
    time, less what the agent reports polling already (it would not restart those)."""
    skip = set(polling)
    return [rid for rid in sorted(grants) if grants[rid] > 0 and rid not in skip]


def baselines_to_attach(
    grants: Mapping[str, int], stored: Mapping[str, QueryBaseline], budget_bytes: int
) -> dict[str, bytes]:
    """resource -> baseline to send with its grant: a stored baseline released at exactly the grant's
    poll time (an older hand-off's, or one from before its database moved on from another owner's
    state, never matches), in resource id order while the total stays within `budget_bytes`."""
    out: dict[str, bytes] = {}
    used = 0
    for rid in sorted(stored):
        baseline = stored[rid]
        poll_ms = grants.get(rid, 0)
        if poll_ms <= 0 or baseline.released_poll_ms != poll_ms or not baseline.state:
            continue
        if used + len(baseline.state) > budget_bytes:
            continue  # a smaller one further on may still fit
        used += len(baseline.state)
        out[rid] = baseline.state
    return out


@dataclass(frozen=True)
class AssignmentRecord:
    """What an agent is told to hold at an epoch; `grants` maps resource id -> previous owner's
    last poll time in ms (0 when unknown)."""

    agent_id: str
    epoch: int
    leader_epoch: int
    grants: Mapping[str, int] = field(default_factory=dict)


@dataclass(frozen=True)
class PlacementWrite:
    """Everything one leader step writes, applied atomically under the fence."""

    target_set: Mapping[str, str] = field(default_factory=dict)  # resource -> agent
    target_delete: tuple[str, ...] = ()
    assignments: Mapping[str, Mapping[str, int]] = field(default_factory=dict)  # agent -> grants
    expire: tuple[str, ...] = ()
    # agent -> the last_heartbeat_ms the expiry was decided on: if the agent was heard from since,
    # the whole write is refused (StaleRead), for its databases are granted to others in it.
    expire_heard_ms: Mapping[str, int] = field(default_factory=dict)
    rebalance_reason: str | None = None  # set when the target placement changed
    moves: int = 0
    # Agents that left a grant unacknowledged past the deadline (they get nothing); None: unchanged.
    unacknowledged: tuple[str, ...] | None = None


@dataclass(frozen=True)
class ClusterMeta:
    assignment_epoch: int = 0
    rebalances_total: int = 0
    moves_total: int = 0
    last_rebalance_ms: int = 0
    last_rebalance_reason: str = ""
    grace_from_ms: int = 0  # no agent is expired for silence before grace_from + node_timeout
    last_heartbeat_write_ms: int = 0
    leader_tick_ms: int = 0
    unacknowledged: tuple[str, ...] = ()  # see PlacementWrite.unacknowledged
