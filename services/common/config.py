"""The single YAML config both roles read (the Kubernetes ConfigMap): one frozen model per section.

`load_config(path)` returns a `Config` or raises `ConfigError` listing every problem at once, each
with its dotted path, the database it is about and the value given
(`databases[1] (catalog).type: 'mysqll' is not one of postgresql, mysql, mongodb, redis`); values
under secret fields are never shown.
"""

from __future__ import annotations

import difflib
import os
import re
from collections.abc import Mapping
from datetime import timedelta
from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar, get_args, get_origin

import yaml
from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic_core import ErrorDetails, PydanticCustomError

from .durations import Duration, format_duration
from .endpoints import parse_host_port
from .liveness import DEFAULT_DISCONNECT_GRACE_S, MIN_DISCONNECT_GRACE_S, smallest_node_timeout
from .secrets import check_reference

DATABASE_TYPES = ("postgresql", "mysql", "mongodb", "redis")
DEFAULT_PORTS = {"postgresql": 5432, "mysql": 3306, "mongodb": 27017, "redis": 6379}
CONFIG_ENV_VAR = "DBINTEL_CONFIG"

_ENV_REFERENCE = re.compile(r"\$\{env:([A-Za-z_][A-Za-z0-9_]*)\}")
_SECRET_KEYS = frozenset({"password", "operator_token"})  # these stay references, resolved where used
# Values under fields like these are never quoted in an error (OTLP headers carry API keys).
_SECRET_FIELD = re.compile(r"password|secret|token|headers|credential|auth", re.IGNORECASE)
_NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]*$"
# Roles whose certificate/key files are checked for readability while validating (parse_config's check_files).
ROLES = ("coordinator", "agent")


def _rule_errors(problems: list[tuple[str, str]]) -> None:
    """Raise every cross-field problem of one section at once (see ConfigError.from_validation)."""
    if problems:
        raise PydanticCustomError(
            "config_rules", "{summary}", {"summary": "; ".join(f"{f}: {m}" for f, m in problems), "problems": problems}
        )


class _Section(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


def _endpoint(value: str) -> str:
    parse_host_port(value)
    return value


def _listen(value: str) -> str:
    parse_host_port(value, allow_empty_host=True, allow_port_zero=True)  # ":0" asks for any free port
    return value


def _number_as_text(value: Any) -> Any:
    # YAML reads `database: 0` or `shard: 3` as integers; in these fields they are meant as text.
    return str(value) if isinstance(value, int) and not isinstance(value, bool) else value


Text = Annotated[str, BeforeValidator(_number_as_text)]


def _unreadable(path: str | None) -> str | None:
    """Why a configured file cannot be used, or None if it can be read."""
    if not path:
        return None
    try:
        with open(path, "rb") as handle:
            handle.read(1)
    except IsADirectoryError:
        return f"{path} is a directory, not a file"
    except FileNotFoundError:
        return f"{path} does not exist"
    except OSError as exc:
        return f"{path} cannot be read ({exc.strerror})"
    return None


def _checks_files(info: ValidationInfo, role: str) -> bool:
    context = info.context or {}
    return role in context.get("check_files", ())


def _file_problems(section: BaseModel, fields: tuple[str, ...], prefix: str = "") -> list[tuple[str, str]]:
    problems = []
    for name in fields:
        reason = _unreadable(getattr(section, name))
        if reason:
            problems.append((f"{prefix}{name}", reason))
    return problems


class TLSSettings(_Section):
    """TLS for a client connection. Files are paths; nothing secret is inline."""

    enabled: bool = False
    ca_file: str | None = None
    cert_file: str | None = None
    key_file: str | None = None
    server_name: str | None = None
    insecure_skip_verify: bool = False

    @model_validator(mode="after")
    def _pairs(self) -> TLSSettings:
        problems = []
        if bool(self.cert_file) != bool(self.key_file):
            problems.append(("cert_file", "cert_file and key_file go together"))
        if not self.enabled and (self.ca_file or self.cert_file or self.insecure_skip_verify):
            problems.append(("enabled", "TLS files or options are set but enabled is false"))
        _rule_errors(problems)
        return self

    def file_problems(self, prefix: str = "tls.") -> list[tuple[str, str]]:
        return _file_problems(self, ("ca_file", "cert_file", "key_file"), prefix) if self.enabled else []

    def grpc_problems(self, prefix: str = "tls.") -> list[tuple[str, str]]:
        """gRPC channels always verify the server: there is no switch to skip it."""
        if self.insecure_skip_verify:
            return [
                (
                    f"{prefix}insecure_skip_verify",
                    "not supported for gRPC; give ca_file (the CA that signed the coordinator's certificate) instead",
                )
            ]
        return []


class ServerTLSSettings(_Section):
    """TLS for the coordinator's gRPC port (agents, operators, health and reflection alike).
    With client_ca_file, client certificates signed by that CA are verified; require_client_cert
    makes one mandatory (mutual TLS)."""

    enabled: bool = False
    cert_file: str | None = None
    key_file: str | None = None
    client_ca_file: str | None = None
    require_client_cert: bool = False

    @model_validator(mode="after")
    def _rules(self) -> ServerTLSSettings:
        problems = []
        if self.enabled:
            problems += [
                (name, "required when TLS is enabled") for name in ("cert_file", "key_file") if not getattr(self, name)
            ]
            if self.require_client_cert and not self.client_ca_file:
                problems.append(
                    ("client_ca_file", "required with require_client_cert (the CA that signs client certificates)")
                )
        elif self.cert_file or self.key_file or self.client_ca_file or self.require_client_cert:
            problems.append(("enabled", "TLS files or options are set but enabled is false"))
        _rule_errors(problems)
        return self

    def file_problems(self, prefix: str = "tls.") -> list[tuple[str, str]]:
        return _file_problems(self, ("cert_file", "key_file", "client_ca_file"), prefix) if self.enabled else []


class SentinelSettings(_Section):
    """Redis Sentinel: the coordinators ask these sentinels which server is the primary of
    `master_name`, and follow a failover. username/password/tls are the sentinels' own (their
    `requirepass`); the data servers keep scaling.redis.username/password/tls."""

    master_name: Text = Field(min_length=1)
    addresses: list[str] = Field(min_length=1)
    username: Text | None = None
    password: str | None = None
    tls: TLSSettings = TLSSettings()

    @field_validator("addresses")
    @classmethod
    def _addresses(cls, value: list[str]) -> list[str]:
        problems = []
        for index, address in enumerate(value):
            try:
                parse_host_port(address)
            except ValueError as exc:
                problems.append(f"[{index}] {exc}")
        duplicates = sorted({a for a in value if value.count(a) > 1})
        if duplicates:
            problems.append(f"{', '.join(repr(a) for a in duplicates)} listed twice")
        if problems:
            raise ValueError("; ".join(problems))
        return value

    @field_validator("password")
    @classmethod
    def _reference(cls, value: str | None) -> str | None:
        return None if value is None else check_reference(value)


class RedisSettings(_Section):
    address: str = "localhost:6379"
    db: int = Field(default=0, ge=0, le=15)
    key_prefix: str = Field(default="dbintel:scaling:", min_length=1)
    leader_ttl: Duration = timedelta(seconds=30)
    username: Text | None = None
    password: str | None = None
    tls: TLSSettings = TLSSettings()
    # Where the primary is comes from these sentinels instead of `address` (which must then be left out).
    sentinel: SentinelSettings | None = None
    # Redis Cluster (or a managed Redis in cluster mode): `address` is any node, the client finds the rest.
    cluster: bool = False
    # Replicas that must acknowledge (WAIT) a new lease before its holder leads, and each renewal
    # before it counts: a failover then cannot lose a lease someone acts on. Default 1 with
    # sentinel, else 0 (no replica to wait for).
    replica_acks: int | None = Field(default=None, ge=0, le=16)

    _address = field_validator("address")(_endpoint)

    @field_validator("password")
    @classmethod
    def _reference(cls, value: str | None) -> str | None:
        return None if value is None else check_reference(value)

    @model_validator(mode="after")
    def _ttl(self, info: ValidationInfo) -> RedisSettings:
        problems = []
        if self.leader_ttl < timedelta(seconds=1):
            problems.append(("leader_ttl", f"must be at least 1s, not {format_duration(self.leader_ttl)}"))
        if self.sentinel is not None and "address" in self.model_fields_set:
            problems.append(
                (
                    "address",
                    f"{self.address!r} is not used with sentinel (the sentinels name the primary): leave it out",
                )
            )
        if self.sentinel is not None and self.cluster:
            problems.append(("cluster", "true cannot be combined with sentinel (a cluster fails over by itself)"))
        if self.cluster and self.db != 0:
            problems.append(("db", f"Redis Cluster has only db 0, not {self.db}"))
        if _checks_files(info, "coordinator"):
            problems += self.tls.file_problems()
            if self.sentinel is not None:
                problems += self.sentinel.tls.file_problems("sentinel.tls.")
        _rule_errors(problems)
        return self

    @property
    def required_replica_acks(self) -> int:
        if self.replica_acks is not None:
            return self.replica_acks
        return 1 if self.sentinel is not None else 0

    def describe(self) -> str:
        """Where the state lives, for messages: never a credential."""
        if self.sentinel is not None:
            return f"sentinel {self.sentinel.master_name!r} via {','.join(self.sentinel.addresses)}"
        return f"{'cluster ' if self.cluster else ''}{self.address}"


class CoordinatorScaling(_Section):
    heartbeat_interval: Duration = timedelta(seconds=30)
    node_timeout: Duration = timedelta(seconds=90)
    rebalance_interval: Duration = timedelta(minutes=5)
    min_rebalance_interval: Duration = timedelta(minutes=1)
    # A periodic cost rebalance is applied only if it improves the spread by at least this share.
    rebalance_improvement: float = Field(default=0.10, ge=0.0, le=1.0)
    # ... or whenever the busiest agent of a zone carries more than this times its zone's mean load
    # (or more than 1.25 times the mean count): an absolute bound, so drift never stays.
    rebalance_max_spread: float = Field(default=1.03, ge=1.0, le=10.0)
    # An agent whose stream ends without a Leave (its process died: the connection closed) is expired
    # this long after, unless it reconnects; 0s turns it off (node_timeout alone decides).
    disconnect_grace: Duration = timedelta(seconds=DEFAULT_DISCONNECT_GRACE_S)

    @model_validator(mode="after")
    def _order(self) -> CoordinatorScaling:
        problems = []
        grace = self.disconnect_grace.total_seconds()
        if 0 < grace < MIN_DISCONNECT_GRACE_S:
            problems.append(
                (
                    "disconnect_grace",
                    f"must be 0s (off) or at least {MIN_DISCONNECT_GRACE_S:g}s (a live agent whose "
                    "connection broke must notice by keepalive and reconnect within it), "
                    f"not {format_duration(self.disconnect_grace)}",
                )
            )
        if self.heartbeat_interval < timedelta(milliseconds=100):
            problems.append(
                ("heartbeat_interval", f"must be at least 100ms, not {format_duration(self.heartbeat_interval)}")
            )
        least = smallest_node_timeout(self.heartbeat_interval.total_seconds())
        if self.node_timeout.total_seconds() < least:
            # Below this an agent cannot notice a frozen replica and re-register elsewhere (or stop)
            # before the coordinator expires it and hands its databases to another: two pollers.
            problems.append(
                (
                    "node_timeout",
                    f"must be at least {least:g}s with heartbeat_interval "
                    f"{format_duration(self.heartbeat_interval)} (heartbeat_interval plus two response "
                    f"timeouts, within 80 %), not {format_duration(self.node_timeout)}",
                )
            )
        if self.min_rebalance_interval > self.rebalance_interval:
            problems.append(
                (
                    "min_rebalance_interval",
                    f"must be ≤ rebalance_interval ({format_duration(self.rebalance_interval)}), "
                    f"not {format_duration(self.min_rebalance_interval)}",
                )
            )
        _rule_errors(problems)
        return self


class ReceiverScaling(_Section):
    check_interval: Duration = timedelta(seconds=30)
    resource_prefix: str = "db:"
    ignore_assignments: bool = False
    on_coordinator_loss: Literal["keep", "stop"] = "keep"

    @model_validator(mode="after")
    def _interval(self) -> ReceiverScaling:
        problems = []
        if self.check_interval < timedelta(milliseconds=100):
            problems.append(("check_interval", f"must be at least 100ms, not {format_duration(self.check_interval)}"))
        _rule_errors(problems)
        return self


class ScalingConfig(_Section):
    enabled: bool = True
    mode: Literal["redis", "memory"] = "memory"
    redis: RedisSettings = RedisSettings()
    coordinator: CoordinatorScaling = CoordinatorScaling()
    receiver_scaling: ReceiverScaling = ReceiverScaling()


class MetricToggle(_Section):
    enabled: bool


class TopQueryCollection(_Section):
    """`top_query_collection`: the heaviest statements of each interval (the OTel receivers' knob names)."""

    enabled: bool = False
    top_n_query: int = Field(default=10, ge=1, le=1000)  # exported per interval, ranked by time spent
    max_rows_per_query: int = Field(default=1000, ge=1, le=100_000)  # statement-statistics rows read
    collection_interval: Duration = timedelta(seconds=60)

    @model_validator(mode="after")
    def _rules(self) -> TopQueryCollection:
        problems = []
        if self.collection_interval < timedelta(seconds=1):
            problems.append(
                ("collection_interval", f"must be at least 1s, not {format_duration(self.collection_interval)}")
            )
        if self.top_n_query > self.max_rows_per_query:
            problems.append(
                ("top_n_query", f"{self.top_n_query} exceeds max_rows_per_query ({self.max_rows_per_query})")
            )
        _rule_errors(problems)
        return self


class QuerySampleCollection(_Section):
    """`query_sample_collection`: what runs right now, with its wait and blocker."""

    enabled: bool = False
    max_rows_per_query: int = Field(default=100, ge=1, le=10_000)  # sessions/operations per sample
    collection_interval: Duration = timedelta(seconds=10)

    @model_validator(mode="after")
    def _rules(self) -> QuerySampleCollection:
        if self.collection_interval < timedelta(seconds=1):
            _rule_errors(
                [("collection_interval", f"must be at least 1s, not {format_duration(self.collection_interval)}")]
            )
        return self


class DatabaseConfig(_Section):
    """One monitored database. The password is a reference the agent resolves."""

    name: Text = Field(min_length=1, max_length=200, pattern=_NAME_PATTERN)
    type: Literal["postgresql", "mysql", "mongodb", "redis"]
    endpoint: str
    username: Text | None = None
    password: str | None = None
    database: Text | None = None  # kept as text: a PostgreSQL/MySQL database name, or a Redis db number
    interval: Duration = timedelta(seconds=30)
    timeout: Duration | None = None  # per poll; default min(10s, interval)
    labels: dict[str, Text] = {}
    tls: TLSSettings = TLSSettings()
    pin: Text | None = None  # agent id this database must stay on while that agent is live
    # Failure zone (topology.kubernetes.io/zone) the database lives in: polled from an agent of the
    # same zone whenever one is live (cross-zone traffic costs money), from any agent otherwise.
    zone: Text = Field(default="", max_length=128, pattern=r"^([A-Za-z0-9]([A-Za-z0-9._-]*[A-Za-z0-9])?)?$")
    metrics: dict[str, MetricToggle] = {}
    # Query intelligence; unset keys fall back to the same blocks under `agent:` (AgentSettings.query_settings).
    top_query_collection: TopQueryCollection | None = None
    query_sample_collection: QuerySampleCollection | None = None

    _endpoint = field_validator("endpoint")(_endpoint)

    @field_validator("password")
    @classmethod
    def _reference(cls, value: str | None) -> str | None:
        return None if value is None else check_reference(value)

    @field_validator("labels")
    @classmethod
    def _label_names(cls, value: dict[str, str]) -> dict[str, str]:
        bad = [k for k in value if not re.match(r"^[a-zA-Z_][a-zA-Z0-9_]*$", k) or k.startswith("__")]
        if bad:
            raise ValueError(f"invalid Prometheus label names: {', '.join(sorted(bad))}")
        return value

    @model_validator(mode="after")
    def _rules(self) -> DatabaseConfig:
        problems = []
        if self.interval < timedelta(seconds=1):
            problems.append(("interval", f"must be at least 1s, not {format_duration(self.interval)}"))
        if self.timeout is not None and not timedelta(0) < self.timeout <= self.interval:
            problems.append(
                (
                    "timeout",
                    f"must be > 0 and ≤ interval ({format_duration(self.interval)}), "
                    f"not {format_duration(self.timeout)}",
                )
            )
        if self.type == "redis" and self.database is not None and not self.database.isdigit():
            problems.append(("database", f"{self.database!r}: for redis, the database is a db number like 0"))
        if "dbintel_resource" in self.labels:
            problems.append(("labels", "dbintel_resource is set by dbintel itself"))
        _rule_errors(problems)
        return self

    @property
    def poll_timeout(self) -> timedelta:
        return self.timeout or min(timedelta(seconds=10), self.interval)

    def resource_id(self, prefix: str) -> str:
        return f"{prefix}{self.type}/{self.name}"


class CoordinatorSettings(_Section):
    """The coordinator role: where it listens, and how its gRPC port is secured."""

    grpc_listen: str = "0.0.0.0:50051"
    metrics_listen: str = "0.0.0.0:8889"
    health_listen: str = "0.0.0.0:13133"
    # Long-lived Heartbeat streams are closed after this age so they spread over new replicas.
    max_connection_age: Duration = timedelta(minutes=10)
    max_connection_age_grace: Duration = timedelta(seconds=30)
    # How often the inventory file is checked for changes (a mounted ConfigMap is rewritten in place).
    config_reload_interval: Duration = timedelta(seconds=5)
    # Most Heartbeat streams one replica holds open at once (one per agent, plus reconnects in
    # flight); beyond it a new stream gets RESOURCE_EXHAUSTED, so silent streams cannot eat memory.
    max_heartbeat_streams: int = Field(default=5000, ge=1, le=1_000_000)

    # TLS on the gRPC port; client_tls is what a follower uses to forward leader-only operator RPCs
    # to the leader (its server certificate must verify against client_tls.ca_file).
    tls: ServerTLSSettings = ServerTLSSettings()
    client_tls: TLSSettings = TLSSettings()
    # A reference (${env:NAME} or ${file:/path}); when set, every OperatorService RPC needs
    # `authorization: Bearer <token>`. Agent RPCs, health and reflection are not affected.
    operator_token: str | None = None

    _listens = field_validator("grpc_listen", "metrics_listen", "health_listen")(_listen)

    @field_validator("operator_token")
    @classmethod
    def _token_reference(cls, value: str | None) -> str | None:
        return None if value is None else check_reference(value, what="the token")

    @model_validator(mode="after")
    def _security(self, info: ValidationInfo) -> CoordinatorSettings:
        problems = self.client_tls.grpc_problems("client_tls.")
        if self.tls.enabled and not self.client_tls.enabled:
            problems.append(
                (
                    "client_tls",
                    "required when tls is enabled: followers forward Rebalance/DrainAgent "
                    "to the leader over TLS (set enabled, ca_file, and cert_file/key_file "
                    "under mutual TLS)",
                )
            )
        if _checks_files(info, "coordinator"):
            problems += self.tls.file_problems("tls.") + self.client_tls.file_problems("client_tls.")
        _rule_errors(problems)
        return self


class OTLPSettings(_Section):
    enabled: bool = False
    endpoint: str = "localhost:4317"
    insecure: bool = True
    interval: Duration = timedelta(seconds=30)
    headers: dict[str, str] = {}


class AgentSettings(_Section):
    """The agent role: its coordinator, where it listens, how it polls."""

    coordinator: str = "localhost:50051"
    metrics_listen: str = "0.0.0.0:8889"
    # host:port where the coordinator tells `dbintel top` to reach this agent's metrics endpoint;
    # "" = the metrics listen address (a wildcard host becomes $POD_IP, else the host name).
    advertise_address: str = ""
    health_listen: str = "0.0.0.0:13133"
    max_concurrent_polls: int = Field(default=32, ge=1, le=10_000)
    shutdown_grace: Duration = timedelta(seconds=10)
    zone: Text = ""
    capacity: int = Field(default=0, ge=0)  # most databases this agent takes; 0 = no limit
    otlp: OTLPSettings = OTLPSettings()
    tls: TLSSettings = TLSSettings()  # for the link to the coordinator (cert_file/key_file under mutual TLS)
    # Defaults for every database's query intelligence; a database entry's own blocks override key by key.
    top_query_collection: TopQueryCollection = TopQueryCollection()
    query_sample_collection: QuerySampleCollection = QuerySampleCollection()

    _coordinator = field_validator("coordinator")(_endpoint)
    _listens = field_validator("metrics_listen", "health_listen")(_listen)

    @field_validator("advertise_address")
    @classmethod
    def _advertise(cls, value: str) -> str:
        return _endpoint(value) if value else value

    @model_validator(mode="after")
    def _security(self, info: ValidationInfo) -> AgentSettings:
        problems = self.tls.grpc_problems()
        if _checks_files(info, "agent"):
            problems += self.tls.file_problems()
        _rule_errors(problems)
        return self

    def query_settings(self, database: DatabaseConfig) -> tuple[TopQueryCollection, QuerySampleCollection]:
        """The database's effective query-intelligence blocks: its own keys, else this agent's defaults."""
        return (
            _overlay(self.top_query_collection, database.top_query_collection),
            _overlay(self.query_sample_collection, database.query_sample_collection),
        )


_S = TypeVar("_S", bound=_Section)


def _overlay(default: _S, override: _S | None) -> _S:
    """`default` with the keys `override` sets explicitly; revalidated, so cross-key rules hold."""
    if override is None:
        return default
    merged = default.model_dump() | override.model_dump(exclude_unset=True)
    return type(default).model_validate(merged)


class Config(_Section):
    scaling: ScalingConfig = ScalingConfig()
    coordinator: CoordinatorSettings = CoordinatorSettings()
    agent: AgentSettings = AgentSettings()
    databases: list[DatabaseConfig] = []

    @model_validator(mode="after")
    def _unique(self) -> Config:
        problems: list[tuple[str, str]] = []
        seen: dict[tuple[str, str], int] = {}
        for index, db in enumerate(self.databases):
            key = (db.type, db.name)
            if key in seen:
                problems.append(
                    (f"databases[{index}].name", f"duplicate {db.type} name {db.name!r} (also databases[{seen[key]}])")
                )
            seen.setdefault(key, index)
            try:
                self.agent.query_settings(db)
            except ValidationError as exc:  # an entry's keys that clash with the agent's defaults
                for error in exc.errors():
                    where = ".".join(str(p) for p in error["loc"])
                    problems.append((f"databases[{index}] with agent defaults: {where}", error["msg"]))
        _rule_errors(problems)
        return self

    def resources(self) -> dict[str, DatabaseConfig]:
        """The inventory keyed by resource id."""
        prefix = self.scaling.receiver_scaling.resource_prefix
        return {db.resource_id(prefix): db for db in self.databases}


class ConfigError(Exception):
    """Every problem of a config at once, each as `path: message`."""

    def __init__(self, problems: list[str], source: str = "config"):
        self.problems = problems
        super().__init__(f"{source}: {len(problems)} problem(s):\n" + "\n".join(f"  {p}" for p in problems))

    @classmethod
    def from_validation(
        cls,
        error: ValidationError,
        source: str,
        document: Any = None,
        substituted: Mapping[str, str] | None = None,
    ) -> ConfigError:
        """One line per problem. `document` is what was validated (to name each database entry);
        `substituted` maps environment values back to their references (see _expand_env)."""
        problems: list[str] = []
        for item in error.errors(include_url=False):
            path = ".".join(f"[{p}]" if isinstance(p, int) else str(p) for p in item["loc"]).replace(".[", "[")
            if item["type"] == "config_rules":
                for field, message in item["ctx"]["problems"]:
                    problems.append(f"{_name_entry(f'{path}.{field}' if path else field, document)}: {message}")
                continue
            problems.append(f"{_name_entry(path, document) or '(top level)'}: {_message(item, substituted or {})}")
        return cls(problems, source)


_DATABASE_ENTRY = re.compile(r"^databases\[(\d+)\]")
_SHOWN_CHARACTERS = 80


def _name_entry(path: str, document: Any) -> str:
    """`databases[1].type` -> `databases[1] (catalog).type`, when entry 1 has a usable name."""
    match = _DATABASE_ENTRY.match(path)
    if not match or not isinstance(document, dict) or not isinstance(document.get("databases"), list):
        return path
    entries, index = document["databases"], int(match.group(1))
    entry = entries[index] if index < len(entries) else None
    name = _number_as_text(entry.get("name")) if isinstance(entry, dict) else None
    if not isinstance(name, str) or len(name) > 200 or not re.match(_NAME_PATTERN, name):
        return path  # no name, or a bad one (reported on its own line)
    return f"{match.group(0)} ({name}){path[match.end() :]}"


def _show(value: Any, substituted: Mapping[str, str]) -> str:
    """The value as the file gave it: an environment value as its reference, a long one shortened
    (after that replacement, so no part of a substituted value can show)."""
    text = _redact_text(repr(value), substituted)
    return text if len(text) <= _SHOWN_CHARACTERS else text[: _SHOWN_CHARACTERS - 1] + "…"


def _choices(expected: str) -> str:
    """pydantic's "'a', 'b' or 'c'" as "a, b, c"."""
    return ", ".join(re.findall(r"'([^']*)'", expected)) or expected


def _message(item: ErrorDetails, substituted: Mapping[str, str]) -> str:
    """One problem in words, with the value given (never under a secret field)."""
    kind, ctx, loc = item["type"], item.get("ctx", {}), item["loc"]
    if kind == "value_error":  # our validators' own words, which name the value where it is safe
        return item["msg"].removeprefix("Value error, ")
    if kind == "missing":
        return "required, but not given"
    if kind == "extra_forbidden":  # the value is not shown: it may be a misspelt password
        known = _section_fields(loc[:-1])
        close = difflib.get_close_matches(str(loc[-1]), known, n=1)
        if close:
            return f"unknown field; did you mean {close[0]!r}?"
        return "unknown field (check the spelling" + (f"; known: {', '.join(known)})" if known else ")")
    secret = any(isinstance(p, str) and _SECRET_FIELD.search(p) for p in loc)
    value = "the value (not shown: a secret field)" if secret else _show(item["input"], substituted)
    match kind:
        case "literal_error" | "enum":
            return f"{value} is not one of {_choices(str(ctx.get('expected', '')))}"
        case "string_type":
            scalar = not secret and isinstance(item["input"], (bool, int, float))
            return f"{value} is not text" + (" (quote it in the YAML file if it is meant as text)" if scalar else "")
        case "int_parsing" | "int_type" | "int_from_float":
            return f"{value} is not a whole number"
        case "float_parsing" | "float_type":
            return f"{value} is not a number"
        case "bool_parsing" | "bool_type":
            return f"{value} is not true or false"
        case "dict_type":
            return f"{value} is not a mapping (key: value)"
        case "model_type":
            return f"{value} is not a section (a mapping of settings)"
        case "list_type":
            return f"{value} is not a list"
        case "greater_than_equal":
            return f"{value} is less than the minimum {ctx.get('ge')}"
        case "less_than_equal":
            return f"{value} is more than the maximum {ctx.get('le')}"
        case "string_too_short":
            return f"{value} is shorter than {ctx.get('min_length')} character(s)"
        case "string_too_long":
            return f"{value} is longer than {ctx.get('max_length')} characters"
        case "string_pattern_mismatch" if ctx.get("pattern") == _NAME_PATTERN:
            return f"{value} is not a name: letters, digits, '.', '_' and '-', starting with a letter or digit"
    return f"{item['msg'][:1].lower()}{item['msg'][1:]} (got {value})"


def _section_fields(loc: tuple[int | str, ...]) -> list[str]:
    """The field names of the section at `loc` (for 'did you mean'); [] when `loc` is not a section."""
    node: Any = Config
    for part in loc:
        if get_origin(node) in (list, dict):
            node = get_args(node)[-1]  # a list index or a mapping key: the items' type
        elif isinstance(node, type) and issubclass(node, BaseModel) and part in node.model_fields:
            node = node.model_fields[str(part)].annotation
        else:
            return []
    return list(node.model_fields) if isinstance(node, type) and issubclass(node, BaseModel) else []


def _expand_env(
    node: Any, environ: Mapping[str, str], path: str, problems: list[str], substituted: dict[str, str]
) -> Any:
    """Expand ${env:NAME} in every string except secrets, which stay references. `substituted`
    collects value -> reference, so that error messages can show the reference, never the value."""
    if isinstance(node, dict):
        return {
            k: (
                v
                if k in _SECRET_KEYS
                else _expand_env(v, environ, f"{path}.{k}" if path else str(k), problems, substituted)
            )
            for k, v in node.items()
        }
    if isinstance(node, list):
        return [_expand_env(v, environ, f"{path}[{i}]", problems, substituted) for i, v in enumerate(node)]
    if isinstance(node, str):

        def substitute(match: re.Match[str]) -> str:
            name = match.group(1)
            if name not in environ:
                problems.append(f"{path}: environment variable {name} is not set")
                return match.group(0)
            substituted[environ[name]] = match.group(0)
            return environ[name]

        return _ENV_REFERENCE.sub(substitute, node)
    return node


def _redact_text(text: str, substituted: Mapping[str, str]) -> str:
    """A value that came from the environment is shown as its reference (it may be a secret put in
    the wrong field). Longest first, so a value inside another stays hidden."""
    for value in sorted(substituted, key=len, reverse=True):
        if len(value) >= 3:  # shorter ones would garble the message and reveal next to nothing
            text = text.replace(value, substituted[value])
    return text


def _redact(problems: list[str], substituted: Mapping[str, str]) -> list[str]:
    return [_redact_text(problem, substituted) for problem in problems]


def _yaml_problem(exc: yaml.YAMLError, source: str) -> str:
    """`FILE:LINE:COLUMN: ...` from PyYAML's marks. Its own text is not used: it quotes the offending
    line, which may hold a password written in clear."""
    if isinstance(exc, yaml.MarkedYAMLError) and exc.problem_mark is not None:
        mark = exc.problem_mark
        context = ""
        if exc.context and exc.context_mark is not None:
            context = f" ({exc.context}, line {exc.context_mark.line + 1} column {exc.context_mark.column + 1})"
        return f"{source}:{mark.line + 1}:{mark.column + 1}: invalid YAML: {exc.problem or 'syntax error'}{context}"
    return f"{source}: invalid YAML ({type(exc).__name__})"


def parse_config(
    text: str, source: str = "config", environ: Mapping[str, str] | None = None, *, check_files: tuple[str, ...] = ()
) -> Config:
    """Parse and validate. `check_files` names the roles (ROLES) whose TLS files must be readable
    here: each role checks its own at start; `dbintel validate --check-files` on request."""
    environ = os.environ if environ is None else environ
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError([_yaml_problem(exc, source)], source) from None
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError(["(top level): must be a mapping of sections"], source)
    problems: list[str] = []
    substituted: dict[str, str] = {}
    expanded = _expand_env(raw, environ, "", problems, substituted)
    problems = [_name_entry(problem, raw) for problem in problems]
    try:
        config = Config.model_validate(expanded, context={"check_files": tuple(check_files)})
    except ValidationError as exc:
        invalid = ConfigError.from_validation(exc, source, expanded, substituted).problems
        # A field whose variable is unset still holds the reference text: only the unset variable is news.
        unset = {problem.split(": ", 1)[0] for problem in problems}
        invalid = [problem for problem in invalid if problem.split(": ", 1)[0] not in unset]
        raise ConfigError(_redact(problems + invalid, substituted), source) from None
    if problems:
        raise ConfigError(problems, source)
    return config


def load_config(
    path: str | os.PathLike[str] | None, environ: Mapping[str, str] | None = None, *, check_files: tuple[str, ...] = ()
) -> Config:
    """Load the config from `path`, else $DBINTEL_CONFIG, else all defaults (see parse_config)."""
    environ = os.environ if environ is None else environ
    path = path or environ.get(CONFIG_ENV_VAR)
    if not path:
        return Config()
    try:
        text = Path(path).read_text()
    except OSError as exc:
        raise ConfigError([f"cannot read {path}: {exc.strerror}"], str(path)) from None
    return parse_config(text, str(path), environ, check_files=check_files)
