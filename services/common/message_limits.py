"""gRPC message-size limits, one place for the coordinator's server and every client.

What the protocol needs: the largest request a coordinator receives is an agent's heartbeat, whose
`current` / `released` lists hold at most MAX_RESOURCES_PER_REPORT (100,000) entries
(services/coordinator/validation.py). An entry with every field set (poll time, duration, counters)
costs its id plus about 38 bytes, so 8 MiB holds 100,000 entries whose ids average up to 40 bytes
(`db:postgresql/` plus a 26-character name), or 28,700 entries of the longest allowed id (253 bytes).
The validation ceiling is therefore not always reachable in bytes: it stays as a bound on work, and an
agent holds far fewer (docs/benchmarks.md: about 1,000 databases per agent process). A larger request
is refused with RESOURCE_EXHAUSTED before it is decoded, so it costs the coordinator at most the limit.
Operator requests are a few bytes.

Clients receive more than they send: an agent's assignment lists every database it holds, with its
config, and `ListResources` lists the whole inventory, so clients accept up to 64 MiB. Servers send
without a limit (gRPC's default), so the client's limit is the one that bounds a reply.
"""

from __future__ import annotations

from collections.abc import Sequence

MiB = 1024 * 1024

# The largest request the coordinator accepts (gRPC's own default is 4 MiB).
SERVER_MAX_RECEIVE_BYTES = 8 * MiB
# The largest reply a client (agent, dbintel status, a forwarding follower) accepts.
CLIENT_MAX_RECEIVE_BYTES = 64 * MiB

_RECEIVE = "grpc.max_receive_message_length"


def server_options() -> list[tuple[str, int]]:
    return [(_RECEIVE, SERVER_MAX_RECEIVE_BYTES)]


def client_options(options: Sequence[tuple[str, object]] = ()) -> list[tuple[str, object]]:
    """`options` plus the client receive limit, unless `options` already sets one."""
    merged = list(options)
    if not any(key == _RECEIVE for key, _ in merged):
        merged.append((_RECEIVE, CLIENT_MAX_RECEIVE_BYTES))
    return merged
