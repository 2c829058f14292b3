"""Real Redis topologies for the coordinator's state, built on tests/servers.py's RedisServer.

- `SentinelSet`: a primary, replica(s) and three sentinels (`redis-server FILE --sentinel`), all
  password-protected (the sentinels with their own password). `kill_primary()` crashes the primary;
  `wait_for_failover(old)` returns the promoted replica once the sentinels agree on it.
- `RedisClusterSet`: a three-primary Redis Cluster (`--cluster-enabled yes`, created with
  `redis-cli --cluster create ... --cluster-replicas 0`).

Every process is a ManagedServer, so the atexit hook and the reaper clean up after a killed test run.
"""

from __future__ import annotations

import secrets
import time
from pathlib import Path
from typing import Any

from dbintel.common.config import RedisSettings, SentinelSettings
from tests.servers import RedisServer, ServerError, _new_password, find_binary, free_port


class RedisNode(RedisServer):
    """A RedisServer with extra server arguments (replication, cluster mode)."""

    def __init__(self, password: str, extra_args: list[str] | None = None) -> None:
        self.extra_args = list(extra_args or [])
        super().__init__(password)

    def _command(self) -> list[str]:
        # --masterauth: a replica (or a demoted primary) authenticates to its primary; no diskless
        # sync delay: a primary would otherwise wait 5 s for more replicas before serving the first.
        return [
            *super()._command(),
            "--masterauth",
            self.password,
            "--repl-diskless-sync-delay",
            "0",
            *self.extra_args,
        ]


class SentinelServer(RedisServer):
    """One sentinel process monitoring `master_name`; it speaks RESP, so RedisServer's probe works."""

    kind = "sentinel"

    def __init__(
        self, password: str, master_name: str, primary: RedisNode, replicas: list[RedisNode], down_after_ms: int
    ) -> None:
        self.master_name, self.primary, self.replicas, self.down_after_ms = (
            master_name,
            primary,
            replicas,
            down_after_ms,
        )
        self.myid = secrets.token_hex(20)
        self.peers: list[SentinelServer] = []  # set by SentinelSet: told up front, not discovered in seconds
        super().__init__(password)

    @property
    def config_path(self) -> Path:
        return self.root / "sentinel.conf"

    def _prepare(self) -> None:
        # The sentinel rewrites this file as it learns the topology, so it lives in its own dir.
        self.config_path.write_text(
            f"port {self.port}\nbind {self.host}\ndir {self.root}\n"
            f"requirepass {self.password}\nsentinel sentinel-pass {self.password}\n"
            f"sentinel monitor {self.master_name} {self.primary.host} {self.primary.port} 2\n"
            f"sentinel auth-pass {self.master_name} {self.primary.password}\n"
            f"sentinel down-after-milliseconds {self.master_name} {self.down_after_ms}\n"
            f"sentinel failover-timeout {self.master_name} {max(3 * self.down_after_ms, 3000)}\n"
            f"sentinel myid {self.myid}\n"
            + "".join(f"sentinel known-replica {self.master_name} {r.host} {r.port}\n" for r in self.replicas)
            + "".join(
                f"sentinel known-sentinel {self.master_name} {p.host} {p.port} {p.myid}\n"
                for p in self.peers
                if p is not self
            )
        )

    def _command(self) -> list[str]:
        return [self.binary, str(self.config_path), "--sentinel", "--daemonize", "no", "--logfile", ""]

    def master_address(self) -> tuple[str, int] | None:
        reply = self.client(decode_responses=True).execute_command(
            "SENTINEL", "GET-MASTER-ADDR-BY-NAME", self.master_name
        )
        return (reply[0], int(reply[1])) if reply else None

    def master_state(self) -> dict:
        return self.client(decode_responses=True).sentinel_master(self.master_name)


def _wait(predicate, timeout: float, what: str, period: float = 0.05):
    deadline = time.monotonic() + timeout
    last: Exception | None = None
    while time.monotonic() < deadline:
        try:
            result = predicate()
            if result:
                return result
        except Exception as exc:  # a server coming or going: ask again
            last = exc
        time.sleep(period)
    raise ServerError(f"timed out after {timeout}s waiting for {what}" + (f" (last error: {last!r})" if last else ""))


class SentinelSet:
    """Primary + `replicas` replicas + 3 sentinels (quorum 2), master name `dbintel`. down-after 2 s: at
    1 s a loaded 2-core machine saw a freshly promoted primary as down and failed over twice."""

    master_name = "dbintel"

    def __init__(self, replicas: int = 1, down_after_ms: int = 2000) -> None:
        self.password = _new_password()  # the data nodes'
        self.sentinel_password = _new_password()  # the sentinels' own (scaling.redis.sentinel.password)
        primary = RedisNode(self.password)
        self.nodes = [primary] + [
            RedisNode(self.password, ["--replicaof", primary.host, str(primary.port)]) for _ in range(replicas)
        ]
        self.sentinels = [
            SentinelServer(self.sentinel_password, self.master_name, primary, self.nodes[1:], down_after_ms)
            for _ in range(3)
        ]
        for sentinel in self.sentinels:
            sentinel.peers = self.sentinels

    @property
    def sentinel_addresses(self) -> list[str]:
        return [s.address for s in self.sentinels]

    def start(self) -> SentinelSet:
        for node in self.nodes:
            node.start()
        _wait(self._replicas_in_sync, 30, "the replicas to sync with the primary")
        for sentinel in self.sentinels:
            sentinel.start()
        # Ready once every sentinel knows the other two and every replica: only then can they agree on
        # a failover (a sentinel that knows no peer has no majority to ask).
        _wait(self._sentinels_ready, 30, "the sentinels to discover each other and the replicas", period=0.2)
        return self

    def _replicas_in_sync(self) -> bool:
        # A replica fed by a diskless sync counts as "online" before the primary streams to it (it waits
        # for the replica's first REPLCONF ACK, up to a second): only an acknowledged write says so.
        client = self.nodes[0].client(decode_responses=True)
        client.set("topology:probe", time.time())
        return int(client.execute_command("WAIT", len(self.nodes) - 1, 200)) == len(self.nodes) - 1

    def _sentinels_ready(self) -> bool:
        for sentinel in self.sentinels:
            state = sentinel.master_state()
            if int(state["num-other-sentinels"]) != 2 or int(state["num-slaves"]) != len(self.nodes) - 1:
                return False
        return True

    def settings(self, monkeypatch, key_prefix: str, **extra: Any) -> RedisSettings:
        """scaling.redis for this set, its passwords as ${env:...} references (set through monkeypatch)."""
        monkeypatch.setenv("TOPOLOGY_REDIS_PW", self.password)
        monkeypatch.setenv("TOPOLOGY_SENTINEL_PW", self.sentinel_password)
        return RedisSettings(
            password="${env:TOPOLOGY_REDIS_PW}",
            key_prefix=key_prefix,
            sentinel=SentinelSettings(
                master_name=self.master_name,
                addresses=self.sentinel_addresses,
                password="${env:TOPOLOGY_SENTINEL_PW}",
            ),
            **extra,
        )

    def primary_address(self) -> tuple[str, int]:
        addresses = {s.master_address() for s in self.sentinels if s.is_running()}
        if len(addresses) != 1:
            raise ServerError(f"sentinels disagree on the primary: {addresses}")
        (address,) = addresses
        assert address is not None
        return address

    def node_at(self, address: tuple[str, int]) -> RedisNode:
        return next(n for n in self.nodes if (n.host, n.port) == (address[0], int(address[1])))

    @property
    def primary(self) -> RedisNode:
        return self.node_at(self.primary_address())

    def kill_primary(self) -> RedisNode:
        primary = self.primary
        primary.kill()
        return primary

    def wait_for_failover(self, old: RedisNode, timeout: float = 30.0) -> RedisNode:
        """The replica the sentinels promoted, once all of them name it and it accepts writes."""

        def promoted() -> RedisNode | None:
            address = self.primary_address()
            if address == (old.host, old.port):
                return None
            node = self.node_at(address)
            return node if node.client(decode_responses=True).info("replication")["role"] == "master" else None

        return _wait(promoted, timeout, "the sentinels to promote a replica", period=0.1)

    def rejoin(self, old: RedisNode) -> None:
        """Restart a killed node as a replica of the current primary (what the sentinels would make of it)."""
        host, port = self.primary_address()
        if "--replicaof" in old.extra_args:
            index = old.extra_args.index("--replicaof")
            old.extra_args[index + 1 : index + 3] = [host, str(port)]
        else:
            old.extra_args += ["--replicaof", host, str(port)]
        old.start()

    def close(self) -> None:
        for server in [*self.sentinels, *self.nodes]:
            server.close()

    def __enter__(self) -> SentinelSet:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.close()


class RedisClusterSet:
    """A Redis Cluster of `primaries` primaries (no replicas), every node with one password."""

    def __init__(self, primaries: int = 3) -> None:
        self.password = _new_password()
        # The bus port is chosen too: port + 10000 (the default) may be anything's on a busy machine.
        self.nodes = [
            RedisNode(
                self.password,
                ["--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf", "--cluster-node-timeout", "2000"]
                + ["--cluster-port", str(free_port())],
            )
            for _ in range(primaries)
        ]

    @property
    def address(self) -> str:
        """A seed node (scaling.redis.address): the client learns the others from it."""
        return self.nodes[0].address

    def start(self) -> RedisClusterSet:
        for node in self.nodes:
            node.start()
        cli = find_binary("redis-cli")
        self.nodes[0]._run(
            [cli, "-a", self.password, "--no-auth-warning", "--cluster", "create"]
            + [n.address for n in self.nodes]
            + ["--cluster-replicas", "0", "--cluster-yes"],
            what="redis-cli --cluster create",
        )
        _wait(self._ok, 30, "cluster_state:ok on every node", period=0.1)
        return self

    def _ok(self) -> bool:
        for node in self.nodes:
            info = node.client(decode_responses=True).execute_command("CLUSTER", "INFO")
            if "cluster_state:ok" not in info:
                return False
        return True

    def close(self) -> None:
        for node in self.nodes:
            node.close()

    def __enter__(self) -> RedisClusterSet:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.close()
