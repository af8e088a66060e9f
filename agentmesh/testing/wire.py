"""What a test needs to speak the wire protocol by hand (raw gRPC): the handshake, metadata, versions, pickling."""
from __future__ import annotations

import hmac
import os

import grpc

from .. import _trust
from .._codec import dumps, loads
from .._config import DEFAULT_MAX_MESSAGE_SIZE
from .._protocol import (CLOUDPICKLE_MAJOR, MD_AUTH, MD_PICKLE, MD_PROTOCOL, MD_PYTHON, MD_STATUS, PROTOCOL_VERSION,
                         PYTHON_VERSION, SERVICE_NAME, call_metadata)
from ..v1 import agent_server_pb2 as pb
from ..v1 import agent_server_pb2_grpc as pb_grpc

__all__ = ["dumps", "loads", "DEFAULT_MAX_MESSAGE_SIZE", "CLOUDPICKLE_MAJOR", "MD_AUTH", "MD_PICKLE", "MD_PROTOCOL",
           "MD_PYTHON", "MD_STATUS", "PROTOCOL_VERSION", "PYTHON_VERSION", "SERVICE_NAME", "call_metadata",
           "authenticate", "ticket_for"]


def ticket_for(token: str, namespace: str, answer: pb.HandshakeResponse, client_nonce: bytes) -> str:
    """The ticket a client holding token makes from a server's handshake answer (the server's proof unchecked)."""
    key = _trust.namespace_key(token, namespace)
    proof = _trust.client_proof(key, client_nonce, answer.server_nonce, answer.server_id, namespace)
    return _trust.ticket(client_nonce, answer.server_nonce, proof)


def authenticate(channel: grpc.Channel, token: str | None, namespace: str = "default",
                 timeout: float = 5.0) -> tuple[tuple[str, str], ...]:
    """Handshake with the server on a synchronous channel; the call metadata for its other RPCs.

    The server's proof is checked as a proxy checks it (AssertionError if wrong).
    Without a token the metadata carries versions only.
    """
    client_nonce = os.urandom(_trust.NONCE_SIZE)
    answer = pb_grpc.AgentServerStub(channel).Handshake(
        pb.HandshakeRequest(client_nonce=client_nonce, namespace=namespace), metadata=call_metadata(),
        timeout=timeout)
    if not token:
        return call_metadata()
    expected = _trust.server_proof(_trust.namespace_key(token, namespace), client_nonce, answer.server_nonce,
                                   answer.server_id, namespace)
    assert hmac.compare_digest(answer.proof, expected), "the server's handshake proof is wrong"
    return call_metadata(ticket_for(token, namespace, answer, client_nonce))
