from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from typing import ClassVar as _ClassVar, Optional as _Optional

DESCRIPTOR: _descriptor.FileDescriptor

class VoteRequest(_message.Message):
    __slots__ = ("term", "candidate", "current_state", "cluster_size", "protocol", "pre_vote", "transfer")
    TERM_FIELD_NUMBER: _ClassVar[int]
    CANDIDATE_FIELD_NUMBER: _ClassVar[int]
    CURRENT_STATE_FIELD_NUMBER: _ClassVar[int]
    CLUSTER_SIZE_FIELD_NUMBER: _ClassVar[int]
    PROTOCOL_FIELD_NUMBER: _ClassVar[int]
    PRE_VOTE_FIELD_NUMBER: _ClassVar[int]
    TRANSFER_FIELD_NUMBER: _ClassVar[int]
    term: int
    candidate: str
    current_state: bytes
    cluster_size: int
    protocol: str
    pre_vote: bool
    transfer: bool
    def __init__(self, term: _Optional[int] = ..., candidate: _Optional[str] = ..., current_state: _Optional[bytes] = ..., cluster_size: _Optional[int] = ..., protocol: _Optional[str] = ..., pre_vote: _Optional[bool] = ..., transfer: _Optional[bool] = ...) -> None: ...

class VoteResponse(_message.Message):
    __slots__ = ("term", "granted", "voter", "cluster_size", "protocol", "pre_vote")
    TERM_FIELD_NUMBER: _ClassVar[int]
    GRANTED_FIELD_NUMBER: _ClassVar[int]
    VOTER_FIELD_NUMBER: _ClassVar[int]
    CLUSTER_SIZE_FIELD_NUMBER: _ClassVar[int]
    PROTOCOL_FIELD_NUMBER: _ClassVar[int]
    PRE_VOTE_FIELD_NUMBER: _ClassVar[int]
    term: int
    granted: bool
    voter: str
    cluster_size: int
    protocol: str
    pre_vote: bool
    def __init__(self, term: _Optional[int] = ..., granted: _Optional[bool] = ..., voter: _Optional[str] = ..., cluster_size: _Optional[int] = ..., protocol: _Optional[str] = ..., pre_vote: _Optional[bool] = ...) -> None: ...

class Heartbeat(_message.Message):
    __slots__ = ("term", "leader", "cluster_size", "protocol", "seq", "transfer_to")
    TERM_FIELD_NUMBER: _ClassVar[int]
    LEADER_FIELD_NUMBER: _ClassVar[int]
    CLUSTER_SIZE_FIELD_NUMBER: _ClassVar[int]
    PROTOCOL_FIELD_NUMBER: _ClassVar[int]
    SEQ_FIELD_NUMBER: _ClassVar[int]
    TRANSFER_TO_FIELD_NUMBER: _ClassVar[int]
    term: int
    leader: str
    cluster_size: int
    protocol: str
    seq: int
    transfer_to: str
    def __init__(self, term: _Optional[int] = ..., leader: _Optional[str] = ..., cluster_size: _Optional[int] = ..., protocol: _Optional[str] = ..., seq: _Optional[int] = ..., transfer_to: _Optional[str] = ...) -> None: ...

class HeartbeatAck(_message.Message):
    __slots__ = ("term", "follower", "seq", "priority", "window_us", "cluster_size", "protocol")
    TERM_FIELD_NUMBER: _ClassVar[int]
    FOLLOWER_FIELD_NUMBER: _ClassVar[int]
    SEQ_FIELD_NUMBER: _ClassVar[int]
    PRIORITY_FIELD_NUMBER: _ClassVar[int]
    WINDOW_US_FIELD_NUMBER: _ClassVar[int]
    CLUSTER_SIZE_FIELD_NUMBER: _ClassVar[int]
    PROTOCOL_FIELD_NUMBER: _ClassVar[int]
    term: int
    follower: str
    seq: int
    priority: int
    window_us: int
    cluster_size: int
    protocol: str
    def __init__(self, term: _Optional[int] = ..., follower: _Optional[str] = ..., seq: _Optional[int] = ..., priority: _Optional[int] = ..., window_us: _Optional[int] = ..., cluster_size: _Optional[int] = ..., protocol: _Optional[str] = ...) -> None: ...
