"""How fast an agent must notice a silent coordinator, from heartbeat_interval and node_timeout. Pure.

The coordinator expires an agent `node_timeout` after the last heartbeat it recorded and hands its
databases on. The agent must therefore, well before that, either get a heartbeat recorded again
(through another replica) or stop polling. Its worst case, from the send time `t0` of the last
answered heartbeat: the next heartbeat goes out at `t0 + hb`, is unanswered for `response_timeout`
(the replica froze), a fresh stream to another replica sends at once and may wait as long again.
So `hb + 2 * response_timeout` must fit inside `node_timeout` less a margin, and the agent stops
(on_coordinator_loss: stop) once `stop_after` passes without an answer:

    response_timeout = max(floor, (STOP_FRACTION * node_timeout - hb) / 2),  floor = max(0.25 s, hb / 4)
    stop_after       = STOP_FRACTION * node_timeout

The floor keeps a loaded replica from being taken for a frozen one; config validation refuses a
node_timeout under `smallest_node_timeout(hb)`, where the formula would have to go below the floor.

A crashed agent process closes its TCP connection, so the replica serving its stream sees the
stream end at once (`t_s`) and marks it suspect; the leader expires it `disconnect_grace` later
unless it reconnects. An agent that is alive but whose stream broke only on the replica's side (a
reset that reached one end) learns of it by its own HTTP/2 keepalive: a ping at most `keepalive_time`
after `t_s`, unanswered for `keepalive_timeout`, so it notices at `t_a <= t_s + keepalive_time +
keepalive_timeout`. With on_coordinator_loss: stop it stops polling at `t_a + stop_after` unless a
heartbeat sent after `t_a` has been answered (that heartbeat clears the mark), and

    stop_after = grace - keepalive_time - keepalive_timeout - margin,  so  t_a + stop_after < t_s + grace:

keepalive_time = max(1 s, grace / 6) (gRPC sends no two pings within a second, whatever is asked),
keepalive_timeout = grace / 3, margin = grace / 6 (a late timer, the polls being stopped). At the 6 s
default that is 1 s, 2 s, 1 s and stop_after = 2 s of reconnecting, in which the reconnect backoff
(full jitter from 100 ms, doubling) makes four attempts at worst; the grace itself covers five
(3.1 s) and a heartbeat's round trip. The least grace is 3 s (stop_after 0.5 s). A replica that
shuts down ends its streams itself and marks nobody: a rolling restart of the coordinators moves
nothing.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = [
    "DEFAULT_DISCONNECT_GRACE_S",
    "MIN_DISCONNECT_GRACE_S",
    "MIN_KEEPALIVE_TIME_S",
    "MIN_RESPONSE_TIMEOUT_S",
    "STOP_FRACTION",
    "DisconnectTimings",
    "LinkTimings",
    "disconnect_timings",
    "link_timings",
    "smallest_node_timeout",
]

STOP_FRACTION = 0.8  # the agent stops at 80 % of node_timeout: margin for scheduling and clock steps
MIN_RESPONSE_TIMEOUT_S = 0.25
DEFAULT_DISCONNECT_GRACE_S = 6.0
MIN_DISCONNECT_GRACE_S = 3.0
MIN_KEEPALIVE_TIME_S = 1.0  # gRPC core sends no two pings within this, whatever keepalive_time asks


@dataclass(frozen=True)
class LinkTimings:
    response_timeout: float  # an unanswered heartbeat older than this: the stream is stalled
    stop_after: float  # no answered heartbeat sent within this: stop polling (on_coordinator_loss: stop)


def _floor(heartbeat_interval: float) -> float:
    return max(MIN_RESPONSE_TIMEOUT_S, heartbeat_interval / 4)


def link_timings(heartbeat_interval: float, node_timeout: float) -> LinkTimings:
    """The agent's stall and stop deadlines for these settings (seconds)."""
    budget = (STOP_FRACTION * node_timeout - heartbeat_interval) / 2
    return LinkTimings(
        response_timeout=max(_floor(heartbeat_interval), budget), stop_after=STOP_FRACTION * node_timeout
    )


def smallest_node_timeout(heartbeat_interval: float) -> float:
    """The least node_timeout under which an agent can still detect a frozen replica in time."""
    return (heartbeat_interval + 2 * _floor(heartbeat_interval)) / STOP_FRACTION


@dataclass(frozen=True)
class DisconnectTimings:
    keepalive_time: float  # the agent pings its replica (HTTP/2 PING) this often
    keepalive_timeout: float  # a ping unanswered this long: the connection is gone
    stop_after: float  # stop mode: a stream lost abnormally, no answer to a heartbeat sent since: stop


def disconnect_timings(disconnect_grace: float) -> DisconnectTimings:
    """The agent's keepalive and its stop deadline after a broken stream, for a replica's
    `disconnect_grace` (seconds, > 0; see the module docstring for why they fit inside it)."""
    keepalive_time = max(MIN_KEEPALIVE_TIME_S, disconnect_grace / 6)
    keepalive_timeout = disconnect_grace / 3
    return DisconnectTimings(
        keepalive_time=keepalive_time,
        keepalive_timeout=keepalive_timeout,
        stop_after=max(0.0, disconnect_grace - keepalive_time - keepalive_timeout - disconnect_grace / 6),
    )
