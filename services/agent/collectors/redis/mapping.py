"""Redis answers -> samples: pure functions, no I/O, so unit tests drive them with captured replies.

INFO (and CLUSTER INFO) replies are `key:value` lines grouped under `# Section` headers, CRLF
terminated. Some values are themselves `k=v,k=v` lists (keyspace `db0:keys=1,expires=0,avg_ttl=0`,
`cmdstat_get:calls=2,usec=4,...`, `slave0:ip=…,port=…,offset=…,lag=0`). Fields come and go across
versions (`used_cpu_sys_main_thread`, `maxclients`, `errorstats` appear in 6.2, `latencystats` in
7.0); a field that is absent simply yields no sample.
"""

from __future__ import annotations

import re
from collections.abc import Collection, Iterable, Mapping
from functools import partial

from ..metric_table import Sample
from ..samples import SampleEmitter, number
from .metrics import REDIS_METRICS

# (metric, INFO field) for every metric that is one number straight from one field.
INFO_SCALARS: tuple[tuple[str, str], ...] = (
    ("redis.clients.blocked", "blocked_clients"),
    ("redis.clients.connected", "connected_clients"),
    ("redis.clients.max_input_buffer", "client_recent_max_input_buffer"),
    ("redis.clients.max_output_buffer", "client_recent_max_output_buffer"),
    ("redis.clients.max", "maxclients"),
    ("redis.commands", "instantaneous_ops_per_sec"),
    ("redis.commands.processed", "total_commands_processed"),
    ("redis.connections.received", "total_connections_received"),
    ("redis.connections.rejected", "rejected_connections"),
    ("redis.keys.evicted", "evicted_keys"),
    ("redis.keys.expired", "expired_keys"),
    ("redis.keyspace.hits", "keyspace_hits"),
    ("redis.keyspace.misses", "keyspace_misses"),
    ("redis.latest_fork", "latest_fork_usec"),
    ("redis.maxmemory", "maxmemory"),
    ("redis.memory.fragmentation_ratio", "mem_fragmentation_ratio"),
    ("redis.memory.lua", "used_memory_lua"),
    ("redis.memory.peak", "used_memory_peak"),
    ("redis.memory.rss", "used_memory_rss"),
    ("redis.memory.used", "used_memory"),
    ("redis.memory.used_memory_overhead", "used_memory_overhead"),
    ("redis.memory.used_memory_startup", "used_memory_startup"),
    ("redis.net.input", "total_net_input_bytes"),
    ("redis.net.output", "total_net_output_bytes"),
    ("redis.rdb.changes_since_last_save", "rdb_changes_since_last_save"),
    ("redis.replication.backlog_first_byte_offset", "repl_backlog_first_byte_offset"),
    ("redis.replication.offset", "master_repl_offset"),
    ("redis.replication.replica_offset", "slave_repl_offset"),  # present on replicas only
    ("redis.slaves.connected", "connected_slaves"),
    ("redis.tracking_total_keys", "tracking_total_keys"),
    ("redis.uptime", "uptime_in_seconds"),
    ("redis.cluster.cluster_enabled", "cluster_enabled"),
    ("redis.error_replies", "total_error_replies"),
    ("redis.sentinel.masters", "sentinel_masters"),
    ("redis.sentinel.running_scripts", "sentinel_running_scripts"),
    ("redis.sentinel.scripts_queue_length", "sentinel_scripts_queue_length"),
    ("redis.sentinel.simulate_failure_flags", "sentinel_simulate_failure_flags"),
    ("redis.sentinel.tilt_since_seconds", "sentinel_tilt_since_seconds"),
    ("redis.sentinel.total_tilt", "sentinel_total_tilt"),
)

CLUSTER_SCALARS: tuple[tuple[str, str], ...] = (
    ("redis.cluster.slots_assigned", "cluster_slots_assigned"),
    ("redis.cluster.slots_ok", "cluster_slots_ok"),
    ("redis.cluster.slots_pfail", "cluster_slots_pfail"),
    ("redis.cluster.slots_fail", "cluster_slots_fail"),
    ("redis.cluster.known_nodes", "cluster_known_nodes"),
    ("redis.cluster.node.count", "cluster_size"),
    ("redis.cluster.uptime", "cluster_current_epoch"),  # as the receiver maps it
    ("redis.cluster.node.uptime", "cluster_my_epoch"),
    ("redis.cluster.stats_messages_sent", "cluster_stats_messages_sent"),
    ("redis.cluster.stats_messages_received", "cluster_stats_messages_received"),
    ("redis.cluster.links_buffer_limit_exceeded.count", "total_cluster_links_buffer_limit_exceeded"),
)
CLUSTER_INFO_METRICS = frozenset(name for name, _ in CLUSTER_SCALARS) | {"redis.cluster.state"}

CPU_STATES = ("sys", "sys_children", "sys_main_thread", "user", "user_children", "user_main_thread")
LATENCY_PERCENTILES = ("p50", "p99", "p99.9")  # the receiver's enum; other configured percentiles are dropped
ROLES = {"master": "primary", "slave": "replica"}

LATENCY_METRICS = frozenset(
    {"redis.latency.spike.duration", "redis.latency.spike.max_duration", "redis.latency.spike.age"}
)

COMMANDSTATS_METRICS = {  # metric -> commandstats field
    "redis.cmd.calls": "calls",
    "redis.cmd.usec": "usec",
    "redis.cmd.rejected_calls": "rejected_calls",
    "redis.cmd.failed_calls": "failed_calls",
}

_KEYSPACE_KEY = re.compile(r"^db(\d+)$")
_REPLICA_KEY = re.compile(r"^slave\d+$")
# Sections every collection asks for; INFO on 7.0+ takes several at once.
BASE_SECTIONS = ("server", "clients", "memory", "persistence", "stats", "replication", "cpu", "cluster", "keyspace")


def parse_info(reply: str | bytes) -> dict[str, str]:
    """An INFO / CLUSTER INFO reply as a flat {field: raw value}; section headers and blanks dropped."""
    text = reply.decode("utf-8", errors="replace") if isinstance(reply, bytes) else reply
    fields: dict[str, str] = {}
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        key, sep, value = line.partition(":")
        if sep:
            fields[key] = value
    return fields


def parse_fields(value: str) -> dict[str, str]:
    """`keys=1,expires=0,avg_ttl=0` -> {'keys': '1', 'expires': '0', 'avg_ttl': '0'}."""
    fields: dict[str, str] = {}
    for part in value.split(","):
        key, sep, item = part.partition("=")
        if sep:
            fields[key.strip()] = item.strip()
    return fields


def server_version(info: Mapping[str, str]) -> tuple[int, ...] | None:
    """redis_version as a tuple, e.g. (7, 0, 15); None if absent or not numeric."""
    raw = info.get("redis_version")
    if not raw:
        return None
    parts = []
    for piece in raw.split("."):
        digits = re.match(r"\d+", piece)
        if digits is None:
            break
        parts.append(int(digits.group()))
    return tuple(parts) or None


def info_sections(enabled: Collection[str], version: tuple[int, ...] | None, mode: str | None) -> tuple[str, ...]:
    """The INFO arguments for one collection: only the sections the enabled metrics need.

    Redis 7.0+ takes several sections in one INFO; older servers take one, so there `default`
    (the base sections) or `all` (when per-command or per-error sections are needed). Before the
    first reply the version is unknown: `all` works everywhere.
    """
    extra = []
    if "redis.errors" in enabled:
        extra.append("errorstats")
    if any(name in enabled for name in COMMANDSTATS_METRICS):
        extra.append("commandstats")
    if "redis.cmd.latency" in enabled:
        extra.append("latencystats")
    if version is None:
        return ("all",)
    if version < (7,):
        return ("all",) if extra else ("default",)
    sections = list(BASE_SECTIONS)
    if mode == "sentinel":
        sections.append("sentinel")
    return tuple(sections + extra)


# INFO values are text: integers stay exact (an OTLP consumer sees an integer where Redis gave one).
_emitter = partial(SampleEmitter, REDIS_METRICS, read=number)


def info_samples(info: Mapping[str, str], enabled: Collection[str], *, now: float) -> list[Sample]:
    """Samples of every enabled metric that INFO answers. `now` (Unix seconds) is the fallback
    clock for ages when the server does not report server_time_usec (before 6.2)."""
    emit = _emitter(enabled)
    emit.fields(INFO_SCALARS, info)
    for state in CPU_STATES:
        emit("redis.cpu.time", info.get(f"used_cpu_{state}"), state)
    _keyspace(emit, info)
    _roles_and_mode(emit, info)
    _per_command(emit, info)
    _replication_health(emit, info)
    _persistence_health(emit, info, now)
    for key, value in info.items():
        if key.startswith("errorstat_"):
            emit("redis.errors", parse_fields(value).get("count"), key[len("errorstat_") :])
    return emit.samples


def _keyspace(emit: SampleEmitter, info: Mapping[str, str]) -> None:
    for key, value in info.items():
        match = _KEYSPACE_KEY.match(key)
        if match is None:
            continue
        db = match.group(1)
        fields = parse_fields(value)
        emit("redis.db.keys", fields.get("keys"), db)
        emit("redis.db.expires", fields.get("expires"), db)
        emit("redis.db.avg_ttl", fields.get("avg_ttl"), db)


def _roles_and_mode(emit: SampleEmitter, info: Mapping[str, str]) -> None:
    role = ROLES.get(info.get("role", ""))
    if role is not None:
        emit("redis.role", 1, role)
    mode = info.get("redis_mode")
    if mode:
        emit("redis.mode", 1, mode)


def _per_command(emit: SampleEmitter, info: Mapping[str, str]) -> None:
    for key, value in info.items():
        if key.startswith("cmdstat_"):
            command, fields = key[len("cmdstat_") :], parse_fields(value)
            for name, field in COMMANDSTATS_METRICS.items():
                emit(name, fields.get(field), command)
        elif key.startswith("latency_percentiles_usec_"):
            command, fields = key[len("latency_percentiles_usec_") :], parse_fields(value)
            for percentile in LATENCY_PERCENTILES:
                usec = number(fields.get(percentile))
                emit("redis.cmd.latency", None if usec is None else usec / 1e6, command, percentile)


def _replication_health(emit: SampleEmitter, info: Mapping[str, str]) -> None:
    if info.get("role") == "slave":
        link = info.get("master_link_status")
        if link is not None:
            emit("redis.replication.link.up", 1 if link == "up" else 0)
        # -1 means "no interaction yet" / "never connected": no age to report.
        last_io = number(info.get("master_last_io_seconds_ago"))
        if last_io is not None and last_io >= 0:
            emit("redis.replication.link.last_io", last_io)
        down_since = number(info.get("master_link_down_since_seconds"))
        if link != "up" and down_since is not None and down_since >= 0:
            emit("redis.replication.link.down_duration", down_since)
    master_offset = number(info.get("master_repl_offset"))
    for key, value in info.items():
        if not _REPLICA_KEY.match(key):
            continue
        fields = parse_fields(value)
        replica = f"{fields.get('ip', '?')}:{fields.get('port', '?')}"
        emit("redis.replication.replica.lag", fields.get("lag"), replica)
        offset = number(fields.get("offset"))
        if offset is None or master_offset is None or not _acknowledging(fields.get("state"), offset, master_offset):
            continue
        emit("redis.replication.replica.offset_lag", max(0, master_offset - offset), replica)


def _acknowledging(state: str | None, offset: int | float, master_offset: int | float) -> bool:
    """Whether a replica's `offset` is an acknowledged position. Not while it is still being synced
    (state wait_bgsave / send_bulk …), and not before its first REPLCONF ACK on a new link, when the
    master shows offset 0: right after every (re)connection, for up to a second, which would otherwise
    read as the replica being the whole replication offset behind."""
    return (state is None or state == "online") and not (offset == 0 < master_offset)


def _persistence_health(emit: SampleEmitter, info: Mapping[str, str], now: float) -> None:
    for name, field in (
        ("redis.rdb.last_bgsave.ok", "rdb_last_bgsave_status"),
        ("redis.aof.last_write.ok", "aof_last_write_status"),
    ):
        status = info.get(field)
        if status is not None:
            emit(name, 1 if status == "ok" else 0)
    last_save = number(info.get("rdb_last_save_time"))
    if last_save is not None:
        emit("redis.rdb.last_save.age", max(0.0, round(server_clock(info, now) - last_save, 3)))


def server_clock(info: Mapping[str, str], now: float) -> float:
    """The server's Unix time from INFO (server_time_usec, 6.2+), else `now`: ages against the clock
    that wrote the timestamps."""
    server_time = number(info.get("server_time_usec"))
    return server_time / 1e6 if server_time is not None else now


def cluster_info_samples(cluster_info: Mapping[str, str], enabled: Collection[str]) -> list[Sample]:
    """Samples from a CLUSTER INFO reply (parsed with parse_info)."""
    emit = _emitter(enabled)
    state = cluster_info.get("cluster_state")
    if state:
        emit("redis.cluster.state", 1, state)
    emit.fields(CLUSTER_SCALARS, cluster_info)
    return emit.samples


def single_sample(name: str, value: int | float | None, enabled: Collection[str]) -> list[Sample]:
    """One attribute-less sample (slow log length, maxclients from CONFIG GET) if enabled."""
    emit = _emitter(enabled)
    emit(name, value)
    return emit.samples


def latency_samples(reply: Iterable, enabled: Collection[str], *, now: float) -> list[Sample]:
    """Samples from a LATENCY LATEST reply: one [event, unix time of the latest spike, its latency ms,
    max latency ms] entry per event (an empty list while latency monitoring is off). `now` is the
    server's Unix time (server_clock)."""
    emit = _emitter(enabled)
    for entry in reply:
        event, at, latest_ms, max_ms = entry[:4]
        event = event.decode("utf-8", errors="replace") if isinstance(event, bytes) else str(event)
        emit("redis.latency.spike.duration", int(latest_ms) / 1000, event)
        emit("redis.latency.spike.max_duration", int(max_ms) / 1000, event)
        emit("redis.latency.spike.age", max(0.0, round(now - int(at), 3)), event)
    return emit.samples
