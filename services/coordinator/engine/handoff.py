"""Hand-off reconciliation after Kafka's KIP-848 (design.md, "Hand-off"). Pure: no I/O, no clock.

`target` is the engine's resource -> agent placement; `current` maps every live agent to the set it
reports polling. What an agent is told to hold:

    hold(a) = (current(a) ∩ target⁻¹(a)) ∪ {r ∈ target⁻¹(a) : no live b ≠ a has r in current(b)}

so a revocation takes effect at once, and a grant waits until every other live agent has reported
the resource gone (an expired or departed agent is absent from `current`, i.e. reports nothing).

Safety: hold(a) ⊆ target⁻¹(a), so a resource is told to at most one agent, and it is told to an
agent that is not already polling it only when nobody else is. Hence hold sets never add a second
poller. This relies on `current` being conservative: the caller must count as current, for each
agent, everything it was told to hold at an epoch it has not acknowledged yet (it may apply that
message at any moment), not only what it last reported.
"""

from __future__ import annotations

from collections.abc import Mapping

__all__ = ["changed", "holdings", "pending"]


def _pollers(current: Mapping[str, frozenset[str]]) -> dict[str, set[str]]:
    pollers: dict[str, set[str]] = {}
    for agent, polled in current.items():
        for rid in polled:
            pollers.setdefault(rid, set()).add(agent)
    return pollers


def _is_granted(rid: str, agent: str, pollers: Mapping[str, set[str]]) -> bool:
    """`agent` may poll `rid` (its target) now: it already does, or no other live agent does."""
    others = pollers.get(rid)
    return not others or agent in others


def holdings(target: Mapping[str, str], current: Mapping[str, frozenset[str]]) -> dict[str, frozenset[str]]:
    """What each agent (in `target` values or `current`) is told to hold; see the module docstring."""
    pollers = _pollers(current)
    granted: dict[str, set[str]] = {agent: set() for agent in current}
    for rid, agent in target.items():
        held = granted.setdefault(agent, set())
        if _is_granted(rid, agent, pollers):
            held.add(rid)
    return {agent: frozenset(held) for agent, held in granted.items()}


def pending(target: Mapping[str, str], current: Mapping[str, frozenset[str]]) -> dict[str, str]:
    """Resource -> target agent for every targeted resource whose grant still waits for a revocation."""
    pollers = _pollers(current)
    return {rid: agent for rid, agent in target.items() if not _is_granted(rid, agent, pollers)}


def changed(before: Mapping[str, frozenset[str]], after: Mapping[str, frozenset[str]]) -> set[str]:
    """Agents whose held set differs between `before` and `after` (a missing agent holds nothing)."""
    empty: frozenset[str] = frozenset()
    return {agent for agent in before.keys() | after.keys() if before.get(agent, empty) != after.get(agent, empty)}
