"""The shared cluster for the end-to-end scenarios (tests/e2e/cluster.py) and its ownership sampler.

One cluster per test module: scenarios break one thing each, and `healthy_cluster` puts back what a
scenario left broken (dead coordinators restarted, the agent count back to BASE_AGENTS, faults
cleared) and waits for convergence before the next one starts.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.e2e.cluster import Cluster, Targets, wait_until
from tests.e2e.ownership import Sampler

BASE_AGENTS = 3


@pytest.fixture(scope="module")
def cluster(tmp_path_factory, postgres_server, mariadb_server, redis_server, secantus_server) -> Iterator[Cluster]:
    root = tmp_path_factory.mktemp("e2e-cluster")
    cluster = Cluster(
        root,
        Targets(postgres_server, mariadb_server, redis_server, secantus_server),
        coordinators=3,
        agents=BASE_AGENTS,
    )
    with cluster.running("e2e cluster"):
        yield cluster


@pytest.fixture(scope="module")
def sampler(cluster: Cluster) -> Iterator[Sampler]:
    # Every agent the cluster knows, dead ones included until restore() forgets them: a failed scrape
    # tells the checker the agent's series are gone (see ownership.polls_from_observations).
    running = Sampler(
        lambda: {name: agent.metrics_url for name, agent in list(cluster.agents.items())},
        period=cluster.timing.interval / 4,
    ).start()
    try:
        yield running
    finally:
        running.stop()


def restore(cluster: Cluster) -> None:
    """Back to the base state: every coordinator running, state Redis up, no fault, BASE_AGENTS agents,
    the original inventory, converged."""
    if not cluster.state_redis.is_running():
        cluster.state_redis.start()
    assert cluster.redis_proxy is not None and cluster.database_proxy is not None
    cluster.redis_proxy.pass_through()
    cluster.database_proxy.pass_through()
    if cluster.restore_inventory():
        cluster.write_config()
    for coordinator in cluster.coordinators:
        if not coordinator.process.alive:
            cluster.start_coordinator(coordinator)
    cluster.forget_dead_agents()
    while len(cluster.agents) > BASE_AGENTS:
        newest = sorted(cluster.agents)[-1]
        cluster.agents[newest].process.stop()
        cluster.forget_dead_agents()
    while len(cluster.agents) < BASE_AGENTS:
        cluster.add_agent()
    wait_until(cluster.leader, 30, "a leader")
    cluster.wait_converged(timeout=60, every_agent_holds=True)  # a replacement agent's join balanced too


@pytest.fixture
def healthy_cluster(cluster: Cluster, sampler: Sampler) -> Iterator[Cluster]:
    restore(cluster)
    sampler.wait_rounds(2)
    yield cluster
