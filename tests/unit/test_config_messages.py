"""Config errors a newcomer can act on: each names the entry and echoes the value (never a secret's),
YAML syntax errors name the file and position, and YAML integers are accepted where text is meant.
No I/O: everything goes through parse_config."""

from __future__ import annotations

import pytest

from dbintel.common.config import ConfigError, parse_config


def problems(text: str, environ: dict[str, str] | None = None, source: str = "config") -> list[str]:
    with pytest.raises(ConfigError) as info:
        parse_config(text, source, environ or {})
    return info.value.problems


def test_a_bad_type_names_the_entry_and_echoes_the_value():
    text = """
databases:
  - {name: orders, type: postgresql, endpoint: "10.0.0.5:5432"}
  - {name: catalog, type: mysqll, endpoint: "10.0.0.6:3306"}
"""
    assert problems(text) == ["databases[1] (catalog).type: 'mysqll' is not one of postgresql, mysql, mongodb, redis"]


def test_every_problem_at_once_each_with_its_entry_and_value():
    text = """
scaling: {mode: postgres, redis: {db: many}}
agent: {coordinator: nohost, max_concurrent_polls: 0}
databases:
  - {name: orders, type: postgresql, endpoint: "10.0.0.5:5432", intervl: 5s}
  - {name: cache, type: redis, endpoint: "h:6379", labels: {canary: true}}
  - {name: "bad name", type: redis, endpoint: "::1:6379"}
  - {type: redis, endpoint: "h:6379"}
"""
    assert problems(text) == [
        "scaling.mode: 'postgres' is not one of redis, memory",
        "scaling.redis.db: 'many' is not a whole number",
        "agent.coordinator: 'nohost' is not host:port (port 1-65535)",
        "agent.max_concurrent_polls: 0 is less than the minimum 1",
        "databases[0] (orders).intervl: unknown field; did you mean 'interval'?",
        "databases[1] (cache).labels.canary: True is not text (quote it in the YAML file if it is meant as text)",
        "databases[2].name: 'bad name' is not a name: letters, digits, '.', '_' and '-', starting with a letter "
        "or digit",
        "databases[2].endpoint: '::1:6379': an IPv6 host must be written in brackets, e.g. [::1]:6379",
        "databases[3].name: required, but not given",
    ]


def test_rules_between_fields_name_the_entry_and_the_value():
    text = """
scaling: {coordinator: {heartbeat_interval: 30s, node_timeout: 10s}}
databases:
  - {name: cache, type: redis, endpoint: "h:6379", database: zero, interval: 10s, timeout: 20s}
"""
    assert problems(text) == [
        "scaling.coordinator.node_timeout: must be at least 56.25s with heartbeat_interval 30s (heartbeat_interval "
        "plus two response timeouts, within 80 %), not 10s",
        "databases[0] (cache).timeout: must be > 0 and ≤ interval (10s), not 20s",
        "databases[0] (cache).database: 'zero': for redis, the database is a db number like 0",
    ]
    found = problems("databases: [{name: a, type: redis, endpoint: 'h:1'}, {name: a, type: redis, endpoint: 'h:2'}]")
    assert found == ["databases[1] (a).name: duplicate redis name 'a' (also databases[0])"]


def test_yaml_integers_are_accepted_where_text_is_meant_and_numeric_strings_where_numbers_are():
    config = parse_config(
        """
scaling: {redis: {db: "3"}}
agent: {capacity: "10", zone: 1}
databases:
  - {name: 1, type: redis, endpoint: "h:6379", database: 0, labels: {shard: 3}}
""",
        environ={},
    )
    db = config.databases[0]
    assert (db.name, db.database, db.labels) == ("1", "0", {"shard": "3"})
    assert config.scaling.redis.db == 3 and config.agent.capacity == 10 and config.agent.zone == "1"
    with pytest.raises(ConfigError):
        parse_config("databases: [{name: a, type: redis, endpoint: 'h:1', database: true}]", environ={})


def test_a_value_under_a_secret_field_is_never_echoed():
    text = """
coordinator: {operator_token: [tok-123456]}
agent: {otlp: {headers: {authorization: 987654321}}}
scaling: {redis: {password: 4815162342}}
databases:
  - {name: orders, type: postgresql, endpoint: "h:5432", password: 3141592653, passwd: "hunter2-in-clear"}
"""
    found = problems(text)
    message = "\n".join(found)
    for secret in ("tok-123456", "987654321", "4815162342", "3141592653", "hunter2-in-clear"):
        assert secret not in message, message
    assert "databases[0] (orders).password: the value (not shown: a secret field) is not text" in found
    assert "databases[0] (orders).passwd: unknown field; did you mean 'password'?" in found
    assert any(p.startswith("agent.otlp.headers.authorization: the value (not shown") for p in found), found


def test_an_environment_value_is_shown_as_its_reference_even_when_long():
    secret = "s" * 120 + "-tail"
    found = problems("databases: [{name: a, type: '${env:LONG}', endpoint: 'h:1'}]", {"LONG": secret})
    assert found == ["databases[0] (a).type: '${env:LONG}' is not one of postgresql, mysql, mongodb, redis"]


def test_an_unset_variable_is_the_only_problem_of_its_field():
    found = problems("databases: [{name: a, type: redis, endpoint: '${env:DB_HOST}:6379'}]")
    assert found == ["databases[0] (a).endpoint: environment variable DB_HOST is not set"]


def test_long_values_are_shortened():
    (problem,) = problems(f"scaling: {{mode: {'x' * 500}}}")
    assert problem.startswith("scaling.mode: 'xxxx") and "…" in problem and len(problem) < 160


def test_a_yaml_syntax_error_names_the_file_and_position_and_never_quotes_the_line():
    text = "scaling:\n  mode: redis\ndatabases:\n  - {name: a, password: s3cret-in-clear: x}\n"
    found = problems(text, source="conf/dbintel.yaml")
    assert len(found) == 1 and found[0].startswith("conf/dbintel.yaml:4:"), found
    assert "<unicode string>" not in found[0] and "s3cret-in-clear" not in found[0]
    (unclosed,) = problems('databases:\n  - {name: "a\n', source="conf/dbintel.yaml")
    assert unclosed.startswith("conf/dbintel.yaml:3:1: invalid YAML: found unexpected end of stream"), unclosed
    assert "line 2 column 12" in unclosed  # where the unclosed quote started
