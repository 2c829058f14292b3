"""`host:port` strings, parsed once for every role: configs, listen addresses and database endpoints.

IPv6 hosts are written in brackets (`[::1]:5432`); the host returned has the brackets removed,
which is what socket APIs and drivers take. `format_host_port` puts them back.
"""

from __future__ import annotations

from typing import NamedTuple


class HostPort(NamedTuple):
    host: str  # without brackets; "" when the string gave none (a listen address such as ":8889")
    port: int

    def __str__(self) -> str:
        return format_host_port(self.host, self.port)


def parse_host_port(value: str, *, allow_empty_host: bool = False, allow_port_zero: bool = False) -> HostPort:
    """Split `host:port`; raise ValueError naming the value and what is wrong with it."""
    host, sep, port_text = value.rpartition(":")
    lowest = 0 if allow_port_zero else 1
    if not sep or not port_text.isdigit() or not lowest <= int(port_text) < 65536:
        raise ValueError(f"{value!r} is not host:port (port {lowest}-65535)")
    if host.startswith("["):
        if not host.endswith("]") or len(host) < 3:
            raise ValueError(f"{value!r} has an unclosed or empty [IPv6] host")
        host = host[1:-1]
    elif ":" in host:
        raise ValueError(f"{value!r}: an IPv6 host must be written in brackets, e.g. [{host}]:{port_text}")
    if not host and not allow_empty_host:
        raise ValueError(f"{value!r} has no host")
    return HostPort(host, int(port_text))


def format_host_port(host: str, port: int) -> str:
    """The inverse of parse_host_port: brackets around an IPv6 host."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
