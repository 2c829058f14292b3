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
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["MIN_RESPONSE_TIMEOUT_S", "STOP_FRACTION", "LinkTimings", "link_timings", "smallest_node_timeout"]

STOP_FRACTION = 0.8  # the agent stops at 80 % of node_timeout: margin for scheduling and clock steps
MIN_RESPONSE_TIMEOUT_S = 0.25


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
