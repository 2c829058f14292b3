import datetime

from dbintel.v1 import types_pb2 as _types_pb2
from google.protobuf import timestamp_pb2 as _timestamp_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class GetClusterStatusRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class GetClusterStatusResponse(_message.Message):
    __slots__ = ("coordinator_id", "leader_id", "leader_epoch", "is_leader", "store_mode", "store_healthy", "agents_by_state", "resources_total", "resources_assigned", "resources_pending", "resources_unassigned", "assignment_epoch", "last_rebalance_time", "last_rebalance_reason", "rebalances_total")
    class AgentsByStateEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: int
        def __init__(self, key: _Optional[str] = ..., value: _Optional[int] = ...) -> None: ...
    COORDINATOR_ID_FIELD_NUMBER: _ClassVar[int]
    LEADER_ID_FIELD_NUMBER: _ClassVar[int]
    LEADER_EPOCH_FIELD_NUMBER: _ClassVar[int]
    IS_LEADER_FIELD_NUMBER: _ClassVar[int]
    STORE_MODE_FIELD_NUMBER: _ClassVar[int]
    STORE_HEALTHY_FIELD_NUMBER: _ClassVar[int]
    AGENTS_BY_STATE_FIELD_NUMBER: _ClassVar[int]
    RESOURCES_TOTAL_FIELD_NUMBER: _ClassVar[int]
    RESOURCES_ASSIGNED_FIELD_NUMBER: _ClassVar[int]
    RESOURCES_PENDING_FIELD_NUMBER: _ClassVar[int]
    RESOURCES_UNASSIGNED_FIELD_NUMBER: _ClassVar[int]
    ASSIGNMENT_EPOCH_FIELD_NUMBER: _ClassVar[int]
    LAST_REBALANCE_TIME_FIELD_NUMBER: _ClassVar[int]
    LAST_REBALANCE_REASON_FIELD_NUMBER: _ClassVar[int]
    REBALANCES_TOTAL_FIELD_NUMBER: _ClassVar[int]
    coordinator_id: str
    leader_id: str
    leader_epoch: int
    is_leader: bool
    store_mode: str
    store_healthy: bool
    agents_by_state: _containers.ScalarMap[str, int]
    resources_total: int
    resources_assigned: int
    resources_pending: int
    resources_unassigned: int
    assignment_epoch: int
    last_rebalance_time: _timestamp_pb2.Timestamp
    last_rebalance_reason: str
    rebalances_total: int
    def __init__(self, coordinator_id: _Optional[str] = ..., leader_id: _Optional[str] = ..., leader_epoch: _Optional[int] = ..., is_leader: _Optional[bool] = ..., store_mode: _Optional[str] = ..., store_healthy: _Optional[bool] = ..., agents_by_state: _Optional[_Mapping[str, int]] = ..., resources_total: _Optional[int] = ..., resources_assigned: _Optional[int] = ..., resources_pending: _Optional[int] = ..., resources_unassigned: _Optional[int] = ..., assignment_epoch: _Optional[int] = ..., last_rebalance_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., last_rebalance_reason: _Optional[str] = ..., rebalances_total: _Optional[int] = ...) -> None: ...

class ListAgentsRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ListAgentsResponse(_message.Message):
    __slots__ = ("agents",)
    AGENTS_FIELD_NUMBER: _ClassVar[int]
    agents: _containers.RepeatedCompositeFieldContainer[_types_pb2.AgentInfo]
    def __init__(self, agents: _Optional[_Iterable[_Union[_types_pb2.AgentInfo, _Mapping]]] = ...) -> None: ...

class ListAssignmentsRequest(_message.Message):
    __slots__ = ("agent_id",)
    AGENT_ID_FIELD_NUMBER: _ClassVar[int]
    agent_id: str
    def __init__(self, agent_id: _Optional[str] = ...) -> None: ...

class ListAssignmentsResponse(_message.Message):
    __slots__ = ("assignments",)
    ASSIGNMENTS_FIELD_NUMBER: _ClassVar[int]
    assignments: _containers.RepeatedCompositeFieldContainer[_types_pb2.AssignmentEntry]
    def __init__(self, assignments: _Optional[_Iterable[_Union[_types_pb2.AssignmentEntry, _Mapping]]] = ...) -> None: ...

class ListResourcesRequest(_message.Message):
    __slots__ = ("type",)
    TYPE_FIELD_NUMBER: _ClassVar[int]
    type: str
    def __init__(self, type: _Optional[str] = ...) -> None: ...

class ListResourcesResponse(_message.Message):
    __slots__ = ("resources",)
    RESOURCES_FIELD_NUMBER: _ClassVar[int]
    resources: _containers.RepeatedCompositeFieldContainer[_types_pb2.ResourceInfo]
    def __init__(self, resources: _Optional[_Iterable[_Union[_types_pb2.ResourceInfo, _Mapping]]] = ...) -> None: ...

class RebalanceRequest(_message.Message):
    __slots__ = ("apply",)
    APPLY_FIELD_NUMBER: _ClassVar[int]
    apply: bool
    def __init__(self, apply: _Optional[bool] = ...) -> None: ...

class RebalanceResponse(_message.Message):
    __slots__ = ("moves", "applied", "spread_before", "spread_after")
    MOVES_FIELD_NUMBER: _ClassVar[int]
    APPLIED_FIELD_NUMBER: _ClassVar[int]
    SPREAD_BEFORE_FIELD_NUMBER: _ClassVar[int]
    SPREAD_AFTER_FIELD_NUMBER: _ClassVar[int]
    moves: _containers.RepeatedCompositeFieldContainer[_types_pb2.Move]
    applied: bool
    spread_before: float
    spread_after: float
    def __init__(self, moves: _Optional[_Iterable[_Union[_types_pb2.Move, _Mapping]]] = ..., applied: _Optional[bool] = ..., spread_before: _Optional[float] = ..., spread_after: _Optional[float] = ...) -> None: ...

class DrainAgentRequest(_message.Message):
    __slots__ = ("agent_id", "apply")
    AGENT_ID_FIELD_NUMBER: _ClassVar[int]
    APPLY_FIELD_NUMBER: _ClassVar[int]
    agent_id: str
    apply: bool
    def __init__(self, agent_id: _Optional[str] = ..., apply: _Optional[bool] = ...) -> None: ...

class DrainAgentResponse(_message.Message):
    __slots__ = ("moves", "applied")
    MOVES_FIELD_NUMBER: _ClassVar[int]
    APPLIED_FIELD_NUMBER: _ClassVar[int]
    moves: _containers.RepeatedCompositeFieldContainer[_types_pb2.Move]
    applied: bool
    def __init__(self, moves: _Optional[_Iterable[_Union[_types_pb2.Move, _Mapping]]] = ..., applied: _Optional[bool] = ...) -> None: ...
