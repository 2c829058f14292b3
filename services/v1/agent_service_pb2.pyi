import datetime

from dbintel.v1 import types_pb2 as _types_pb2
from google.protobuf import duration_pb2 as _duration_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class AgentRegistration(_message.Message):
    __slots__ = ("pod_name", "zone", "version", "capacity", "instance_id", "session_secret", "http_address")
    POD_NAME_FIELD_NUMBER: _ClassVar[int]
    ZONE_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    CAPACITY_FIELD_NUMBER: _ClassVar[int]
    INSTANCE_ID_FIELD_NUMBER: _ClassVar[int]
    SESSION_SECRET_FIELD_NUMBER: _ClassVar[int]
    HTTP_ADDRESS_FIELD_NUMBER: _ClassVar[int]
    pod_name: str
    zone: str
    version: str
    capacity: int
    instance_id: str
    session_secret: str
    http_address: str
    def __init__(self, pod_name: _Optional[str] = ..., zone: _Optional[str] = ..., version: _Optional[str] = ..., capacity: _Optional[int] = ..., instance_id: _Optional[str] = ..., session_secret: _Optional[str] = ..., http_address: _Optional[str] = ...) -> None: ...

class HeartbeatRequest(_message.Message):
    __slots__ = ("agent_id", "registration", "applied_assignment_epoch", "current", "released", "sequence")
    AGENT_ID_FIELD_NUMBER: _ClassVar[int]
    REGISTRATION_FIELD_NUMBER: _ClassVar[int]
    APPLIED_ASSIGNMENT_EPOCH_FIELD_NUMBER: _ClassVar[int]
    CURRENT_FIELD_NUMBER: _ClassVar[int]
    RELEASED_FIELD_NUMBER: _ClassVar[int]
    SEQUENCE_FIELD_NUMBER: _ClassVar[int]
    agent_id: str
    registration: AgentRegistration
    applied_assignment_epoch: int
    current: _containers.RepeatedCompositeFieldContainer[_types_pb2.ResourceStatus]
    released: _containers.RepeatedCompositeFieldContainer[_types_pb2.ResourceStatus]
    sequence: int
    def __init__(self, agent_id: _Optional[str] = ..., registration: _Optional[_Union[AgentRegistration, _Mapping]] = ..., applied_assignment_epoch: _Optional[int] = ..., current: _Optional[_Iterable[_Union[_types_pb2.ResourceStatus, _Mapping]]] = ..., released: _Optional[_Iterable[_Union[_types_pb2.ResourceStatus, _Mapping]]] = ..., sequence: _Optional[int] = ...) -> None: ...

class HeartbeatResponse(_message.Message):
    __slots__ = ("assignment", "degraded", "heartbeat_interval", "coordinator_id", "leader_epoch", "answered_sequence", "disconnect_grace")
    ASSIGNMENT_FIELD_NUMBER: _ClassVar[int]
    DEGRADED_FIELD_NUMBER: _ClassVar[int]
    HEARTBEAT_INTERVAL_FIELD_NUMBER: _ClassVar[int]
    COORDINATOR_ID_FIELD_NUMBER: _ClassVar[int]
    LEADER_EPOCH_FIELD_NUMBER: _ClassVar[int]
    ANSWERED_SEQUENCE_FIELD_NUMBER: _ClassVar[int]
    DISCONNECT_GRACE_FIELD_NUMBER: _ClassVar[int]
    assignment: _types_pb2.Assignment
    degraded: bool
    heartbeat_interval: _duration_pb2.Duration
    coordinator_id: str
    leader_epoch: int
    answered_sequence: int
    disconnect_grace: _duration_pb2.Duration
    def __init__(self, assignment: _Optional[_Union[_types_pb2.Assignment, _Mapping]] = ..., degraded: _Optional[bool] = ..., heartbeat_interval: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ..., coordinator_id: _Optional[str] = ..., leader_epoch: _Optional[int] = ..., answered_sequence: _Optional[int] = ..., disconnect_grace: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ...) -> None: ...

class GetAssignmentsRequest(_message.Message):
    __slots__ = ("agent_id", "session_secret")
    AGENT_ID_FIELD_NUMBER: _ClassVar[int]
    SESSION_SECRET_FIELD_NUMBER: _ClassVar[int]
    agent_id: str
    session_secret: str
    def __init__(self, agent_id: _Optional[str] = ..., session_secret: _Optional[str] = ...) -> None: ...

class GetAssignmentsResponse(_message.Message):
    __slots__ = ("assignment", "degraded")
    ASSIGNMENT_FIELD_NUMBER: _ClassVar[int]
    DEGRADED_FIELD_NUMBER: _ClassVar[int]
    assignment: _types_pb2.Assignment
    degraded: bool
    def __init__(self, assignment: _Optional[_Union[_types_pb2.Assignment, _Mapping]] = ..., degraded: _Optional[bool] = ...) -> None: ...

class LeaveRequest(_message.Message):
    __slots__ = ("agent_id", "reason", "session_secret", "released")
    AGENT_ID_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    SESSION_SECRET_FIELD_NUMBER: _ClassVar[int]
    RELEASED_FIELD_NUMBER: _ClassVar[int]
    agent_id: str
    reason: str
    session_secret: str
    released: _containers.RepeatedCompositeFieldContainer[_types_pb2.ResourceStatus]
    def __init__(self, agent_id: _Optional[str] = ..., reason: _Optional[str] = ..., session_secret: _Optional[str] = ..., released: _Optional[_Iterable[_Union[_types_pb2.ResourceStatus, _Mapping]]] = ...) -> None: ...

class LeaveResponse(_message.Message):
    __slots__ = ("released_resources",)
    RELEASED_RESOURCES_FIELD_NUMBER: _ClassVar[int]
    released_resources: int
    def __init__(self, released_resources: _Optional[int] = ...) -> None: ...
