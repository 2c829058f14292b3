"""The peers' placement algorithms, re-implemented faithfully and purely (no I/O, no clock, no randomness).

- `ConsistentHashingBoundedLoads`: the OpenTelemetry target allocator's default strategy
  ("consistent-hashing", open-telemetry/opentelemetry-operator
  cmd/otel-allocator/internal/allocation/consistent_hashing.go), which builds a
  github.com/buraksezer/consistent ring (v0.10.0) with PartitionCount 1061, ReplicationFactor 5,
  Load 1.1 and xxhash64. Members are replicated on a ring (keys `name + str(i)`); partition p (the
  xxhash64 of p as 8 little-endian bytes) goes to the first member clockwise whose partition count is
  still below ceil(partitions / members * Load); a target goes to partition xxhash64(key) % 1061.
  The allocator rebuilds the ring from scratch whenever the collector set changes (`SetCollectors`),
  and only locates new targets when targets change. It does not look at costs.
- `rendezvous_owners`: rendezvous (highest random weight) hashing: each key goes to the agent with
  the highest hash of (key, agent). Stateless; costs ignored.

`xxh64` is a pure-Python XXH64 (seed 0), bit-for-bit what cespare/xxhash computes.
"""

from __future__ import annotations

import hashlib
import math
import struct
from bisect import bisect_left
from collections.abc import Iterable, Mapping, Sequence

import numpy as np

__all__ = ["ConsistentHashingBoundedLoads", "loads_of", "rendezvous_owners", "xxh64"]

_M64 = (1 << 64) - 1
_P1, _P2, _P3 = 11400714785074694791, 14029467366897019727, 1609587929392839161
_P4, _P5 = 9650029242287828579, 2870177450012600261


def _rotl(x: int, r: int) -> int:
    return ((x << r) | (x >> (64 - r))) & _M64


def _round(acc: int, lane: int) -> int:
    return (_rotl((acc + lane * _P2) & _M64, 31) * _P1) & _M64


def _merge(acc: int, value: int) -> int:
    return ((acc ^ _round(0, value)) * _P1 + _P4) & _M64


def xxh64(data: bytes, seed: int = 0) -> int:
    """XXH64 of `data` (the xxHash specification, 64-bit variant)."""
    length, offset = len(data), 0
    if length >= 32:
        v1, v2 = (seed + _P1 + _P2) & _M64, (seed + _P2) & _M64
        v3, v4 = seed & _M64, (seed - _P1) & _M64
        while offset + 32 <= length:
            a, b, c, d = struct.unpack_from("<4Q", data, offset)
            v1, v2, v3, v4 = _round(v1, a), _round(v2, b), _round(v3, c), _round(v4, d)
            offset += 32
        h = (_rotl(v1, 1) + _rotl(v2, 7) + _rotl(v3, 12) + _rotl(v4, 18)) & _M64
        for v in (v1, v2, v3, v4):
            h = _merge(h, v)
    else:
        h = (seed + _P5) & _M64
    h = (h + length) & _M64
    while offset + 8 <= length:
        (lane,) = struct.unpack_from("<Q", data, offset)
        h = (_rotl(h ^ _round(0, lane), 27) * _P1 + _P4) & _M64
        offset += 8
    if offset + 4 <= length:
        (lane,) = struct.unpack_from("<I", data, offset)
        h = (_rotl(h ^ ((lane * _P1) & _M64), 23) * _P2 + _P3) & _M64
        offset += 4
    while offset < length:
        h = (_rotl(h ^ ((data[offset] * _P5) & _M64), 11) * _P1) & _M64
        offset += 1
    h ^= h >> 33
    h = (h * _P2) & _M64
    h ^= h >> 29
    h = (h * _P3) & _M64
    return h ^ (h >> 32)


class ConsistentHashingBoundedLoads:
    """buraksezer/consistent v0.10.0 as the OpenTelemetry target allocator configures it."""

    def __init__(
        self, members: Iterable[str], *, partition_count: int = 1061, replication_factor: int = 5, load: float = 1.1
    ):
        self.members = sorted(set(members))
        self.partition_count = partition_count
        self.replication_factor = replication_factor
        self.load = load
        ring: dict[int, str] = {}
        for name in self.members:
            for i in range(replication_factor):
                ring[xxh64(f"{name}{i}".encode())] = name  # a later collision overwrites, as the Go map does
        self._points = sorted(ring)
        self._ring = ring
        self.partition_owner: list[str] = []
        self.partition_loads: dict[str, int] = {}
        if self.members:
            self._distribute()

    def average_load(self) -> int:
        """The most partitions one member may own: ceil(floor(partitions / members) * Load), the integer
        division as in the library (so with more members than partitions nothing fits: it panics)."""
        return math.ceil((self.partition_count // len(self.members)) * self.load)

    def _distribute(self) -> None:
        bound = self.average_load()
        loads = dict.fromkeys(self.members, 0)
        owners = []
        points, ring = self._points, self._ring
        for part in range(self.partition_count):
            idx = bisect_left(points, xxh64(struct.pack("<Q", part)))
            for _ in range(len(points)):
                if idx >= len(points):
                    idx = 0
                member = ring[points[idx]]
                if loads[member] + 1 <= bound:
                    loads[member] += 1
                    owners.append(member)
                    break
                idx += 1
            else:  # the Go library panics here; Load > 1 makes it unreachable
                raise RuntimeError("not enough room to distribute partitions")
        self.partition_owner = owners
        self.partition_loads = loads

    def partition_of(self, key: str) -> int:
        return xxh64(key.encode()) % self.partition_count

    def locate(self, key: str) -> str:
        if not self.members:
            raise LookupError("no members")
        return self.partition_owner[self.partition_of(key)]

    def owners(self, keys: Iterable[str]) -> dict[str, str]:
        return {key: self.locate(key) for key in keys}


def _key_hashes(keys: Sequence[str]) -> np.ndarray:
    return np.fromiter(
        (int.from_bytes(hashlib.blake2b(k.encode(), digest_size=8).digest(), "little") for k in keys),
        dtype=np.uint64,
        count=len(keys),
    )


def _mix64(x: np.ndarray) -> np.ndarray:
    """splitmix64's finaliser: a bijection on 64 bits that spreads every input bit."""
    x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return x ^ (x >> np.uint64(31))


def rendezvous_owners(keys: Sequence[str], agents: Iterable[str], *, chunk: int = 2048) -> dict[str, str]:
    """Highest random weight: key -> the agent maximising mix64(h(key) ^ h(agent)), ties to the lower id.
    Vectorised over (key, agent) pairs with numpy, `chunk` keys at a time."""
    agent_ids = sorted(set(agents))
    if not agent_ids:
        raise LookupError("no agents")
    keys = list(keys)
    agent_hashes = _key_hashes(agent_ids)
    key_hashes = _key_hashes(keys)
    owners: dict[str, str] = {}
    with np.errstate(over="ignore"):
        for start in range(0, len(keys), chunk):
            block = key_hashes[start : start + chunk, None] ^ agent_hashes[None, :]
            best = np.argmax(_mix64(block), axis=1)  # first maximum = lowest agent id on a tie
            for key, index in zip(keys[start : start + chunk], best.tolist(), strict=False):
                owners[key] = agent_ids[index]
    return owners


def loads_of(owners: Mapping[str, str], costs: Mapping[str, float], agents: Iterable[str]) -> dict[str, float]:
    """agent -> sum of the costs of the keys it owns (0.0 for an agent that owns nothing)."""
    sums: dict[str, list[float]] = {a: [] for a in agents}
    for key, agent in owners.items():
        sums[agent].append(costs[key])
    return {a: math.fsum(v) for a, v in sums.items()}
