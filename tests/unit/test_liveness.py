"""The agent's stall and stop deadlines against node_timeout and disconnect_grace
(dbintel.common.liveness). Pure."""

from __future__ import annotations

from datetime import timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st

from dbintel.agent.coordinator_link import keepalive_options
from dbintel.common.config import ConfigError, parse_config
from dbintel.common.liveness import (
    DEFAULT_DISCONNECT_GRACE_S,
    MIN_DISCONNECT_GRACE_S,
    MIN_KEEPALIVE_TIME_S,
    MIN_RESPONSE_TIMEOUT_S,
    STOP_FRACTION,
    disconnect_timings,
    link_timings,
    smallest_node_timeout,
)

heartbeats = st.floats(min_value=0.1, max_value=600.0, allow_nan=False)


@given(heartbeats, st.floats(min_value=1.0, max_value=50.0))
def test_every_accepted_setting_detects_a_frozen_replica_and_stops_inside_node_timeout(heartbeat, stretch):
    node_timeout = smallest_node_timeout(heartbeat) * stretch
    t = link_timings(heartbeat, node_timeout)
    # Worst case from the send time of the last answered heartbeat: the next goes out one interval
    # later, waits response_timeout, and the first heartbeat on a fresh stream waits as long again.
    assert heartbeat + 2 * t.response_timeout <= STOP_FRACTION * node_timeout * (1 + 1e-9)
    assert t.stop_after < node_timeout
    assert t.response_timeout >= max(MIN_RESPONSE_TIMEOUT_S, heartbeat / 4) * (1 - 1e-9)


@given(heartbeats, st.floats(min_value=0.05, max_value=0.999))
def test_config_refuses_a_node_timeout_under_the_floor_and_names_it(heartbeat, share):
    node_timeout = smallest_node_timeout(heartbeat) * share
    hb_ms, nt_ms = round(heartbeat * 1000), int(node_timeout * 1000)
    if nt_ms >= smallest_node_timeout(hb_ms / 1000) * 1000 or nt_ms < 1:
        return  # rounding to milliseconds crossed the floor
    text = f"scaling: {{coordinator: {{heartbeat_interval: {hb_ms}ms, node_timeout: {nt_ms}ms}}}}"
    with pytest.raises(ConfigError) as info:
        parse_config(text)
    (problem,) = [p for p in info.value.problems if "node_timeout" in p]
    assert problem.startswith("scaling.coordinator.node_timeout: must be at least")


def test_the_defaults_and_the_e2e_settings_are_accepted_with_room():
    defaults = parse_config("{}").scaling.coordinator
    hb, nt = defaults.heartbeat_interval.total_seconds(), defaults.node_timeout.total_seconds()
    assert nt >= smallest_node_timeout(hb)
    t = link_timings(1.0, 6.0)
    assert t.response_timeout == pytest.approx(1.9) and t.stop_after == pytest.approx(4.8)
    assert link_timings(30.0, 90.0).response_timeout == pytest.approx(21.0)
    assert parse_config(
        "scaling: {coordinator: {heartbeat_interval: 1s, node_timeout: 2s}}"
    ).scaling.coordinator.node_timeout == timedelta(seconds=2)


graces = st.floats(min_value=MIN_DISCONNECT_GRACE_S, max_value=600.0, allow_nan=False)


@given(graces)
def test_a_live_agent_whose_connection_broke_stops_before_the_grace_ends(grace):
    """Worst case: the replica sees the end at t_s, the agent's next ping goes keepalive_time later
    and times out keepalive_timeout after; then it has stop_after. All of that, with a margin of a
    sixth of the grace, fits before t_s + grace."""
    t = disconnect_timings(grace)
    assert t.keepalive_time >= MIN_KEEPALIVE_TIME_S
    assert t.keepalive_time + t.keepalive_timeout + t.stop_after <= grace * 5 / 6 * (1 + 1e-9)
    assert t.stop_after > 0


def test_disconnect_timings_at_the_default_grace():
    t = disconnect_timings(DEFAULT_DISCONNECT_GRACE_S)
    assert (t.keepalive_time, t.keepalive_timeout, t.stop_after) == pytest.approx((1.0, 2.0, 2.0))


@pytest.mark.parametrize("value", ["1s", "2900ms", "-1s"])
def test_config_refuses_a_disconnect_grace_too_short_to_reconnect_in(value):
    with pytest.raises(ConfigError) as info:
        parse_config(f"scaling: {{coordinator: {{disconnect_grace: {value}}}}}")
    assert any(p.startswith("scaling.coordinator.disconnect_grace:") and value in p for p in info.value.problems), (
        info.value.problems
    )


@pytest.mark.parametrize(("value", "seconds"), [("0s", 0), ("3s", 3), ("6s", 6), ("1m", 60)])
def test_config_accepts_off_or_a_grace_of_at_least_3s(value, seconds):
    config = parse_config(f"scaling: {{coordinator: {{disconnect_grace: {value}}}}}")
    assert config.scaling.coordinator.disconnect_grace == timedelta(seconds=seconds)


def test_the_agent_channel_times_a_keepalive_ping_out_by_the_disconnect_timings():
    # gRPC core times an unanswered keepalive ping out by grpc.http2.ping_timeout_ms (1 min by default),
    # not by keepalive_timeout_ms: both must carry the timeout, or a broken connection goes unnoticed.
    options = dict(keepalive_options(disconnect_timings(6.0)))
    assert options == {
        "grpc.keepalive_time_ms": 1000,
        "grpc.keepalive_timeout_ms": 2000,
        "grpc.http2.ping_timeout_ms": 2000,
    }
    assert dict(keepalive_options(None))["grpc.keepalive_time_ms"] == 300_000  # the grace is off: no hurry
