"""The coordinator's pure decision logic: where each database goes, and when a hand-off may proceed."""

from .assignment import AgentSlot, Move, Placement, ResourceDemand, place, plan_cost_rebalance, spread
from .handoff import changed, holdings, pending

__all__ = [
    "AgentSlot",
    "Move",
    "Placement",
    "ResourceDemand",
    "changed",
    "holdings",
    "pending",
    "place",
    "plan_cost_rebalance",
    "spread",
]
