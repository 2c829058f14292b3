"""Which coordinator replica the agent's next Heartbeat stream goes to.

The agent picks the replica itself instead of leaving it to a gRPC load-balancing policy: a frozen
replica (SIGSTOPped, a stalled node) still accepts TCP connections, so a channel keeps routing new
streams to it, and a stream that stalled there must go elsewhere within its response timeout.
`agent.coordinator` names the replicas as gRPC does: an `ipv4:`/`ipv6:` address list, or a name
(`host:port`, `dns:///host:port`, e.g. a headless Service) resolved to every address on each
switch. Anything else (a `unix:` socket, another resolver scheme) is dialled as given.
"""

from __future__ import annotations

import asyncio
import random
import socket
from dataclasses import dataclass

from dbintel.common.endpoints import HostPort, format_host_port, parse_host_port

__all__ = ["Replica", "choose", "listed_replicas", "name_to_resolve", "resolve"]


@dataclass(frozen=True)
class Replica:
    address: str  # what the channel dials
    authority: str | None = None  # the name it was resolved from (TLS checks the certificate against it)


def listed_replicas(target: str) -> list[Replica] | None:
    """The replicas an `ipv4:`/`ipv6:` target lists; None for any other form. Pure."""
    scheme, _, rest = target.partition(":")
    if scheme not in ("ipv4", "ipv6") or not rest:
        return None
    return [Replica(address.strip()) for address in rest.split(",") if address.strip()]


def name_to_resolve(target: str) -> HostPort | None:
    """The host and port of a `host:port` or `dns:` target; None for other forms. Pure."""
    name = target
    if target.startswith("dns:"):
        name = target.removeprefix("dns:").removeprefix("///")
        if name.startswith("//"):  # dns://authority/host:port: the DNS server is grpc's business
            name = name[2:].partition("/")[2]
    elif ":" in target.partition(":")[0] or target.partition(":")[0] in ("unix", "unix-abstract", "vsock", "xds"):
        return None
    try:
        return parse_host_port(name)
    except ValueError:
        return None


async def resolve(target: str) -> list[Replica]:
    """Every replica `target` names now; [target itself] when it cannot be resolved here (gRPC then
    reports the failure as it would)."""
    listed = listed_replicas(target)
    if listed is not None:
        return listed
    name = name_to_resolve(target)
    if name is None:
        return [Replica(target)]
    try:
        infos = await asyncio.get_running_loop().getaddrinfo(name.host, name.port, type=socket.SOCK_STREAM)
    except OSError:
        return [Replica(target)]
    addresses = sorted({format_host_port(str(info[4][0]), int(info[4][1])) for info in infos})
    if addresses == [format_host_port(name.host, name.port)]:
        return [Replica(addresses[0])]  # an address already
    return [Replica(address, authority=name.host) for address in addresses] or [Replica(target)]


def choose(replicas: list[Replica], avoid: Replica | None, rng: random.Random) -> Replica:
    """A random replica other than `avoid` (the one that stalled, failed or ended the last stream),
    if there is another. Random, so that agents spread over the replicas. Pure given `rng`."""
    others = [r for r in replicas if r.address != (avoid.address if avoid else None)]
    return rng.choice(others or replicas)
