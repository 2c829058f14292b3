"""Property 6 with Redis Sentinel (issue 13): the state Redis's primary is killed while agents poll,
once alone and once together with the leader coordinator; the coordinators follow the promoted
replica, the fenced lease holds, and every database keeps exactly one poller.

The cluster is tests/e2e/cluster.py's (real coordinator and agent processes), smaller (4 entries per
database type, 29 databases), with its state on a SentinelSet (tests/redis_topologies.py): a primary,
two replicas and three sentinels (down-after 2 s). `scaling.redis.replica_acks` is the sentinel
default, 1. A watcher scrapes every coordinator's `dbintel_scaling_leader` and
`dbintel_scaling_leader_epoch` ten times a second: no epoch may have two leaders, and the epochs
leaders report never go back.
"""

from __future__ import annotations

import json
import re
import threading
import time
from collections import defaultdict
from collections.abc import Iterator
from typing import Any

import pytest

from dbintel.coordinator.store.redis_store import state_key
from tests.e2e.cluster import Cluster, Targets, http_get, wait_until
from tests.e2e.figures import record
from tests.e2e.test_cluster_faults import GAP_TOLERANCE, describe, moved, report_between
from tests.redis_topologies import SentinelSet

pytestmark = pytest.mark.timeout(600)

PREFIX = "e2e:"


class SentinelCluster(Cluster):
    """Cluster with its state on a Sentinel set instead of one Redis (the base's own state Redis is
    started but unused)."""

    def __init__(self, *args: Any, topology: SentinelSet, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.topology = topology
        self.env["E2E_STATE_REDIS_PASSWORD"] = topology.password
        self.env["E2E_SENTINEL_PASSWORD"] = topology.sentinel_password

    def config_document(self, redis_address: str) -> dict[str, Any]:
        document = super().config_document(redis_address)
        redis = document["scaling"]["redis"]
        del redis["address"]
        redis["sentinel"] = {
            "master_name": self.topology.master_name,
            "addresses": self.topology.sentinel_addresses,
            "password": "${env:E2E_SENTINEL_PASSWORD}",
        }
        return document


class LeaderWatch:
    """Scrapes every coordinator's leader gauges in a thread: (time, coordinator, leads, epoch)."""

    def __init__(self, cluster: Cluster, period: float = 0.1) -> None:
        self._cluster, self._period = cluster, period
        self.samples: list[tuple[float, str, bool, int]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="leader watch", daemon=True)

    def start(self) -> LeaderWatch:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=10)

    def _run(self) -> None:
        while not self._stop.wait(self._period):
            for coordinator in list(self._cluster.coordinators):
                status, text = http_get(f"http://127.0.0.1:{coordinator.metrics_port}/metrics", timeout=1)
                leads = re.search(r"^dbintel_scaling_leader (\S+)$", text, re.M)
                epoch = re.search(r"^dbintel_scaling_leader_epoch (\S+)$", text, re.M)
                if status == 200 and leads and epoch:
                    self.samples.append((time.time(), coordinator.name, float(leads[1]) == 1, int(float(epoch[1]))))

    def leaders_by_epoch(self, start: float) -> dict[int, set[str]]:
        found: dict[int, set[str]] = defaultdict(set)
        for at, name, leads, epoch in self.samples:
            if leads and at >= start:
                found[epoch].add(name)
        return dict(found)

    def epoch_went_back(self, start: float) -> bool:
        """Whether any leader reported an epoch below one a leader reported before it."""
        highest = 0
        for at, _, leads, epoch in sorted(self.samples):
            if leads and at >= start:
                if epoch < highest:
                    return True
                highest = epoch
        return False


@pytest.fixture(scope="module")
def topology() -> Iterator[SentinelSet]:
    with SentinelSet(replicas=2) as running:
        yield running


@pytest.fixture(scope="module")
def cluster(
    tmp_path_factory, topology, postgres_server, mariadb_server, redis_server, secantus_server
) -> Iterator[SentinelCluster]:
    """This module's cluster (conftest's `sampler` watches it, in place of the shared one)."""
    root = tmp_path_factory.mktemp("e2e-sentinel")
    cluster = SentinelCluster(
        root,
        Targets(postgres_server, mariadb_server, redis_server, secantus_server),
        coordinators=3,
        agents=3,
        per_type=4,
        topology=topology,
    )
    with cluster.running("e2e sentinel cluster"):
        yield cluster


@pytest.fixture(scope="module")
def watch(cluster: SentinelCluster) -> Iterator[LeaderWatch]:
    running = LeaderWatch(cluster).start()
    try:
        yield running
    finally:
        running.stop()


@pytest.mark.parametrize("with_leader", [False, True], ids=["primary", "primary_and_leader"])
def test_sentinel_failover_keeps_one_leader_per_epoch_and_one_poller(cluster, topology, sampler, watch, with_leader):
    t = cluster.timing
    for coordinator in cluster.coordinators:  # the previous round's killed leader
        if not coordinator.process.alive:
            cluster.start_coordinator(coordinator)
    old_leader = wait_until(cluster.leader, 30, "a leader")
    cluster.wait_converged(timeout=60)
    sampler.wait_rounds(2)
    epoch_before = cluster.status().leader_epoch
    before = cluster.owners()
    start = time.time()
    killed = topology.kill_primary()
    if with_leader:
        cluster.coordinator(old_leader).process.kill()
    promoted = topology.wait_for_failover(killed, timeout=30)
    promoted_at = time.time()
    new_leader = wait_until(cluster.leader, 30, "a leader on the promoted replica", period=0.05)
    led_at = time.time()
    cluster.wait_converged(timeout=60)
    converged_at = time.time()
    wait_until(lambda: time.time() - converged_at >= 2 * t.interval, 30, "two intervals after")
    report = report_between(cluster, sampler, start, time.time())
    after = cluster.owners()
    states = cluster.agent_states()
    epoch_after = cluster.status().leader_epoch
    by_epoch = watch.leaders_by_epoch(start - 5)
    went_back = watch.epoch_went_back(start - 5)
    # Every assignment on the promoted primary was written at an epoch no later than the current one.
    stored = promoted.client(decode_responses=True).hgetall(state_key(PREFIX, "assignments"))
    written_epochs = sorted({json.loads(doc)["leader_epoch"] for doc in stored.values()})
    topology.rejoin(killed)  # back as a replica: the next round again has two replicas after a failover
    record(
        f"sentinel_failover_{'primary_and_leader' if with_leader else 'primary'}",
        order=18 if with_leader else 17,
        title="State Redis primary SIGKILLed under Redis Sentinel"
        + (", together with the leader coordinator" if with_leader else "")
        + " (properties 2, 6)",
        bound="the coordinators follow the promoted replica; no epoch with two leaders, leader epochs never go "
        f"back, {'a higher epoch after the leader loss' if with_leader else 'the epoch never below the one before'}; "
        f"nobody expired; no duplicate, no orphan, no gap > interval + {GAP_TOLERANCE} s (times recorded, not "
        "bounded: the failover is the sentinels', down-after 2 s)",
        figures={
            "databases": len(cluster.resource_ids()),
            "promoted_after_s": promoted_at - start,
            "leader_after_s": led_at - start,
            "converged_after_s": converged_at - start,
            "leader_before_after": f"{old_leader} (epoch {epoch_before}) -> {new_leader} (epoch {epoch_after})",
            "epochs_with_two_leaders": sum(1 for names in by_epoch.values() if len(names) > 1),
            "leader_epoch_went_back": went_back,
            "assignments_changed": len(moved(before, after)),
            "agents_not_active": sum(1 for a, s in states.items() if s != "AGENT_STATE_ACTIVE" and a in cluster.agents),
            "duplicates": len(report.duplicates),
            "orphans": len(report.orphans),
            "max_gap_s": report.max_gap(),
        },
    )
    assert all(len(names) == 1 for names in by_epoch.values()), by_epoch
    assert not went_back, watch.samples[-50:]
    assert epoch_after > epoch_before if with_leader else epoch_after >= epoch_before
    assert written_epochs and written_epochs[-1] <= epoch_after, written_epochs
    assert all(states.get(agent) == "AGENT_STATE_ACTIVE" for agent in cluster.live_agents()), states
    assert not report.duplicates and not report.orphans, describe(report)
    assert report.max_gap() <= t.interval + GAP_TOLERANCE, describe(report)
