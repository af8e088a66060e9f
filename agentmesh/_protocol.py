"""What both ends of the wire agree on besides the protobuf messages: metadata, versions, gRPC options."""
from __future__ import annotations

import sys
from typing import Any

import cloudpickle

from ._config import DEFAULT_CONNECTION_IDLE_S, DEFAULT_MAX_CONCURRENT_STREAMS
from ._grpc_tuning import OWN_SUBCHANNELS

PROTOCOL_VERSION = "2"
PYTHON_VERSION = f"{sys.version_info[0]}.{sys.version_info[1]}"
CLOUDPICKLE_MAJOR = cloudpickle.__version__.split(".")[0]
SERVICE_NAME = "agentmesh.v1.AgentServer"
#: the call path's stream, whose frames both ends encode by hand (_frames)
SESSION_METHOD = f"/{SERVICE_NAME}/Session"

MD_PROTOCOL = "x-agentmesh-protocol"
MD_PYTHON = "x-agentmesh-python"
MD_PICKLE = "x-agentmesh-cloudpickle"
#: the ticket of a caller that passed the Handshake (see _trust); never the token itself
MD_AUTH = "x-agentmesh-auth"
#: the Handshake's challenge rides in metadata, so a server never reads a body before authentication:
#: the client's nonce (hex), the namespace it claims and the address ("host:port") it dialled
MD_NONCE = "x-agentmesh-nonce"
MD_NAMESPACE = "x-agentmesh-namespace"
MD_ADDRESS = "x-agentmesh-address"
#: trailing metadata of a refused RPC: the ReplyStatus name that says why (never matched by text)
MD_STATUS = "x-agentmesh-status"

#: at most this many bytes of answered replies ride on one checkpoint push to an agent's creator, and the
#: creator keeps at most this many (newest first) to pass on when it re-creates the agent; a call whose reply
#: fell out may run again if its caller never got the reply and the agent's server died
ANSWERED_BYTES = 1 << 20

#: room for the protobuf envelope around a payload of max_message_size bytes
ENVELOPE = 64 * 1024

#: Keepalive settings both ends use so a hung peer is noticed in about 2 s.
CLIENT_KEEPALIVE_OPTIONS = [
    ("grpc.keepalive_time_ms", 1000),
    ("grpc.keepalive_timeout_ms", 1000),
    ("grpc.http2.ping_timeout_ms", 1000),
    ("grpc.keepalive_permit_without_calls", 1),
    ("grpc.http2.max_pings_without_data", 0),
]
SERVER_KEEPALIVE_OPTIONS = [
    ("grpc.keepalive_permit_without_calls", 1),
    ("grpc.http2.min_recv_ping_interval_without_data_ms", 500),
    ("grpc.http2.min_ping_interval_without_data_ms", 500),
    ("grpc.http2.max_ping_strikes", 0),
]


def size_options(max_message_size: int) -> list[tuple[str, Any]]:
    """gRPC's send and receive limits for messages of up to max_message_size bytes of payload."""
    limit = max_message_size + ENVELOPE
    return [("grpc.max_send_message_length", limit), ("grpc.max_receive_message_length", limit)]


def channel_options(max_message_size: int) -> list[tuple[str, Any]]:
    """Options of every channel to an agent server."""
    return [*size_options(max_message_size), *CLIENT_KEEPALIVE_OPTIONS, OWN_SUBCHANNELS]


#: What one connection may hold on a server. Streams beyond max_concurrent_streams are refused
#: (RST_STREAM, UNAVAILABLE to the caller), so it sits well above the FetchResult waiter cap, which
#: refuses with a clear error first. gRPC randomly cancels new calls once over 1000 arrive faster than
#: the server accepts them (a placeholder fan-out does): the pending limits make room for a burst as
#: large as the stream limit. Idle means no open stream (keepalive pings do not count), so a connection
#: carrying a Session is never idle. No max_connection_age: with a grace it cancels every open Session;
#: without one, old connections stay open anyway.
SERVER_LIMIT_OPTIONS = [
    ("grpc.max_concurrent_streams", DEFAULT_MAX_CONCURRENT_STREAMS),
    ("grpc.server.max_pending_requests", DEFAULT_MAX_CONCURRENT_STREAMS),
    ("grpc.server.max_pending_requests_hard_limit", 2 * DEFAULT_MAX_CONCURRENT_STREAMS),
    ("grpc.max_connection_idle_ms", int(DEFAULT_CONNECTION_IDLE_S * 1000)),
]


def server_options(max_message_size: int) -> list[tuple[str, Any]]:
    """Options of every agent server; SO_REUSEPORT off, so a port in use is an error."""
    return [("grpc.so_reuseport", 0), *size_options(max_message_size), *SERVER_KEEPALIVE_OPTIONS,
            *SERVER_LIMIT_OPTIONS]


def handshake_metadata(client_nonce: bytes, namespace: str, address: str) -> tuple[tuple[str, str], ...]:
    """The metadata of a Handshake: versions and the challenge (its body is empty and never read)."""
    return (*call_metadata(), (MD_NONCE, client_nonce.hex()), (MD_NAMESPACE, namespace), (MD_ADDRESS, address))


def call_metadata(ticket: str | None = None) -> tuple[tuple[str, str], ...]:
    """The metadata every agentmesh RPC carries: versions, and the Handshake's ticket once there is one."""
    md = [(MD_PROTOCOL, PROTOCOL_VERSION), (MD_PYTHON, PYTHON_VERSION), (MD_PICKLE, CLOUDPICKLE_MAJOR)]
    if ticket:
        md.append((MD_AUTH, ticket))
    return tuple(md)
