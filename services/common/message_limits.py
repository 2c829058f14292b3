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

Top-query baselines ride in `released` entries (ResourceStatus.query_baseline): each at most
MAX_QUERY_BASELINE_BYTES (64 KiB; the agent's tracker keeps its heaviest statements to fit), and at
most MAX_RELEASED_BASELINE_BYTES (4 MiB, 64 full-size baselines) over one request. The coordinator
refuses a request over either bound with INVALID_ARGUMENT; the agent never sends one: it fills the
4 MiB in report order and releases the rest without a baseline (their next owners start top queries
fresh, as after a crash). The 4 MiB come on top of the 8 MiB the lists need, hence a 12 MiB limit.

Clients receive more than they send: an agent's assignment lists every database it holds, with its
config, and `ListResources` lists the whole inventory, so clients accept up to 64 MiB. Servers send
without a limit (gRPC's default), so the client's limit is the one that bounds a reply. An assignment
carries previous owners' baselines on at most MAX_GRANTED_BASELINE_BYTES (16 MiB) of its grants; the
grants past that (in resource id order) carry none, so 48 MiB stay for the rest of the reply.
"""

from __future__ import annotations

from collections.abc import Sequence

MiB = 1024 * 1024

# One database's top-query baseline (the agent's tracker.HANDOFF_LIMIT is the same number).
MAX_QUERY_BASELINE_BYTES = 64 * 1024
# All baselines of one request (a heartbeat or Leave releasing many databases).
MAX_RELEASED_BASELINE_BYTES = 4 * MiB
# All baselines one assignment message carries to an agent.
MAX_GRANTED_BASELINE_BYTES = 16 * MiB
# The largest request the coordinator accepts (gRPC's own default is 4 MiB): the lists, plus baselines.
SERVER_MAX_RECEIVE_BYTES = 8 * MiB + MAX_RELEASED_BASELINE_BYTES
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
