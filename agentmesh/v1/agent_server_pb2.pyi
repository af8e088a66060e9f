from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class ReplyStatus(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    OK: _ClassVar[ReplyStatus]
    ERROR: _ClassVar[ReplyStatus]
    UNKNOWN_AGENT: _ClassVar[ReplyStatus]
    UNKNOWN_METHOD: _ClassVar[ReplyStatus]
    BAD_PAYLOAD: _ClassVar[ReplyStatus]
    TOO_LARGE: _ClassVar[ReplyStatus]
    STALE_EPOCH: _ClassVar[ReplyStatus]
    OVERLOADED: _ClassVar[ReplyStatus]
    EXPIRED: _ClassVar[ReplyStatus]
    UNAVAILABLE: _ClassVar[ReplyStatus]
    CAPACITY: _ClassVar[ReplyStatus]
    CLASS_NOT_FOUND: _ClassVar[ReplyStatus]
    CREATION_FAILED: _ClassVar[ReplyStatus]
    CLASS_NOT_SENT: _ClassVar[ReplyStatus]
    UNAUTHENTICATED: _ClassVar[ReplyStatus]
    VERSION_MISMATCH: _ClassVar[ReplyStatus]
OK: ReplyStatus
ERROR: ReplyStatus
UNKNOWN_AGENT: ReplyStatus
UNKNOWN_METHOD: ReplyStatus
BAD_PAYLOAD: ReplyStatus
TOO_LARGE: ReplyStatus
STALE_EPOCH: ReplyStatus
OVERLOADED: ReplyStatus
EXPIRED: ReplyStatus
UNAVAILABLE: ReplyStatus
CAPACITY: ReplyStatus
CLASS_NOT_FOUND: ReplyStatus
CREATION_FAILED: ReplyStatus
CLASS_NOT_SENT: ReplyStatus
UNAUTHENTICATED: ReplyStatus
VERSION_MISMATCH: ReplyStatus

class ClassRef(_message.Message):
    __slots__ = ("name", "digest", "blob")
    NAME_FIELD_NUMBER: _ClassVar[int]
    DIGEST_FIELD_NUMBER: _ClassVar[int]
    BLOB_FIELD_NUMBER: _ClassVar[int]
    name: str
    digest: str
    blob: bytes
    def __init__(self, name: _Optional[str] = ..., digest: _Optional[str] = ..., blob: _Optional[bytes] = ...) -> None: ...

class CreateAgentRequest(_message.Message):
    __slots__ = ("agent_id", "cls", "init_args", "state", "state_seq", "checkpoints_on", "answered", "durable")
    AGENT_ID_FIELD_NUMBER: _ClassVar[int]
    CLS_FIELD_NUMBER: _ClassVar[int]
    INIT_ARGS_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    STATE_SEQ_FIELD_NUMBER: _ClassVar[int]
    CHECKPOINTS_ON_FIELD_NUMBER: _ClassVar[int]
    ANSWERED_FIELD_NUMBER: _ClassVar[int]
    DURABLE_FIELD_NUMBER: _ClassVar[int]
    agent_id: str
    cls: ClassRef
    init_args: bytes
    state: bytes
    state_seq: int
    checkpoints_on: bool
    answered: _containers.RepeatedCompositeFieldContainer[Reply]
    durable: bool
    def __init__(self, agent_id: _Optional[str] = ..., cls: _Optional[_Union[ClassRef, _Mapping]] = ..., init_args: _Optional[bytes] = ..., state: _Optional[bytes] = ..., state_seq: _Optional[int] = ..., checkpoints_on: _Optional[bool] = ..., answered: _Optional[_Iterable[_Union[Reply, _Mapping]]] = ..., durable: _Optional[bool] = ...) -> None: ...

class CreateAgentResponse(_message.Message):
    __slots__ = ("agent_id", "name", "server_id", "epoch", "existed")
    AGENT_ID_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    SERVER_ID_FIELD_NUMBER: _ClassVar[int]
    EPOCH_FIELD_NUMBER: _ClassVar[int]
    EXISTED_FIELD_NUMBER: _ClassVar[int]
    agent_id: str
    name: str
    server_id: str
    epoch: int
    existed: bool
    def __init__(self, agent_id: _Optional[str] = ..., name: _Optional[str] = ..., server_id: _Optional[str] = ..., epoch: _Optional[int] = ..., existed: _Optional[bool] = ...) -> None: ...

class DeleteAgentRequest(_message.Message):
    __slots__ = ("agent_id", "agent_ids", "moved")
    AGENT_ID_FIELD_NUMBER: _ClassVar[int]
    AGENT_IDS_FIELD_NUMBER: _ClassVar[int]
    MOVED_FIELD_NUMBER: _ClassVar[int]
    agent_id: str
    agent_ids: _containers.RepeatedScalarFieldContainer[str]
    moved: bool
    def __init__(self, agent_id: _Optional[str] = ..., agent_ids: _Optional[_Iterable[str]] = ..., moved: _Optional[bool] = ...) -> None: ...

class DeleteAgentResponse(_message.Message):
    __slots__ = ("deleted", "count")
    DELETED_FIELD_NUMBER: _ClassVar[int]
    COUNT_FIELD_NUMBER: _ClassVar[int]
    deleted: bool
    count: int
    def __init__(self, deleted: _Optional[bool] = ..., count: _Optional[int] = ...) -> None: ...

class Call(_message.Message):
    __slots__ = ("call_id", "agent_id", "method", "payload", "epoch", "notify", "trace")
    class TraceEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    CALL_ID_FIELD_NUMBER: _ClassVar[int]
    AGENT_ID_FIELD_NUMBER: _ClassVar[int]
    METHOD_FIELD_NUMBER: _ClassVar[int]
    PAYLOAD_FIELD_NUMBER: _ClassVar[int]
    EPOCH_FIELD_NUMBER: _ClassVar[int]
    NOTIFY_FIELD_NUMBER: _ClassVar[int]
    TRACE_FIELD_NUMBER: _ClassVar[int]
    call_id: str
    agent_id: str
    method: str
    payload: bytes
    epoch: int
    notify: bool
    trace: _containers.ScalarMap[str, str]
    def __init__(self, call_id: _Optional[str] = ..., agent_id: _Optional[str] = ..., method: _Optional[str] = ..., payload: _Optional[bytes] = ..., epoch: _Optional[int] = ..., notify: _Optional[bool] = ..., trace: _Optional[_Mapping[str, str]] = ...) -> None: ...

class Reply(_message.Message):
    __slots__ = ("call_id", "status", "payload", "error_type", "error_message", "traceback", "seq", "state", "stream", "agent_id", "answered")
    CALL_ID_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    PAYLOAD_FIELD_NUMBER: _ClassVar[int]
    ERROR_TYPE_FIELD_NUMBER: _ClassVar[int]
    ERROR_MESSAGE_FIELD_NUMBER: _ClassVar[int]
    TRACEBACK_FIELD_NUMBER: _ClassVar[int]
    SEQ_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    STREAM_FIELD_NUMBER: _ClassVar[int]
    AGENT_ID_FIELD_NUMBER: _ClassVar[int]
    ANSWERED_FIELD_NUMBER: _ClassVar[int]
    call_id: str
    status: ReplyStatus
    payload: bytes
    error_type: str
    error_message: str
    traceback: str
    seq: int
    state: bytes
    stream: bool
    agent_id: str
    answered: _containers.RepeatedCompositeFieldContainer[Reply]
    def __init__(self, call_id: _Optional[str] = ..., status: _Optional[_Union[ReplyStatus, str]] = ..., payload: _Optional[bytes] = ..., error_type: _Optional[str] = ..., error_message: _Optional[str] = ..., traceback: _Optional[str] = ..., seq: _Optional[int] = ..., state: _Optional[bytes] = ..., stream: _Optional[bool] = ..., agent_id: _Optional[str] = ..., answered: _Optional[_Iterable[_Union[Reply, _Mapping]]] = ...) -> None: ...

class HandshakeRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class HandshakeResponse(_message.Message):
    __slots__ = ("server_id", "namespace", "server_nonce", "proof")
    SERVER_ID_FIELD_NUMBER: _ClassVar[int]
    NAMESPACE_FIELD_NUMBER: _ClassVar[int]
    SERVER_NONCE_FIELD_NUMBER: _ClassVar[int]
    PROOF_FIELD_NUMBER: _ClassVar[int]
    server_id: str
    namespace: str
    server_nonce: bytes
    proof: bytes
    def __init__(self, server_id: _Optional[str] = ..., namespace: _Optional[str] = ..., server_nonce: _Optional[bytes] = ..., proof: _Optional[bytes] = ...) -> None: ...

class Hello(_message.Message):
    __slots__ = ("server_id", "epoch", "max_message_size", "file_dir")
    SERVER_ID_FIELD_NUMBER: _ClassVar[int]
    EPOCH_FIELD_NUMBER: _ClassVar[int]
    MAX_MESSAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    FILE_DIR_FIELD_NUMBER: _ClassVar[int]
    server_id: str
    epoch: int
    max_message_size: int
    file_dir: str
    def __init__(self, server_id: _Optional[str] = ..., epoch: _Optional[int] = ..., max_message_size: _Optional[int] = ..., file_dir: _Optional[str] = ...) -> None: ...

class ClientFrame(_message.Message):
    __slots__ = ("calls", "cancels")
    CALLS_FIELD_NUMBER: _ClassVar[int]
    CANCELS_FIELD_NUMBER: _ClassVar[int]
    calls: _containers.RepeatedCompositeFieldContainer[Call]
    cancels: _containers.RepeatedCompositeFieldContainer[Cancel]
    def __init__(self, calls: _Optional[_Iterable[_Union[Call, _Mapping]]] = ..., cancels: _Optional[_Iterable[_Union[Cancel, _Mapping]]] = ...) -> None: ...

class Cancel(_message.Message):
    __slots__ = ("call_id", "agent_id")
    CALL_ID_FIELD_NUMBER: _ClassVar[int]
    AGENT_ID_FIELD_NUMBER: _ClassVar[int]
    call_id: str
    agent_id: str
    def __init__(self, call_id: _Optional[str] = ..., agent_id: _Optional[str] = ...) -> None: ...

class ServerFrame(_message.Message):
    __slots__ = ("hello", "replies")
    HELLO_FIELD_NUMBER: _ClassVar[int]
    REPLIES_FIELD_NUMBER: _ClassVar[int]
    hello: Hello
    replies: _containers.RepeatedCompositeFieldContainer[Reply]
    def __init__(self, hello: _Optional[_Union[Hello, _Mapping]] = ..., replies: _Optional[_Iterable[_Union[Reply, _Mapping]]] = ...) -> None: ...

class FetchRequest(_message.Message):
    __slots__ = ("call_id", "agent_id")
    CALL_ID_FIELD_NUMBER: _ClassVar[int]
    AGENT_ID_FIELD_NUMBER: _ClassVar[int]
    call_id: str
    agent_id: str
    def __init__(self, call_id: _Optional[str] = ..., agent_id: _Optional[str] = ...) -> None: ...

class InfoRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ServerInfo(_message.Message):
    __slots__ = ("server_id", "host", "port", "capacity", "agents", "inflight", "classes", "python", "version", "epoch", "pid", "status", "cpu_percent", "memory_mib", "uptime", "file_dir")
    SERVER_ID_FIELD_NUMBER: _ClassVar[int]
    HOST_FIELD_NUMBER: _ClassVar[int]
    PORT_FIELD_NUMBER: _ClassVar[int]
    CAPACITY_FIELD_NUMBER: _ClassVar[int]
    AGENTS_FIELD_NUMBER: _ClassVar[int]
    INFLIGHT_FIELD_NUMBER: _ClassVar[int]
    CLASSES_FIELD_NUMBER: _ClassVar[int]
    PYTHON_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    EPOCH_FIELD_NUMBER: _ClassVar[int]
    PID_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    CPU_PERCENT_FIELD_NUMBER: _ClassVar[int]
    MEMORY_MIB_FIELD_NUMBER: _ClassVar[int]
    UPTIME_FIELD_NUMBER: _ClassVar[int]
    FILE_DIR_FIELD_NUMBER: _ClassVar[int]
    server_id: str
    host: str
    port: int
    capacity: int
    agents: int
    inflight: int
    classes: _containers.RepeatedScalarFieldContainer[str]
    python: str
    version: str
    epoch: int
    pid: int
    status: str
    cpu_percent: float
    memory_mib: float
    uptime: float
    file_dir: str
    def __init__(self, server_id: _Optional[str] = ..., host: _Optional[str] = ..., port: _Optional[int] = ..., capacity: _Optional[int] = ..., agents: _Optional[int] = ..., inflight: _Optional[int] = ..., classes: _Optional[_Iterable[str]] = ..., python: _Optional[str] = ..., version: _Optional[str] = ..., epoch: _Optional[int] = ..., pid: _Optional[int] = ..., status: _Optional[str] = ..., cpu_percent: _Optional[float] = ..., memory_mib: _Optional[float] = ..., uptime: _Optional[float] = ..., file_dir: _Optional[str] = ...) -> None: ...

class StateRequest(_message.Message):
    __slots__ = ("agent_id",)
    AGENT_ID_FIELD_NUMBER: _ClassVar[int]
    agent_id: str
    def __init__(self, agent_id: _Optional[str] = ...) -> None: ...

class AgentState(_message.Message):
    __slots__ = ("agent_id", "cls", "init_args", "state", "seq")
    AGENT_ID_FIELD_NUMBER: _ClassVar[int]
    CLS_FIELD_NUMBER: _ClassVar[int]
    INIT_ARGS_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    SEQ_FIELD_NUMBER: _ClassVar[int]
    agent_id: str
    cls: ClassRef
    init_args: bytes
    state: bytes
    seq: int
    def __init__(self, agent_id: _Optional[str] = ..., cls: _Optional[_Union[ClassRef, _Mapping]] = ..., init_args: _Optional[bytes] = ..., state: _Optional[bytes] = ..., seq: _Optional[int] = ...) -> None: ...

class ListAgentsRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class AgentSummary(_message.Message):
    __slots__ = ("agent_id", "name", "type", "cls", "seq", "queued", "checkpoints_on")
    AGENT_ID_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    TYPE_FIELD_NUMBER: _ClassVar[int]
    CLS_FIELD_NUMBER: _ClassVar[int]
    SEQ_FIELD_NUMBER: _ClassVar[int]
    QUEUED_FIELD_NUMBER: _ClassVar[int]
    CHECKPOINTS_ON_FIELD_NUMBER: _ClassVar[int]
    agent_id: str
    name: str
    type: str
    cls: str
    seq: int
    queued: int
    checkpoints_on: bool
    def __init__(self, agent_id: _Optional[str] = ..., name: _Optional[str] = ..., type: _Optional[str] = ..., cls: _Optional[str] = ..., seq: _Optional[int] = ..., queued: _Optional[int] = ..., checkpoints_on: _Optional[bool] = ...) -> None: ...

class AgentList(_message.Message):
    __slots__ = ("agents",)
    AGENTS_FIELD_NUMBER: _ClassVar[int]
    agents: _containers.RepeatedCompositeFieldContainer[AgentSummary]
    def __init__(self, agents: _Optional[_Iterable[_Union[AgentSummary, _Mapping]]] = ...) -> None: ...

class DeleteAllAgentsRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class DeleteAllAgentsResponse(_message.Message):
    __slots__ = ("deleted",)
    DELETED_FIELD_NUMBER: _ClassVar[int]
    deleted: int
    def __init__(self, deleted: _Optional[int] = ...) -> None: ...

class StopRequest(_message.Message):
    __slots__ = ("grace",)
    GRACE_FIELD_NUMBER: _ClassVar[int]
    grace: float
    def __init__(self, grace: _Optional[float] = ...) -> None: ...

class StopResponse(_message.Message):
    __slots__ = ("server_id",)
    SERVER_ID_FIELD_NUMBER: _ClassVar[int]
    server_id: str
    def __init__(self, server_id: _Optional[str] = ...) -> None: ...

class FileRequest(_message.Message):
    __slots__ = ("path",)
    PATH_FIELD_NUMBER: _ClassVar[int]
    path: str
    def __init__(self, path: _Optional[str] = ...) -> None: ...

class FileChunk(_message.Message):
    __slots__ = ("data", "size")
    DATA_FIELD_NUMBER: _ClassVar[int]
    SIZE_FIELD_NUMBER: _ClassVar[int]
    data: bytes
    size: int
    def __init__(self, data: _Optional[bytes] = ..., size: _Optional[int] = ...) -> None: ...

class StreamRequest(_message.Message):
    __slots__ = ("call_id", "agent_id")
    CALL_ID_FIELD_NUMBER: _ClassVar[int]
    AGENT_ID_FIELD_NUMBER: _ClassVar[int]
    call_id: str
    agent_id: str
    def __init__(self, call_id: _Optional[str] = ..., agent_id: _Optional[str] = ...) -> None: ...

class StreamItem(_message.Message):
    __slots__ = ("items", "end")
    ITEMS_FIELD_NUMBER: _ClassVar[int]
    END_FIELD_NUMBER: _ClassVar[int]
    items: _containers.RepeatedScalarFieldContainer[bytes]
    end: Reply
    def __init__(self, items: _Optional[_Iterable[bytes]] = ..., end: _Optional[_Union[Reply, _Mapping]] = ...) -> None: ...
