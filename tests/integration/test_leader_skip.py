"""The leader skips the full step (store read + plan) while nothing changes, and still acts at once
on an event and in time on a silent agent."""

from __future__ import annotations

import pytest

from tests.coordinator_harness import exactly_once, make_config, scripted_cluster, wait_for


@pytest.fixture(params=["memory", "redis"])
def quiet_config(request):
    redis = request.getfixturevalue("redis_server") if request.param == "redis" else None
    # node_timeout long next to the 0.2 s tick, so a quiet second has several ticks and no expiry due.
    return make_config(8, mode=request.param, redis=redis, timing={"heartbeat_interval": "300ms", "node_timeout": "3s"})


async def test_a_quiet_cluster_is_not_replanned_every_tick_but_a_silent_agent_still_expires(quiet_config):
    async with scripted_cluster(quiet_config, 3) as (coordinator, _address, agents):
        loop = coordinator.leader_loop
        await wait_for(lambda: loop.schedule.expiry_due_ms is not None, message="a no-op step")
        full, skipped = loop.full_steps, loop.skipped_steps
        # Five ticks (about a second) while heartbeats keep coming and none changes anything.
        await wait_for(lambda: loop.skipped_steps - skipped >= 5, timeout=10.0, message="five skipped ticks")
        assert loop.full_steps - full <= 1  # at most the one the expiry deadline asks for
        assert exactly_once(agents, set(quiet_config.resources()))

        # An event (a leave) is acted on at once, not at the expiry deadline.
        leaver, *rest = agents
        await leaver.leave()
        await wait_for(lambda: exactly_once(rest, set(quiet_config.resources())), timeout=2.0, message="hand-off")

        # A silent agent publishes nothing; the deadline alone must get it expired.
        silent, survivor = rest
        silent.silent = True
        await wait_for(
            lambda: survivor.held == set(quiet_config.resources()),
            timeout=6.0,
            message="the silent agent's databases moved",
        )
