"""Shared state in Redis (`scaling.mode: redis`), every leader write fenced inside a Lua script.

One Redis, a Sentinel-managed primary (`scaling.redis.sentinel`) or a Redis Cluster
(`scaling.redis.cluster`) run the same code: every key carries the hash tag `{key_prefix}` (P below
stands for it), so all of them share one hash slot, and every script touches only keys passed in KEYS.

Key layout (P = `{key_prefix}`, or key_prefix itself when it holds a hash tag), in docs/architecture.md:
  P leader            string  "<epoch>:<token>:<holder>" with PX = leader_ttl (the lease)
  P leader:epoch      string  fencing epoch counter (INCR, never below an epoch a replica has seen)
  P leader:info       hash    holder, epoch, address (where to forward leader-only RPCs)
  P agents            hash    agent id -> JSON {reg, state, hb, applied, cur, rel, mkey, coord, proven, seq, disc}
  P target            hash    resource id -> agent id (the leader's target placement)
  P assignments       hash    agent id -> JSON {epoch, leader_epoch, grants: {resource: last_poll_ms}}
  P meta              hash    assignment_epoch, rebalances_total, moves_total, last_rebalance_ms,
                              last_rebalance_reason, grace_from_ms, last_heartbeat_write_ms, leader_tick_ms
  P handoff:<resource> string  "<released last_poll_ms>:<base64 top-query baseline>", PX 15 min; written
                              with the heartbeat or Leave that releases the resource (same script)
  P events            pub/sub channel of StoreEvent JSON
Redis TIME is the clock for every timestamp, so replicas with skewed clocks agree.

Replication is asynchronous: a write the primary acknowledged can be lost in a failover. A new lease
counts only once `replica_acks` replicas acknowledged it (WAIT), and so does each renewal, so the
lease and its epoch survive any failover that promotes an acknowledging replica (docs/reliability.md).
Versions before the hash tag kept the keys at `key_prefix` + name: the first coordinator to find them
renames them once (see _MIGRATE) and leaves a marker under the old lease key.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import logging
import random
import secrets
import ssl
from typing import Any

import redis.asyncio as aioredis
from redis.asyncio.cluster import RedisCluster
from redis.asyncio.connection import BlockingConnectionPool, SSLConnection
from redis.asyncio.retry import Retry
from redis.asyncio.sentinel import Sentinel, SentinelConnectionPool
from redis.backoff import NoBackoff
from redis.exceptions import (
    AuthenticationError,
    AuthenticationWrongNumberOfArgsError,
    ClusterDownError,
    NoPermissionError,
    NoScriptError,
    ReadOnlyError,
    RedisClusterException,
    ResponseError,
    TryAgainError,
)
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from dbintel.common.config import RedisSettings, TLSSettings
from dbintel.common.endpoints import parse_host_port
from dbintel.common.secrets import resolve_secret

from ..model import (
    QUERY_BASELINE_TTL_MS,
    AgentAlreadyLeft,
    AgentIdConflict,
    AgentRecord,
    AssignmentRecord,
    ClusterMeta,
    FencedError,
    HeartbeatOutcome,
    HeartbeatReport,
    LeaderInfo,
    Lease,
    PlacementWrite,
    PollStatus,
    QueryBaseline,
    Registration,
    SessionMismatch,
    StaleRead,
    StoreUnavailable,
    membership_digest,
)
from .base import ScalingStore, StoreEvent

log = logging.getLogger(__name__)

_NOW = "local t = redis.call('TIME') local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)\n"

# KEYS: leader, epoch counter, info. ARGV: holder, token, ttl_ms, address, min_epoch
_ACQUIRE = """
if redis.call('EXISTS', KEYS[1]) == 1 then return {0, redis.call('GET', KEYS[1])} end
local epoch = redis.call('INCR', KEYS[2])
local floor = tonumber(ARGV[5]) + 1
if epoch < floor then epoch = floor redis.call('SET', KEYS[2], epoch) end
redis.call('SET', KEYS[1], epoch .. ':' .. ARGV[2] .. ':' .. ARGV[1], 'PX', ARGV[3])
redis.call('HSET', KEYS[3], 'holder', ARGV[1], 'epoch', epoch, 'address', ARGV[4])
return {1, epoch}
"""
# KEYS: leader. ARGV: lease value, ttl_ms
_RENEW = """
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
redis.call('PEXPIRE', KEYS[1], ARGV[2])
return 1
"""
_RELEASE = """
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
redis.call('DEL', KEYS[1])
return 1
"""
# KEYS: agents, meta. ARGV: agent id, registration JSON, applied epoch, current JSON, coordinator id,
# node_timeout_ms, model.membership_digest of the report, released JSON {resource: last_poll_ms},
# proven ('1' or '0'; a proven registration stays proven), the unproven digest, the request's sequence
# (kept as the instance's highest; the record is rewritten without `disc`: heard from), the baselines'
# PX ms; then one value per KEYS[3..] (P handoff:<resource>, "<ms>:<base64>"), set in the same script as
# the record that makes the release visible. Returns {changed, rejoined}, {-1, pod
# holding the id}, {-2, ''} (this very registration left) or {-3, ''} (its instance, another session).
# A member's heartbeat changed the membership iff its digest differs from the stored one (`mkey`).
_HEARTBEAT = (
    _NOW
    + """
local reg = cjson.decode(ARGV[2])
local raw = redis.call('HGET', KEYS[1], ARGV[1])
local state, changed, rejoined = 'active', 1, 1
local proven = ARGV[9] == '1'
local old = raw and cjson.decode(raw)
if old then
  local same = old.reg.instance_id == reg.instance_id
  if same and (old.reg.session or '') ~= (reg.session or '') then return {-3, ''} end
  if old.state == 'left' and same then return {-2, ''} end
  if same and old.proven ~= false then proven = true end
  if old.state == 'active' or old.state == 'draining' then
    if old.reg.instance_id ~= reg.instance_id and old.reg.pod_name ~= reg.pod_name
       and now - tonumber(old.hb) < tonumber(ARGV[6]) then
      return {-1, old.reg.pod_name}
    end
    state, rejoined = old.state, 0
    local mkey = ARGV[7]
    if not proven then mkey = ARGV[10] end
    if old.mkey == mkey then changed = 0 end
  end
end
local rel = {}
if old then rel = old.rel or {} end
for r, ms in pairs(cjson.decode(ARGV[8])) do rel[r] = ms end
local cur = cjson.decode(ARGV[4])
for r in pairs(cur) do rel[r] = nil end
local seq = tonumber(ARGV[11])
if old and old.reg.instance_id == reg.instance_id and tonumber(old.seq or 0) > seq then seq = tonumber(old.seq) end
local doc = {reg = reg, state = state, hb = now, applied = tonumber(ARGV[3]), cur = cur, rel = rel,
             mkey = proven and ARGV[7] or ARGV[10], coord = ARGV[5], proven = proven, seq = seq}
for i = 3, #KEYS do redis.call('SET', KEYS[i], ARGV[10 + i], 'PX', ARGV[12]) end
redis.call('HSET', KEYS[1], ARGV[1], cjson.encode(doc))
redis.call('HSET', KEYS[2], 'last_heartbeat_write_ms', now)
return {changed, rejoined}
"""
)
# KEYS: agents, then P handoff:<resource> per baseline. ARGV: agent id, session digest, released JSON
# {resource: last_poll_ms}, the baselines' PX ms, then one value per baseline key (as in _HEARTBEAT).
# Returns the agent's current count, -1 (unknown agent) or -2 (another session).
_LEAVE = """
local raw = redis.call('HGET', KEYS[1], ARGV[1])
if not raw then return -1 end
local doc = cjson.decode(raw)
if (doc.reg.session or '') ~= ARGV[2] then return -2 end
for i = 2, #KEYS do redis.call('SET', KEYS[i], ARGV[3 + i], 'PX', ARGV[4]) end
doc.state = 'left'
local rel = doc.rel or {}
for r, ms in pairs(cjson.decode(ARGV[3])) do
  if rel[r] == nil or tonumber(rel[r]) < ms then rel[r] = ms end
end
doc.rel = rel
redis.call('HSET', KEYS[1], ARGV[1], cjson.encode(doc))
local n = 0
for _ in pairs(doc.cur) do n = n + 1 end
return n
"""
# KEYS: agents. ARGV: agent id, instance id, sequence. Marks a member suspect (disc = now) unless the
# record is of another instance, has a newer heartbeat, or is suspect already. Returns 1 if marked.
_DISCONNECT = (
    _NOW
    + """
local raw = redis.call('HGET', KEYS[1], ARGV[1])
if not raw then return 0 end
local doc = cjson.decode(raw)
if doc.state ~= 'active' and doc.state ~= 'draining' then return 0 end
if doc.reg.instance_id ~= ARGV[2] or tonumber(doc.seq or 0) > tonumber(ARGV[3]) then return 0 end
if doc.disc then return 0 end
doc.disc = now
redis.call('HSET', KEYS[1], ARGV[1], cjson.encode(doc))
return 1
"""
)
# KEYS: agents. ARGV: agent id, new state, only-if-member flag. Returns the agent's current count or -1.
_SET_STATE = """
local raw = redis.call('HGET', KEYS[1], ARGV[1])
if not raw then return -1 end
local doc = cjson.decode(raw)
if ARGV[3] == '1' and doc.state ~= 'active' and doc.state ~= 'draining' then return -1 end
doc.state = ARGV[2]
redis.call('HSET', KEYS[1], ARGV[1], cjson.encode(doc))
local n = 0
for _ in pairs(doc.cur) do n = n + 1 end
return n
"""
# KEYS: leader, target, assignments, agents, meta. ARGV: lease value, payload JSON.
# The fence: nothing is written unless the caller's lease value is the current one.
_WRITE_PLACEMENT = (
    _NOW
    + """
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return redis.error_reply('FENCED lease lost') end
local p = cjson.decode(ARGV[2])
for a, heard in pairs(p.heard) do
  local raw = redis.call('HGET', KEYS[4], a)
  if raw and tonumber(cjson.decode(raw).hb) ~= heard then return redis.error_reply('STALE ' .. a) end
end
for r, a in pairs(p.tset) do redis.call('HSET', KEYS[2], r, a) end
for _, r in ipairs(p.tdel) do redis.call('HDEL', KEYS[2], r) end
for _, a in ipairs(p.expire) do
  local raw = redis.call('HGET', KEYS[4], a)
  if raw then
    local doc = cjson.decode(raw)
    if doc.state == 'active' or doc.state == 'draining' then
      doc.state = 'expired'
      redis.call('HSET', KEYS[4], a, cjson.encode(doc))
    end
  end
end
local epoch = tonumber(redis.call('HGET', KEYS[5], 'assignment_epoch') or '0')
local out = {}
for _, a in ipairs(p.order) do
  epoch = math.max(epoch + 1, now)
  redis.call('HSET', KEYS[3], a, cjson.encode({epoch = epoch, leader_epoch = p.leader_epoch, grants = p.assign[a]}))
  out[#out + 1] = a
  out[#out + 1] = tostring(epoch)
end
redis.call('HSET', KEYS[5], 'assignment_epoch', string.format('%d', epoch), 'leader_tick_ms', now)
if p.moves > 0 then redis.call('HINCRBY', KEYS[5], 'moves_total', p.moves) end
if p.unack ~= false then redis.call('HSET', KEYS[5], 'unacknowledged', p.unack) end
if p.reason ~= '' then
  redis.call('HINCRBY', KEYS[5], 'rebalances_total', 1)
  redis.call('HSET', KEYS[5], 'last_rebalance_ms', now, 'last_rebalance_reason', p.reason)
end
return out
"""
)
_MARK_RECOVERED = _NOW + "redis.call('HSET', KEYS[1], 'grace_from_ms', now) return now"
_TIME = _NOW + "return now"  # KEYS[1] (unused) routes it to the state's node on a cluster
# Once, from the key names before the hash tag. KEYS: old lease, then old and new epoch, info, agents,
# target, assignments, meta (1 + 6 + 6). ARGV: marker text. {0, lease}: a coordinator of an older
# version leads on the old names (do not lead beside it); {1, keys moved}; {2, ''}: done before.
# The marker under the old lease key keeps older coordinators from ever leading again.
_MIGRATE = """
local lease = redis.call('GET', KEYS[1])
if lease then
  if string.find(lease, ':migrated:', 1, true) then return {2, ''} end
  return {0, lease}
end
local moved = 0
for i = 2, 7 do
  if redis.call('EXISTS', KEYS[i]) == 1 and redis.call('EXISTS', KEYS[i + 6]) == 0 then
    redis.call('RENAME', KEYS[i], KEYS[i + 6])
    moved = moved + 1
  end
end
redis.call('SET', KEYS[1], (redis.call('GET', KEYS[8]) or '0') .. ':migrated:' .. ARGV[1])
return {1, moved}
"""


POOL_SIZE = 32
POOL_WAIT_S = 5.0
# How long a lease write waits for replicas (WAIT): well inside the 1 s operation timeout; a healthy
# replica acknowledges within a round trip.
REPLICA_ACK_TIMEOUT_MS = 500
# The store's name for each piece of state -> its key name after the prefix.
_NAMES = {
    "leader": "leader",
    "epoch": "leader:epoch",
    "info": "leader:info",
    "agents": "agents",
    "target": "target",
    "assignments": "assignments",
    "meta": "meta",
    "events": "events",
}


def tagged_prefix(key_prefix: str) -> str:
    """The prefix of every state key: `{key_prefix}`, a hash tag that puts all of them in one slot;
    a prefix that holds a hash tag already (`{...}` with something inside) is used as it is."""
    start = key_prefix.find("{")
    if start != -1 and key_prefix.find("}", start + 1) > start + 1:
        return key_prefix
    return "{" + key_prefix + "}"


def state_key(key_prefix: str, name: str) -> str:
    """The Redis key of one piece of state (`name` from the layout above) under `key_prefix`."""
    return tagged_prefix(key_prefix) + name


def _tls_options(tls: TLSSettings) -> dict[str, Any]:
    if not tls.enabled:
        return {}
    return {
        "ssl_ca_certs": tls.ca_file,
        "ssl_certfile": tls.cert_file,
        "ssl_keyfile": tls.key_file,
        "ssl_cert_reqs": ssl.CERT_NONE if tls.insecure_skip_verify else ssl.CERT_REQUIRED,
        "ssl_check_hostname": not tls.insecure_skip_verify,
    }


def _ssl_kwargs(settings: RedisSettings) -> dict[str, Any]:
    options = _tls_options(settings.tls)
    return {"connection_class": SSLConnection, **options} if options else {}


class _BlockingSentinelPool(SentinelConnectionPool, BlockingConnectionPool):
    """The primary's address from the sentinels, and the blocking pool's wait for a free connection."""


def _common_kwargs(settings: RedisSettings, operation_timeout: float) -> dict[str, Any]:
    password = resolve_secret(settings.password)
    return {
        "username": settings.username,
        "password": password.get_secret_value() if password else None,
        "socket_timeout": operation_timeout,
        "socket_connect_timeout": operation_timeout,
        "health_check_interval": 10,
        "decode_responses": True,
    }


def _client(settings: RedisSettings, operation_timeout: float) -> Any:
    """The client for the configured topology: one server, a Sentinel-managed primary, or a cluster."""
    common = _common_kwargs(settings, operation_timeout)
    # One quick retry at most: callers degrade on failure, and a heartbeat reply must not wait out a
    # long retry ladder while Redis is away.
    retry = Retry(NoBackoff(), 1)
    if settings.sentinel is not None:
        sentinel = settings.sentinel
        sentinel_password = resolve_secret(sentinel.password)
        sentinel_tls = _tls_options(sentinel.tls)
        manager = Sentinel(
            [parse_host_port(address) for address in sentinel.addresses],
            sentinel_kwargs={
                "username": sentinel.username,
                "password": sentinel_password.get_secret_value() if sentinel_password else None,
                "socket_timeout": operation_timeout,
                "socket_connect_timeout": operation_timeout,
                "decode_responses": True,
                **({"ssl": True, **sentinel_tls} if sentinel_tls else {}),
            },
        )
        tls = _tls_options(settings.tls)
        return manager.master_for(
            sentinel.master_name,
            connection_pool_class=_BlockingSentinelPool,
            max_connections=POOL_SIZE,
            timeout=POOL_WAIT_S,
            db=settings.db,
            retry=retry,
            **common,
            **({"ssl": True, **tls} if tls else {}),
        )
    host, port = parse_host_port(settings.address)
    if settings.cluster:
        tls = _tls_options(settings.tls)
        return RedisCluster(
            host=host,
            port=port,
            max_connections=POOL_SIZE,
            retry=retry,
            **common,
            **({"ssl": True, **tls} if tls else {}),
        )
    # A blocking pool: under a burst, an operation waits for a free connection instead of failing
    # (redis-py's default pool fails at once past 100, which would answer heartbeats "degraded"
    # while Redis is fine). Redis serves one command at a time, so more connections add nothing.
    pool = aioredis.BlockingConnectionPool(
        max_connections=POOL_SIZE,
        timeout=POOL_WAIT_S,
        host=host,
        port=port,
        db=settings.db,
        retry=retry,
        **common,
        **_ssl_kwargs(settings),
    )
    return aioredis.Redis(connection_pool=pool)


class RedisScalingStore(ScalingStore):
    mode = "redis"

    def __init__(
        self,
        settings: RedisSettings,
        *,
        operation_timeout: float = 1.0,
        query_baseline_ttl_ms: int = QUERY_BASELINE_TTL_MS,
    ):
        self._settings = settings
        self._baseline_ttl_ms = query_baseline_ttl_ms
        # P handoff:<resource>: built here, passed in KEYS (in P's slot through the hash tag)
        self._baseline_prefix = state_key(settings.key_prefix, "handoff:")
        self._address = settings.describe()
        self._cluster = settings.cluster
        self._sentinel = settings.sentinel is not None
        self._acks = settings.required_replica_acks
        self._client = _client(settings, operation_timeout)
        self._operation_timeout = operation_timeout
        self._keys = {name: state_key(settings.key_prefix, key) for name, key in _NAMES.items()}
        # Before the hash tag the keys were key_prefix + name. A cluster never held those (their
        # scripts spanned slots), nor does a prefix that holds a tag itself (the names are the same).
        legacy = tagged_prefix(settings.key_prefix) != settings.key_prefix and not self._cluster
        self._legacy = {name: settings.key_prefix + key for name, key in _NAMES.items()} if legacy else None
        self._migrated = not legacy
        self._pending: Lease | None = None  # acquired, not yet acknowledged by enough replicas
        self._highest_epoch = 0  # the highest epoch this store was handed: never handed out again here
        self._scripts = {
            name: self._client.register_script(src)
            for name, src in {
                "acquire": _ACQUIRE,
                "renew": _RENEW,
                "release": _RELEASE,
                "heartbeat": _HEARTBEAT,
                "set_state": _SET_STATE,
                "leave": _LEAVE,
                "disconnect": _DISCONNECT,
                "write_placement": _WRITE_PLACEMENT,
                "mark_recovered": _MARK_RECOVERED,
                "time": _TIME,
                "migrate": _MIGRATE,
            }.items()
        }
        self._subscribers = set()
        self._listener: asyncio.Task | None = None
        self._closed = False

    async def _call(self, operation):
        """Run one Redis operation, mapping transport trouble to StoreUnavailable (never leaking args)."""
        # Messages name the address and the settings to check; redis-py's own texts carry no credentials.
        try:
            return await operation
        except (AuthenticationError, AuthenticationWrongNumberOfArgsError):
            raise StoreUnavailable(
                f"redis {self._address}: authentication failed (check scaling.redis.username "
                "and scaling.redis.password" + (", and sentinel.username/password)" if self._sentinel else ")")
            ) from None
        except NoPermissionError:
            raise StoreUnavailable(
                f"redis {self._address}: the ACL user lacks a permission dbintel needs "
                "(keys and channels {key_prefix}*, and key_prefix* once for the upgrade, EVALSHA/EVAL, "
                "PUBLISH/SUBSCRIBE, WAIT)"
            ) from None
        except (TimeoutError, RedisConnectionError, RedisTimeoutError, OSError) as exc:
            detail = str(exc) if isinstance(exc, RedisConnectionError) else ""
            raise StoreUnavailable(
                f"redis {self._address} unreachable: {type(exc).__name__}" + (f" ({detail})" if detail else "")
            ) from None
        except (ReadOnlyError, ClusterDownError, TryAgainError, RedisClusterException) as exc:
            # A demoted primary, a failover in progress, a cluster without a slot's primary: the
            # state is briefly out of reach. A sentinel client asks again where the primary is.
            await self._rediscover()
            raise StoreUnavailable(f"redis {self._address}: {type(exc).__name__} (failover in progress?)") from None
        except ResponseError as exc:
            if str(exc).startswith("FENCED"):
                raise FencedError("lease lost: another coordinator leads now") from None
            if str(exc).startswith("STALE"):
                raise StaleRead("an agent to expire was heard from since the step read the store") from None
            if str(exc).startswith(("NOREPLICAS", "MASTERDOWN", "LOADING")):
                await self._rediscover()
                raise StoreUnavailable(f"redis {self._address}: {str(exc).split(' ', 1)[0]}") from None
            raise

    async def _rediscover(self) -> None:
        """Sentinel: ask the sentinels for the primary now; idle connections to an old one are dropped."""
        pool = self._client.connection_pool if self._sentinel else None
        if isinstance(pool, SentinelConnectionPool):
            with contextlib.suppress(Exception):
                await pool.get_master_address()

    async def _script(self, name: str, keys: list[str], args: list[Any]):
        return await self._call(self._scripts[name](keys=keys, args=args))

    # -- leadership ----------------------------------------------------------------------------
    async def try_acquire_leadership(self, holder, ttl_ms, address="", min_epoch=0):
        if not self._migrated and not await self._migrate_legacy_keys():
            return None
        if self._pending is not None:
            # Ours but unacknowledged: lead once replicas have it; gone (lost in a failover, or
            # expired): fall through to a fresh acquire, above every epoch handed out before.
            renewed, acks = await self._renew_and_wait(self._pending, ttl_ms)
            if renewed:
                return self._confirmed(self._pending, acks)
            self._pending = None
        token = secrets.token_hex(8)
        k = self._keys
        ok, value = await self._script(
            "acquire",
            [k["leader"], k["epoch"], k["info"]],
            [holder, token, ttl_ms, address, max(min_epoch, self._highest_epoch)],
        )
        if int(ok) != 1:
            return None
        lease = Lease(holder=holder, epoch=int(value), token=token)
        self._highest_epoch = max(self._highest_epoch, lease.epoch)
        if self._acks == 0:
            return lease
        self._pending = lease  # until replicas acknowledge it (a store error leaves it pending too)
        renewed, acks = await self._renew_and_wait(lease, ttl_ms)
        if not renewed:
            self._pending = None
            return None
        return self._confirmed(lease, acks)

    def _confirmed(self, lease: Lease, acks: int) -> Lease | None:
        """The lease if enough replicas acknowledged it; else it stays pending (held, not led on)."""
        if acks >= self._acks:
            self._pending = None
            return lease
        log.warning(
            "lease epoch %d acknowledged by %d of %d replicas (scaling.redis.replica_acks): not leading yet",
            lease.epoch,
            acks,
            self._acks,
        )
        self._pending = lease
        return None

    async def _renew_and_wait(self, lease: Lease, ttl_ms: int) -> tuple[bool, int]:
        """Renew the lease and WAIT for replicas on the same connection: (still ours, replicas that have
        it). WAIT counts the replicas that acknowledged every write this connection made, and the
        renewal comes after the acquire in the replication stream, so an acknowledged renewal means
        the replica holds the lease and its epoch."""
        key = self._keys["leader"]

        async def run() -> list[Any]:
            async with self._client.pipeline(transaction=False) as pipe:
                if self._cluster:  # a cluster pipeline refuses evalsha() and loads no script (see below)
                    pipe.execute_command("EVALSHA", self._scripts["renew"].sha, 1, key, lease.value, ttl_ms)
                    # WAIT names no key: send it to the node of the state's slot, on the same connection.
                    pipe.execute_command(
                        "WAIT", self._acks, REPLICA_ACK_TIMEOUT_MS, target_nodes=self._client.get_node_from_key(key)
                    )
                else:
                    await self._scripts["renew"](keys=[key], args=[lease.value, ttl_ms], client=pipe)
                    pipe.execute_command("WAIT", self._acks, REPLICA_ACK_TIMEOUT_MS)
                return await pipe.execute()

        try:
            renewed, acks = await self._call(run())
        except NoScriptError:  # a cluster node that has not seen the script yet
            await self._script("renew", [key], [lease.value, ttl_ms])
            renewed, acks = await self._call(run())
        return int(renewed) == 1, int(acks)

    async def _migrate_legacy_keys(self) -> bool:
        """Move state kept under the names before the hash tag; False while an older coordinator leads there."""
        assert self._legacy is not None
        old, new = self._legacy, self._keys
        names = ("epoch", "info", "agents", "target", "assignments", "meta")

        async def migrate() -> list[Any]:
            try:
                return await self._scripts["migrate"](
                    keys=[old["leader"], *(old[n] for n in names), *(new[n] for n in names)],
                    args=[f"keys moved to {tagged_prefix(self._settings.key_prefix)}"],
                )
            except NoPermissionError:
                # An ACL user allowed only the new names: nothing of an older version can be there.
                log.info("the ACL user may not read %s*: no older state to move", self._settings.key_prefix)
                return [2, ""]

        status, detail = await self._call(migrate())
        if int(status) == 0:
            log.warning(
                "a coordinator of an older version holds the lease under %s (%s): not leading beside it; "
                "finish the upgrade (stop the older coordinators)",
                old["leader"],
                str(detail).split(":", 2)[-1],
            )
            return False
        if int(status) == 1:
            log.info(
                "moved %s key(s) from %s* to %s*",
                detail,
                self._settings.key_prefix,
                tagged_prefix(self._settings.key_prefix),
            )
        self._migrated = True
        return True

    async def renew_leadership(self, lease, ttl_ms):
        if self._acks == 0:
            return int(await self._script("renew", [self._keys["leader"]], [lease.value, ttl_ms])) == 1
        renewed, acks = await self._renew_and_wait(lease, ttl_ms)
        if renewed and acks < self._acks:
            # Renewed on the primary only: a failover could lose it, so it does not count. The leader
            # treats this as a failed renewal and stops once its last acknowledged one runs out.
            raise StoreUnavailable(
                f"redis {self._address}: lease renewal acknowledged by {acks} of {self._acks} replicas"
            )
        return renewed

    async def release_leadership(self, lease):
        await self._script("release", [self._keys["leader"]], [lease.value])

    async def read_leader(self):
        value, info = await self._call(self._pipeline_get_leader())
        if not value:
            return None
        epoch, _, holder = value.split(":", 2)
        address = info.get("address", "") if info and info.get("epoch") == epoch else ""
        return LeaderInfo(holder=holder, epoch=int(epoch), address=address)

    async def _pipeline_get_leader(self):
        async with self._client.pipeline(transaction=False) as pipe:
            pipe.get(self._keys["leader"])
            pipe.hgetall(self._keys["info"])
            return await pipe.execute()

    # -- membership --------------------------------------------------------------------------------
    async def record_heartbeat(self, report: HeartbeatReport, node_timeout_ms: int) -> HeartbeatOutcome:
        reg = report.registration
        registration = {
            "pod_name": reg.pod_name,
            "zone": reg.zone,
            "version": reg.version,
            "capacity": reg.capacity,
            "instance_id": reg.instance_id,
            "session": reg.session,
            "http_address": reg.http_address,
        }
        current = {rid: status.to_list() for rid, status in report.current.items()}
        digest = membership_digest(reg, report.applied_epoch, report.current)
        released_ms = {r: s.last_poll_ms for r, s in report.released.items()}
        baseline_keys, baseline_values = self._baseline_writes(report.baselines, released_ms)
        result = await self._script(
            "heartbeat",
            [self._keys["agents"], self._keys["meta"], *baseline_keys],
            [
                report.agent_id,
                json.dumps(registration, sort_keys=True),
                report.applied_epoch,
                json.dumps(current) if current else "{}",
                report.coordinator_id,
                node_timeout_ms,
                digest,
                json.dumps(released_ms),
                "1" if report.proven else "0",
                # Needed only when the store decides (an unproven report of a maybe-proven instance):
                # a stream's first heartbeat, not the hot path.
                digest if report.proven else membership_digest(reg, report.applied_epoch, report.current, proven=False),
                report.sequence,
                self._baseline_ttl_ms,
                *baseline_values,
            ],
        )
        if int(result[0]) == -1:
            raise AgentIdConflict(f"agent id {report.agent_id!r} is in use by live pod {result[1]!r}")
        if int(result[0]) == -2:
            raise AgentAlreadyLeft(f"agent {report.agent_id!r} has left; a restarted process rejoins")
        if int(result[0]) == -3:
            raise SessionMismatch(f"agent {report.agent_id!r}: this registration has another session")
        return HeartbeatOutcome(changed=int(result[0]) == 1, rejoined=int(result[1]) == 1)

    def _baseline_writes(self, baselines, released_ms) -> tuple[list[str], list[str]]:
        """(P handoff:<resource> keys, "<released ms>:<base64>" values) for `baselines`. Base64: the
        client decodes replies as text, and the blob is compressed binary."""
        keys, values = [], []
        for rid, state in baselines.items():
            keys.append(self._baseline_prefix + rid)
            values.append(f"{int(released_ms.get(rid, 0))}:{base64.b64encode(state).decode()}")
        return keys, values

    async def read_query_baselines(self, resource_ids):
        if not resource_ids:
            return {}
        ids = list(resource_ids)
        values = await self._call(self._client.mget([self._baseline_prefix + rid for rid in ids]))
        found = {}
        for rid, value in zip(ids, values, strict=True):
            if not value:
                continue
            ms, _, encoded = value.partition(":")
            try:
                found[rid] = QueryBaseline(int(ms), base64.b64decode(encoded, validate=True))
            except ValueError:
                log.warning("ignoring a malformed top-query baseline under %s", self._baseline_prefix + rid)
        return found

    async def record_leave(self, agent_id, session, released, baselines=None):
        finals = json.dumps(dict(released)) if released else "{}"
        keys, values = self._baseline_writes(baselines or {}, released)
        result = int(
            await self._script(
                "leave", [self._keys["agents"], *keys], [agent_id, session, finals, self._baseline_ttl_ms, *values]
            )
        )
        if result == -2:
            raise SessionMismatch(f"agent {agent_id!r}: not this registration's session")
        return None if result == -1 else result

    async def record_disconnect(self, agent_id, instance_id, sequence):
        return int(await self._script("disconnect", [self._keys["agents"]], [agent_id, instance_id, sequence])) == 1

    async def read_agent(self, agent_id):
        raw = await self._call(self._client.hget(self._keys["agents"], agent_id))
        return None if raw is None else _agent_from_json(agent_id, raw)

    async def set_draining(self, agent_id, draining):
        state = "draining" if draining else "active"
        return int(await self._script("set_state", [self._keys["agents"]], [agent_id, state, "1"])) >= 0

    async def read_agents(self):
        raw = await self._call(self._client.hgetall(self._keys["agents"]))
        return {agent_id: _agent_from_json(agent_id, doc) for agent_id, doc in raw.items()}

    async def mark_recovered(self):
        await self._script("mark_recovered", [self._keys["meta"]], [])

    # -- placement ------------------------------------------------------------------------------------
    async def write_placement(self, lease: Lease, write: PlacementWrite) -> dict[str, int]:
        order = sorted(write.assignments)
        payload = {
            "tset": dict(write.target_set) or {},
            "tdel": list(write.target_delete),
            "assign": {a: dict(g) for a, g in write.assignments.items()},
            "order": order,
            "expire": list(write.expire),
            "heard": dict(write.expire_heard_ms) or {},
            "reason": write.rebalance_reason or "",
            "moves": write.moves,
            "leader_epoch": lease.epoch,
            "unack": ",".join(sorted(write.unacknowledged)) if write.unacknowledged is not None else False,
        }
        k = self._keys
        raw = json.dumps(payload)
        result = await self._script(
            "write_placement", [k["leader"], k["target"], k["assignments"], k["agents"], k["meta"]], [lease.value, raw]
        )
        return {result[i]: int(result[i + 1]) for i in range(0, len(result), 2)}

    async def read_target(self):
        return await self._call(self._client.hgetall(self._keys["target"]))

    async def read_assignments(self, agent_ids=None):
        key = self._keys["assignments"]
        if agent_ids is None:
            raw = await self._call(self._client.hgetall(key))
        else:
            if not agent_ids:
                return {}
            values = await self._call(self._client.hmget(key, agent_ids))
            raw = {a: v for a, v in zip(agent_ids, values, strict=False) if v is not None}
        return {agent_id: _assignment_from_json(agent_id, doc) for agent_id, doc in raw.items()}

    async def read_meta(self):
        raw = await self._call(self._client.hgetall(self._keys["meta"]))
        ints = {
            f: int(float(raw[f]))
            for f in (
                "assignment_epoch",
                "rebalances_total",
                "moves_total",
                "last_rebalance_ms",
                "grace_from_ms",
                "last_heartbeat_write_ms",
                "leader_tick_ms",
            )
            if f in raw
        }
        unacknowledged = tuple(a for a in raw.get("unacknowledged", "").split(",") if a)  # agent ids have no comma
        return ClusterMeta(
            last_rebalance_reason=raw.get("last_rebalance_reason", ""), unacknowledged=unacknowledged, **ints
        )

    async def now_ms(self):
        return int(await self._script("time", [self._keys["meta"]], []))

    # -- notifications ----------------------------------------------------------------------------------
    async def publish(self, event: StoreEvent) -> None:
        await self._call(
            self._client.publish(self._keys["events"], json.dumps({"kind": event.kind, "agents": list(event.agents)}))
        )

    async def start(self) -> None:
        if self._listener is None and not self._closed:
            self._listener = asyncio.create_task(self._listen(), name="redis-events")

    async def _open_pubsub(self) -> tuple[Any, Any]:
        """(pubsub, client to close after it). On a cluster any node hears every PUBLISH, so the
        subscription is a plain connection to one node, another one after a failure."""
        if not self._cluster:
            return self._client.pubsub(ignore_subscribe_messages=True), None
        await self._client.initialize()
        node = random.choice(self._client.get_nodes())
        tls = _tls_options(self._settings.tls)
        client = aioredis.Redis(
            host=node.host,
            port=node.port,
            **_common_kwargs(self._settings, self._operation_timeout),
            **({"ssl": True, **tls} if tls else {}),
        )
        return client.pubsub(ignore_subscribe_messages=True), client

    async def _listen(self) -> None:
        """Relay pub/sub events to in-process subscribers; reconnect forever with backoff."""
        delay = 0.1
        while not self._closed:
            pubsub = node_client = None
            try:
                pubsub, node_client = await self._open_pubsub()
                await pubsub.subscribe(self._keys["events"])
                delay = 0.1
                # A (re)subscription may have missed events: tell consumers to look now.
                self._deliver(StoreEvent("resync"))
                while not self._closed:
                    message = await pubsub.get_message(timeout=1.0)
                    if message is None:
                        continue
                    try:
                        data = json.loads(message["data"])
                        self._deliver(StoreEvent(str(data["kind"]), tuple(data.get("agents", ()))))
                    except (ValueError, KeyError, TypeError):
                        log.warning("ignoring a malformed event on %s", self._keys["events"])
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # the listener must outlive any Redis trouble
                log.debug("event listener: %s; reconnecting in %.1fs", type(exc).__name__, delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 2.0)
            finally:
                for closable in (pubsub, node_client):
                    if closable is not None:
                        with contextlib.suppress(Exception):
                            await closable.aclose()

    async def ping(self):
        try:
            return bool(await asyncio.wait_for(self._client.ping(), 2))
        except Exception:
            return False

    async def close(self):
        self._closed = True
        if self._pending is not None:  # held, never led on: let a successor have it now
            with contextlib.suppress(Exception):
                await self.release_leadership(self._pending)
        if self._listener is not None:
            self._listener.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._listener
            self._listener = None
        self._subscribers.clear()
        with contextlib.suppress(Exception):
            await self._client.aclose()


def _agent_from_json(agent_id: str, raw: str) -> AgentRecord:
    doc = json.loads(raw)
    reg = doc.get("reg") or {}
    current = doc.get("cur") or {}
    return AgentRecord(
        agent_id=agent_id,
        registration=Registration(
            pod_name=reg.get("pod_name", ""),
            zone=reg.get("zone", ""),
            version=reg.get("version", ""),
            capacity=int(reg.get("capacity", 0)),
            instance_id=reg.get("instance_id", ""),
            session=reg.get("session", ""),
            http_address=reg.get("http_address", ""),  # absent from records of older versions
        ),
        state=doc.get("state", "active"),
        last_heartbeat_ms=int(doc.get("hb", 0)),
        applied_epoch=int(doc.get("applied", 0)),
        current={rid: PollStatus.from_list(v) for rid, v in current.items()} if isinstance(current, dict) else {},
        coordinator_id=doc.get("coord", ""),
        released={rid: int(ms) for rid, ms in (doc.get("rel") or {}).items()}
        if isinstance(doc.get("rel"), dict)
        else {},
        proven=doc.get("proven") is not False,
        sequence=int(doc.get("seq") or 0),
        disconnected_ms=int(doc.get("disc") or 0),
    )


def _assignment_from_json(agent_id: str, raw: str) -> AssignmentRecord:
    doc = json.loads(raw)
    grants = doc.get("grants") or {}
    return AssignmentRecord(
        agent_id=agent_id,
        epoch=int(doc["epoch"]),
        leader_epoch=int(doc.get("leader_epoch", 0)),
        grants={r: int(ms) for r, ms in grants.items()} if isinstance(grants, dict) else {},
    )
