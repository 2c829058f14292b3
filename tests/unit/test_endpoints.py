"""host:port parsing, shared by configs, listen addresses and every collector's endpoint."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from dbintel.common.endpoints import HostPort, format_host_port, parse_host_port


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("db.example:5432", HostPort("db.example", 5432)),
        ("10.0.0.5:6379", HostPort("10.0.0.5", 6379)),
        ("[::1]:27017", HostPort("::1", 27017)),
        ("[fe80::1%eth0]:3306", HostPort("fe80::1%eth0", 3306)),
    ],
)
def test_parses_hosts_and_strips_ipv6_brackets(text: str, expected: HostPort) -> None:
    assert parse_host_port(text) == expected
    assert str(parse_host_port(text)) == text


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("db.example", "is not host:port"),
        ("db.example:", "is not host:port"),
        ("db.example:65536", "is not host:port"),
        ("db.example:0", "is not host:port"),
        (":5432", "has no host"),
        ("::1:5432", "must be written in brackets"),
        ("[::1:5432", "unclosed"),
        ("[]:5432", "unclosed or empty"),
    ],
)
def test_refuses_with_the_value_named(text: str, problem: str) -> None:
    with pytest.raises(ValueError, match=problem) as caught:
        parse_host_port(text)
    assert repr(text) in str(caught.value)


def test_listen_addresses_may_omit_the_host_and_ask_for_any_port() -> None:
    assert parse_host_port(":0", allow_empty_host=True, allow_port_zero=True) == HostPort("", 0)
    assert parse_host_port("[::]:8889", allow_empty_host=True) == HostPort("::", 8889)


@given(
    st.one_of(
        st.from_regex(r"[a-z0-9][a-z0-9.-]{0,20}", fullmatch=True),
        st.ip_addresses().map(str),
    ),
    st.integers(1, 65535),
)
def test_format_and_parse_are_inverse(host: str, port: int) -> None:
    assert parse_host_port(format_host_port(host, port)) == HostPort(host, port)
