"""The agent's stall and stop deadlines against node_timeout (dbintel.common.liveness). Pure."""

from __future__ import annotations

from datetime import timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st

from dbintel.common.config import ConfigError, parse_config
from dbintel.common.liveness import MIN_RESPONSE_TIMEOUT_S, STOP_FRACTION, link_timings, smallest_node_timeout

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
