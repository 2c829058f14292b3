import datetime

from google.protobuf import duration_pb2 as _duration_pb2
from google.protobuf import timestamp_pb2 as _timestamp_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class AgentState(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    AGENT_STATE_UNSPECIFIED: _ClassVar[AgentState]
    AGENT_STATE_ACTIVE: _ClassVar[AgentState]
    AGENT_STATE_DRAINING: _ClassVar[AgentState]
    AGENT_STATE_LEFT: _ClassVar[AgentState]
    AGENT_STATE_EXPIRED: _ClassVar[AgentState]

class AssignmentState(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    ASSIGNMENT_STATE_UNSPECIFIED: _ClassVar[AssignmentState]
    ASSIGNMENT_STATE_ASSIGNED: _ClassVar[AssignmentState]
    ASSIGNMENT_STATE_PENDING: _ClassVar[AssignmentState]
    ASSIGNMENT_STATE_UNASSIGNED: _ClassVar[AssignmentState]
AGENT_STATE_UNSPECIFIED: AgentState
AGENT_STATE_ACTIVE: AgentState
AGENT_STATE_DRAINING: AgentState
AGENT_STATE_LEFT: AgentState
AGENT_STATE_EXPIRED: AgentState
ASSIGNMENT_STATE_UNSPECIFIED: AssignmentState
ASSIGNMENT_STATE_ASSIGNED: AssignmentState
ASSIGNMENT_STATE_PENDING: AssignmentState
ASSIGNMENT_STATE_UNASSIGNED: AssignmentState

class ResourceStatus(_message.Message):
    __slots__ = ("resource_id", "last_poll_time", "last_poll_duration", "polls_total", "errors_total", "up", "query_baseline")
    RESOURCE_ID_FIELD_NUMBER: _ClassVar[int]
    LAST_POLL_TIME_FIELD_NUMBER: _ClassVar[int]
    LAST_POLL_DURATION_FIELD_NUMBER: _ClassVar[int]
    POLLS_TOTAL_FIELD_NUMBER: _ClassVar[int]
    ERRORS_TOTAL_FIELD_NUMBER: _ClassVar[int]
    UP_FIELD_NUMBER: _ClassVar[int]
    QUERY_BASELINE_FIELD_NUMBER: _ClassVar[int]
    resource_id: str
    last_poll_time: _timestamp_pb2.Timestamp
    last_poll_duration: _duration_pb2.Duration
    polls_total: int
    errors_total: int
    up: bool
    query_baseline: bytes
    def __init__(self, resource_id: _Optional[str] = ..., last_poll_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., last_poll_duration: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ..., polls_total: _Optional[int] = ..., errors_total: _Optional[int] = ..., up: _Optional[bool] = ..., query_baseline: _Optional[bytes] = ...) -> None: ...

class ResourceGrant(_message.Message):
    __slots__ = ("resource_id", "last_poll_time", "query_baseline")
    RESOURCE_ID_FIELD_NUMBER: _ClassVar[int]
    LAST_POLL_TIME_FIELD_NUMBER: _ClassVar[int]
    QUERY_BASELINE_FIELD_NUMBER: _ClassVar[int]
    resource_id: str
    last_poll_time: _timestamp_pb2.Timestamp
    query_baseline: bytes
    def __init__(self, resource_id: _Optional[str] = ..., last_poll_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., query_baseline: _Optional[bytes] = ...) -> None: ...

class Assignment(_message.Message):
    __slots__ = ("agent_id", "assignment_epoch", "leader_epoch", "resources")
    AGENT_ID_FIELD_NUMBER: _ClassVar[int]
    ASSIGNMENT_EPOCH_FIELD_NUMBER: _ClassVar[int]
    LEADER_EPOCH_FIELD_NUMBER: _ClassVar[int]
    RESOURCES_FIELD_NUMBER: _ClassVar[int]
    agent_id: str
    assignment_epoch: int
    leader_epoch: int
    resources: _containers.RepeatedCompositeFieldContainer[ResourceGrant]
    def __init__(self, agent_id: _Optional[str] = ..., assignment_epoch: _Optional[int] = ..., leader_epoch: _Optional[int] = ..., resources: _Optional[_Iterable[_Union[ResourceGrant, _Mapping]]] = ...) -> None: ...

class AgentInfo(_message.Message):
    __slots__ = ("agent_id", "pod_name", "zone", "version", "state", "last_heartbeat_time", "assignment_epoch", "applied_assignment_epoch", "target_resources", "current_resources", "load", "capacity", "unacknowledged", "unproven", "disconnected_time", "http_address")
    AGENT_ID_FIELD_NUMBER: _ClassVar[int]
    POD_NAME_FIELD_NUMBER: _ClassVar[int]
    ZONE_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    LAST_HEARTBEAT_TIME_FIELD_NUMBER: _ClassVar[int]
    ASSIGNMENT_EPOCH_FIELD_NUMBER: _ClassVar[int]
    APPLIED_ASSIGNMENT_EPOCH_FIELD_NUMBER: _ClassVar[int]
    TARGET_RESOURCES_FIELD_NUMBER: _ClassVar[int]
    CURRENT_RESOURCES_FIELD_NUMBER: _ClassVar[int]
    LOAD_FIELD_NUMBER: _ClassVar[int]
    CAPACITY_FIELD_NUMBER: _ClassVar[int]
    UNACKNOWLEDGED_FIELD_NUMBER: _ClassVar[int]
    UNPROVEN_FIELD_NUMBER: _ClassVar[int]
    DISCONNECTED_TIME_FIELD_NUMBER: _ClassVar[int]
    HTTP_ADDRESS_FIELD_NUMBER: _ClassVar[int]
    agent_id: str
    pod_name: str
    zone: str
    version: str
    state: AgentState
    last_heartbeat_time: _timestamp_pb2.Timestamp
    assignment_epoch: int
    applied_assignment_epoch: int
    target_resources: int
    current_resources: int
    load: float
    capacity: int
    unacknowledged: bool
    unproven: bool
    disconnected_time: _timestamp_pb2.Timestamp
    http_address: str
    def __init__(self, agent_id: _Optional[str] = ..., pod_name: _Optional[str] = ..., zone: _Optional[str] = ..., version: _Optional[str] = ..., state: _Optional[_Union[AgentState, str]] = ..., last_heartbeat_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., assignment_epoch: _Optional[int] = ..., applied_assignment_epoch: _Optional[int] = ..., target_resources: _Optional[int] = ..., current_resources: _Optional[int] = ..., load: _Optional[float] = ..., capacity: _Optional[int] = ..., unacknowledged: _Optional[bool] = ..., unproven: _Optional[bool] = ..., disconnected_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., http_address: _Optional[str] = ...) -> None: ...

class AssignmentEntry(_message.Message):
    __slots__ = ("resource_id", "agent_id", "state", "cost")
    RESOURCE_ID_FIELD_NUMBER: _ClassVar[int]
    AGENT_ID_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    COST_FIELD_NUMBER: _ClassVar[int]
    resource_id: str
    agent_id: str
    state: AssignmentState
    cost: float
    def __init__(self, resource_id: _Optional[str] = ..., agent_id: _Optional[str] = ..., state: _Optional[_Union[AssignmentState, str]] = ..., cost: _Optional[float] = ...) -> None: ...

class ResourceInfo(_message.Message):
    __slots__ = ("resource_id", "type", "name", "endpoint", "interval", "labels", "owner_agent_id", "cost", "pinned_agent_id")
    class LabelsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    RESOURCE_ID_FIELD_NUMBER: _ClassVar[int]
    TYPE_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    ENDPOINT_FIELD_NUMBER: _ClassVar[int]
    INTERVAL_FIELD_NUMBER: _ClassVar[int]
    LABELS_FIELD_NUMBER: _ClassVar[int]
    OWNER_AGENT_ID_FIELD_NUMBER: _ClassVar[int]
    COST_FIELD_NUMBER: _ClassVar[int]
    PINNED_AGENT_ID_FIELD_NUMBER: _ClassVar[int]
    resource_id: str
    type: str
    name: str
    endpoint: str
    interval: _duration_pb2.Duration
    labels: _containers.ScalarMap[str, str]
    owner_agent_id: str
    cost: float
    pinned_agent_id: str
    def __init__(self, resource_id: _Optional[str] = ..., type: _Optional[str] = ..., name: _Optional[str] = ..., endpoint: _Optional[str] = ..., interval: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ..., labels: _Optional[_Mapping[str, str]] = ..., owner_agent_id: _Optional[str] = ..., cost: _Optional[float] = ..., pinned_agent_id: _Optional[str] = ...) -> None: ...

class Move(_message.Message):
    __slots__ = ("resource_id", "from_agent_id", "to_agent_id")
    RESOURCE_ID_FIELD_NUMBER: _ClassVar[int]
    FROM_AGENT_ID_FIELD_NUMBER: _ClassVar[int]
    TO_AGENT_ID_FIELD_NUMBER: _ClassVar[int]
    resource_id: str
    from_agent_id: str
    to_agent_id: str
    def __init__(self, resource_id: _Optional[str] = ..., from_agent_id: _Optional[str] = ..., to_agent_id: _Optional[str] = ...) -> None: ...
