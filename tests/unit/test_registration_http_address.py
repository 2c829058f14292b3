"""AgentRegistration.http_address: checked by the coordinator, kept with the registration, and absent
from records written before the field (they read as "")."""

from __future__ import annotations

import json

import pytest

from dbintel.coordinator import validation
from dbintel.coordinator.store.redis_store import _agent_from_json
from dbintel.v1 import agent_service_pb2 as apb


@pytest.mark.parametrize("address", ["", "10.0.0.7:8889", "agent-0.agents.svc:8889", "[fd00::7]:8889"])
def test_valid_addresses_are_kept(address):
    registration = validation.registration(apb.AgentRegistration(http_address=address))
    assert registration.http_address == address


@pytest.mark.parametrize(
    "address",
    ["10.0.0.7", "10.0.0.7:0", "10.0.0.7:65536", "fd00::7:8889", "host name:80", "a\nb:80", "x" * 300 + ":80"],
)
def test_malformed_addresses_are_refused_naming_the_field(address):
    with pytest.raises(validation.InvalidArgument, match=r"registration\.http_address"):
        validation.registration(apb.AgentRegistration(http_address=address))


def test_a_record_from_before_the_field_reads_as_empty():
    record = _agent_from_json("a", json.dumps({"reg": {"pod_name": "p", "instance_id": "i"}, "state": "active"}))
    assert record.registration.http_address == "" and record.registration.pod_name == "p"
