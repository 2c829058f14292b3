"""Every Redis metric the collector can emit, declared once.

Reference rows follow the OpenTelemetry Collector redisreceiver (tests/reference/metrics/redis.tsv):
same names, types, monotonicity, units and data-point attributes. The resource attribute
`redis.version` is not emitted as a label (it does not tell series apart, and a label would start
new series on every upgrade).

Where the TSV and the receiver disagree, or the TSV leaves a row "[type/unit unverified]", this
table follows the receiver (metadata.yaml / generated config schema and scraper tests of
open-telemetry/opentelemetry-collector-contrib receiver/redisreceiver):

- redis.cluster.*: the receiver declares `redis.cluster.state` as a gauge (value 1, the state in
  the `cluster_state` attribute); `cluster_enabled`, `known_nodes`, `node.count`, `node.uptime`,
  `uptime` and `slots_ok/_pfail/_fail` as gauges; `stats_messages_sent/_received` and
  `links_buffer_limit_exceeded.count` as monotonic sums. `redis.cluster.uptime` and
  `redis.cluster.node.uptime` are filled from `cluster_current_epoch` and `cluster_my_epoch`
  (so the values are epochs despite the unit `s`); we do the same so dashboards agree.
  The units of these rows ({node}, {slot}, {message}, {count}, {state}, `1`, `s`) are the
  receiver's as reported by a secondary source; the primary metadata.yaml at hand predates them.
- redis.memory.used_memory_overhead / used_memory_startup: gauges in bytes (`By`).
- redis.tracking_total_keys: a gauge of keys (`{key}`); one receiver version named it
  `redis.stats.tracking_total_keys`, the TSV's later name is kept.
- `redis.cluster.slots_assigned` keeps the TSV's verified unit `{slots}`.

Beyond the receiver (tier="beyond"): replica link state and lag, persistence health, slow log
length, error replies, maxclients, latency spikes — the gaps that the peers (redis_exporter,
Datadog) cover.

verified_on: "Redis 7.0" = seen on the real redis-server of the integration tests (standalone
primary, and a replica of it for the replica-side metrics); "(captured)" = produced from real
replies captured in tests/unit/data (a 6.2.14 server, a 7.0 Sentinel, a 7.0 cluster node), which
tests/unit/test_redis_mapping.py checks claim by claim.
"""

from __future__ import annotations

from ..metric_table import MetricSpec, MetricTable


LIVE = ("Redis 7.0",)
CAPTURED_6_2 = "Redis 6.2 (captured)"
CAPTURED_SENTINEL = "Redis 7.0 Sentinel (captured)"
LIVE_6_2 = LIVE + (CAPTURED_6_2,)
LIVE_SENTINEL = LIVE + (CAPTURED_SENTINEL,)
LIVE_6_2_SENTINEL = LIVE + (CAPTURED_6_2, CAPTURED_SENTINEL)
SENTINEL_CAPTURED = (CAPTURED_SENTINEL,)
SENTINEL_DOCUMENTED = ("Redis Sentinel (documented shape; 7.0 does not report it)",)
CLUSTER_NODE_CAPTURED = ("Redis 7.0 cluster node (captured)",)


def _spec(name: str, type_: str, unit: str, description: str, source: str, *, monotonic: bool = False,
          attributes: tuple[str, ...] = (), enabled: bool = True, tier: str = "reference",
          verified: tuple[str, ...]) -> MetricSpec:
    return MetricSpec(name=name, type=type_, unit=unit, description=description, source=source,
                      monotonic=monotonic, attributes=attributes, enabled_by_default=enabled, tier=tier,
                      verified_on=verified)


REDIS_METRICS = MetricTable([
    # --- reference, enabled by default (the 29 rows of the floor) ------------------------------
    _spec("redis.clients.blocked", "sum", "{client}", "Clients pending on a blocking call",
          "INFO clients blocked_clients", verified=LIVE_6_2_SENTINEL),
    _spec("redis.clients.connected", "sum", "{client}", "Client connections, excluding replicas",
          "INFO clients connected_clients", verified=LIVE_6_2_SENTINEL),
    _spec("redis.clients.max_input_buffer", "gauge", "By", "Biggest input buffer among current client connections",
          "INFO clients client_recent_max_input_buffer", verified=LIVE_6_2_SENTINEL),
    _spec("redis.clients.max_output_buffer", "gauge", "By", "Longest output list among current client connections",
          "INFO clients client_recent_max_output_buffer", verified=LIVE_6_2_SENTINEL),
    _spec("redis.commands", "gauge", "{ops}/s", "Commands processed per second",
          "INFO stats instantaneous_ops_per_sec", verified=LIVE_6_2_SENTINEL),
    _spec("redis.commands.processed", "sum", "{command}", "Commands processed by the server",
          "INFO stats total_commands_processed", monotonic=True, verified=LIVE_6_2_SENTINEL),
    _spec("redis.connections.received", "sum", "{connection}", "Connections accepted by the server",
          "INFO stats total_connections_received", monotonic=True, verified=LIVE_6_2_SENTINEL),
    _spec("redis.connections.rejected", "sum", "{connection}", "Connections rejected because of maxclients",
          "INFO stats rejected_connections", monotonic=True, verified=LIVE_6_2_SENTINEL),
    _spec("redis.cpu.time", "sum", "s", "CPU consumed by the server since start, by state",
          "INFO cpu used_cpu_*", monotonic=True, attributes=("state",), verified=LIVE_6_2_SENTINEL),
    _spec("redis.db.avg_ttl", "gauge", "ms", "Average TTL of the keys with an expiry, per db",
          "INFO keyspace dbN avg_ttl", attributes=("db",), verified=LIVE_6_2),
    _spec("redis.db.expires", "gauge", "{key}", "Keys with an expiry, per db",
          "INFO keyspace dbN expires", attributes=("db",), verified=LIVE_6_2),
    _spec("redis.db.keys", "gauge", "{key}", "Keys, per db", "INFO keyspace dbN keys", attributes=("db",),
          verified=LIVE_6_2),
    _spec("redis.keys.evicted", "sum", "{key}", "Keys evicted because of the maxmemory limit",
          "INFO stats evicted_keys", monotonic=True, verified=LIVE_6_2_SENTINEL),
    _spec("redis.keys.expired", "sum", "{event}", "Key expiration events", "INFO stats expired_keys",
          monotonic=True, verified=LIVE_6_2_SENTINEL),
    _spec("redis.keyspace.hits", "sum", "{hit}", "Successful key lookups", "INFO stats keyspace_hits",
          monotonic=True, verified=LIVE_6_2_SENTINEL),
    _spec("redis.keyspace.misses", "sum", "{miss}", "Failed key lookups", "INFO stats keyspace_misses",
          monotonic=True, verified=LIVE_6_2_SENTINEL),
    _spec("redis.latest_fork", "gauge", "us", "Duration of the latest fork", "INFO stats latest_fork_usec",
          verified=LIVE_6_2_SENTINEL),
    _spec("redis.memory.fragmentation_ratio", "gauge", "1", "Ratio of used_memory_rss to used_memory",
          "INFO memory mem_fragmentation_ratio", verified=LIVE_6_2),
    _spec("redis.memory.lua", "gauge", "By", "Memory used by the Lua engine", "INFO memory used_memory_lua",
          verified=LIVE_6_2),
    _spec("redis.memory.peak", "gauge", "By", "Peak memory allocated by Redis", "INFO memory used_memory_peak",
          verified=LIVE_6_2),
    _spec("redis.memory.rss", "gauge", "By", "Memory allocated by Redis as seen by the OS",
          "INFO memory used_memory_rss", verified=LIVE_6_2),
    _spec("redis.memory.used", "gauge", "By", "Memory allocated by Redis's allocator", "INFO memory used_memory",
          verified=LIVE_6_2),
    _spec("redis.net.input", "sum", "By", "Bytes read from the network", "INFO stats total_net_input_bytes",
          monotonic=True, verified=LIVE_6_2_SENTINEL),
    _spec("redis.net.output", "sum", "By", "Bytes written to the network", "INFO stats total_net_output_bytes",
          monotonic=True, verified=LIVE_6_2_SENTINEL),
    _spec("redis.rdb.changes_since_last_save", "sum", "{change}", "Writes since the last RDB save",
          "INFO persistence rdb_changes_since_last_save", verified=LIVE_6_2),
    _spec("redis.replication.backlog_first_byte_offset", "gauge", "By",
          "Master offset of the start of the replication backlog",
          "INFO replication repl_backlog_first_byte_offset", verified=LIVE_6_2),
    _spec("redis.replication.offset", "gauge", "By", "The server's current replication offset",
          "INFO replication master_repl_offset", verified=LIVE_6_2),
    _spec("redis.slaves.connected", "sum", "{replica}", "Connected replicas", "INFO replication connected_slaves",
          verified=LIVE_6_2),
    _spec("redis.uptime", "sum", "s", "Seconds since the server started", "INFO server uptime_in_seconds",
          monotonic=True, verified=LIVE_6_2_SENTINEL),

    # --- reference, optional ------------------------------------------------------------------
    _spec("redis.maxmemory", "gauge", "By", "The maxmemory setting (0 = no limit)", "INFO memory maxmemory",
          enabled=False, verified=LIVE_6_2),
    _spec("redis.memory.used_memory_overhead", "gauge", "By", "Memory used for internal overhead",
          "INFO memory used_memory_overhead", enabled=False, verified=LIVE_6_2),
    _spec("redis.memory.used_memory_startup", "gauge", "By", "Memory used at startup",
          "INFO memory used_memory_startup", enabled=False, verified=LIVE_6_2),
    _spec("redis.role", "sum", "{role}", "The node's role (1 on the current role)", "INFO replication role",
          attributes=("role",), enabled=False, verified=LIVE_6_2),
    _spec("redis.mode", "gauge", "{mode}", "Server mode (1 on the current mode)", "INFO server redis_mode",
          attributes=("mode",), enabled=False, verified=LIVE_6_2_SENTINEL),
    _spec("redis.replication.replica_offset", "gauge", "By", "Replication offset of this replica",
          "INFO replication slave_repl_offset", enabled=False, verified=LIVE),
    _spec("redis.tracking_total_keys", "gauge", "{key}", "Keys tracked for client-side caching",
          "INFO stats tracking_total_keys", enabled=False, verified=LIVE_6_2_SENTINEL),
    _spec("redis.cmd.calls", "sum", "{call}", "Calls per command", "INFO commandstats calls", monotonic=True,
          attributes=("cmd",), enabled=False, verified=LIVE_6_2),
    _spec("redis.cmd.usec", "sum", "us", "Time spent per command", "INFO commandstats usec", monotonic=True,
          attributes=("cmd",), enabled=False, verified=LIVE_6_2),
    _spec("redis.cmd.latency", "gauge", "s", "Command latency percentiles (Redis 7.0+)",
          "INFO latencystats", attributes=("cmd", "percentile"), enabled=False, verified=LIVE),
    _spec("redis.cluster.cluster_enabled", "gauge", "1", "Whether cluster mode is enabled",
          "INFO cluster cluster_enabled", enabled=False, verified=LIVE_6_2),
    _spec("redis.cluster.state", "gauge", "{state}", "Cluster state (1, the state in cluster_state)",
          "CLUSTER INFO cluster_state", attributes=("cluster_state",), enabled=False, verified=CLUSTER_NODE_CAPTURED),
    _spec("redis.cluster.slots_assigned", "gauge", "{slots}", "Hash slots assigned to some node",
          "CLUSTER INFO cluster_slots_assigned", enabled=False, verified=CLUSTER_NODE_CAPTURED),
    _spec("redis.cluster.slots_ok", "gauge", "{slot}", "Hash slots in OK state",
          "CLUSTER INFO cluster_slots_ok", enabled=False, verified=CLUSTER_NODE_CAPTURED),
    _spec("redis.cluster.slots_pfail", "gauge", "{slot}", "Hash slots in PFAIL state",
          "CLUSTER INFO cluster_slots_pfail", enabled=False, verified=CLUSTER_NODE_CAPTURED),
    _spec("redis.cluster.slots_fail", "gauge", "{slot}", "Hash slots in FAIL state",
          "CLUSTER INFO cluster_slots_fail", enabled=False, verified=CLUSTER_NODE_CAPTURED),
    _spec("redis.cluster.known_nodes", "gauge", "{node}", "Nodes known to this cluster node",
          "CLUSTER INFO cluster_known_nodes", enabled=False, verified=CLUSTER_NODE_CAPTURED),
    _spec("redis.cluster.node.count", "gauge", "{node}", "Master nodes serving at least one hash slot",
          "CLUSTER INFO cluster_size", enabled=False, verified=CLUSTER_NODE_CAPTURED),
    _spec("redis.cluster.uptime", "gauge", "s", "Cluster current epoch (the receiver's mapping)",
          "CLUSTER INFO cluster_current_epoch", enabled=False, verified=CLUSTER_NODE_CAPTURED),
    _spec("redis.cluster.node.uptime", "gauge", "s", "This node's config epoch (the receiver's mapping)",
          "CLUSTER INFO cluster_my_epoch", enabled=False, verified=CLUSTER_NODE_CAPTURED),
    _spec("redis.cluster.stats_messages_sent", "sum", "{message}", "Cluster bus messages sent",
          "CLUSTER INFO cluster_stats_messages_sent", monotonic=True, enabled=False, verified=CLUSTER_NODE_CAPTURED),
    _spec("redis.cluster.stats_messages_received", "sum", "{message}", "Cluster bus messages received",
          "CLUSTER INFO cluster_stats_messages_received", monotonic=True, enabled=False,
          verified=CLUSTER_NODE_CAPTURED),
    _spec("redis.cluster.links_buffer_limit_exceeded.count", "sum", "{count}",
          "Cluster links freed for exceeding the buffer limit",
          "CLUSTER INFO total_cluster_links_buffer_limit_exceeded", monotonic=True, enabled=False,
          verified=CLUSTER_NODE_CAPTURED),
    _spec("redis.sentinel.masters", "gauge", "{masters}", "Masters monitored by this Sentinel",
          "INFO sentinel sentinel_masters", enabled=False, verified=SENTINEL_CAPTURED),
    _spec("redis.sentinel.running_scripts", "gauge", "{scripts}", "Sentinel scripts running",
          "INFO sentinel sentinel_running_scripts", enabled=False, verified=SENTINEL_CAPTURED),
    _spec("redis.sentinel.scripts_queue_length", "gauge", "{scripts}", "Sentinel scripts queued",
          "INFO sentinel sentinel_scripts_queue_length", enabled=False, verified=SENTINEL_CAPTURED),
    _spec("redis.sentinel.simulate_failure_flags", "gauge", "{flags}", "Sentinel simulated-failure bitmask",
          "INFO sentinel sentinel_simulate_failure_flags", enabled=False, verified=SENTINEL_CAPTURED),
    _spec("redis.sentinel.tilt_since_seconds", "gauge", "s", "Seconds in the current TILT, -1 if not in TILT",
          "INFO sentinel sentinel_tilt_since_seconds", enabled=False, verified=SENTINEL_CAPTURED),
    _spec("redis.sentinel.total_tilt", "sum", "{events}", "TILT occurrences since start",
          "INFO sentinel sentinel_total_tilt", monotonic=True, enabled=False, verified=SENTINEL_DOCUMENTED),

    # --- beyond the receiver --------------------------------------------------------------------
    _spec("redis.clients.max", "gauge", "{client}", "The maxclients limit",
          "INFO clients maxclients (Redis 6.2+), else CONFIG GET maxclients", tier="beyond",
          verified=LIVE_6_2_SENTINEL),
    _spec("redis.replication.link.up", "gauge", "{status}",
          "On a replica: 1 while the link to its master is up, else 0",
          "INFO replication master_link_status", tier="beyond", verified=LIVE),
    _spec("redis.replication.link.last_io", "gauge", "s",
          "On a replica: seconds since the last interaction with its master",
          "INFO replication master_last_io_seconds_ago", tier="beyond", verified=LIVE),
    _spec("redis.replication.link.down_duration", "gauge", "s",
          "On a replica whose link is down: seconds since it went down",
          "INFO replication master_link_down_since_seconds", tier="beyond", verified=LIVE),
    _spec("redis.replication.replica.lag", "gauge", "s",
          "On a master: seconds since each replica last acknowledged",
          "INFO replication slaveN lag", attributes=("replica",), tier="beyond", verified=LIVE),
    _spec("redis.replication.replica.offset_lag", "gauge", "By",
          "On a master: bytes each replica's acknowledged offset trails master_repl_offset",
          "INFO replication master_repl_offset - slaveN offset", attributes=("replica",), tier="beyond", verified=LIVE),
    _spec("redis.rdb.last_bgsave.ok", "gauge", "{status}", "1 if the last RDB save succeeded, else 0",
          "INFO persistence rdb_last_bgsave_status", tier="beyond", verified=LIVE_6_2),
    _spec("redis.rdb.last_save.age", "gauge", "s", "Seconds since the last successful RDB save",
          "INFO server server_time_usec - INFO persistence rdb_last_save_time", tier="beyond", verified=LIVE_6_2),
    _spec("redis.aof.last_write.ok", "gauge", "{status}", "1 if the last AOF write succeeded, else 0",
          "INFO persistence aof_last_write_status", tier="beyond", verified=LIVE_6_2),
    _spec("redis.slowlog.length", "gauge", "{entry}", "Entries in the slow log", "SLOWLOG LEN", tier="beyond",
          verified=LIVE),
    _spec("redis.error_replies", "sum", "{reply}", "Error replies sent to clients (Redis 6.2+)",
          "INFO stats total_error_replies", monotonic=True, tier="beyond", verified=LIVE_6_2_SENTINEL),
    _spec("redis.errors", "sum", "{reply}", "Error replies by error prefix (Redis 6.2+)",
          "INFO errorstats errorstat_*", monotonic=True, attributes=("error",), tier="beyond", verified=LIVE_6_2),
    _spec("redis.cmd.rejected_calls", "sum", "{call}",
          "Calls rejected before running (unknown command, ACL, OOM, arity…), per command (Redis 6.2+)",
          "INFO commandstats rejected_calls", monotonic=True, attributes=("cmd",), enabled=False, tier="beyond",
          verified=LIVE_6_2),
    _spec("redis.cmd.failed_calls", "sum", "{call}", "Calls that ran and returned an error, per command (Redis 6.2+)",
          "INFO commandstats failed_calls", monotonic=True, attributes=("cmd",), enabled=False, tier="beyond",
          verified=LIVE_6_2),
    # LATENCY LATEST costs a command of its own, and the server records spikes only while
    # latency-monitor-threshold > 0 (default 0): off by default.
    _spec("redis.latency.spike.duration", "gauge", "s", "Duration of the latest latency spike, per event",
          "LATENCY LATEST (latest ms)", attributes=("event",), enabled=False, tier="beyond", verified=LIVE),
    _spec("redis.latency.spike.max_duration", "gauge", "s", "Longest latency spike recorded, per event",
          "LATENCY LATEST (max ms)", attributes=("event",), enabled=False, tier="beyond", verified=LIVE),
    _spec("redis.latency.spike.age", "gauge", "s", "Seconds since the latest latency spike, per event",
          "INFO server server_time_usec - LATENCY LATEST (timestamp)", attributes=("event",), enabled=False,
          tier="beyond", verified=LIVE),
])
