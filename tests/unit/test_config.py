"""Config parsing: the verbatim scaling block, every problem at once, durations, secret references."""

from __future__ import annotations

import subprocess
import sys
from datetime import timedelta
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from dbintel.common.config import Config, ConfigError, load_config, parse_config
from dbintel.common.durations import format_duration, parse_duration
from dbintel.common.secrets import SecretResolutionError, resolve_secret

ROOT = Path(__file__).resolve().parents[2]

DESIGN_SCALING_BLOCK = """
scaling:
  enabled: true
  mode: redis            # redis: shared state in Redis; memory: single coordinator, no Redis
  redis: {address: host:6379, db: 0, key_prefix: "dbintel:scaling:", leader_ttl: 30s}
  coordinator:
    heartbeat_interval: 30s      # how often agents report
    node_timeout: 90s            # silent this long => agent is dead, its databases move
    rebalance_interval: 5m       # periodic rebalance for drift in load
    min_rebalance_interval: 1m   # no two load-driven rebalances closer than this
  receiver_scaling:
    check_interval: 30s          # agent's fallback assignment poll when its stream is down
    resource_prefix: "db:"       # resource ids are <prefix><type>/<name>
    ignore_assignments: false    # true => the agent polls every configured database
"""


def test_design_scaling_block_is_accepted_verbatim():
    config = parse_config(DESIGN_SCALING_BLOCK)
    s = config.scaling
    assert s.enabled and s.mode == "redis"
    assert (s.redis.address, s.redis.db, s.redis.key_prefix, s.redis.leader_ttl) == (
        "host:6379",
        0,
        "dbintel:scaling:",
        timedelta(seconds=30),
    )
    assert s.coordinator.node_timeout == timedelta(seconds=90)
    assert s.coordinator.rebalance_interval == timedelta(minutes=5)
    assert s.receiver_scaling.resource_prefix == "db:" and not s.receiver_scaling.ignore_assignments


def test_defaults_are_the_embedded_memory_mode():
    config = parse_config("")
    assert config.scaling.mode == "memory" and config.databases == []
    assert config.coordinator.grpc_listen.endswith(":50051")
    assert config.agent.metrics_listen.endswith(":8889") and config.agent.health_listen.endswith(":13133")


def test_example_config_is_valid():
    config = load_config(ROOT / "examples" / "config.yaml")
    assert {db.type for db in config.databases} == {"postgresql", "mysql", "mongodb", "redis"}
    assert all(db.password is None or db.password.startswith("${") for db in config.databases)


def test_every_problem_is_reported_at_once_with_its_path():
    text = """
scaling:
  mode: postgres
  coordinator: {heartbeat_interval: 30s, node_timeout: 10s, min_rebalance_interval: 10m}
  receiver_scaling: {check_interval: 30}
agent: {coordinator: "nohost"}
databases:
  - {name: orders, type: postgresql, endpoint: "10.0.0.5:5432", password: hunter2}
  - {name: orders, type: postgresql, endpoint: "10.0.0.5:5432"}
  - {name: x, type: oracle, endpoint: "a:1", intervl: 5s}
"""
    with pytest.raises(ConfigError) as info:
        parse_config(text)
    problems = info.value.problems
    expected = [
        "scaling.mode:",
        "scaling.coordinator.node_timeout: must be at least 56.25s with heartbeat_interval 30s",
        "scaling.coordinator.min_rebalance_interval: must be ≤ rebalance_interval (5m)",
        "scaling.receiver_scaling.check_interval: a duration needs a unit",
        "agent.coordinator:",
        "databases[0] (orders).password: must be a reference",
        "databases[2] (x).type: 'oracle' is not one of postgresql, mysql, mongodb, redis",
        "databases[2] (x).intervl: unknown field; did you mean 'interval'?",
    ]
    for prefix in expected:
        assert any(p.startswith(prefix) for p in problems), (prefix, problems)
    assert "hunter2" not in str(info.value)


def test_duplicate_names_within_a_type():
    with pytest.raises(ConfigError) as info:
        parse_config(
            "databases: [{name: a, type: redis, endpoint: 'h:1'}, {name: a, type: redis, endpoint: 'h:2'},"
            " {name: a, type: mysql, endpoint: 'h:3'}]"
        )
    assert info.value.problems == ["databases[1] (a).name: duplicate redis name 'a' (also databases[0])"]


def test_env_expansion_everywhere_but_passwords():
    config = parse_config(
        "agent: {coordinator: '${env:COORD}'}\n"
        "databases: [{name: a, type: redis, endpoint: '${env:HOST}:6379', password: '${env:PW}'}]",
        environ={"COORD": "c:50051", "HOST": "10.1.1.1", "PW": "secret"},
    )
    assert config.agent.coordinator == "c:50051"
    assert config.databases[0].endpoint == "10.1.1.1:6379"
    assert config.databases[0].password == "${env:PW}"  # stays a reference until the agent connects
    with pytest.raises(ConfigError) as info:
        parse_config("agent: {coordinator: '${env:MISSING}:1'}", environ={})
    assert info.value.problems == ["agent.coordinator: environment variable MISSING is not set"]


def test_secret_references_resolve_without_leaking(tmp_path):
    secret_file = tmp_path / "pw"
    secret_file.write_text("s3cret\n")
    assert resolve_secret(f"${{file:{secret_file}}}").get_secret_value() == "s3cret"
    assert resolve_secret("${env:PW}", {"PW": "x"}).get_secret_value() == "x"
    assert "x" not in repr(resolve_secret("${env:PW}", {"PW": "x"}))
    with pytest.raises(SecretResolutionError) as info:
        resolve_secret("${env:NOPE}", {})
    assert "NOPE" in str(info.value)
    with pytest.raises(SecretResolutionError):
        resolve_secret("${file:/nonexistent/pw}")


def test_a_database_zone_is_carried_and_validated():
    config = parse_config(
        "databases: [{name: a, type: redis, endpoint: 'h:1', zone: eu-west-1a}, {name: b, type: redis, endpoint: 'h:2'}]"
    )
    assert [db.zone for db in config.databases] == ["eu-west-1a", ""]
    with pytest.raises(ConfigError) as info:
        parse_config("databases: [{name: a, type: redis, endpoint: 'h:1', zone: 'eu west'}]")
    assert len(info.value.problems) == 1 and info.value.problems[0].startswith("databases[0] (a).zone:")


def test_resource_ids_use_the_prefix():
    config = parse_config(
        "scaling: {receiver_scaling: {resource_prefix: 'x/'}}\n"
        "databases: [{name: orders, type: postgresql, endpoint: 'h:5432'}]"
    )
    assert list(config.resources()) == ["x/postgresql/orders"]


@given(st.lists(st.tuples(st.integers(0, 500), st.sampled_from(["ms", "s", "m", "h"])), min_size=1, max_size=3))
def test_duration_round_trip(parts):
    text = "".join(f"{n}{u}" for n, u in parts)
    value = parse_duration(text)
    assert parse_duration(format_duration(value)) == value


@pytest.mark.parametrize("bad", ["", "30", "s", "5 m", "1x", "-5s", "1.5.2s"])
def test_bad_durations_are_rejected(bad):
    with pytest.raises(ValueError):
        parse_duration(bad)


@given(
    st.recursive(
        st.none() | st.booleans() | st.integers() | st.text(max_size=10),
        lambda children: (
            st.lists(children, max_size=3)
            | st.dictionaries(
                st.sampled_from(
                    [
                        "scaling",
                        "databases",
                        "agent",
                        "coordinator",
                        "mode",
                        "name",
                        "type",
                        "endpoint",
                        "redis",
                        "interval",
                        "x",
                    ]
                ),
                children,
                max_size=4,
            )
        ),
        max_leaves=12,
    )
)
def test_arbitrary_yaml_shapes_give_config_errors_not_crashes(document):
    import yaml

    try:
        parse_config(yaml.safe_dump(document))
    except ConfigError as exc:
        assert exc.problems and all(isinstance(p, str) and ":" in p for p in exc.problems)


def test_validate_command_exit_codes(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("scaling: {coordinator: {heartbeat_interval: 30s, node_timeout: 10s}}\n")

    def run(*a):
        return subprocess.run([sys.executable, "-m", "dbintel.cli", "validate", *a], capture_output=True, text=True)

    failed = run(str(bad))
    assert failed.returncode == 1
    assert "scaling.coordinator.node_timeout: must be at least 56.25s with heartbeat_interval 30s" in failed.stderr
    ok = run(str(ROOT / "examples" / "config.yaml"))
    assert ok.returncode == 0 and "valid" in ok.stdout


def test_validate_names_unknown_metric_switches(tmp_path):
    path = tmp_path / "metrics.yaml"
    path.write_text(
        "databases: [{name: a, type: redis, endpoint: 'h:1', metrics: {redis.cmd.calls: {enabled: true},"
        " redis.no.such: {enabled: true}}}]\n"
    )
    result = subprocess.run(
        [sys.executable, "-m", "dbintel.cli", "validate", str(path)], capture_output=True, text=True
    )
    assert result.returncode == 1
    assert "databases[0] (a).metrics.redis.no.such: not a redis metric" in result.stderr
    assert "redis.cmd.calls" not in result.stderr


def test_services_refuse_to_start_on_a_broken_config(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("scaling: {mode: cluster}\ndatabases: [{name: a, type: redis, endpoint: nohost}]\n")
    for role in ("coordinator", "agent", "up"):
        result = subprocess.run(
            [sys.executable, "-m", "dbintel.cli", role, "--config", str(bad)],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert result.returncode == 2, (role, result.stderr)
        assert "scaling.mode: 'cluster' is not one of redis, memory" in result.stderr, role
        assert "databases[0] (a).endpoint: 'nohost' is not host:port" in result.stderr, role


# -- gRPC TLS, operator token, TLS file checks --------------------------------------------------------
SECURE_COORDINATOR = """
coordinator:
  operator_token: ${env:OPERATOR_TOKEN}
  tls: {enabled: true, cert_file: %(d)s/s.crt, key_file: %(d)s/s.key, client_ca_file: %(d)s/ca.crt,
        require_client_cert: true}
  client_tls: {enabled: true, ca_file: %(d)s/ca.crt, cert_file: %(d)s/c.crt, key_file: %(d)s/c.key}
agent:
  tls: {enabled: true, ca_file: %(d)s/ca.crt, cert_file: %(d)s/c.crt, key_file: %(d)s/c.key, server_name: coord}
"""


def test_secure_grpc_settings_parse_and_the_token_stays_a_reference(tmp_path):
    config = parse_config(SECURE_COORDINATOR % {"d": tmp_path}, environ={"OPERATOR_TOKEN": "abc"})
    assert config.coordinator.tls.require_client_cert and config.coordinator.client_tls.cert_file.endswith("c.crt")
    assert config.coordinator.operator_token == "${env:OPERATOR_TOKEN}"
    assert config.agent.tls.server_name == "coord"
    assert not Config().coordinator.tls.enabled and not Config().agent.tls.enabled  # plaintext by default


def test_tls_rules_are_reported_together():
    with pytest.raises(ConfigError) as bad:
        parse_config(
            "coordinator:\n  tls: {enabled: true, require_client_cert: true}\n"
            "  operator_token: plain-token\n"
            "agent:\n  tls: {enabled: true, insecure_skip_verify: true}\n",
            environ={},
        )
    message = str(bad.value)
    for expected in (
        "coordinator.tls.cert_file: required",
        "coordinator.tls.key_file: required",
        "coordinator.tls.client_ca_file: required with require_client_cert",
        "coordinator.operator_token: must be a reference",
        "agent.tls.insecure_skip_verify: not supported",
    ):
        assert expected in message, message
    assert "plain-token" not in message
    with pytest.raises(ConfigError) as missing_client:
        parse_config("coordinator:\n  tls: {enabled: true, cert_file: /a, key_file: /b}\n", environ={})
    assert "coordinator.client_tls: required when tls is enabled" in str(missing_client.value)
    with pytest.raises(ConfigError) as disabled:
        parse_config("coordinator:\n  tls: {cert_file: /a, key_file: /b}\n", environ={})
    assert "coordinator.tls.enabled: TLS files or options are set but enabled is false" in str(disabled.value)


def test_tls_files_are_checked_for_the_role_that_uses_them(tmp_path):
    text = (
        SECURE_COORDINATOR % {"d": tmp_path}
        + f"scaling:\n  redis: {{tls: {{enabled: true, ca_file: {tmp_path}/r.crt}}}}\n"
    )
    parse_config(text, environ={"OPERATOR_TOKEN": "x"})  # no checks asked: a laptop validating pod paths
    with pytest.raises(ConfigError) as coordinator:
        parse_config(text, environ={"OPERATOR_TOKEN": "x"}, check_files=("coordinator",))
    problems = "\n".join(coordinator.value.problems)
    for field in (
        "coordinator.tls.cert_file",
        "coordinator.tls.key_file",
        "coordinator.tls.client_ca_file",
        "coordinator.client_tls.ca_file",
        "coordinator.client_tls.cert_file",
        "scaling.redis.tls.ca_file",
    ):
        assert f"{field}: {tmp_path}" in problems and "does not exist" in problems, problems
    assert "agent.tls" not in problems
    with pytest.raises(ConfigError) as agent:
        parse_config(text, environ={"OPERATOR_TOKEN": "x"}, check_files=("agent",))
    assert {p.split(":")[0] for p in agent.value.problems} == {
        "agent.tls.ca_file",
        "agent.tls.cert_file",
        "agent.tls.key_file",
    }
    for name in ("s.crt", "s.key", "ca.crt", "c.crt", "c.key", "r.crt"):
        (tmp_path / name).write_text("pem")
    (tmp_path / "c.key").chmod(0o000)
    (tmp_path / "r.crt").unlink()
    (tmp_path / "r.crt").mkdir()
    with pytest.raises(ConfigError) as unreadable:
        parse_config(text, environ={"OPERATOR_TOKEN": "x"}, check_files=("coordinator", "agent"))
    problems = unreadable.value.problems
    assert any(p.startswith("scaling.redis.tls.ca_file:") and "is a directory" in p for p in problems), problems
    import os

    if os.geteuid() != 0:  # root reads a mode-000 file anyway
        assert any(p.startswith("agent.tls.key_file:") and "cannot be read" in p for p in problems), problems


def test_validate_checks_tls_files_when_asked_and_roles_at_start(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("agent:\n  tls: {enabled: true, ca_file: /nonexistent/ca.crt}\n")

    def dbintel(*args):
        return subprocess.run([sys.executable, "-m", "dbintel.cli", *args], capture_output=True, text=True, timeout=60)

    assert dbintel("validate", str(path)).returncode == 0  # away from the pods, paths are not checked
    for role in ("agent", "all"):
        checked = dbintel("validate", "--check-files", role, str(path))
        assert checked.returncode == 1 and "agent.tls.ca_file: /nonexistent/ca.crt does not exist" in checked.stderr
    assert dbintel("validate", "--check-files", "coordinator", str(path)).returncode == 0
    started = dbintel("agent", "--config", str(path))
    assert started.returncode == 2 and "agent.tls.ca_file: /nonexistent/ca.crt does not exist" in started.stderr


def test_huge_durations_are_config_errors():
    with pytest.raises(ConfigError) as bad:
        parse_config("scaling: {redis: {leader_ttl: 99999999999h}}", environ={})
    assert "scaling.redis.leader_ttl: duration '99999999999h' is too long" in str(bad.value)


def test_sentinel_and_cluster_settings_and_their_rules():
    config = parse_config(
        """
scaling:
  mode: redis
  redis:
    sentinel: {master_name: dbintel, addresses: ["s0:26379", "s1:26379"], password: "${env:SENTINEL_PW}"}
"""
    )
    redis = config.scaling.redis
    assert redis.sentinel is not None and redis.sentinel.addresses == ["s0:26379", "s1:26379"]
    assert redis.required_replica_acks == 1 and "s0:26379" in redis.describe()
    assert parse_config("scaling: {redis: {cluster: true}}").scaling.redis.required_replica_acks == 0
    with pytest.raises(ConfigError) as bad:
        parse_config(
            """
scaling:
  redis:
    address: redis:6379
    cluster: true
    db: 2
    sentinel: {master_name: m, addresses: ["s0:26379"]}
"""
        )
    assert bad.value.problems == [
        "scaling.redis.address: 'redis:6379' is not used with sentinel (the sentinels name the primary): leave it out",
        "scaling.redis.cluster: true cannot be combined with sentinel (a cluster fails over by itself)",
        "scaling.redis.db: Redis Cluster has only db 0, not 2",
    ]
    with pytest.raises(ConfigError) as bad:
        parse_config(
            'scaling: {redis: {replica_acks: -1, sentinel: {master_name: "", addresses: ["s:1", "nohost", "s:1"], '
            "password: clear}}}"
        )
    assert sorted(bad.value.problems) == [
        "scaling.redis.replica_acks: -1 is less than the minimum 0",
        "scaling.redis.sentinel.addresses: [1] 'nohost' is not host:port (port 1-65535); 's:1' listed twice",
        "scaling.redis.sentinel.master_name: '' is shorter than 1 character(s)",
        "scaling.redis.sentinel.password: must be a reference, ${env:NAME} or ${file:/path}, never the password itself",
    ]


def test_every_state_key_shares_one_hash_slot():
    from redis.crc import key_slot

    from dbintel.coordinator.store.redis_store import _NAMES, state_key, tagged_prefix

    assert tagged_prefix("dbintel:scaling:") == "{dbintel:scaling:}"
    assert tagged_prefix("app:{dbintel}:") == "app:{dbintel}:"  # a tag of its own is kept
    assert tagged_prefix("odd{}:") == "{odd{}:}"  # an empty {} is no tag
    for prefix in ("dbintel:scaling:", "app:{dbintel}:", "odd{}:"):
        slots = {key_slot(state_key(prefix, name).encode()) for name in _NAMES.values()}
        assert len(slots) == 1, (prefix, slots)
